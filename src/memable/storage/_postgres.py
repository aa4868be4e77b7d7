"""PostgreSQL storage: one database shared by many engine processes, on many machines.

This is the only module of memable that imports :mod:`psycopg`, and no psycopg error
leaves it: every one becomes a :class:`~memable.StorageError` with the cause chained and
without the connection string in its message. psycopg's synchronous API runs in the
engine's worker threads (its async API does not run on trio).

Ownership: every engine registers a row in ``engines`` with a fresh id and renews its
heartbeat on a connection of its own. Instances it creates or claims carry its id
(``owner``) and an ``epoch`` that every claim bumps. Every write transaction first locks
the engine's own row (``FOR KEY SHARE``): once another engine has reaped it (its heartbeat is
older than the lease, by the database clock), it writes nothing more, and instances are
changed only by compare-and-set on ``(owner, epoch)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, Final, TypeVar, cast, final

import psycopg
import psycopg.errors
import psycopg_pool
from psycopg import sql

from .._exceptions import StorageError
from .._ids import descendant_range
from .._records import (
    History,
    InstanceRecord,
    InstanceState,
    QueueRecord,
    ScheduleRecord,
    SignalRecord,
    StepRecord,
    TimerRecord,
)
from .._tx import COLUMNS, Fenced, Guard, Tx
from ._base import RuleStorage

__all__ = ["SCHEMA_VERSION", "PostgresStorage"]

logger = logging.getLogger("memable")

R = TypeVar("R")

_MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE engines (
        engine_id  text PRIMARY KEY,
        name       text NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        heartbeat  timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE instances (
        instance_id    text COLLATE "C" PRIMARY KEY,
        workflow       text NOT NULL,
        status         text NOT NULL,
        parent_id      text COLLATE "C",
        input          text NOT NULL,
        output         text,
        error          text,
        status_message text,
        waiting_on     text NOT NULL DEFAULT '[]',
        created_at     double precision NOT NULL,
        updated_at     double precision NOT NULL,
        finished_at    double precision,
        trace          text,
        owner          text REFERENCES engines (engine_id) ON DELETE SET NULL,
        epoch          bigint NOT NULL DEFAULT 0
    );
    CREATE INDEX instances_by_status ON instances (status, created_at, instance_id);
    CREATE INDEX instances_by_workflow ON instances (workflow, created_at, instance_id);
    CREATE INDEX instances_by_created ON instances (created_at, instance_id);
    CREATE INDEX instances_by_parent ON instances (parent_id) WHERE parent_id IS NOT NULL;
    CREATE INDEX instances_by_finish ON instances (finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX instances_by_owner ON instances (owner) WHERE owner IS NOT NULL;
    CREATE INDEX instances_claimable ON instances (workflow, created_at)
        WHERE status = 'running' AND owner IS NULL AND parent_id IS NULL;
    CREATE TABLE steps (
        instance_id text COLLATE "C" NOT NULL,
        key         text NOT NULL,
        state       text NOT NULL,
        value       text,
        error       text,
        attempts    integer NOT NULL,
        started_at  double precision NOT NULL,
        finished_at double precision NOT NULL,
        PRIMARY KEY (instance_id, key)
    );
    CREATE TABLE signals (
        instance_id text COLLATE "C" NOT NULL,
        key         text NOT NULL,
        payload     text,
        created_at  double precision NOT NULL,
        early       boolean NOT NULL DEFAULT false,
        PRIMARY KEY (instance_id, key)
    );
    CREATE TABLE retired_steps (
        instance_id text COLLATE "C" NOT NULL,
        key         text NOT NULL,
        retired_at  double precision NOT NULL,
        state       text NOT NULL,
        error       text,
        attempts    integer NOT NULL,
        started_at  double precision NOT NULL,
        finished_at double precision NOT NULL,
        PRIMARY KEY (instance_id, key, started_at)
    );
    CREATE TABLE timers (
        instance_id text COLLATE "C" NOT NULL,
        key         text NOT NULL,
        deadline    double precision NOT NULL,
        kind        text NOT NULL,
        fired       boolean NOT NULL DEFAULT false,
        PRIMARY KEY (instance_id, key)
    );
    CREATE INDEX timers_due ON timers (deadline) WHERE NOT fired;
    CREATE VIEW memable_instances AS SELECT
        instance_id, workflow, status, parent_id, status_message,
        waiting_on,
        input::jsonb ->> 'type' AS input_type,
        input::jsonb -> 'value' AS input,
        output::jsonb ->> 'type' AS output_type,
        output::jsonb -> 'value' AS output,
        error::jsonb ->> 'type' AS error_type,
        error::jsonb ->> 'message' AS error_message,
        to_timestamp(created_at) AS created_at,
        to_timestamp(updated_at) AS updated_at,
        to_timestamp(finished_at) AS finished_at,
        owner, epoch
    FROM instances;
    CREATE VIEW memable_steps AS
    SELECT
        instance_id, key, state, attempts,
        to_timestamp(started_at) AS started_at, to_timestamp(finished_at) AS finished_at,
        finished_at - started_at AS duration,
        value::jsonb ->> 'type' AS value_type,
        value::jsonb -> 'value' AS value,
        error::jsonb ->> 'type' AS error_type,
        error::jsonb ->> 'message' AS error_message
    FROM steps
    UNION ALL
    SELECT
        instance_id, key, 'retried' AS state, attempts,
        to_timestamp(started_at), to_timestamp(finished_at), finished_at - started_at,
        NULL, NULL, error::jsonb ->> 'type', error::jsonb ->> 'message'
    FROM retired_steps;
    """,
    """
    ALTER TABLE instances ADD COLUMN queue text;
    ALTER TABLE instances ADD COLUMN priority bigint NOT NULL DEFAULT 0;
    CREATE INDEX instances_queued ON instances (queue, priority DESC, created_at, instance_id)
        WHERE status = 'enqueued';
    CREATE INDEX instances_queue_running ON instances (queue)
        WHERE status = 'running' AND queue IS NOT NULL;
    CREATE INDEX instances_by_parent_status ON instances (parent_id, status, instance_id)
        WHERE parent_id IS NOT NULL;
    CREATE TABLE queues (
        name        text PRIMARY KEY,
        concurrency integer,
        rate_count  integer,
        rate_period double precision,
        paused      boolean NOT NULL DEFAULT false,
        starts      text NOT NULL DEFAULT '[]'
    );
    CREATE TABLE schedules (
        name      text PRIMARY KEY,
        last_tick double precision NOT NULL,
        last_run  text
    );
    CREATE OR REPLACE VIEW memable_instances AS SELECT
        instance_id, workflow, status, parent_id, status_message,
        waiting_on,
        input::jsonb ->> 'type' AS input_type,
        input::jsonb -> 'value' AS input,
        output::jsonb ->> 'type' AS output_type,
        output::jsonb -> 'value' AS output,
        error::jsonb ->> 'type' AS error_type,
        error::jsonb ->> 'message' AS error_message,
        to_timestamp(created_at) AS created_at,
        to_timestamp(updated_at) AS updated_at,
        to_timestamp(finished_at) AS finished_at,
        owner, epoch, queue, priority
    FROM instances;
    """,
)
#: Migrations in order; the schema version of a database is how many have run on it.
SCHEMA_VERSION: Final = len(_MIGRATIONS)

