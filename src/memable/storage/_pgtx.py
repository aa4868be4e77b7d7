"""The transaction primitives of the Postgres backend (:class:`memable._tx.Tx` as SQL),
and how its rows become records.

Rows are read ``FOR UPDATE`` where the rules decide on them; due timers and queued
instances are taken ``SKIP LOCKED``, so engines working at once share them out.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Collection, Mapping, Sequence, Set
from typing import Any, Final, cast, final

import attrs
import psycopg

from .._exceptions import StorageError
from .._ids import ancestors, descendant_range
from .._records import (
    EngineRecord,
    Fence,
    History,
    InstanceRecord,
    InstanceState,
    InstanceUpdate,
    QueueRecord,
    ScheduleRecord,
    SignalRecord,
    StepRecord,
    TimerRecord,
)
from .._rules import check_holders
from .._state import FINISHED, TRANSITIONS, can_move
from .._tx import Fenced, Guard
from ._rows import (
    EARLIEST,
    LATEST,
    decode_instance,
    decode_queue,
    decode_signal,
    decode_step_rows,
    decode_steps,
    decode_timer,
    update_query,
)
from ._rows import INSTANCE_COLUMNS as ROW_COLUMNS

__all__ = [
    "FENCED_INSERTS",
    "FENCED_INSTANCE",
    "FENCED_STEP",
    "INSERT_STEPS",
    "INSTANCE_COLUMNS",
    "STEP_IS_SOUND",
    "Inserted",
    "PostgresTx",
    "admission_possible",
    "check_found",
    "fenced_finish",
    "fenced_inserts",
    "finish_only",
    "hear",
    "inserted",
    "inserts_only",
    "instance_rows",
    "load_engines",
    "load_history",
    "load_steps",
    "load_timers",
    "step_rows",
]

INSTANCE_COLUMNS: Final = ROW_COLUMNS + ", owner, epoch"  # the shared database's two more
#: Whether a step row is sound, tested by the server as it reads the row (the column
#: types are checked already): replay's hot path then pays one boolean per step.
STEP_IS_SOUND: Final = (
    "CASE state WHEN 'completed' THEN value IS NOT NULL WHEN 'dead' THEN error IS NOT NULL"
    f" ELSE false END AND started_at BETWEEN {EARLIEST} AND {LATEST}"
    f" AND finished_at BETWEEN {EARLIEST} AND {LATEST}"
)


def _rows_of(types: Sequence[str]) -> str:
    """The columns of a JSON array of rows (one parameter: psycopg adapts one string much
    faster than a list per column), as SQL of the given types."""
    return ", ".join(f"(r->>{n})::{tp}" for n, tp in enumerate(types))


_STEP_TYPES: Final = ["text"] * 5 + ["integer", "double precision", "double precision"]
_STEP_CONFLICT: Final = (
    " ON CONFLICT (instance_id, key) DO UPDATE SET state = excluded.state,"
    " value = excluded.value, error = excluded.error, attempts = excluded.attempts,"
    " started_at = excluded.started_at, finished_at = excluded.finished_at"
    " WHERE steps.state != 'completed' RETURNING instance_id, key"
)
_STEP_COLUMNS: Final = "instance_id, key, state, value, error, attempts, started_at, finished_at"
INSERT_STEPS: Final = (
    f"INSERT INTO steps ({_STEP_COLUMNS}) SELECT {_rows_of(_STEP_TYPES)}"
    " FROM json_array_elements(%s::json) AS r" + _STEP_CONFLICT
)
"""Insert step records (:func:`step_rows`), or replace dead letters, never a completed
result: the first writer wins. Each key at most once per statement."""


def step_rows(steps: Sequence[StepRecord]) -> str:
    """The steps parameter of :data:`INSERT_STEPS` (and :data:`FENCED_INSERTS`)."""
    return json.dumps([
        (step.instance_id, step.key, step.state, step.value, step.error, step.attempts,
         step.started_at, step.finished_at)
        for step in steps
    ])  # fmt: skip


@final
class PostgresTx:
    """The primitives of :class:`~memable.storage._tx.Tx` as SQL in one open transaction.

    The transaction begins with its first statement: ``BEGIN``, the lock on the engine's
    own row (``FOR KEY SHARE``) and that statement go to the server in one simple query
    (so the server, idle in the transaction afterwards, has its idle-in-transaction
    timeout armed); the updates held back and ``COMMIT`` go together at the end. An
    engine that was reaped finds no row and writes nothing (:class:`Fenced`). Rows read
    for a fence check (:meth:`holders`) stay locked until the end, and are served from
    here when the rules read them again.
    """

    __slots__ = (
        "_childless",
        "_conn",
        "_deferred",
        "_engine_id",
        "_held",
        "_runs",
        "begun",
        "changed",
        "claimable",
    )
    holds_claims = True

    def __init__(
        self, conn: psycopg.Connection[Any], engine_id: str | None, runs: frozenset[str]
    ) -> None:
        self._conn = conn
        self._engine_id = engine_id
        self._runs = runs
        self.begun = False  # BEGIN was sent (COMMIT or ROLLBACK must follow)
        self.changed: set[str] = set()  # instances whose status changed: hinted after commit
        self.claimable: set[str] = set()  # of those, the ones left running and not held
        self._held: dict[str, InstanceRecord] = {}  # rows this transaction locked, as they are
        self._childless: set[str] = set()  # of those, the ones without descendants
        self._deferred: list[tuple[str, list[object]]] = []  # updates of those, not sent yet

    def claimant(self, workflow: str) -> str | None:
        return self._engine_id if workflow in self._runs else None

    def _execute(self, query: str, params: Sequence[object]) -> psycopg.Cursor[Any]:
        if self.begun and not self._deferred:
            return self._conn.execute(query, params)
        return self._send(query, params)

    def _send(self, query: str | None, params: Sequence[object] = ()) -> psycopg.Cursor[Any]:
        """Send what must go first (``BEGIN`` and the fencing lock, the held-back updates)
        and *query* (or ``COMMIT``, if ``None``) in one round trip; the cursor is at the
        result of the last statement.

        One simple query of several statements, its values bound by psycopg: no pipeline
        (between pipelined messages the server waits for the client with no timeout armed;
        after a simple query it is idle in a transaction, and
        idle_in_transaction_session_timeout holds). The statements run in order and the
        first error stops the rest, so each goes to the server as it would on its own.
        """
        cursor = psycopg.ClientCursor(self._conn)
        statements: list[str] = []
        lock = not self.begun and self._engine_id is not None
        if not self.begun:
            self.begun = True
            statements.append("BEGIN")
            if lock:
                statements.append(
                    cursor.mogrify(
                        "SELECT 1 FROM engines WHERE engine_id = %s FOR KEY SHARE",
                        (self._engine_id,),
                    )
                )
        deferred, self._deferred = self._deferred, []
        # An update of a row this transaction holds applies (its guard was checked on the
        # locked row): if it did not, the transaction fails here, before its commit.
        statements.extend(
            f"WITH u AS ({cursor.mogrify(update, values)} RETURNING 1) SELECT 1 / count(*) FROM u"
            for update, values in deferred
        )
        statements.append("COMMIT" if query is None else cursor.mogrify(query, params))
        cursor.execute("; ".join(statements))
        # The result of BEGIN, then the lock's:
        if lock and (not cursor.nextset() or cursor.fetchone() is None):
            raise Fenced(
                "this engine's lease expired (another engine reaped it); nothing was"
                " written and its runs stop"
            )
        for _ in range(len(statements) - 1 - lock):
            cursor.nextset()
        return cursor

    def commit(self) -> None:
        """Send the updates that were held back, and ``COMMIT``: one round trip."""
        if self.begun:  # (updates are held back only after a read: it began)
            self._send(None)

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
        return None if row is None else decode_instance(row)

    def family(self, instance_id: str) -> list[InstanceRecord]:
        if instance_id in self._childless and instance_id in self._held:
            return [self._held[instance_id]]
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
        rows = self._all(f"{_TIMERS} WHERE instance_id = %s", (instance_id,))
        return [decode_timer(*row) for row in rows]

    def due_timers(self, now: float, limit: int) -> list[TimerRecord]:
        # SKIP LOCKED: engines firing timers at once share them out, never both fire one.
        rows = self._all(
            f"{_TIMERS} WHERE NOT fired AND deadline <= %s ORDER BY deadline LIMIT %s"
            " FOR UPDATE SKIP LOCKED",
            (now, limit),
        )
        return [decode_timer(*row) for row in rows]

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
            written = set(self._all(INSERT_STEPS, (step_rows(batch),)))
            for index, step in zip(indexes, batch, strict=True):
                applied[index] = (step.instance_id, step.key) in written
        return applied

    def holders(self, instance_ids: Sequence[str]) -> dict[str, tuple[str | None, int]]:
        # The whole rows, and whether each has descendants: the rules read them again
        # (a finishing instance, its family) in this transaction, which holds them.
        # ``= ANY``, not a join with the ids as JSON: the planner then knows how few rows
        # there are and looks them up in the index (a join went through the whole table).
        # Descendants sort between id + "/" and id + "0" (see descendant_range).
        rows = self._all(
            f"SELECT {INSTANCE_COLUMNS}, NOT EXISTS (SELECT 1 FROM instances d"
            " WHERE d.instance_id > i.instance_id || '/' AND d.instance_id < i.instance_id || '0')"
            " FROM instances i WHERE i.instance_id = ANY(%s)"
            " ORDER BY i.instance_id FOR UPDATE OF i",
            (list(instance_ids),),
        )
        found: dict[str, tuple[str | None, int]] = {}
        for row in rows:
            record = decode_instance(row[:-1])
            self._held[record.instance_id] = record
            if row[-1]:
                self._childless.add(record.instance_id)
            found[record.instance_id] = (record.owner, record.epoch)
        return found

    def update(self, instance_id: str, guard: Guard, changes: Mapping[str, object]) -> bool:
        query, params = update_query(instance_id, guard, changes, mark="%s")
        if guard.holder is not None:
            query += " AND owner IS NOT DISTINCT FROM %s AND epoch = %s"
            params.extend(guard.holder)
        held = self._held.pop(instance_id, None)
        if held is None:
            applied = bool(self._run(query, params))
        else:
            # Locked by this transaction since it was read: whether the update applies is
            # known here, and it goes to the server with the next statement (or before
            # the commit), many of them in one round trip.
            applied = guard.allows(held.status) and guard.holds(held.owner, held.epoch)
            if applied:
                self._deferred.append((query, params))
        if applied and held is not None:  # as it is now
            fields: dict[str, Any] = dict(changes)
            if "waiting_on" in fields:
                fields["waiting_on"] = tuple(cast("Sequence[str]", fields["waiting_on"]))
            self._held[instance_id] = attrs.evolve(held, **fields)
        if applied and "status" in changes:
            self.changed.add(instance_id)
            if changes["status"] == "running" and changes.get("owner") is None:
                self.claimable.add(instance_id)
            else:
                self.claimable.discard(instance_id)
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


def admission_possible(
    conn: psycopg.Connection[Any], name: str, workflows: Collection[str]
) -> bool:
    """Whether an admission of queue *name* may start something, read without locks.

    ``False`` only when, as of now, the queue has no row, is paused, has no enqueued
    instance of *workflows* or no free slot: whatever changes that afterwards (a slot
    freed, work enqueued, the queue resumed) commits later and wakes admission again.
    """
    row = conn.execute(
        "SELECT q.paused OR NOT EXISTS (SELECT 1 FROM instances WHERE queue = q.name"
        " AND status = 'enqueued' AND workflow = ANY(%s))"
        " OR (q.concurrency IS NOT NULL AND q.concurrency <= (SELECT count(*) FROM instances"
        " WHERE queue = q.name AND status = 'running'))"
        " FROM queues q WHERE q.name = %s",
        (sorted(workflows), name),
    ).fetchone()
    return row is not None and not row[0]


def load_history(conn: psycopg.Connection[Any], instance_id: str) -> History:
    """An instance's steps, signals and timers: one statement (one snapshot of the three
    tables, in one round trip)."""
    # Columns by type: text x4, integer, double x2, boolean.
    rows = conn.execute(
        "SELECT 0, key, state, value, error, attempts, started_at, finished_at,"
        f" {STEP_IS_SOUND} FROM steps WHERE instance_id = %s UNION ALL"
        " SELECT 1, key, payload, trace, NULL, NULL, created_at, NULL, early"
        " FROM signals WHERE instance_id = %s UNION ALL"
        " SELECT 2, instance_id, key, kind, NULL, NULL, deadline, NULL, fired"
        " FROM timers WHERE instance_id = %s",
        (instance_id, instance_id, instance_id),
    ).fetchall()
    return History(
        steps=decode_step_rows(instance_id, [row[1:] for row in rows if row[0] == 0]),
        signals=[
            decode_signal(instance_id, key, payload, at, flag, trace)
            for table, key, payload, trace, _, _, at, _, flag in rows
            if table == 1
        ],
        timers=[
            decode_timer(iid, key, at, kind, flag)
            for table, iid, key, kind, _, _, at, _, flag in rows
            if table == 2
        ],
    )


def hear(conn: psycopg.Connection[Any], timeout: float, own: Set[int]) -> set[str]:
    """The instance ids the hints on the listening *conn* name, waiting up to *timeout*
    for the first one; the hints sent by server processes in *own* are dropped (and
    waited past: this engine's own commits wake nobody up)."""
    ids: set[str] = set()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        for notify in conn.notifies(timeout=max(0.0, left), stop_after=1):
            if notify.pid not in own:
                ids.update(notify.payload.split("\n"))
        for notify in conn.notifies(timeout=0.0):  # what came in the same packet
            if notify.pid not in own:
                ids.update(notify.payload.split("\n"))
        if ids or left <= 0:
            return ids


def load_steps(conn: psycopg.Connection[Any], instance_id: str) -> list[StepRecord]:
    rows = conn.execute(
        "SELECT key, state, value, error, attempts, started_at, finished_at,"
        f" {STEP_IS_SOUND} FROM steps WHERE instance_id = %s",
        (instance_id,),
    ).fetchall()
    return decode_steps(instance_id, rows)


_TIMERS: Final = "SELECT instance_id, key, deadline, kind, fired FROM timers"


def load_timers(
    conn: psycopg.Connection[Any], where: str, params: Sequence[object]
) -> list[TimerRecord]:
    rows = conn.execute(f"{_TIMERS} {where}", params).fetchall()
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


_INSTANCE_TYPES: Final = [  # of INSTANCE_COLUMNS
    *["text"] * 9,
    *["double precision"] * 3,
    "text",
    "text",
    "bigint",
    "text",
    "bigint",
]


def instance_rows(records: Sequence[InstanceRecord]) -> str:
    """The instances parameter of :data:`FENCED_INSERTS` for *records*."""
    return json.dumps([
        (r.instance_id, r.workflow, r.status, r.parent_id, r.input, r.output, r.error,
         r.status_message, json.dumps(r.waiting_on), r.created_at, r.updated_at,
         r.finished_at, r.trace, r.queue, r.priority, r.owner, r.epoch)
        for r in records
    ])  # fmt: skip


# One statement, in autocommit: the engine's row locked FOR KEY SHARE, the fenced
# instances' rows FOR UPDATE (in id order), and the inserts made only if the engine's
# row is there and every fence holds (the SQL of memable._rules.check_holders). It
# answers with what was not written, and the holders only if a fence failed.
FENCED_INSERTS: Final = (
    "WITH fences (id, owner, epoch, suspended) AS MATERIALIZED (SELECT "
    + _rows_of(["text", "text", "bigint", "boolean"])
    + " FROM json_array_elements(%s::json) AS r),"
    " engine AS MATERIALIZED ("
    " SELECT engine_id FROM engines WHERE engine_id = %s FOR KEY SHARE),"
    " held AS MATERIALIZED (SELECT instance_id, owner, epoch FROM instances"
    " WHERE instance_id IN (SELECT id FROM fences) ORDER BY instance_id FOR UPDATE),"
    " ok AS MATERIALIZED (SELECT EXISTS (SELECT FROM engine) AND (SELECT count(*)"
    " FROM fences f JOIN held h ON h.instance_id = f.id WHERE h.epoch = f.epoch"
    " AND (h.owner IS NOT DISTINCT FROM f.owner OR (f.suspended AND h.owner IS NULL)))"
    " = (SELECT count(*) FROM fences) AS ok),"
    f" step_in ({_STEP_COLUMNS}) AS MATERIALIZED (SELECT {_rows_of(_STEP_TYPES)}"
    " FROM json_array_elements(%s::json) AS r),"
    f" instance_in ({INSTANCE_COLUMNS}) AS MATERIALIZED (SELECT"
    f" {_rows_of(_INSTANCE_TYPES)} FROM json_array_elements(%s::json) AS r),"
    f" written AS (INSERT INTO steps ({_STEP_COLUMNS}) SELECT * FROM step_in"
    f" WHERE (SELECT ok FROM ok){_STEP_CONFLICT}),"
    f" created AS (INSERT INTO instances ({INSTANCE_COLUMNS}) SELECT * FROM instance_in"
    " WHERE (SELECT ok FROM ok) ON CONFLICT DO NOTHING RETURNING instance_id)"
    " SELECT 0, instance_id, owner, epoch FROM held WHERE NOT (SELECT ok FROM ok)"
    " UNION ALL SELECT 1, instance_id, key, NULL FROM step_in"
    " WHERE (instance_id, key) NOT IN (SELECT instance_id, key FROM written)"
    " UNION ALL SELECT 2, instance_id, NULL, NULL FROM instance_in"
    " WHERE instance_id NOT IN (SELECT instance_id FROM created)"
    " UNION ALL SELECT 3, NULL, NULL, count(*) FROM engine"
    " UNION ALL SELECT 4, NULL, NULL, ok::integer FROM ok"
)


# The engine's row locked FOR KEY SHARE and one fenced instance's row FOR UPDATE (its id,
# epoch, owner and whether the run suspended are the parameters), and whether both hold.
_ONE_FENCE: Final = (
    "WITH engine AS MATERIALIZED ("
    " SELECT engine_id FROM engines WHERE engine_id = %s FOR KEY SHARE),"
    " held AS MATERIALIZED (SELECT instance_id, owner, epoch FROM instances"
    " WHERE instance_id = %s FOR UPDATE),"
    " ok AS MATERIALIZED (SELECT EXISTS (SELECT FROM engine) AS engine,"
    " EXISTS (SELECT FROM engine) AND EXISTS (SELECT FROM held WHERE epoch = %s::bigint"
    " AND (owner IS NOT DISTINCT FROM %s::text OR (%s::boolean AND owner IS NULL))) AS ok),"
)


# The same for the commonest commit, one fence and one step record (a sequential step):
# scalar parameters, and no JSON for the server to take apart.
FENCED_STEP: Final = (
    _ONE_FENCE
    + f" written AS (INSERT INTO steps ({_STEP_COLUMNS}) SELECT %s::text, %s::text, %s::text,"
    " %s::text, %s::text, %s::integer, %s::double precision, %s::double precision"
    f" WHERE (SELECT ok FROM ok){_STEP_CONFLICT})"
    " SELECT engine, ok, (SELECT count(*) FROM written), CASE WHEN NOT ok THEN"
    " (SELECT json_agg(json_build_array(instance_id, owner, epoch)) FROM held) END FROM ok"
)


# And for a new instance on its own (a start): no JSON either.
FENCED_INSTANCE: Final = (
    "WITH engine AS MATERIALIZED ("
    " SELECT engine_id FROM engines WHERE engine_id = %s FOR KEY SHARE),"
    f" created AS (INSERT INTO instances ({INSTANCE_COLUMNS}) SELECT "
    + ", ".join(f"%s::{tp}" for tp in _INSTANCE_TYPES)
    + " WHERE EXISTS (SELECT FROM engine) ON CONFLICT DO NOTHING RETURNING instance_id)"
    " SELECT EXISTS (SELECT FROM engine), (SELECT count(*) FROM created)"
)


# And for a run's last write, its fence and the update that finishes its instance, when
# no descendant of it is unfinished (the commonest finish): the rules' move in one
# statement, whose UPDATE (an update_query, with its status test) is put in at {}.
FENCED_FINISH: Final = (
    _ONE_FENCE + " moved AS ({} AND (SELECT ok FROM ok) AND NOT EXISTS (SELECT 1 FROM instances d"
    " WHERE d.instance_id > %s AND d.instance_id < %s"
    " AND d.status IN ('enqueued', 'running', 'suspended')) RETURNING 1)"
    " SELECT engine, ok, (SELECT count(*) FROM moved), CASE WHEN NOT ok THEN"
    " (SELECT json_agg(json_build_array(instance_id, owner, epoch)) FROM held) END FROM ok"
)


def finish_only(writes: Sequence[object]) -> tuple[Fence, InstanceUpdate] | None:
    """The fence and the update of *writes* for :func:`fenced_finish`, or ``None`` if
    they are not a run's fence and the update that finishes its instance."""
    if len(writes) != 2:
        return None
    fence, update = writes
    if not isinstance(fence, Fence) or not isinstance(update, InstanceUpdate):
        return None
    if update.instance_id != fence.instance_id or update.status not in FINISHED:
        return None
    return fence, update


def fenced_finish(
    conn: psycopg.Connection[Any], engine_id: str, fence: Fence, update: InstanceUpdate
) -> bool:
    """Finish the fenced instance in one statement (one round trip, its own transaction),
    as :func:`memable._rules.commit` would: :class:`Fenced` if the engine was reaped or
    the fence fails; ``False`` (nothing written) if the rules must decide, because the
    instance's status does not allow the move or a descendant is unfinished (the rules
    cancel it)."""
    new = update.status
    assert new is not None
    statuses = [old for old in update.only_if or TRANSITIONS if can_move(old, new)]
    if not statuses:
        return False
    changes: dict[str, object] = {"status": new, "updated_at": update.updated_at}
    for name in ("status_message", "output", "error", "waiting_on", "finished_at"):
        if (value := getattr(update, name)) is not None:
            changes[name] = value
    changes["owner"] = None  # every move lets go of the instance
    moving, params = update_query(
        update.instance_id, Guard(frozenset(statuses)), changes, mark="%s"
    )
    row = conn.execute(
        FENCED_FINISH.format(moving),
        (engine_id, fence.instance_id, fence.epoch, fence.owner, fence.suspended,
         *params, *descendant_range(update.instance_id)),
    ).fetchone()  # fmt: skip
    assert row is not None  # one row, always
    engine, ok, moved, holders = row
    found = Inserted(engine=bool(engine), ok=bool(ok))
    for instance_id, owner, epoch in holders or ():
        found.holders[instance_id] = (owner, int(epoch))
    check_found([fence], found)
    return bool(moved)


@attrs.define
class Inserted:
    """What :func:`fenced_inserts` found and did not write."""

    engine: bool = False  # the engine's row is there (it was not reaped)
    ok: bool = False  # the inserts were made
    holders: dict[str, tuple[str | None, int]] = attrs.Factory(dict)  # if not ok
    unwritten: set[tuple[str, str]] = attrs.Factory(set)  # steps (completed ones there)
    existing: set[str] = attrs.Factory(set)  # instances


def fenced_inserts(
    conn: psycopg.Connection[Any],
    engine_id: str,
    fences: Sequence[Fence],
    steps: Sequence[StepRecord],
    records: Sequence[InstanceRecord],
) -> Inserted:
    """Insert step records and instances in one statement (one round trip, its own
    transaction), if the engine's row is there and every fence holds.

    The same as :func:`memable._rules.commit` over writes of only these kinds; the
    keys of the steps, and the ids of the instances, must differ.
    """
    if len(fences) == 1 and len(steps) == 1 and not records:
        return _fenced_step(conn, engine_id, fences[0], steps[0])
    if not fences and not steps and len(records) == 1:
        return _fenced_instance(conn, engine_id, records[0])
    fenced = json.dumps([(f.instance_id, f.owner, f.epoch, f.suspended) for f in fences])
    params = (fenced, engine_id, step_rows(steps), instance_rows(records))  # in their order
    found = Inserted()
    for kind, first, second, third in conn.execute(FENCED_INSERTS, params):
        if kind == 0:
            found.holders[first] = (second, third)
        elif kind == 1:
            found.unwritten.add((first, second))
        elif kind == 2:
            found.existing.add(first)
        elif kind == 3:
            found.engine = bool(third)
        else:
            found.ok = bool(third)
    return found


def _fenced_step(
    conn: psycopg.Connection[Any], engine_id: str, fence: Fence, step: StepRecord
) -> Inserted:
    row = conn.execute(FENCED_STEP, (
        engine_id, fence.instance_id, fence.epoch, fence.owner, fence.suspended,
        step.instance_id, step.key, step.state, step.value, step.error, step.attempts,
        step.started_at, step.finished_at,
    )).fetchone()  # fmt: skip
    assert row is not None  # one row, always
    engine, ok, written, holders = row
    found = Inserted(engine=bool(engine), ok=bool(ok))
    if ok and not written:
        found.unwritten.add((step.instance_id, step.key))
    for instance_id, owner, epoch in holders or ():
        found.holders[instance_id] = (owner, int(epoch))
    return found


def _fenced_instance(conn: psycopg.Connection[Any], engine_id: str, r: InstanceRecord) -> Inserted:
    row = conn.execute(FENCED_INSTANCE, (
        engine_id, r.instance_id, r.workflow, r.status, r.parent_id, r.input, r.output,
        r.error, r.status_message, json.dumps(r.waiting_on), r.created_at, r.updated_at,
        r.finished_at, r.trace, r.queue, r.priority, r.owner, r.epoch,
    )).fetchone()  # fmt: skip
    assert row is not None  # one row, always
    engine, created = row
    found = Inserted(engine=bool(engine), ok=bool(engine))
    if engine and not created:
        found.existing.add(r.instance_id)
    return found


def inserts_only(
    writes: Sequence[object],
) -> tuple[list[Fence], list[StepRecord], list[InstanceRecord]] | None:
    """The fences, step records and instances of *writes* for :func:`fenced_inserts`, or
    ``None`` if it has other writes, or a step key or an instance id twice."""
    fences: list[Fence] = []
    steps: list[StepRecord] = []
    records: list[InstanceRecord] = []
    for write in writes:
        if isinstance(write, Fence):
            fences.append(write)
        elif isinstance(write, StepRecord):
            steps.append(write)
        elif isinstance(write, InstanceRecord):
            records.append(write)
        else:
            return None
    if len({(step.instance_id, step.key) for step in steps}) < len(steps):
        return None
    if len({record.instance_id for record in records}) < len(records):
        return None
    return fences, steps, records


def check_found(fences: Sequence[Fence], found: Inserted) -> None:
    """:class:`Fenced` if a lean statement found the engine reaped or a fence failed
    (worded by the rules' own test, of which its SQL is a copy)."""
    if not found.engine:
        raise Fenced(
            "this engine's lease expired (another engine reaped it); nothing was written"
            " and its runs stop"
        )
    if not found.ok:
        check_holders(fences, found.holders)
        raise StorageError("a fenced commit was refused although its fence held")


def inserted(writes: Sequence[object], found: Inserted) -> list[bool]:
    """Which of *writes* applied, as :func:`memable._rules.commit` says; :class:`Fenced`
    if the engine was reaped or a fence failed (worded by the rules' own test)."""
    check_found([write for write in writes if isinstance(write, Fence)], found)
    return [
        True if isinstance(write, Fence)
        else (write.instance_id, write.key) not in found.unwritten
        if isinstance(write, StepRecord)
        else isinstance(write, InstanceRecord) and write.instance_id not in found.existing
        for write in writes
    ]  # fmt: skip
