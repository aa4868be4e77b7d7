"""How the rows of the SQL backends (SQLite and Postgres) become records.

Both drivers give plain Python values (``str``, ``int``, ``float``, ``bool``, ``None``),
decoded here once. A value that does not decode (a corrupt row: written by hand, by a
bug, or by a disk that lost bytes) is a :class:`~memable.StorageError` naming the
instance and the column, marked permanent (retrying cannot help); the engine fails or
skips that one instance, never itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, cast

from .._exceptions import StorageError
from .._keys import is_utf8
from .._records import (
    InstanceRecord,
    InstanceState,
    QueueRecord,
    SignalRecord,
    StepRecord,
    StepRow,
    StepRows,
    TimerRecord,
)
from .._tx import COLUMNS, Guard

__all__ = [
    "EARLIEST",
    "INSTANCE_COLUMNS",
    "LATEST",
    "Corrupt",
    "as_text",
    "as_text_or_none",
    "as_time",
    "as_time_or_none",
    "checked_step",
    "corrupt",
    "decode_instance",
    "decode_queue",
    "decode_signal",
    "decode_step_rows",
    "decode_steps",
    "decode_timer",
    "listed",
    "listing",
    "recorded_steps",
    "update_query",
    "shown",
]

logger = logging.getLogger("memable")

#: The columns :func:`decode_instance` decodes, in order (a shared database adds
#: ``owner`` and ``epoch`` after them).
INSTANCE_COLUMNS: Final = (
    "instance_id, workflow, status, parent_id, input, output, error, status_message,"
    " waiting_on, created_at, updated_at, finished_at, trace, queue, priority"
)
_STATES: Final = frozenset(("enqueued", "running", "suspended", "completed", "failed", "cancelled"))
#: Times memable can turn into a datetime (years 1 to 9999, UTC).
EARLIEST: Final = -62135596800.0
LATEST: Final = 253402300799.0


class Corrupt(Exception):
    """A stored value that does not decode (turned into StorageError naming the instance)."""


def corrupt(instance_id: object, problem: str) -> StorageError:
    """The error of a corrupt row of *instance_id*: permanent (retrying cannot help)."""
    error = StorageError(
        f"instance {shown(instance_id)} has a corrupt row: {problem} (fix or delete the row)"
    )
    error.permanent = True  # type: ignore[attr-defined]  # retrying cannot help
    return error


def shown(value: object) -> str:
    """A stored value for a message: its repr, cut short (it may be large or garbage)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def as_text(value: object, column: str) -> str:
    if type(value) is str and is_utf8(value):
        return value
    raise Corrupt(f"{column} is {shown(value)}, not text")


def as_text_or_none(value: object, column: str) -> str | None:
    return None if value is None else as_text(value, column)


def as_time(value: object, column: str) -> float:
    if type(value) is float and EARLIEST <= value <= LATEST:  # also false for NaN
        return value
    if type(value) is int and EARLIEST <= value <= LATEST:
        return float(value)
    raise Corrupt(f"{column} is {shown(value)}, not a time")


def as_time_or_none(value: object, column: str) -> float | None:
    return None if value is None else as_time(value, column)


def _trace(value: object) -> str | None:
    """A stored ``traceparent``: telemetry only, so a bad one is ignored, never fatal."""
    return value if type(value) is str else None


def _int(value: object, column: str) -> int:
    if type(value) is int:
        return value
    raise Corrupt(f"{column} is {shown(value)}, not an integer")


def _keys(value: object) -> tuple[str, ...]:
    """Decode ``waiting_on``: a JSON list of strings."""
    if value == "[]":  # most rows: nothing awaited
        return ()
    try:
        keys = json.loads(as_text(value, "waiting_on"))
    except (ValueError, RecursionError) as exc:
        raise Corrupt(f"waiting_on is {shown(value)}, not JSON") from exc
    if type(keys) is not list or not all(type(k) is str for k in keys):
        raise Corrupt(f"waiting_on is {shown(value)}, not a JSON list of strings")
    return tuple(keys)