_INSTANCE_COLUMNS: Final = (
    "instance_id, workflow, status, parent_id, input, output, error, status_message,"
    " waiting_on, created_at, updated_at, finished_at, owner, epoch, trace, queue, priority"
)
_STATES: Final = frozenset(("enqueued", "running", "suspended", "completed", "failed", "cancelled"))
_UPSERT_STEP: Final = """
    INSERT INTO steps (instance_id, key, state, value, error, attempts, started_at, finished_at)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (instance_id, key) DO UPDATE SET
        state = excluded.state, value = excluded.value, error = excluded.error,
        attempts = excluded.attempts, started_at = excluded.started_at,
        finished_at = excluded.finished_at
    WHERE steps.state != 'completed'
"""
_RETRIES: Final = 5  # attempts of a transaction the server aborted for a deadlock
# (Not a lock timeout: that is a paused peer holding rows, and waiting again only ties up
# the pool; the engine's healing retries later.)
_TRANSIENT: Final = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
_NOTIFY_LIMIT: Final = 7000  # bytes of instance ids in one notification (Postgres: 8000)


def _instance(row: Sequence[Any]) -> InstanceRecord:
    (iid, workflow, status, parent, input_, output, error, message, waiting, c, u, f) = row[:12]
    if status not in _STATES:
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


