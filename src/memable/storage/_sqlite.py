"""SQLite storage: the default, in one file, through the standard library's ``sqlite3``.

This is the only module of memable that imports :mod:`sqlite3`, and no ``sqlite3`` error
leaves it: every one becomes a :class:`~memable.StorageError` with the cause chained.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import typing
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Final, Literal, final

from .._exceptions import StorageError
from .._ids import descendant_range
from .._records import (
    History,
    InboxItem,
    InstanceRecord,
    InstanceState,
    QueueRecord,
    Recorded,
    ScheduleRecord,
    SignalRecord,
    StepRecord,
    StepRows,
    TimerRecord,
)
from .._tx import Guard
from ._base import RuleStorage
from ._rows import (
    EARLIEST,
    INSTANCE_COLUMNS,
    LATEST,
    Corrupt,
    as_text,
    as_text_or_none,
    checked_step,
    decode_instance,
    decode_queue,
    decode_signal,
    decode_step_rows,
    decode_timer,
    listed,
    listing,
    recorded_steps,
    shown,
    update_query,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "InboxClient", "SQLiteStorage", "owner_of"]

from ._sqlfile import InboxClient, connect_existing, own_file, owner_of
from ._sqlschema import MIGRATIONS, SCHEMA_VERSION

_UPSERT_STEP: Final = """
    INSERT INTO steps (instance_id, key, state, value, error, attempts, started_at, finished_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (instance_id, key) DO UPDATE SET
        state = excluded.state, value = excluded.value, error = excluded.error,
        attempts = excluded.attempts, started_at = excluded.started_at,
        finished_at = excluded.finished_at
    WHERE steps.state != 'completed'
"""


logger = logging.getLogger("memable")
#: The listing's test of what a suspended instance waits on.
_WAITING: Final = "EXISTS (SELECT 1 FROM json_each(instances.waiting_on) WHERE value = ?)"


@final
class SQLiteStorage(RuleStorage):
    """A :class:`~memable.storage.Storage` in a SQLite file (the default).

    The file is created if missing, opened in WAL mode with ``synchronous=FULL`` unless
    ``synchronous="normal"`` is asked for (faster; a power cut may lose the last commits,
    a process crash loses nothing). One engine owns a file at a time: a second engine, in
    this process or another, gets a :class:`~memable.StorageError` on entering. Other
    programs (such as the ``memable`` CLI) may read the file meanwhile.

    With ``read_only=True`` it only reads an existing memable database, beside the
    engine that may own it (never taking the ownership, creating or migrating anything):
    this is how the ``memable`` command line inspects a live file.

    Args:
        path: The database file, or ``":memory:"`` for a private in-memory database.
        synchronous: SQLite's ``synchronous`` level, ``"full"`` (default) or ``"normal"``.
        read_only: Open a read-only connection, without owning the file.

    Example:
        >>> import memable
        >>> from memable.storage import SQLiteStorage
        >>> engine = memable.Engine(SQLiteStorage("orders.db", synchronous="normal"))
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["full", "normal"] = "full",
        read_only: bool = False,
    ) -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        self.path = os.fspath(path)
        self.synchronous = synchronous
        self.read_only = read_only
        self._db: sqlite3.Connection | None = None
        self._release_file: Callable[[], None] | None = None  # gives up the ownership
        self._mutex = threading.Lock()

    def __repr__(self) -> str:
        more = ", read_only=True" if self.read_only else ""
        return f"SQLiteStorage({self.path!r}, synchronous={self.synchronous!r}{more})"

    # -- life cycle -------------------------------------------------------------------------

    def open(self) -> None:
        with self._mutex:
            if self._db is not None:
                raise StorageError(f"{self!r} is already open")
            if self.read_only:
                self._db = connect_existing(self.path, read_only=True)
                return
            if self.path != ":memory:":
                self._release_file = own_file(self.path)
            try:
                self._db = self._connect()
            except BaseException:
                self._release_ownership()
                raise

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        try:
            with self._errors("opening", name_file=True):
                if self.path != ":memory:":
                    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    if str(mode).lower() != "wal":
                        raise StorageError(
                            f"SQLite database {self.path!r} refused WAL mode (got {mode!r})"
                        )
                db.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
                self._migrate(db)
                # Prove now that the file can be written (a read-only file, directory, -wal
                # or -shm fails here), not when recovery has already run step bodies.
                db.execute("BEGIN IMMEDIATE")
                db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        return db

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"SQLite database {self.path!r} has schema version {version}, newer than this"
                f" memable knows ({SCHEMA_VERSION}); upgrade memable to open it"
            )
        if version == SCHEMA_VERSION:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            for migration in MIGRATIONS[version:]:
                migration(db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._mutex:
            try:
                if self._db is not None:
                    db, self._db = self._db, None
                    with self._errors("closing", name_file=True):
                        db.close()
            finally:
                self._release_ownership()  # after the connection: see own_file

    def _release_ownership(self) -> None:
        if self._release_file is not None:
            release, self._release_file = self._release_file, None
            release()

    # -- plumbing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, doing: str, *, name_file: bool = False) -> Iterator[None]:
        """Turn sqlite3 errors into StorageError.

        Only errors of opening and closing, which reach whoever set the engine up, name
        the file; others may reach the users of an application, so they do not.
        """
        try:
            yield
        except sqlite3.Error as exc:
            where = repr(self.path) if name_file else "the database"
            if "file is not a database" in str(exc):
                message = f"{where} is not a SQLite database"
            else:
                message = f"SQLite error while {doing} {where}: {exc}"
            if "readonly database" in str(exc):
                message += (
                    " (memable needs to write the file and to create its -wal and -shm files"
                    " in the same directory)"
                )
            raise StorageError(message) from exc

    @contextlib.contextmanager
    def _read(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._mutex, self._errors(doing):
            if self._db is None:
                raise StorageError("this SQLiteStorage is not open")
            yield self._db

    @contextlib.contextmanager
    def _lenient(self, db: sqlite3.Connection) -> Iterator[None]:
        """Read TEXT that is not UTF-8 as lone surrogates, so that one bad row is reported
        as corrupt (by _instance) instead of failing the whole query."""
        db.text_factory = _surrogate_escaped
        try:
            yield
        finally:
            db.text_factory = str

    @contextlib.contextmanager
    def _transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._read(doing) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                # Also when COMMIT itself failed (SQLite may leave the transaction open):
                # otherwise every later BEGIN fails and reads see uncommitted writes.
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):  # keep the original error
                        db.execute("ROLLBACK")
                raise

    # -- reads ----------------------------------------------------------------------------

    def get_instance(self, instance_id: str) -> InstanceRecord | None:
        with self._read("reading") as db, self._lenient(db):
            row = db.execute(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = ?", (instance_id,)
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
        sql, params = listing(
            mark="?", waiting=_WAITING, workflow=workflow, status=status, parent_id=parent_id,
            waiting_on=waiting_on, created_after=created_after, before=before,
            newest_first=newest_first,
        )  # fmt: skip
        params.append(-1 if limit is None else limit)
        with self._read("listing instances in") as db, self._lenient(db):
            rows = db.execute(sql, params).fetchall()
        return listed(rows, whole=parent_id is not None)

    def count_instances(
        self,
        *,
        workflow: str | None = None,
        status: InstanceState | None = None,
        waiting_on: str | None = None,
        created_after: float | None = None,
        limit: int,
    ) -> int:
        """How many instances :meth:`list_instances` would list with these filters,
        counting at most *limit* (an index range scan; the dashboard's counts)."""
        sql, params = listing(
            mark="?", waiting=_WAITING, workflow=workflow, status=status, parent_id=None,
            waiting_on=waiting_on, created_after=created_after, before=None,
            newest_first=False, columns="1",
        )  # fmt: skip
        params.append(limit)
        with self._read("counting instances in") as db:
            return int(db.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()[0])

    def load_steps(self, instance_id: str) -> list[StepRecord]:
        with self._read("loading steps from") as db:
            return _steps(db, instance_id)

    def load_retired(self, instance_id: str) -> list[StepRecord]:
        with self._read("loading retired steps from") as db:
            rows = db.execute(
                "SELECT key, error, attempts, started_at, finished_at FROM retired_steps"
                " WHERE instance_id = ? ORDER BY started_at",
                (instance_id,),
            ).fetchall()
        return [
            checked_step(instance_id, key, "dead", None, error, attempts, started, finished)
            for key, error, attempts, started, finished in rows
        ]

    def load_history(self, instance_id: str) -> History:
        with self._read(f"loading the history of instance {instance_id!r} from") as db:
            db.execute("BEGIN")  # one consistent snapshot of the three tables
            try:
                steps = _step_rows(db, instance_id)
                signals = _signals(db, instance_id)
                timers = _timers(db, instance_id)
            finally:
                db.execute("COMMIT")
        return History(steps=steps, signals=signals, timers=timers)

    def load_replay(self, instance_id: str) -> Recorded:
        """What replaying the instance needs, in one read: each step's value as the text
        stored (its row checked by SQLite as it reads it), dead letters, signals, timers."""
        with self._read(f"loading the history of instance {instance_id!r} from") as db:
            db.execute("BEGIN")  # one consistent snapshot of the three tables
            try:
                values, dead = recorded_steps(
                    instance_id,
                    dict(db.execute(_REPLAY_VALUES, (instance_id,))),
                    lambda key: db.execute(_REPLAY_ROW, (instance_id, key)).fetchone(),
                )
                signals = _signals(db, instance_id)
                timers = _timers(db, instance_id)
            finally:
                db.execute("COMMIT")
        return Recorded(values=values, dead=dead, signals=signals, timers=timers)

    def list_queues(self) -> list[tuple[QueueRecord, dict[str, int]]]:
        with self._read("reading queues from") as db:
            if not _has_table(db, "queues"):  # an older file, read without migrating it
                return []
            names = [row[0] for row in db.execute("SELECT name FROM queues ORDER BY name")]
            counts = db.execute(
                "SELECT queue, status, count(*) FROM instances WHERE queue IS NOT NULL"
                " AND status IN ('enqueued', 'running', 'suspended') GROUP BY queue, status"
            ).fetchall()
            rows = [_SQLiteTx(db).queue(name) for name in names]
        return [
            (row, {status: n for queue, status, n in counts if queue == row.name})
            for row in rows
            if row is not None
        ]

    def list_schedules(self) -> list[ScheduleRecord]:
        with self._read("reading schedules from") as db:
            if not _has_table(db, "schedules"):
                return []
            names = [row[0] for row in db.execute("SELECT name FROM schedules ORDER BY name")]
            rows = [_SQLiteTx(db).schedule(name) for name in names]
        return [row for row in rows if row is not None]

    def next_deadline(self) -> float | None:
        with self._read("reading timers from") as db:
            # A deadline stored as text, or too late for a datetime, never comes; one too
            # early is due now.
            row = db.execute(
                "SELECT min(deadline) FROM timers WHERE fired = 0 AND deadline <= ?", (LATEST,)
            ).fetchone()
        return None if row[0] is None else max(float(row[0]), EARLIEST)

    def purgeable(
        self, *, finished_before: float, workflow: str | None, exclude: Sequence[str], limit: int
    ) -> list[str]:
        sql = (
            "SELECT instance_id FROM instances WHERE parent_id IS NULL AND finished_at < ?"
            " AND status IN ('completed', 'failed', 'cancelled')"
        )
        params: list[object] = [finished_before]
        if workflow is not None:
            sql += " AND workflow = ?"
            params.append(workflow)
        if exclude:
            sql += f" AND workflow NOT IN ({', '.join('?' * len(exclude))})"
            params.extend(exclude)
        sql += " LIMIT ?"
        params.append(limit)
        with self._read("finding instances to purge in") as db:
            return [row[0] for row in db.execute(sql, params)]

    # -- the inbox of other processes ------------------------------------------------------

    @property
    def has_inbox(self) -> bool:
        """Whether other processes can steer the owner of this file through its inbox."""
        return self.path != ":memory:" and not self.read_only

    def take_inbox(self, limit: int = 100) -> list[InboxItem]:
        """The requests other processes left that are not answered yet, oldest first."""
        with self._read("reading the inbox of") as db, self._lenient(db):
            rows = db.execute(
                "SELECT id, verb, instance_id, key, payload, reason FROM inbox"
                " WHERE done_at IS NULL ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        items: list[InboxItem] = []
        for item_id, verb, instance_id, key, payload, reason in rows:
            try:
                if verb not in ("signal", "cancel", "resume", "purge"):
                    raise Corrupt(f"verb is {shown(verb)}")
                items.append(
                    InboxItem(
                        id=item_id,
                        verb=verb,
                        instance_id=as_text(instance_id, "instance"),
                        key=as_text_or_none(key, "key"),
                        payload=as_text_or_none(payload, "payload"),
                        reason=as_text_or_none(reason, "reason"),
                    )
                )
            except Corrupt as exc:
                self.answer_inbox(item_id, json.dumps({"ok": False, "message": str(exc)}), 0.0)
        return items

    def answer_inbox(self, item_id: int, result: str, now: float) -> None:
        """Record the answer to a request (answers older than an hour are dropped)."""
        with self._transaction("answering the inbox of") as db:
            db.execute(
                "UPDATE inbox SET done_at = ?, result = ? WHERE id = ?", (now, result, item_id)
            )
            db.execute("DELETE FROM inbox WHERE done_at < ?", (now - 3600.0,))

    def list_children(
        self, parent_id: str, prefix: str, status: frozenset[InstanceState]
    ) -> list[InstanceRecord]:
        with self._read("reading") as db, self._lenient(db):
            rows = _children(db, INSTANCE_COLUMNS, parent_id, prefix, status, None)
        return [decode_instance(row) for row in rows]

    def count_children(self, parent_id: str, prefix: str, status: frozenset[InstanceState]) -> int:
        with self._read("reading") as db:
            [(count,)] = _children(db, "COUNT(*)", parent_id, prefix, status, None)
        return int(typing.cast(int, count))

    # -- the transaction primitives ---------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_SQLiteTx]:
        with self._transaction("writing to") as db:
            yield _SQLiteTx(db)

    @contextlib.contextmanager
    def purge_transaction(self) -> Iterator[_SQLiteTx]:
        """A purge batch commits without its own fsync (``synchronous=NORMAL``): the next
        commit of the engine makes it durable with its own; a power cut before then only
        brings the purged rows back, to be purged again."""
        with self._read("writing to") as db:
            db.execute("PRAGMA synchronous = NORMAL")
        try:
            with self._transaction("writing to") as db:
                yield _SQLiteTx(db)
        finally:
            with self._read("writing to") as db:
                db.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")


@final
class _SQLiteTx:
    """The primitives of :class:`~memable.storage._tx.Tx` as SQL in one open transaction."""

    __slots__ = ("_db",)
    holds_claims = False  # one engine owns a SQLite file

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def claimant(self, workflow: str) -> str | None:
        return None

    def instance(self, instance_id: str) -> InstanceRecord | None:
        return _get(self._db, instance_id)

    def family(self, instance_id: str) -> list[InstanceRecord]:
        rows = self._db.execute(
            f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = ?"
            " OR (instance_id > ? AND instance_id < ?) ORDER BY instance_id",
            (instance_id, *descendant_range(instance_id)),
        ).fetchall()
        return [decode_instance(row) for row in rows]

    def children(
        self,
        parent_id: str,
        prefix: str = "",
        status: frozenset[InstanceState] = frozenset(),
        limit: int | None = None,
    ) -> list[InstanceRecord]:
        rows = _children(self._db, INSTANCE_COLUMNS, parent_id, prefix, status, limit)
        return [decode_instance(row) for row in rows]

    def signal(self, instance_id: str, key: str) -> SignalRecord | None:
        row = self._db.execute(
            "SELECT payload, created_at, early, trace FROM signals"
            " WHERE instance_id = ? AND key = ?",
            (instance_id, key),
        ).fetchone()
        if row is None:
            return None
        return decode_signal(instance_id, key, *row)

    def timers(self, instance_id: str) -> list[TimerRecord]:
        return _timers(self._db, instance_id)

    def due_timers(self, now: float, limit: int) -> list[TimerRecord]:
        return _due_timers(self._db, now, limit)

    def insert(self, row: InstanceRecord | SignalRecord | TimerRecord) -> bool:
        if isinstance(row, InstanceRecord):
            return _insert(self._db, row)
        if isinstance(row, SignalRecord):
            sql = (
                "INSERT INTO signals (instance_id, key, payload, created_at, early, trace)"
                " VALUES (?, ?, ?, ?, ?, ?)"
            )
            params: tuple[object, ...] = (
                row.instance_id, row.key, row.payload, row.created_at, int(row.early), row.trace
            )  # fmt: skip
        else:
            sql = (
                "INSERT INTO timers (instance_id, key, deadline, kind, fired)"
                " VALUES (?, ?, ?, ?, ?)"
            )
            params = (row.instance_id, row.key, row.deadline, row.kind, row.fired)
        return bool(self._db.execute(sql + " ON CONFLICT DO NOTHING", params).rowcount)

    def put_steps(self, steps: Sequence[StepRecord]) -> list[bool]:
        db = self._db
        rows = [(step.instance_id, step.key, step.state, step.value, step.error, step.attempts,
                 step.started_at, step.finished_at) for step in steps]  # fmt: skip
        if len(rows) > 1:
            # A group commit's steps in one call (the loop over them in C). Each applies
            # unless its key completed before: if any did not, they go again one by one
            # to say which.
            db.execute("SAVEPOINT put_steps")
            if db.executemany(_UPSERT_STEP, rows).rowcount == len(rows):
                db.execute("RELEASE put_steps")
                return [True] * len(rows)
            db.execute("ROLLBACK TO put_steps")
            db.execute("RELEASE put_steps")
        return [bool(db.execute(_UPSERT_STEP, params).rowcount) for params in rows]

    def holders(self, instance_ids: Sequence[str]) -> dict[str, tuple[str | None, int]]:
        # One engine owns a SQLite file: nobody else holds anything in it.
        records = (_get(self._db, i) for i in instance_ids)
        return {r.instance_id: (None, 0) for r in records if r is not None}

    def update(self, instance_id: str, guard: Guard, changes: Mapping[str, object]) -> bool:
        sql, params = update_query(instance_id, guard, changes, mark="?")
        return bool(self._db.execute(sql, params).rowcount)

    def fire(self, instance_id: str, key: str) -> None:
        self._db.execute(
            "UPDATE timers SET fired = 1 WHERE instance_id = ? AND key = ?", (instance_id, key)
        )

    def delete_signal(self, instance_id: str, key: str) -> bool:
        cursor = self._db.execute(
            "DELETE FROM signals WHERE instance_id = ? AND key = ?", (instance_id, key)
        )
        return cursor.rowcount > 0

    def retire_dead_steps(self, instance_id: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO retired_steps (instance_id, key, retired_at, state, error,"
            " attempts, started_at, finished_at) SELECT instance_id, key, finished_at, state,"
            " error, attempts, started_at, finished_at FROM steps"
            " WHERE instance_id = ? AND state = 'dead'",
            (instance_id,),
        )
        self._db.execute(
            "DELETE FROM steps WHERE instance_id = ? AND state = 'dead'", (instance_id,)
        )

    def delete_family(self, instance_id: str) -> None:
        family = (instance_id, *descendant_range(instance_id))
        for table in ("steps", "retired_steps", "signals", "timers", "instances"):
            self._db.execute(
                f"DELETE FROM {table} WHERE instance_id = ?"
                " OR (instance_id > ? AND instance_id < ?)",
                family,
            )

    # SQLite has one writer: the transaction (BEGIN IMMEDIATE) holds every row it reads.

    def queue(self, name: str) -> QueueRecord | None:
        row = self._db.execute(
            "SELECT concurrency, rate_count, rate_period, paused, starts FROM queues"
            " WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            return None
        return decode_queue(name, row)

    def put_queue(self, row: QueueRecord, *, replace: bool = True) -> bool:
        return bool(self._db.execute(
            f"INSERT OR {'REPLACE' if replace else 'IGNORE'} INTO queues (name, concurrency,"
            " rate_count, rate_period, paused, starts) VALUES (?, ?, ?, ?, ?, ?)",
            (row.name, row.concurrency, row.rate_count, row.rate_period, int(row.paused),
             json.dumps(row.starts)),
        ).rowcount)  # fmt: skip

    def running_count(self, queue: str) -> int:
        row = self._db.execute(
            "SELECT count(*) FROM instances WHERE queue = ? AND status = 'running'", (queue,)
        ).fetchone()
        return int(row[0])

    def queued(self, queue: str, workflows: Collection[str], limit: int) -> list[InstanceRecord]:
        names = sorted(workflows)
        rows = self._db.execute(
            f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE queue = ? AND status = 'enqueued'"
            f" AND workflow IN ({', '.join('?' * len(names))})"
            " ORDER BY priority DESC, created_at, instance_id LIMIT ?",
            (queue, *names, limit),
        ).fetchall()
        return [decode_instance(row) for row in rows]

    def schedule(self, name: str) -> ScheduleRecord | None:
        row = self._db.execute(
            "SELECT last_tick, last_run FROM schedules WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            return None
        return ScheduleRecord(name=name, last_tick=float(row[0]), last_run=row[1])

    def put_schedule(self, row: ScheduleRecord, *, replace: bool = True) -> bool:
        verb = "REPLACE" if replace else "IGNORE"
        return bool(
            self._db.execute(
                f"INSERT OR {verb} INTO schedules (name, last_tick, last_run) VALUES (?, ?, ?)",
                (row.name, row.last_tick, row.last_run),
            ).rowcount
        )


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return db.execute(query, (name,)).fetchone() is not None


def _children(
    db: sqlite3.Connection,
    columns: str,
    parent_id: str,
    prefix: str,
    status: frozenset[InstanceState],
    limit: int | None,
) -> list[tuple[object, ...]]:
    """Children of *parent_id* by prefix and status: a range of instances_by_parent_status."""
    sql = f"SELECT {columns} FROM instances WHERE parent_id = ?"
    params: list[object] = [parent_id]
    if status:
        sql += f" AND status IN ({', '.join('?' * len(status))})"
        params.extend(sorted(status))
    if prefix:  # ids starting with prefix: from prefix to prefix with its last char bumped
        sql += " AND instance_id >= ? AND instance_id < ?"
        params += [prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)]
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return db.execute(sql, params).fetchall()


def _get(db: sqlite3.Connection, instance_id: str) -> InstanceRecord | None:
    row = db.execute(
        f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = ?", (instance_id,)
    ).fetchone()
    return None if row is None else decode_instance(row)


# Whether a step row is sound, tested by SQLite (in C) as it reads the row: replay's hot
# path then pays one boolean per step; checked_step says what is wrong with the others.
_STEP_IS_SOUND: Final = (
    "typeof(key) = 'text' AND typeof(attempts) = 'integer' AND CASE state"
    " WHEN 'completed' THEN typeof(value) = 'text' WHEN 'dead' THEN typeof(error) = 'text'"
    " ELSE 0 END"
    f" AND typeof(started_at) = 'real' AND started_at BETWEEN {EARLIEST} AND {LATEST}"
    f" AND typeof(finished_at) = 'real' AND finished_at BETWEEN {EARLIEST} AND {LATEST}"
)


# Replay reads each step's key and value, the value NULL unless the row is sound and
# completed (one string per step, no tuple kept); the few others are read again by key.
_REPLAY_VALUES: Final = (
    f"SELECT key, CASE WHEN state = 'completed' AND {_STEP_IS_SOUND} THEN value END"
    " FROM steps WHERE instance_id = ?"
)
_REPLAY_ROW: Final = (
    "SELECT key, state, value, error, attempts, started_at, finished_at FROM steps"
    " WHERE instance_id = ? AND key = ?"
)


def _steps(db: sqlite3.Connection, instance_id: str) -> list[StepRecord]:
    return list(_step_rows(db, instance_id))


def _step_rows(db: sqlite3.Connection, instance_id: str) -> StepRows:
    """The steps of *instance_id* as the rows SQLite returns (each checked in SQL; one
    that fails the quick test is checked again in Python, then raises or is replaced)."""
    rows = db.execute(
        "SELECT key, state, value, error, attempts, started_at, finished_at,"
        f" {_STEP_IS_SOUND} FROM steps WHERE instance_id = ?",
        (instance_id,),
    ).fetchall()
    return decode_step_rows(instance_id, rows)


def _signals(db: sqlite3.Connection, instance_id: str) -> list[SignalRecord]:
    return [
        decode_signal(instance_id, *row)
        for row in db.execute(
            "SELECT key, payload, created_at, early, trace FROM signals WHERE instance_id = ?",
            (instance_id,),
        )
    ]


def _timers(db: sqlite3.Connection, instance_id: str) -> list[TimerRecord]:
    return [
        decode_timer(*row)
        for row in db.execute(
            "SELECT instance_id, key, deadline, kind, fired FROM timers WHERE instance_id = ?",
            (instance_id,),
        )
    ]


def _due_timers(db: sqlite3.Connection, now: float, limit: int) -> list[TimerRecord]:
    """Unfired timers due at *now*, earliest first. A corrupt one is marked fired (and
    logged, naming its instance) so that it cannot hold back every other timer."""
    records: list[TimerRecord] = []
    rows = db.execute(
        "SELECT instance_id, key, deadline, kind, fired FROM timers"
        " WHERE fired = 0 AND deadline <= ? ORDER BY deadline LIMIT ?",
        (now, limit),
    ).fetchall()
    for row in rows:
        try:
            records.append(decode_timer(*row))
        except StorageError as exc:
            logger.error("%s; the timer is set aside (marked fired)", exc)
            instance_id, key = row[:2]
            db.execute(
                "UPDATE timers SET fired = 1 WHERE instance_id = ? AND key = ?", (instance_id, key)
            )
    return records


def _insert(db: sqlite3.Connection, record: InstanceRecord) -> bool:
    return bool(
        db.execute(
            f"INSERT INTO instances ({INSTANCE_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                record.instance_id,
                record.workflow,
                record.status,
                record.parent_id,
                record.input,
                record.output,
                record.error,
                record.status_message,
                json.dumps(record.waiting_on),
                record.created_at,
                record.updated_at,
                record.finished_at,
                record.trace,
                record.queue,
                record.priority,
            ),
        ).rowcount
    )


def _surrogate_escaped(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


SQLiteStorage.__module__ = "memable.storage"
