"""The transaction primitives of the Postgres backend (:class:`memable._tx.Tx` as SQL),
and how its rows become records.

Rows are read ``FOR UPDATE`` where the rules decide on them; due timers and queued
instances are taken ``SKIP LOCKED``, so engines working at once share them out.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final, cast, final

import attrs
import psycopg

from .._exceptions import StorageError
from .._ids import ancestors, descendant_range
from .._records import (
    InstanceRecord,
    InstanceState,
    QueueRecord,
    ScheduleRecord,
    SignalRecord,
    StepRecord,
    TimerRecord,
)
from .._tx import COLUMNS, Fenced, Guard

__all__ = [
    "INSTANCE_COLUMNS",
    "PostgresTx",
    "instance_row",
    "load_steps",
    "queue_row",
    "timer_rows",
]

INSTANCE_COLUMNS: Final = (
    "instance_id, workflow, status, parent_id, input, output, error, status_message,"
    " waiting_on, created_at, updated_at, finished_at, owner, epoch, trace, queue, priority"
)
STATES: Final = frozenset(("enqueued", "running", "suspended", "completed", "failed", "cancelled"))
INSERT_STEPS: Final = (
    "INSERT INTO steps (instance_id, key, state, value, error, attempts, started_at,"
    " finished_at) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[],"
    " %s::text[], %s::integer[], %s::double precision[], %s::double precision[])"
    " ON CONFLICT (instance_id, key) DO UPDATE SET state = excluded.state,"
    " value = excluded.value, error = excluded.error, attempts = excluded.attempts,"
    " started_at = excluded.started_at, finished_at = excluded.finished_at"
    " WHERE steps.state != 'completed' RETURNING instance_id, key"
)
"""Insert step records (arrays of their columns), or replace dead letters, never a
completed result: the first writer wins. Each key at most once per statement."""


def step_columns(steps: Sequence[StepRecord]) -> list[list[Any]]:
    """The parameters of :data:`INSERT_STEPS` for *steps*."""
    return [
        [step.instance_id for step in steps],
        [step.key for step in steps],
        [step.state for step in steps],
        [step.value for step in steps],
        [step.error for step in steps],
        [step.attempts for step in steps],
        [step.started_at for step in steps],
        [step.finished_at for step in steps],
    ]


def instance_row(row: Sequence[Any]) -> InstanceRecord:
    (iid, workflow, status, parent, input_, output, error, message, waiting, c, u, f) = row[:12]
    if status not in STATES:
        raise StorageError(f"instance {iid!r} is corrupt: status is {status!r}")
    try:
        keys = json.loads(waiting)
    except ValueError as exc:
        raise StorageError(f"instance {iid!r} is corrupt: waiting_on is not JSON") from exc
    return InstanceRecord(
        instance_id=iid,
        workflow=workflow,
        status=cast(InstanceState, status),
        parent_id=parent,
        input=input_,
        output=output,
        error=error,
        status_message=message,
        waiting_on=tuple(keys),
        created_at=c,
        updated_at=u,
        finished_at=f,
        owner=row[12],
        epoch=row[13],
        trace=row[14],
        queue=row[15],
        priority=row[16],
    )


@final
class PostgresTx:
    """The primitives of :class:`~memable.storage._tx.Tx` as SQL in one open transaction.

    The transaction begins with its first statement: ``BEGIN``, the lock on the engine's
    own row (``FOR KEY SHARE``) and that statement go to the server in one pipeline,
    closed by a sync (so the server, idle in the transaction afterwards, has its
    idle-in-transaction timeout armed). An engine that was reaped finds no row and
    writes nothing (:class:`Fenced`). Rows read for a fence check (:meth:`holders`) stay
    locked until the end, and are served from here when the rules read them again.
    """

    __slots__ = ("_childless", "_conn", "_engine_id", "_held", "_runs", "begun", "changed")
    holds_claims = True

    def __init__(
        self, conn: psycopg.Connection[Any], engine_id: str | None, runs: frozenset[str]
    ) -> None:
        self._conn = conn
        self._engine_id = engine_id
        self._runs = runs
        self.begun = False  # BEGIN was sent (COMMIT or ROLLBACK must follow)
        self.changed: set[str] = set()  # instances whose status changed: hinted after commit
        self._held: dict[str, InstanceRecord] = {}  # rows this transaction locked, as they are
        self._childless: set[str] = set()  # of those, the ones without descendants

    def claimant(self, workflow: str) -> str | None:
        return self._engine_id if workflow in self._runs else None

    def _execute(self, query: str, params: Sequence[object]) -> psycopg.Cursor[Any]:
        conn = self._conn
        if self.begun:
            return conn.execute(query, params)
        self.begun = True
        with conn.pipeline():  # one round trip; the pipeline's exit syncs
            conn.execute("BEGIN")
            lock = (
                None
                if self._engine_id is None
                else conn.execute(
                    "SELECT 1 FROM engines WHERE engine_id = %s FOR KEY SHARE", (self._engine_id,)
                )
            )
            cursor = conn.execute(query, params)
        if lock is not None and lock.fetchone() is None:
            raise Fenced(
                "this engine's lease expired (another engine reaped it); nothing was written"
                " and its runs stop"
            )
        return cursor

    def _one(self, query: str, params: Sequence[object]) -> tuple[Any, ...] | None:
        return self._execute(query, params).fetchone()

    def _all(self, query: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        return self._execute(query, params).fetchall()

    def _run(self, query: str, params: Sequence[object]) -> int:
        return self._execute(query, params).rowcount

    def instance(self, instance_id: str) -> InstanceRecord | None:
        held = self._held.get(instance_id)
        if held is not None:
            return held
        row = self._one(
            f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = %s FOR UPDATE",
            (instance_id,),
        )
        return None if row is None else instance_row(row)

    def family(self, instance_id: str) -> list[InstanceRecord]:
        if instance_id in self._childless and instance_id in self._held:
            return [self._held[instance_id]]
        rows = self._all(
            f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = %s"
            " OR (instance_id > %s AND instance_id < %s) ORDER BY instance_id FOR UPDATE",
            (instance_id, *descendant_range(instance_id)),
        )
        return [instance_row(row) for row in rows]

    def children(
        self,
        parent_id: str,
        prefix: str = "",
        status: frozenset[InstanceState] = frozenset(),
        limit: int | None = None,
    ) -> list[InstanceRecord]:
        query = (
            f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE parent_id = %s"
            " AND starts_with(instance_id, %s)"
        )
        params: list[object] = [parent_id, prefix]
        if status:
            query += " AND status = ANY(%s)"
            params.append(sorted(status))
        if limit is not None:
            query += " LIMIT %s"
            params.append(limit)
        return [instance_row(row) for row in self._all(query, params)]

    def signal(self, instance_id: str, key: str) -> SignalRecord | None:
        row = self._one(
            "SELECT payload, created_at FROM signals WHERE instance_id = %s AND key = %s",
            (instance_id, key),
        )
        if row is None:
            return None
        return SignalRecord(instance_id=instance_id, key=key, payload=row[0], created_at=row[1])

    def timers(self, instance_id: str) -> list[TimerRecord]:
        return timer_rows(self._all(f"{_TIMERS} WHERE instance_id = %s", (instance_id,)))

    def due_timers(self, now: float, limit: int) -> list[TimerRecord]:
        # SKIP LOCKED: engines firing timers at once share them out, never both fire one.
        return timer_rows(self._all(
            f"{_TIMERS} WHERE NOT fired AND deadline <= %s ORDER BY deadline LIMIT %s"
            " FOR UPDATE SKIP LOCKED",
            (now, limit),
        ))  # fmt: skip

    def insert(self, row: InstanceRecord | SignalRecord | TimerRecord) -> bool:
        if isinstance(row, InstanceRecord):
            query = f"INSERT INTO instances ({INSTANCE_COLUMNS}) VALUES ({', '.join(['%s'] * 17)})"
            params: tuple[object, ...] = (
                row.instance_id, row.workflow, row.status, row.parent_id, row.input, row.output,
                row.error, row.status_message, json.dumps(row.waiting_on), row.created_at,
                row.updated_at, row.finished_at, row.owner, row.epoch, row.trace, row.queue,
                row.priority,
            )  # fmt: skip
        elif isinstance(row, SignalRecord):
            query = (
                "INSERT INTO signals (instance_id, key, payload, created_at, early)"
                " VALUES (%s, %s, %s, %s, %s)"
            )
            params = (row.instance_id, row.key, row.payload, row.created_at, row.early)
        else:
            query = (
                "INSERT INTO timers (instance_id, key, deadline, kind, fired)"
                " VALUES (%s, %s, %s, %s, %s)"
            )
            params = (row.instance_id, row.key, row.deadline, row.kind, row.fired)
        inserted = bool(self._run(query + " ON CONFLICT DO NOTHING", params))
        if inserted and isinstance(row, InstanceRecord) and row.parent_id is not None:
            self._childless.difference_update(ancestors(row.instance_id))
        return inserted

    def put_steps(self, steps: Sequence[StepRecord]) -> list[bool]:
        # One statement for all of them; a key given twice goes in a later round, so
        # the first of them wins as if they had been written one by one.
        rounds: list[list[int]] = []
        seen: dict[tuple[str, str], int] = {}
        for index, step in enumerate(steps):
            key = (step.instance_id, step.key)
            n = seen[key] = seen.get(key, -1) + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(index)
        applied = [False] * len(steps)
        for indexes in rounds:
            batch = [steps[index] for index in indexes]
            written = set(self._all(INSERT_STEPS, step_columns(batch)))
            for index, step in zip(indexes, batch, strict=True):
                applied[index] = (step.instance_id, step.key) in written
        return applied

    def holders(self, instance_ids: Sequence[str]) -> dict[str, tuple[str | None, int]]:
        # The whole rows, and whether each has descendants: the rules read them again
        # (a finishing instance, its family) in this transaction, which holds them.
        ranges = [descendant_range(i) for i in instance_ids]
        rows = self._all(
            f"SELECT {INSTANCE_COLUMNS}, NOT EXISTS (SELECT 1 FROM instances d"
            " WHERE d.instance_id > r.lo AND d.instance_id < r.hi)"
            " FROM instances i JOIN unnest(%s::text[], %s::text[], %s::text[]) AS r (id, lo, hi)"
            " ON i.instance_id = r.id ORDER BY i.instance_id FOR UPDATE OF i",
            (list(instance_ids), [lo for lo, _ in ranges], [hi for _, hi in ranges]),
        )
        found: dict[str, tuple[str | None, int]] = {}
        for row in rows:
            record = instance_row(row)
            self._held[record.instance_id] = record
            if row[-1]:
                self._childless.add(record.instance_id)
            found[record.instance_id] = (record.owner, record.epoch)
        return found

    def update(self, instance_id: str, guard: Guard, changes: Mapping[str, object]) -> bool:
        columns: list[str] = []
        params: list[object] = []
        for name, value in changes.items():
            if name not in COLUMNS:
                raise ValueError(f"not an instance column: {name!r}")
            columns.append(f"{name} = %s")
            params.append(json.dumps(value) if name == "waiting_on" else value)
        query = f"UPDATE instances SET {', '.join(columns)} WHERE instance_id = %s"
        params.append(instance_id)
        if guard.status:
            query += " AND status = ANY(%s)"
            params.append(sorted(guard.status))
        if guard.holder is not None:
            query += " AND owner IS NOT DISTINCT FROM %s AND epoch = %s"
            params.extend(guard.holder)
        applied = bool(self._run(query, params))
        held = self._held.pop(instance_id, None)
        if applied and held is not None:  # still locked by this transaction: as it is now
            fields: dict[str, Any] = dict(changes)
            if "waiting_on" in fields:
                fields["waiting_on"] = tuple(cast("Sequence[str]", fields["waiting_on"]))
            self._held[instance_id] = attrs.evolve(held, **fields)
        if applied and "status" in changes:
            self.changed.add(instance_id)
        return applied

    def fire(self, instance_id: str, key: str) -> None:
        self._run(
            "UPDATE timers SET fired = true WHERE instance_id = %s AND key = %s",
            (instance_id, key),
        )

    def delete_signal(self, instance_id: str, key: str) -> bool:
        return bool(
            self._run("DELETE FROM signals WHERE instance_id = %s AND key = %s", (instance_id, key))
        )

    def retire_dead_steps(self, instance_id: str) -> None:
        self._run(
            "INSERT INTO retired_steps (instance_id, key, retired_at, state, error, attempts,"
            " started_at, finished_at) SELECT instance_id, key, finished_at, state, error,"
            " attempts, started_at, finished_at FROM steps WHERE instance_id = %s"
            " AND state = 'dead' ON CONFLICT (instance_id, key, started_at) DO UPDATE SET"
            " retired_at = excluded.retired_at, state = excluded.state, error = excluded.error,"
            " attempts = excluded.attempts, finished_at = excluded.finished_at",
            (instance_id,),
        )
        self._run("DELETE FROM steps WHERE instance_id = %s AND state = 'dead'", (instance_id,))

    def delete_family(self, instance_id: str) -> None:
        self._held.clear()
        family = (instance_id, *descendant_range(instance_id))
        for table in ("steps", "retired_steps", "signals", "timers", "instances"):
            self._run(
                f"DELETE FROM {table} WHERE instance_id = %s"
                " OR (instance_id > %s AND instance_id < %s)",
                family,
            )

    # -- queues and schedules: the queue's row is held FOR UPDATE while admission counts

    def queue(self, name: str) -> QueueRecord | None:
        row = self._one(
            "SELECT concurrency, rate_count, rate_period, paused, starts FROM queues"
            " WHERE name = %s FOR UPDATE",
            (name,),
        )
        return None if row is None else queue_row(name, row)

    def put_queue(self, row: QueueRecord, *, replace: bool = True) -> bool:
        conflict = (
            "DO UPDATE SET concurrency = excluded.concurrency, rate_count = excluded.rate_count,"
            " rate_period = excluded.rate_period, paused = excluded.paused,"
            " starts = excluded.starts"
            if replace
            else "DO NOTHING"
        )
        return bool(self._run(
            "INSERT INTO queues (name, concurrency, rate_count, rate_period, paused, starts)"
            f" VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name) {conflict}",
            (row.name, row.concurrency, row.rate_count, row.rate_period, row.paused,
             json.dumps(row.starts)),
        ))  # fmt: skip

    def running_count(self, queue: str) -> int:
        row = self._one(
            "SELECT count(*) FROM instances WHERE queue = %s AND status = 'running'", (queue,)
        )
        return 0 if row is None else int(row[0])

    def queued(self, queue: str, workflows: Collection[str], limit: int) -> list[InstanceRecord]:
        rows = self._all(
            f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE queue = %s"
            " AND status = 'enqueued' AND workflow = ANY(%s)"
            " ORDER BY priority DESC, created_at, instance_id LIMIT %s FOR UPDATE SKIP LOCKED",
            (queue, sorted(workflows), limit),
        )
        return [instance_row(row) for row in rows]

    def schedule(self, name: str) -> ScheduleRecord | None:
        row = self._one(
            "SELECT last_tick, last_run FROM schedules WHERE name = %s FOR UPDATE", (name,)
        )
        if row is None:
            return None
        return ScheduleRecord(name=name, last_tick=float(row[0]), last_run=row[1])

    def put_schedule(self, row: ScheduleRecord, *, replace: bool = True) -> bool:
        conflict = (
            "DO UPDATE SET last_tick = excluded.last_tick, last_run = excluded.last_run"
            if replace
            else "DO NOTHING"
        )
        return bool(
            self._run(
                "INSERT INTO schedules (name, last_tick, last_run) VALUES (%s, %s, %s)"
                f" ON CONFLICT (name) {conflict}",
                (row.name, row.last_tick, row.last_run),
            )
        )


def queue_row(name: str, row: Sequence[Any]) -> QueueRecord:
    concurrency, rate_count, rate_period, paused, starts = row
    try:
        times = tuple(float(t) for t in json.loads(starts))
    except (TypeError, ValueError) as exc:
        raise StorageError(
            f"queue {name!r} has a corrupt row: starts is not a JSON list of times"
            " (fix or delete the row)"
        ) from exc
    return QueueRecord(name=name, concurrency=concurrency, rate_count=rate_count,
                       rate_period=rate_period, paused=bool(paused), starts=times)  # fmt: skip


def load_steps(conn: psycopg.Connection[Any], instance_id: str) -> list[StepRecord]:
    rows = conn.execute(
        "SELECT key, state, value, error, attempts, started_at, finished_at FROM steps"
        " WHERE instance_id = %s",
        (instance_id,),
    ).fetchall()
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
        for key, state, value, error, attempts, started_at, finished_at in rows
    ]


_TIMERS: Final = "SELECT instance_id, key, deadline, kind, fired FROM timers"


def timer_rows(rows: Sequence[Sequence[Any]]) -> list[TimerRecord]:
    return [
        TimerRecord(instance_id=iid, key=key, deadline=deadline, kind=kind, fired=fired)
        for iid, key, deadline, kind, fired in rows
    ]