def _redacted(dsn: str) -> str:
    """The connection string without its password (for ``repr`` only)."""
    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn)


@final
class PostgresStorage(RuleStorage):
    """A :class:`~memable.storage.Storage` in PostgreSQL, shared by many engines.

    Run the same code in as many processes and machines as you like, each with its own
    engine over one database: each engine claims instances under a lease, runs those of
    the workflows it registers, and takes over the instances of an engine whose lease
    expired. ``Engine("postgresql://…")`` is short for ``Engine(PostgresStorage(…))``.
    Needs the ``memable[postgres]`` extra (psycopg 3 and psycopg-pool).

    Args:
        dsn: A libpq connection string or URL. It never appears in an error message.
        lease: Seconds an engine may go without renewing its heartbeat (every third of
            it) before other engines reap it and run its instances; an engine that
            cannot renew within its lease stops its runs itself.
        pool_size: Connections in the pool, and worker threads the engine may use.
        schema: The schema of memable's tables (created if missing).
        listen: Wake up on other engines' changes through ``LISTEN``/``NOTIFY``;
            ``False`` only polls (behind a transaction-pooling proxy such as PgBouncer).
        poll_interval: Seconds between polls for work and changes when no hint comes
            (by default a tenth of the lease with ``listen``, else a fortieth).
        statement_timeout: Seconds a statement may run before the server cancels it.
        name: What the engine is called in ``application_name`` and ``engines`` (by
            default ``memable@{host}:{pid}``).

    Example:
        >>> import memable
        >>> from memable.storage import PostgresStorage
        >>> storage = PostgresStorage("postgresql://app@db.internal/orders", lease=15.0)
        >>> engine = memable.Engine(storage)
    """

    def __init__(
        self,
        dsn: str,
        *,
        lease: float = 15.0,
        pool_size: int = 10,
        schema: str = "memable",
        listen: bool = True,
        poll_interval: float | None = None,
        statement_timeout: float = 30.0,
        name: str | None = None,
    ) -> None:
        if not isinstance(dsn, str):
            raise TypeError(f"dsn must be a str, not {type(dsn).__name__}")
        if not 0.3 <= lease < 86400:
            raise ValueError(f"lease must be between 0.3 and 86400 seconds, not {lease!r}")
        if pool_size < 2:
            raise ValueError(f"pool_size must be an int >= 2, not {pool_size!r}")
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
            raise ValueError(f"schema must be a lowercase SQL identifier, not {schema!r}")
        if statement_timeout <= 0:
            raise ValueError(f"statement_timeout must be positive, not {statement_timeout!r}")
        self._dsn = dsn
        self.lease = float(lease)
        self.threads = pool_size
        self.schema = schema
        self.listen = listen
        if poll_interval is None:
            poll_interval = self.lease / (10 if listen else 40)
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, not {poll_interval!r}")
        self.poll_interval = float(poll_interval)
        self.statement_timeout = float(statement_timeout)
        self.name = name if name is not None else f"memable@{socket.gethostname()}:{os.getpid()}"
        self.engine_id: str | None = None
        #: The workflows this engine runs (set by the engine): instances of these that a
        #: transaction of this engine claims are taken by this engine at once.
        self.runs: frozenset[str] = frozenset()
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None
        self._beat: psycopg.Connection[Any] | None = None  # heartbeats: never starved
        self._listener: psycopg.Connection[Any] | None = None
        self._listener_lock = threading.Lock()
        self._mutex = threading.Lock()
        self._channel = f"memable.{schema}"

    def __repr__(self) -> str:
        return f"PostgresStorage({_redacted(self._dsn)!r}, lease={self.lease})"

    # -- life cycle -------------------------------------------------------------------------

    def _connect_kwargs(self) -> dict[str, Any]:
        ms = int(self.statement_timeout * 1000)
        lock_ms = int(min(self.statement_timeout, self.lease / 2) * 1000)
        # A paused engine (SIGSTOP, a frozen VM) must not hold its locks past its lease:
        # its open transaction would keep others from reaping it (its engine row is
        # locked) and from the rows it locked. Our transactions are never idle for long.
        idle_ms = int(self.lease / 2 * 1000)
        return {
            "autocommit": True,
            "application_name": self.name[:63],
            "options": (
                f"-c search_path={self.schema} -c statement_timeout={ms}"
                f" -c lock_timeout={lock_ms} -c idle_in_transaction_session_timeout={idle_ms}"
                " -c timezone=UTC"
            ),
            # Prepared statements do not survive a transaction-pooling proxy.
            "prepare_threshold": 5 if self.listen else None,
            "connect_timeout": max(2, int(self.lease)),
        }

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.Connection.connect(self._dsn, **self._connect_kwargs())

    def open(self) -> None:
        with self._mutex:
            if self._pool is not None:
                raise StorageError(f"{self!r} is already open")
            with self._errors("connecting to"):
                pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = (
                    psycopg_pool.ConnectionPool(
                        self._dsn,
                        kwargs=self._connect_kwargs(),
                        min_size=1,
                        max_size=self.threads,
                        open=False,
                        timeout=max(5.0, self.lease),
                        name=f"memable-{self.schema}",
                    )
                )
                try:
                    self._beat = self._connect()  # fails fast if the server is not there
                    self._migrate(self._beat)
                    self.engine_id = self._register(self._beat)
                    pool.open(wait=True, timeout=max(5.0, self.lease))
                except BaseException:
                    pool.close()
                    if self._beat is not None:
                        self._beat.close()
                        self._beat = None
                    raise
                self._pool = pool

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        schema = sql.Identifier(self.schema)
        with conn.transaction():
            # One migrating engine at a time; the others wait here, then find it done.
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"memable schema {self.schema}",)
            )
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {}.schema_version (version integer)").format(
                    schema
                )
            )
            row = conn.execute(
                sql.SQL("SELECT max(version) FROM {}.schema_version").format(schema)
            ).fetchone()
            version = 0 if row is None or row[0] is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"the memable schema {self.schema!r} has version {version}, newer than this"
                    f" memable knows ({SCHEMA_VERSION}); upgrade memable to use it"
                )
            for migration in _MIGRATIONS[version:]:
                conn.execute(migration)
            if version < SCHEMA_VERSION:
                conn.execute(sql.SQL("DELETE FROM {}.schema_version").format(schema))
                conn.execute(
                    sql.SQL("INSERT INTO {}.schema_version VALUES (%s)").format(schema),
                    (SCHEMA_VERSION,),
                )

    def _register(self, conn: psycopg.Connection[Any]) -> str:
        engine_id = uuid.uuid4().hex
        conn.execute(
            "INSERT INTO engines (engine_id, name) VALUES (%s, %s)", (engine_id, self.name)
        )
        return engine_id

    def close(self) -> None:
        with self._mutex:
            pool, self._pool = self._pool, None
            beat, self._beat = self._beat, None
            engine_id, self.engine_id = self.engine_id, None
            try:
                if beat is not None and engine_id is not None:
                    # Hand every instance back at once (ON DELETE SET NULL), and say so.
                    with contextlib.suppress(psycopg.Error):
                        beat.execute("DELETE FROM engines WHERE engine_id = %s", (engine_id,))
                        beat.execute("SELECT pg_notify(%s, '')", (self._channel,))
            finally:
                if beat is not None:
                    beat.close()
                with self._listener_lock:
                    if self._listener is not None:
                        self._listener.close()
                        self._listener = None
                if pool is not None:
                    pool.close()

    # -- plumbing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn psycopg errors into StorageError, never naming the connection string."""
        try:
            yield
        except Fenced:
            raise
        except psycopg.errors.ForeignKeyViolation as exc:
            raise Fenced(
                "this engine's lease expired (another engine reaped it); what it wrote is"
                " refused and its runs stop"
            ) from exc
        except psycopg_pool.PoolTimeout as exc:
            raise StorageError(
                f"PostgreSQL error while {doing} the database: no connection within the"
                " pool's timeout (the server is down or every connection is busy)"
            ) from exc
        except psycopg.Error as exc:
            diag = getattr(exc, "diag", None)
            primary = diag.message_primary if diag is not None else None
            if primary:
                detail = f"{type(exc).__name__}: {primary}"
            else:  # a connection error: its text names the host; say what kind it is
                detail = f"{type(exc).__name__} (the connection failed or was lost)"
            raise StorageError(f"PostgreSQL error while {doing} the database: {detail}") from exc

    @contextlib.contextmanager
    def _conn(self, doing: str) -> Iterator[psycopg.Connection[Any]]:
        pool = self._pool
        if pool is None:
            raise StorageError("this PostgresStorage is not open")
        with self._errors(doing), pool.connection() as conn:
            yield conn

    def _notify(self, conn: psycopg.Connection[Any], ids: set[str]) -> None:
        """Hint other engines (outside the write transaction, once per transaction)."""
        if not ids:
            return
        payload = "\n".join(sorted(ids))
        if len(payload.encode()) > _NOTIFY_LIMIT:
            payload = ""  # too many to name: "look at everything"
        with contextlib.suppress(psycopg.Error):  # only a hint: polling catches up
            conn.execute("SELECT pg_notify(%s, %s)", (self._channel, payload))

    # -- reads ------------------------------------------------------------------------------

    def get_instance(self, instance_id: str) -> InstanceRecord | None:
        with self._conn("reading") as conn:
            row = conn.execute(
                f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE instance_id = %s",
                (instance_id,),
            ).fetchone()
        return None if row is None else _instance(row)

    def list_instances(
        self,
        *,
        workflow: str | None = None,
        status: InstanceState | None = None,
        limit: int | None = None,
        parent_id: str | None = None,
        waiting_on: str | None = None,
        created_after: float | None = None,
        before: tuple[float, str] | None = None,
        newest_first: bool = False,
    ) -> list[InstanceRecord]:
        where: list[str] = []
        params: list[object] = []
        for column, value in (("parent_id", parent_id), ("workflow", workflow),
                              ("status", status)):  # fmt: skip
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value)
        if waiting_on is not None:
            where.append("status = 'suspended' AND waiting_on::jsonb ? %s")
            params.append(waiting_on)
        if created_after is not None:
            where.append("created_at > %s")
            params.append(created_after)
        if before is not None:
            where.append("(created_at, instance_id) < (%s, %s)")
            params.extend(before)
        query = f"SELECT {_INSTANCE_COLUMNS} FROM instances"
        if where:
            query += " WHERE " + " AND ".join(where)
        order = " DESC" if newest_first else ""
        query += f" ORDER BY created_at{order}, instance_id{order} LIMIT %s"
        params.append(limit)
        with self._conn("listing instances in") as conn:
            rows = conn.execute(query, params).fetchall()
        return [_instance(row) for row in rows]

    def load_retired(self, instance_id: str) -> list[StepRecord]:
        with self._conn("loading retired steps from") as conn:
            rows = conn.execute(
                "SELECT key, error, attempts, started_at, finished_at FROM retired_steps"
                " WHERE instance_id = %s ORDER BY started_at",
                (instance_id,),
            ).fetchall()
        return [
            StepRecord(instance_id=instance_id, key=key, state="dead", error=error,
                       attempts=attempts, started_at=started, finished_at=finished)
            for key, error, attempts, started, finished in rows
        ]  # fmt: skip

    def load_steps(self, instance_id: str) -> list[StepRecord]:
        with self._conn("loading steps from") as conn:
            return _steps(conn, instance_id)

    def load_history(self, instance_id: str) -> History:
        # One statement: one snapshot of the three tables, in one round trip.
        with self._conn(f"loading the history of instance {instance_id!r} from") as conn:
            rows = conn.execute(
                "SELECT 0, key, state, value, error, attempts, started_at, finished_at, NULL"
                " FROM steps WHERE instance_id = %s UNION ALL"
                " SELECT 1, key, NULL, payload, NULL, NULL, created_at, NULL, early"
                " FROM signals WHERE instance_id = %s UNION ALL"
                " SELECT 2, key, kind, NULL, NULL, NULL, deadline, NULL, fired"
                " FROM timers WHERE instance_id = %s",
                (instance_id, instance_id, instance_id),
            ).fetchall()
        history = History(steps=[], signals=[], timers=[])
        for table, key, kind, value, error, attempts, at, finished, flag in rows:
            if table == 0:
                history.steps.append(StepRecord(
                    instance_id=instance_id, key=key, state=kind, value=value, error=error,
                    attempts=attempts, started_at=at, finished_at=finished,
                ))  # fmt: skip
            elif table == 1:
                history.signals.append(SignalRecord(
                    instance_id=instance_id, key=key, payload=value, created_at=at, early=flag
                ))  # fmt: skip
            else:
                history.timers.append(TimerRecord(
                    instance_id=instance_id, key=key, deadline=at, kind=kind, fired=flag
                ))  # fmt: skip
        return history

    def list_queues(self) -> list[tuple[QueueRecord, dict[str, int]]]:
        with self._conn("reading queues from") as conn:
            rows = conn.execute(
                "SELECT name, concurrency, rate_count, rate_period, paused, starts FROM queues"
                " ORDER BY name"
            ).fetchall()
            counts = conn.execute(
                "SELECT queue, status, count(*) FROM instances WHERE queue IS NOT NULL"
                " AND status IN ('enqueued', 'running', 'suspended') GROUP BY queue, status"
            ).fetchall()
        return [
            (_queue(row[0], row[1:]), {status: n for queue, status, n in counts if queue == row[0]})
            for row in rows
        ]

    def list_schedules(self) -> list[ScheduleRecord]:
        with self._conn("reading schedules from") as conn:
            rows = conn.execute(
                "SELECT name, last_tick, last_run FROM schedules ORDER BY name"
            ).fetchall()
        return [ScheduleRecord(name=n, last_tick=float(t), last_run=r) for n, t, r in rows]

    def next_deadline(self) -> float | None:
        with self._conn("reading timers from") as conn:
            row = conn.execute("SELECT min(deadline) FROM timers WHERE NOT fired").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def purgeable(
        self, *, finished_before: float, workflow: str | None, exclude: Sequence[str], limit: int
    ) -> list[str]:
        query = (
            "SELECT instance_id FROM instances WHERE parent_id IS NULL AND finished_at < %s"
            " AND status IN ('completed', 'failed', 'cancelled')"
        )
        params: list[object] = [finished_before]
        if workflow is not None:
            query += " AND workflow = %s"
            params.append(workflow)
        if exclude:
            query += " AND NOT (workflow = ANY(%s))"
            params.append(list(exclude))
        query += " LIMIT %s"
        params.append(limit)
        with self._conn("finding instances to purge in") as conn:
            return [row[0] for row in conn.execute(query, params)]

    # -- the transaction primitives ---------------------------------------------------------

    def atomically(self, decide: Callable[[Tx], R]) -> R:
        # Row locks taken in different orders by concurrent engines may deadlock; the
        # server aborts one transaction, which is run again (the rules are pure over Tx).
        for attempt in range(_RETRIES):
            try:
                return super().atomically(decide)
            except StorageError as exc:
                cause = exc.__cause__
                if attempt + 1 == _RETRIES or not isinstance(cause, _TRANSIENT):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_PostgresTx]:
        with self._conn("writing to") as conn:
            engine_id = self.engine_id
            tx = _PostgresTx(conn, engine_id, self.runs)
            row: tuple[Any, ...] | None = None
            # No pipeline mode here: between pipelined messages the server waits for the
            # client with no timeout armed, so a client paused there (SIGSTOP) would hold
            # its locks — and keep others from reaping it — for as long as it is paused.
            conn.execute("BEGIN")
            if engine_id is not None:
                # Fencing: an engine that was reaped writes nothing more.
                # KEY SHARE: it blocks the reaper's DELETE until this commits (and a
                # reaped engine finds no row), but not the heartbeat's UPDATE.
                row = conn.execute(
                    "SELECT 1 FROM engines WHERE engine_id = %s FOR KEY SHARE", (engine_id,)
                ).fetchone()
            try:
                if engine_id is not None and row is None:
                    raise Fenced(
                        "this engine's lease expired (another engine reaped it); nothing"
                        " was written and its runs stop"
                    )
                yield tx
            except BaseException:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    with contextlib.suppress(psycopg.Error):  # keep the original error
                        conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self._notify(conn, tx.changed)  # after the commit, never inside it

    # -- sharing (memable.storage.SharedStorage) --------------------------------------------

    def claim(
        self, workflows: Sequence[str], limit: int, *, held: bool = True
    ) -> list[InstanceRecord]:
        engine_id = self.engine_id
        if engine_id is None:
            raise StorageError("this PostgresStorage is not open")
        with self._conn("claiming instances in") as conn:
            self._reap(conn)
            with conn.transaction():
                claimed = conn.execute(
                    f"UPDATE instances SET owner = %s, epoch = epoch + 1 WHERE instance_id IN"
                    " (SELECT instance_id FROM instances WHERE status = 'running'"
                    " AND owner IS NULL AND parent_id IS NULL AND workflow = ANY(%s)"
                    " ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED)"
                    f" RETURNING {_INSTANCE_COLUMNS}",
                    (engine_id, list(workflows), limit),
                ).fetchall()
            mine = (
                conn.execute(
                    f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE owner = %s"
                    " AND status = 'running' AND parent_id IS NULL",
                    (engine_id,),
                ).fetchall()
                if held
                else []
            )
        records = {row[0]: _instance(row) for row in mine}
        records.update((row[0], _instance(row)) for row in claimed)
        return list(records.values())

    def _reap(self, conn: psycopg.Connection[Any]) -> int:
        """Delete the engines whose heartbeat is older than the lease (database clock):
        their instances become claimable (``ON DELETE SET NULL``). How many."""
        # SKIP LOCKED: an engine paused inside a transaction holds its row until the
        # server ends that transaction (idle_in_transaction_session_timeout); wait for
        # nobody meanwhile, the next round reaps it.
        reaped = conn.execute(
            "DELETE FROM engines WHERE engine_id IN (SELECT engine_id FROM engines"
            " WHERE heartbeat < now() - make_interval(secs => %s) FOR UPDATE SKIP LOCKED)"
            " RETURNING engine_id",
            (self.lease,),
        ).fetchall()
        if reaped:
            logger.warning(
                "reaped %d engines whose lease expired; their instances are claimable",
                len(reaped),
            )
        return len(reaped)

    def acquire(self, instance_id: str) -> InstanceRecord | None:
        engine_id = self.engine_id
        if engine_id is None:
            raise StorageError("this PostgresStorage is not open")
        with self._conn("claiming an instance in") as conn:
            row = conn.execute(
                "UPDATE instances SET owner = %s, epoch = epoch + 1 WHERE instance_id = %s"
                " AND status = 'running' AND owner IS NULL AND parent_id IS NULL"
                f" RETURNING {_INSTANCE_COLUMNS}",
                (engine_id, instance_id),
            ).fetchone()
            if row is None:
                row = conn.execute(
                    f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE instance_id = %s"
                    " AND owner = %s AND status = 'running'",
                    (instance_id, engine_id),
                ).fetchone()
        return None if row is None else _instance(row)

    def heartbeat(self, held: Sequence[tuple[str, int]]) -> list[str] | None:
        with self._mutex, self._errors("renewing this engine's lease in"):
            conn, engine_id = self._beat, self.engine_id
            if conn is None or engine_id is None:
                raise StorageError("this PostgresStorage is not open")
            if conn.closed:
                conn = self._beat = self._connect()
            updated = conn.execute(
                "UPDATE engines SET heartbeat = now() WHERE engine_id = %s", (engine_id,)
            ).rowcount
            if not updated:  # reaped: a new identity; the engine stops its runs
                self.engine_id = self._register(conn)
                return None
            # Reaping on this connection too: a pool full of transactions waiting on the
            # locks of a paused engine cannot keep the others from reaping it.
            with contextlib.suppress(psycopg.errors.LockNotAvailable):
                if self._reap(conn):
                    conn.execute("SELECT pg_notify(%s, '')", (self._channel,))
            if not held:
                return []
            rows = conn.execute(
                "SELECT h.id FROM unnest(%s::text[], %s::bigint[]) AS h (id, epoch)"
                " LEFT JOIN instances i ON i.instance_id = h.id"
                " WHERE i.instance_id IS NULL OR i.owner <> %s OR i.status = 'cancelled'",
                ([i for i, _ in held], [e for _, e in held], engine_id),
            ).fetchall()
        return [row[0] for row in rows]

    def hints(self, timeout: float) -> list[str] | None:
        if not self.listen:
            raise StorageError("this PostgresStorage polls only (listen=False)")
        with self._listener_lock:
            conn = self._listener
            if conn is None or conn.closed:
                if self._pool is None:
                    raise StorageError("this PostgresStorage is not open")
                with self._errors("listening to"):
                    conn = self._listener = self._connect()
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                return None  # (re)connected: what happened meanwhile was not heard
        ids: set[str] = set()
        try:
            for notify in conn.notifies(timeout=timeout, stop_after=1):
                ids.update(notify.payload.split("\n"))
            for notify in conn.notifies(timeout=0.0):  # what came in the same packet
                ids.update(notify.payload.split("\n"))
        except psycopg.Error as exc:
            with self._listener_lock:
                if self._listener is conn:
                    self._listener = None
            conn.close()
            if self._pool is None:
                return []  # closing
            raise StorageError(
                "PostgreSQL error while listening to the database: the connection was lost"
            ) from exc
        return sorted(ids)