def decode_instance(row: Sequence[object]) -> InstanceRecord:
    """Decode an instance row (:data:`INSTANCE_COLUMNS`, then ``owner`` and ``epoch`` if
    the database is shared), or raise StorageError naming the instance."""
    (iid, workflow, status, parent, input_, output, error, message, waiting, c, u, f, *more) = row
    defaults: tuple[object, ...] = (None, None, 0, None, 0)  # the later columns
    trace, q, p, owner, epoch = (*more, *defaults[len(more) :])
    try:
        if status not in _STATES:
            raise Corrupt(f"status is {shown(status)}, not one of {', '.join(sorted(_STATES))}")
        return InstanceRecord(
            instance_id=as_text(iid, "instance_id"),
            workflow=as_text(workflow, "workflow"),
            status=cast(InstanceState, status),
            parent_id=as_text_or_none(parent, "parent_id"),
            input=as_text(input_, "input"),
            output=as_text_or_none(output, "output"),
            error=as_text_or_none(error, "error"),
            status_message=as_text_or_none(message, "status_message"),
            waiting_on=_keys(waiting),
            created_at=as_time(c, "created_at"),
            updated_at=as_time(u, "updated_at"),
            finished_at=as_time_or_none(f, "finished_at"),
            trace=_trace(trace),
            queue=as_text_or_none(q, "queue"),
            priority=_int(p, "priority"),
            owner=as_text_or_none(owner, "owner"),
            epoch=_int(epoch, "epoch"),
        )
    except Corrupt as exc:
        raise corrupt(iid, str(exc)) from exc.__cause__


def decode_steps(instance_id: str, rows: Iterable[Sequence[Any]]) -> list[StepRecord]:
    """Decode step rows: ``key, state, value, error, attempts, started_at, finished_at``
    and whether the database found the row sound (its types and times checked in SQL,
    so that replay's hot path pays one boolean a step); :func:`checked_step` says what is
    wrong with the others."""
    return [
        StepRecord(
            instance_id=instance_id,
            key=key,
            state=state,
            value=value,
            error=error,
            attempts=attempts,
            started_at=started_at,
            finished_at=finished_at,
        )
        if sound
        else checked_step(instance_id, key, state, value, error, attempts, started_at, finished_at)
        for key, state, value, error, attempts, started_at, finished_at, sound in rows
    ]


def decode_step_rows(instance_id: str, rows: list[StepRow]) -> StepRows:
    """The step rows of :func:`decode_steps` (each with its soundness flag last), kept as
    rows: sound ones as they are (their flag ignored), the others checked by
    :func:`checked_step` (which raises or gives the row to keep). *rows* is reused."""
    for n, row in enumerate(rows):
        if not row[7]:
            step = checked_step(instance_id, *row[:7])
            rows[n] = (step.key, step.state, step.value, step.error, step.attempts,
                       step.started_at, step.finished_at)  # fmt: skip
    return StepRows(instance_id, rows)


def recorded_steps(
    instance_id: str, values: dict[Any, str | None], row_of: Callable[[Any], Sequence[Any]]
) -> tuple[dict[str, str | None], dict[str, tuple[int, str | None]]]:
    """The ``values`` and ``dead`` of a :class:`~memable.storage.Recorded` from *values*:
    each step's key and value, the value ``NULL`` unless the database found the row sound
    and ``completed`` (the common case, which costs no Python but the dict). The rows of
    the others (dead letters, and corrupt rows, which raise) are read by *row_of* (``key,
    state, value, error, attempts, started_at, finished_at``) and checked. *values* is
    reused."""
    dead: dict[str, tuple[int, str | None]] = {}
    if None in values.values():
        for key in [key for key, value in values.items() if value is None]:
            step = checked_step(instance_id, *row_of(key))
            if step.state == "completed":
                values[key] = step.value
            else:
                del values[key]
                dead[step.key] = (step.attempts, step.error)
    return values, dead


def checked_step(instance_id: str, key: object, state: object, *rest: object) -> StepRecord:
    """A step row that failed the quick test: decoded, or StorageError saying what is wrong."""
    value, error, attempts, started_at, finished_at = rest
    try:
        if state not in ("completed", "dead"):
            raise Corrupt(f"state is {shown(state)}, not 'completed' or 'dead'")
        if type(attempts) is not int:
            raise Corrupt(f"attempts is {shown(attempts)}, not a number")
        return StepRecord(
            instance_id=instance_id,
            key=as_text(key, "key"),
            state=state,
            value=(as_text if state == "completed" else as_text_or_none)(value, "value"),
            error=(as_text if state == "dead" else as_text_or_none)(error, "error"),
            attempts=attempts,
            started_at=as_time(started_at, "started_at"),
            finished_at=as_time(finished_at, "finished_at"),
        )
    except Corrupt as exc:
        raise corrupt(instance_id, f"step {shown(key)}: {exc}") from None


def decode_signal(instance_id: str, key: object, *rest: object) -> SignalRecord:
    """Decode a signal row: ``key, payload, created_at, early, trace``."""
    payload, created_at, early, trace = rest
    try:
        return SignalRecord(
            instance_id=instance_id,
            key=as_text(key, "key"),
            payload=as_text_or_none(payload, "payload"),
            created_at=as_time(created_at, "created_at"),
            early=early == 1,  # SQLite's 1, Postgres' True
            trace=_trace(trace),
        )
    except Corrupt as exc:
        raise corrupt(instance_id, f"signal {shown(key)}: {exc}") from None


