"""The transaction primitives of the Postgres backend (:class:`memable._tx.Tx` as SQL),
and how its rows become records.

Rows are read ``FOR UPDATE`` where the rules decide on them; due timers and queued
instances are taken ``SKIP LOCKED``, so engines working at once share them out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final, final

import psycopg

from .._ids import descendant_range
from .._records import (
    EngineRecord,
    InstanceRecord,
    InstanceState,
    QueueRecord,
    ScheduleRecord,
    SignalRecord,
    StepRecord,
    TimerRecord,
)
from .._tx import COLUMNS, Guard
from ._rows import (
    EARLIEST,
    LATEST,
    decode_instance,
    decode_queue,
    decode_signal,
    decode_steps,
    decode_timer,
)
from ._rows import INSTANCE_COLUMNS as ROW_COLUMNS

__all__ = [
    "INSTANCE_COLUMNS",
    "STEP_IS_SOUND",
    "PostgresTx",
    "load_engines",
    "load_steps",
    "load_timers",
]

INSTANCE_COLUMNS: Final = ROW_COLUMNS + ", owner, epoch"  # the shared database's two more
#: Whether a step row is sound, tested by the server as it reads the row (the column
#: types are checked already): replay's hot path then pays one boolean per step.
STEP_IS_SOUND: Final = (
    "CASE state WHEN 'completed' THEN value IS NOT NULL WHEN 'dead' THEN error IS NOT NULL"
    f" ELSE false END AND started_at BETWEEN {EARLIEST} AND {LATEST}"
    f" AND finished_at BETWEEN {EARLIEST} AND {LATEST}"
)
UPSERT_STEP: Final = """
    INSERT INTO steps (instance_id, key, state, value, error, attempts, started_at, finished_at)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (instance_id, key) DO UPDATE SET
        state = excluded.state, value = excluded.value, error = excluded.error,
        attempts = excluded.attempts, started_at = excluded.started_at,
        finished_at = excluded.finished_at
    WHERE steps.state != 'completed'
