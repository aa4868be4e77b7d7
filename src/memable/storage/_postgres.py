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
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence, Set
from typing import Any, Final, TypeVar, final

import psycopg
import psycopg.errors
import psycopg_pool
from psycopg import sql

from .._exceptions import StorageError
from .._records import (
    EngineRecord,
    History,
    InstanceRecord,
    InstanceState,
    QueueRecord,
    ScheduleRecord,
    StepRecord,
    Write,
)
from .._tx import Fenced, Tx
from ._base import RuleStorage
from ._pgschema import MIGRATIONS, SCHEMA_VERSION, check_schema
from ._pgtx import (
    INSTANCE_COLUMNS,
    PostgresTx,
    admission_possible,
    fenced_finish,
    fenced_inserts,
    finish_only,
    hear,
    inserted,
    inserts_only,
    load_engines,
    load_history,
    load_steps,
)
from ._protocol import TAKEN
from ._rows import decode_instance, decode_queue, listed, listing

__all__ = ["SCHEMA_VERSION", "PostgresStorage"]

logger = logging.getLogger("memable")

R = TypeVar("R")

_RETRIES: Final = 5  # attempts of a transaction the server aborted for a deadlock
# (Not a lock timeout: that is a paused peer holding rows, and waiting again only ties up
# the pool; the engine's healing retries later.)
_TRANSIENT: Final = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
_IDLE: Final = psycopg.pq.TransactionStatus.IDLE
_NOTIFY_LIMIT: Final = 7000  # bytes of instance ids in one notification (Postgres: 8000)


def _redacted(dsn: str) -> str:
    """The connection string without its password (for ``repr`` only)."""
    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn)


# What a connection error's text (which names the host, and may quote the URL with its
# password) says, in words that name neither.
_CONNECTION_PROBLEMS: Final = (
    ("Connection refused", "the server refused the connection (is it running there?)"),
    ("timeout expired", "the connection timed out"),
    ("resolve host", "the host name does not resolve"),
    ("translate host name", "the host name does not resolve"),
    ("password authentication failed", "password authentication failed"),
    ("no password supplied", "the server asks for a password"),
    ("does not exist", "the database or the role does not exist"),
    ("No such file or directory", "no server listens on that socket"),
    ("no pg_hba.conf entry", "the server does not accept this user from here (pg_hba.conf)"),
)


def _connection_problem(exc: psycopg.Error) -> str:
    text = str(exc)
    if isinstance(exc, psycopg.ProgrammingError):  # libpq could not parse the URL
        return "the connection string is not valid (postgresql://user@host:port/dbname)"
    for clue, problem in _CONNECTION_PROBLEMS:
        if clue in text:
            return problem
    return "the connection failed or was lost"