@final
class _PostgresTx:
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
            f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE instance_id = %s FOR UPDATE",
            (instance_id,),
        )
        return None if row is None else _instance(row)

    def family(self, instance_id: str) -> list[InstanceRecord]:
        rows = self._all(
            f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE instance_id = %s"
            " OR (instance_id > %s AND instance_id < %s) ORDER BY instance_id FOR UPDATE",
            (instance_id, *descendant_range(instance_id)),
        )
        return [_instance(row) for row in rows]

    def children(
        self,
        parent_id: str,
        prefix: str = "",
        status: frozenset[InstanceState] = frozenset(),
        limit: int | None = None,
    ) -> list[InstanceRecord]:
        query = (
            f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE parent_id = %s"
            " AND starts_with(instance_id, %s)"
        )
        params: list[object] = [parent_id, prefix]
        if status:
            query += " AND status = ANY(%s)"
            params.append(sorted(status))
        if limit is not None:
            query += " LIMIT %s"
            params.append(limit)
        return [_instance(row) for row in self._all(query, params)]

    def signal(self, instance_id: str, key: str) -> SignalRecord | None:
        row = self._one(
            "SELECT payload, created_at FROM signals WHERE instance_id = %s AND key = %s",
            (instance_id, key),
        )
        if row is None:
            return None
        return SignalRecord(instance_id=instance_id, key=key, payload=row[0], created_at=row[1])

    def timers(self, instance_id: str) -> list[TimerRecord]:
        return _timers(self._conn, "WHERE instance_id = %s", (instance_id,))

    def due_timers(self, now: float, limit: int) -> list[TimerRecord]:
        # SKIP LOCKED: engines firing timers at once share them out, never both fire one.
        return _timers(
            self._conn,
            "WHERE NOT fired AND deadline <= %s ORDER BY deadline LIMIT %s FOR UPDATE SKIP LOCKED",
            (now, limit),
        )

    def insert(self, row: InstanceRecord | SignalRecord | TimerRecord) -> bool:
        if isinstance(row, InstanceRecord):
            query = f"INSERT INTO instances ({_INSTANCE_COLUMNS}) VALUES ({', '.join(['%s'] * 17)})"
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
        return bool(self._run(_UPSERT_STEP, params))

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
        return None if row is None else _queue(name, row)

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
            f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE queue = %s"
            " AND status = 'enqueued' AND workflow = ANY(%s)"
            " ORDER BY priority DESC, created_at, instance_id LIMIT %s FOR UPDATE SKIP LOCKED",
            (queue, sorted(workflows), limit),
        )
        return [_instance(row) for row in rows]

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


def _queue(name: str, row: Sequence[Any]) -> QueueRecord:
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


def _steps(conn: psycopg.Connection[Any], instance_id: str) -> list[StepRecord]:
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


def _timers(
    conn: psycopg.Connection[Any], where: str, params: Sequence[object]
) -> list[TimerRecord]:
    rows = conn.execute(
        f"SELECT instance_id, key, deadline, kind, fired FROM timers {where}", params
    ).fetchall()
    return [
        TimerRecord(instance_id=iid, key=key, deadline=deadline, kind=kind, fired=fired)
        for iid, key, deadline, kind, fired in rows
    ]


PostgresStorage.__module__ = "memable.storage"