"""


@final
class PostgresTx:
    """The primitives of :class:`~memable.storage._tx.Tx` as SQL in one open transaction."""

    __slots__ = ("_conn", "_engine_id", "_runs", "changed")
    holds_claims = True

    def __init__(
        self, conn: psycopg.Connection[Any], engine_id: str | None, runs: frozenset[str]
    ) -> None:
        self._conn = conn
        self._engine_id = engine_id
        self._runs = runs
        self.changed: set[str] = set()  # instances whose status changed: hinted after commit

    def claimant(self, workflow: str) -> str | None:
        return self._engine_id if workflow in self._runs else None

    def _one(self, query: str, params: Sequence[object]) -> tuple[Any, ...] | None:
        return self._conn.execute(query, params).fetchone()

    def _all(self, query: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        return self._conn.execute(query, params).fetchall()

    def _run(self, query: str, params: Sequence[object]) -> int:
        return self._conn.execute(query, params).rowcount

    def instance(self, instance_id: str) -> InstanceRecord | None:
        row = self._one(
            f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = %s FOR UPDATE",
            (instance_id,),
        )
        return None if row is None else decode_instance(row)

    def family(self, instance_id: str) -> list[InstanceRecord]:
        rows = self._all(
            f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = %s"
            " OR (instance_id > %s AND instance_id < %s) ORDER BY instance_id FOR UPDATE",
            (instance_id, *descendant_range(instance_id)),
        )
        return [decode_instance(row) for row in rows]

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
        return [decode_instance(row) for row in self._all(query, params)]

    def signal(self, instance_id: str, key: str) -> SignalRecord | None:
        row = self._one(
            "SELECT payload, created_at, early, trace FROM signals"
            " WHERE instance_id = %s AND key = %s",
            (instance_id, key),
        )
        if row is None:
            return None
        return decode_signal(instance_id, key, *row)

    def timers(self, instance_id: str) -> list[TimerRecord]:
        return load_timers(self._conn, "WHERE instance_id = %s", (instance_id,))

    def due_timers(self, now: float, limit: int) -> list[TimerRecord]:
        # SKIP LOCKED: engines firing timers at once share them out, never both fire one.
        return load_timers(
            self._conn,
            "WHERE NOT fired AND deadline <= %s ORDER BY deadline LIMIT %s FOR UPDATE SKIP LOCKED",
            (now, limit),
        )

    def insert(self, row: InstanceRecord | SignalRecord | TimerRecord) -> bool:
        if isinstance(row, InstanceRecord):
            query = f"INSERT INTO instances ({INSTANCE_COLUMNS}) VALUES ({', '.join(['%s'] * 17)})"
            params: tuple[object, ...] = (
                row.instance_id, row.workflow, row.status, row.parent_id, row.input, row.output,
                row.error, row.status_message, json.dumps(row.waiting_on), row.created_at,
                row.updated_at, row.finished_at, row.trace, row.queue, row.priority, row.owner,
                row.epoch,
            )  # fmt: skip
        elif isinstance(row, SignalRecord):
            query = (
                "INSERT INTO signals (instance_id, key, payload, created_at, early, trace)"
                " VALUES (%s, %s, %s, %s, %s, %s)"
            )
            params = (row.instance_id, row.key, row.payload, row.created_at, row.early, row.trace)
        else:
            query = (
                "INSERT INTO timers (instance_id, key, deadline, kind, fired)"
                " VALUES (%s, %s, %s, %s, %s)"
            )
            params = (row.instance_id, row.key, row.deadline, row.kind, row.fired)
        return bool(self._run(query + " ON CONFLICT DO NOTHING", params))

    def put_steps(self, steps: Sequence[StepRecord]) -> list[bool]:
        keys = [(step.instance_id, step.key) for step in steps]
        if len(steps) == 1 or len(set(keys)) < len(keys):
            return [self._put_step(step) for step in steps]
        # One statement for all of them (not executemany: its pipeline would leave the
        # server waiting with no timeout armed, see PostgresStorage.transaction).
        columns = list(zip(*(
            (step.instance_id, step.key, step.state, step.value, step.error, step.attempts,
             step.started_at, step.finished_at)
            for step in steps
        ), strict=True))  # fmt: skip
        rows = self._all(
            "INSERT INTO steps (instance_id, key, state, value, error, attempts, started_at,"
            " finished_at) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[],"
            " %s::text[], %s::text[], %s::integer[], %s::double precision[],"
            " %s::double precision[])"
            " ON CONFLICT (instance_id, key) DO UPDATE SET"
            " state = excluded.state, value = excluded.value, error = excluded.error,"
            " attempts = excluded.attempts, started_at = excluded.started_at,"
            " finished_at = excluded.finished_at WHERE steps.state != 'completed'"
            " RETURNING instance_id, key",
            [list(column) for column in columns],
        )
        written = set(rows)
        return [key in written for key in keys]

    def _put_step(self, step: StepRecord) -> bool:
        params = (step.instance_id, step.key, step.state, step.value, step.error, step.attempts,
                  step.started_at, step.finished_at)  # fmt: skip
        return bool(self._run(UPSERT_STEP, params))

    def holders(self, instance_ids: Sequence[str]) -> dict[str, tuple[str | None, int]]:
        rows = self._all(
            "SELECT instance_id, owner, epoch FROM instances WHERE instance_id = ANY(%s)"
            " ORDER BY instance_id FOR UPDATE",
            (list(instance_ids),),
        )
        return {iid: (owner, epoch) for iid, owner, epoch in rows}

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
        return None if row is None else decode_queue(name, row)

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
        return [decode_instance(row) for row in rows]

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


def load_steps(conn: psycopg.Connection[Any], instance_id: str) -> list[StepRecord]:
    rows = conn.execute(
        "SELECT key, state, value, error, attempts, started_at, finished_at,"
        f" {STEP_IS_SOUND} FROM steps WHERE instance_id = %s",
        (instance_id,),
    ).fetchall()
    return decode_steps(instance_id, rows)


def load_timers(
    conn: psycopg.Connection[Any], where: str, params: Sequence[object]
) -> list[TimerRecord]:
    rows = conn.execute(
        f"SELECT instance_id, key, deadline, kind, fired FROM timers {where}", params
    ).fetchall()
    return [decode_timer(*row) for row in rows]


_DEFAULT_NAME: Final = re.compile(r"memable@(?P<host>.+):(?P<pid>\d+)")


def load_engines(conn: psycopg.Connection[Any], lease: float) -> list[EngineRecord]:
    """The rows of ``engines``, oldest first, with their heartbeat's age (database clock)
    and how many instances each holds; ``expired`` against *lease*."""
    rows = conn.execute(
        "SELECT e.engine_id, e.name, extract(epoch FROM e.started_at)::float8,"
        " extract(epoch FROM e.heartbeat)::float8,"
        " extract(epoch FROM now() - e.heartbeat)::float8,"
        " (SELECT count(*) FROM instances i WHERE i.owner = e.engine_id)"
        " FROM engines e ORDER BY e.started_at, e.engine_id"
    ).fetchall()
    engines = []
    for engine_id, name, started, beat, age, held in rows:
        found = _DEFAULT_NAME.fullmatch(name)
        engines.append(EngineRecord(
            engine_id=engine_id, name=name, host=found["host"] if found else None,
            pid=int(found["pid"]) if found else None, started_at=started, heartbeat=beat,
            heartbeat_age=max(0.0, age), expired=age > lease, instances=int(held),
        ))  # fmt: skip
    return engines