class _Writer:
    """The engine's commits go one batch at a time: on a connection of their own, a commit
    goes without taking a connection from the pool and giving it back."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def borrow(self) -> Iterator[psycopg.Connection[Any] | None]:
        """The writer's connection (opened if need be), or ``None`` while another thread
        has it."""
        if not self._lock.acquire(blocking=False):
            yield None
            return
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            conn = self._conn
            try:
                yield conn
            finally:
                # A connection that broke, or that an error left in a transaction, is
                # not used again (as the pool would not).
                if conn.closed or conn.info.transaction_status != _IDLE:
                    self._conn = None
                    conn.close()
        finally:
            self._lock.release()

    def close(self, timeout: float) -> None:
        """Close the connection, once a commit in flight has ended (up to *timeout*)."""
        if self._lock.acquire(timeout=timeout):
            self._lock.release()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class _Hinter:
    """Hints go out after their commits, from a thread of their own, so a committing
    engine never waits for one (a ``NOTIFY`` is a transaction of its own, with its own
    flush), and hints that pile up meanwhile go out as one notification."""

    def __init__(
        self,
        connection: Callable[[str], contextlib.AbstractContextManager[psycopg.Connection[Any]]],
        channel: str,
        own: set[int],
        pool_size: int,
    ) -> None:
        self._connection = connection  # one of the pool's
        self._channel = channel
        self._own = own  # the server processes that sent hints (see PostgresStorage)
        self._pool_size = pool_size
        self._pending: dict[str, None] = {}  # payload lines, in order, once each
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False

    def hint(self, lines: Iterable[str]) -> None:
        """Send *lines* soon (an instance id, :data:`TAKEN` + id, or ``""``: everything)."""
        with self._ready:
            self._pending.update(dict.fromkeys(lines))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="memable hints", daemon=True)
                self._thread.start()
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._pending and not self._closing:
                    self._ready.wait()
                if not self._pending:
                    return
                lines, self._pending = list(self._pending), {}
            self._send(lines)

    def _send(self, lines: Collection[str]) -> None:
        payload = "" if "" in lines else "\n".join(lines)
        if len(payload.encode()) > _NOTIFY_LIMIT:
            payload = ""  # too many to name: "look at everything"
        # Only a hint: if it is lost, polling catches up.
        with contextlib.suppress(StorageError), self._connection("hinting in") as conn:
            if len(self._own) > 4 * self._pool_size:  # connections were replaced: forget them
                self._own.clear()
            self._own.add(conn.info.backend_pid)
            conn.execute("SELECT pg_notify(%s, %s)", (self._channel, payload))

    def close(self, timeout: float) -> None:
        """Send what is pending (waiting up to *timeout*) and end the thread."""
        with self._ready:
            thread, self._thread = self._thread, None
            self._closing = True
            self._ready.notify()
        if thread is not None:
            thread.join(timeout)
        with self._ready:
            self._closing = False


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
        register: Register as an engine (the default). ``False`` makes a *client* — the
            ``memable`` command line, the dashboard, an operator's script — that reads
            the database and steers instances (its signals, cancels and resumes are run
            by the engines, woken through ``NOTIFY``) without being an engine: it
            registers no row in ``engines``, never creates or migrates the schema (a
            database without it is an error), claims nothing, and an
            :class:`~memable.Engine` refuses it.

    Example:
        >>> import memable
        >>> from memable.storage import PostgresStorage
        >>> storage = PostgresStorage("postgresql://app@db.internal/orders", lease=15.0)
        >>> engine = memable.Engine(storage)
        >>> reader = PostgresStorage("postgresql://app@db.internal/orders", register=False)
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
        register: bool = True,
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
        self.register = bool(register)
        self.engine_id: str | None = None
        #: The workflows this engine runs (set by the engine): instances of these that a
        #: transaction of this engine claims are taken by this engine at once.
        self.runs: frozenset[str] = frozenset()
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None
        self._beat: psycopg.Connection[Any] | None = None  # heartbeats: never starved
        self._listener: psycopg.Connection[Any] | None = None
        self._listener_lock = threading.Lock()
        self._writer = _Writer(self._connect)
        self._mutex = threading.Lock()
        self._channel = f"memable.{schema}"
        # Server processes of this storage's pool that sent hints: its own hints are not
        # news to it (its engine acted on its changes already), so ``hints`` drops them.
        self._own: set[int] = set()
        self._hinter = _Hinter(self._conn, self._channel, self._own, self.threads)

    def __repr__(self) -> str:
        client = "" if self.register else ", register=False"
        return f"PostgresStorage({_redacted(self._dsn)!r}, lease={self.lease}{client})"

    def client(self) -> PostgresStorage:
        """A new storage on the same database and schema that registers no engine
        (``register=False``, not yet open): for reading and steering beside this one.

        Example:
            >>> from memable.storage import PostgresStorage
            >>> PostgresStorage("postgresql://app@db.internal/orders").client()
            PostgresStorage('postgresql://app@db.internal/orders', lease=15.0, register=False)
        """
        return PostgresStorage(
            self._dsn, lease=self.lease, pool_size=2, schema=self.schema, listen=self.listen,
            poll_interval=self.poll_interval, statement_timeout=self.statement_timeout,
            name=self.name, register=False,
        )  # fmt: skip

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
                    if self.register:
                        self._migrate(self._beat)
                        self.engine_id = self._register(self._beat)
                    else:
                        check_schema(self._beat, self.schema)
                        self._beat.close()
                        self._beat = None
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
            for migration in MIGRATIONS[version:]:
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
                # The hints of the last commits, before the pool closes.
                self._hinter.close(timeout=min(5.0, self.statement_timeout))
                if beat is not None and engine_id is not None:
                    # Hand every instance back at once (ON DELETE SET NULL), and say so.
                    with contextlib.suppress(psycopg.Error):
                        beat.execute("DELETE FROM engines WHERE engine_id = %s", (engine_id,))
                        beat.execute("SELECT pg_notify(%s, '')", (self._channel,))
            finally:
                if beat is not None:
                    beat.close()
                self._writer.close(timeout=min(5.0, self.statement_timeout))
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
                detail = f"{type(exc).__name__}: {_connection_problem(exc)}"
            raise StorageError(f"PostgreSQL error while {doing} the database: {detail}") from exc

    @contextlib.contextmanager
    def _conn(self, doing: str) -> Iterator[psycopg.Connection[Any]]:
        pool = self._pool
        if pool is None:
            raise StorageError("this PostgresStorage is not open")
        with self._errors(doing), pool.connection() as conn:
            yield conn

    @contextlib.contextmanager
    def _writing(self, doing: str) -> Iterator[psycopg.Connection[Any]]:
        """A connection for a write transaction: the writer's own, unless another thread
        is using it (then one of the pool's)."""
        if self._pool is None:
            raise StorageError("this PostgresStorage is not open")
        with self._errors(doing), self._writer.borrow() as writer:
            if writer is not None:
                yield writer
                return
        with self._conn(doing) as pooled:
            yield pooled

    def _engine(self) -> str:
        """This engine's id; a client or a closed storage has none (a clear error)."""
        if not self.register:
            raise StorageError(
                "this PostgresStorage is a client (register=False): it reads and steers,"
                " but cannot run an engine"
            )
        if self.engine_id is None:
            raise StorageError("this PostgresStorage is not open")
        return self.engine_id

    def _notify(self, ids: set[str], claimable: Set[str] | None = None) -> None:
        """Hint other engines, after the write transaction (see :class:`_Hinter`); the
        ids not in *claimable* (if given) are marked :data:`TAKEN`: their claimers need
        not look."""
        if ids:
            self._hinter.hint(
                i if claimable is None or not i or i in claimable else TAKEN + i
                for i in sorted(ids)
            )

    # -- reads ------------------------------------------------------------------------------

    def get_instance(self, instance_id: str) -> InstanceRecord | None:
        with self._conn("reading") as conn:
            row = conn.execute(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = %s",
                (instance_id,),
            ).fetchone()
        return None if row is None else decode_instance(row)

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
        query, params = listing(
            mark="%s", waiting="waiting_on::jsonb ? %s", workflow=workflow, status=status,
            parent_id=parent_id, waiting_on=waiting_on, created_after=created_after,
            before=before, newest_first=newest_first, columns=INSTANCE_COLUMNS,
        )  # fmt: skip
        params.append(limit)
        with self._conn("listing instances in") as conn:
            rows = conn.execute(query, params).fetchall()
        return listed(rows, whole=parent_id is not None)

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
            return load_steps(conn, instance_id)

    def load_history(self, instance_id: str) -> History:
        with self._conn(f"loading the history of instance {instance_id!r} from") as conn:
            return load_history(conn, instance_id)

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
            (decode_queue(name, rest), {status: n for queue, status, n in counts if queue == name})
            for name, *rest in rows
        ]

    def pause_queue(self, name: str, paused: bool) -> bool:
        known = super().pause_queue(name, paused)
        if known:  # no instance changed: tell the other engines' admitters all the same
            self._notify({""})
        return known

    def admission_possible(self, name: str, workflows: Collection[str]) -> bool:
        """Whether an admission of queue *name* could start anything, by a read without
        locks (``False``: it would not). Every hint wakes every engine's admitter, and
        most find nothing to start: this spares them the admission transaction, whose
        row lock is written (its commit waits for a flush), and the others its wait."""
        with self._conn("admitting queued instances in") as conn:
            return admission_possible(conn, name, workflows)

    def list_engines(self) -> list[EngineRecord]:
        """The engines registered on the database, oldest first: name, host and process,
        heartbeat age by the database clock, and how many instances each holds.

        A plain read (it reaps nothing); ``expired`` compares the heartbeat's age with
        this storage's lease. The ``memable engines`` command and the dashboard's
        engines page show it.
        """
        with self._conn("reading engines from") as conn:
            return load_engines(conn, self.lease)

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

    def commit(self, writes: Sequence[Write]) -> list[bool]:
        # The writes of a step (its fence and record), new instances, and the finish of
        # a run: one statement, one round trip (see fenced_inserts and fenced_finish).
        # Anything else, or a finish the statement leaves: the rules in a transaction.
        engine_id, split = self.engine_id, inserts_only(writes)
        finish = None if split is not None else finish_only(writes)
        if engine_id is None or (split is None and finish is None):
            return super().commit(writes)
        for attempt in range(_RETRIES):  # as atomically: again after a deadlock
            try:
                with self._writing("writing to") as conn:
                    if split is not None:
                        return inserted(writes, fenced_inserts(conn, engine_id, *split))
                    assert finish is not None
                    finished = fenced_finish(conn, engine_id, *finish)
                break
            except StorageError as exc:
                if attempt + 1 == _RETRIES or not isinstance(exc.__cause__, _TRANSIENT):
                    raise
        if finish is None or not finished:
            return super().commit(writes)
        self._notify({finish[0].instance_id}, frozenset())  # taken: it finished
        return [True, True]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[PostgresTx]:
        with self._writing("writing to") as conn:
            # BEGIN and the fencing lock on the engine's own row go with the first
            # statement (see PostgresTx): a reaped engine writes nothing more.
            tx = PostgresTx(conn, self.engine_id, self.runs)
            try:
                yield tx
                tx.commit()
            except BaseException:
                if conn.info.transaction_status != _IDLE:
                    with contextlib.suppress(psycopg.Error):  # keep the original error
                        conn.execute("ROLLBACK")
                raise
        self._notify(tx.changed, tx.claimable)  # after the commit, never inside it

    # -- sharing (memable.storage.SharedStorage) --------------------------------------------

    def claim(
        self, workflows: Sequence[str], limit: int, *, held: bool = True
    ) -> list[InstanceRecord]:
        engine_id = self._engine()
        with self._conn("claiming instances in") as conn:
            self._reap(conn)
            with conn.transaction():
                claimed = conn.execute(
                    f"UPDATE instances SET owner = %s, epoch = epoch + 1 WHERE instance_id IN"
                    " (SELECT instance_id FROM instances WHERE status = 'running'"
                    " AND owner IS NULL AND parent_id IS NULL AND workflow = ANY(%s)"
                    " ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED)"
                    f" RETURNING {INSTANCE_COLUMNS}",
                    (engine_id, list(workflows), limit),
                ).fetchall()
            mine = (
                conn.execute(
                    f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE owner = %s"
                    " AND status = 'running' AND parent_id IS NULL",
                    (engine_id,),
                ).fetchall()
                if held
                else []
            )
        records = {row[0]: decode_instance(row) for row in mine}
        records.update((row[0], decode_instance(row)) for row in claimed)
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
        engine_id = self._engine()
        with self._conn("claiming an instance in") as conn:
            row = conn.execute(
                "UPDATE instances SET owner = %s, epoch = epoch + 1 WHERE instance_id = %s"
                " AND status = 'running' AND owner IS NULL AND parent_id IS NULL"
                f" RETURNING {INSTANCE_COLUMNS}",
                (engine_id, instance_id),
            ).fetchone()
            if row is None:
                row = conn.execute(
                    f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = %s"
                    " AND owner = %s AND status = 'running'",
                    (instance_id, engine_id),
                ).fetchone()
        return None if row is None else decode_instance(row)

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
        try:
            ids = hear(conn, timeout, self._own)
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


PostgresStorage.__module__ = "memable.storage"