def decode_timer(instance_id: object, key: object, *rest: object) -> TimerRecord:
    """Decode a timer row: ``instance_id, key, deadline, kind, fired``."""
    deadline, kind, fired = rest
    try:
        if kind not in ("sleep", "timeout"):
            raise Corrupt(f"kind is {shown(kind)}, not 'sleep' or 'timeout'")
        if fired not in (0, 1):  # also False and True
            raise Corrupt(f"fired is {shown(fired)}, not 0 or 1")
        return TimerRecord(
            instance_id=as_text(instance_id, "instance_id"),
            key=as_text(key, "key"),
            deadline=as_time(deadline, "deadline"),
            kind=kind,
            fired=bool(fired),
        )
    except Corrupt as exc:
        raise corrupt(instance_id, f"timer {shown(key)}: {exc}") from None


def decode_queue(name: str, row: Sequence[Any]) -> QueueRecord:
    """Decode a queue row: ``concurrency, rate_count, rate_period, paused, starts``."""
    concurrency, rate_count, rate_period, paused, starts = row
    try:
        times = tuple(float(t) for t in json.loads(starts))
    except (TypeError, ValueError, RecursionError) as exc:
        raise StorageError(
            f"queue {name!r} has a corrupt row: starts is {shown(starts)}, not a JSON list of"
            " times (fix or delete the row)"
        ) from exc
    return QueueRecord(name=name, concurrency=concurrency, rate_count=rate_count,
                       rate_period=rate_period, paused=bool(paused), starts=times)  # fmt: skip


def listing(
    *,
    mark: str,
    waiting: str,
    workflow: str | None,
    status: str | None,
    parent_id: str | None,
    waiting_on: str | None,
    created_after: float | None,
    before: tuple[float, str] | None,
    newest_first: bool,
    columns: str = INSTANCE_COLUMNS,
) -> tuple[str, list[object]]:
    """The query of a listing of instances, its LIMIT parameter still to append: *mark*
    is the driver's placeholder and *waiting* its test of ``waiting_on`` (with its own
    placeholder). The order is ``(created_at, instance_id)``, an index range scan."""
    where: list[str] = []
    params: list[object] = []
    for column, value in (("parent_id", parent_id), ("workflow", workflow), ("status", status)):
        if value is not None:
            where.append(f"{column} = {mark}")
            params.append(value)
    if waiting_on is not None:
        where.append(f"status = 'suspended' AND {waiting}")
        params.append(waiting_on)
    if created_after is not None:
        where.append(f"created_at > {mark}")
        params.append(created_after)
    if before is not None:
        where.append(f"(created_at, instance_id) < ({mark}, {mark})")
        params.extend(before)
    sql = f"SELECT {columns} FROM instances"
    if where:
        sql += " WHERE " + " AND ".join(where)
    order = " DESC" if newest_first else ""
    return f"{sql} ORDER BY created_at{order}, instance_id{order} LIMIT {mark}", params


def listed(rows: Iterable[Sequence[Any]], *, whole: bool) -> list[InstanceRecord]:
    """The instances of a listing's *rows*. A row that does not decode is logged and left
    out (one bad row must not hide the others, nor stop an engine's recovery), unless the
    listing must be *whole* (a family: its parent fails instead)."""
    records: list[InstanceRecord] = []
    for row in rows:
        try:
            records.append(decode_instance(row))
        except StorageError as exc:
            if whole:
                raise
            logger.error("%s; it is left out of the listing", exc, extra={"instance_id": row[0]})
    return records


def update_query(
    instance_id: str, guard: Guard, changes: Mapping[str, object], *, mark: str
) -> tuple[str, list[object]]:
    """The ``UPDATE`` of an instance's *changes* under *guard*'s status test (*mark* is the
    driver's placeholder; a shared database adds its holder test)."""
    columns: list[str] = []
    params: list[object] = []
    for name, value in changes.items():
        if name not in COLUMNS:
            raise ValueError(f"not an instance column: {name!r}")
        columns.append(f"{name} = {mark}")
        params.append(json.dumps(value) if name == "waiting_on" else value)
    query = f"UPDATE instances SET {', '.join(columns)} WHERE instance_id = {mark}"
    params.append(instance_id)
    if guard.status:
        query += f" AND status IN ({', '.join([mark] * len(guard.status))})"
        params.extend(sorted(guard.status))
    return query, params
