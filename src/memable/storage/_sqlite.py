"""SQLite storage: the default, in one file, through the standard library's ``sqlite3``.

This is the only module of memable that imports :mod:`sqlite3`, and no ``sqlite3`` error
leaves it: every one becomes a :class:`~memable.StorageError` with the cause chained.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any, Final, Literal, final

from .._exceptions import StorageError
from .._ids import descendant_range
from ._base import RuleStorage
from ._records import (
    History,
    InstanceRecord,
    InstanceState,
    SignalRecord,
    StepRecord,
    TimerRecord,
)
from ._tx import COLUMNS, Guard

__all__ = ["SCHEMA_VERSION", "SQLiteStorage"]

_Migration = Callable[[sqlite3.Connection], None]


def _schema_1(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE instances (
            instance_id    TEXT PRIMARY KEY,
            workflow       TEXT NOT NULL,
            status         TEXT NOT NULL,
            parent_id      TEXT,
            input          TEXT NOT NULL,
            output         TEXT,
            error          TEXT,
            status_message TEXT,
            waiting_on     TEXT NOT NULL DEFAULT '[]',
            created_at     REAL NOT NULL,
            updated_at     REAL NOT NULL,
            finished_at    REAL
        )
        """
    )
    db.execute("CREATE INDEX instances_by_status ON instances (status, workflow, created_at)")
    db.execute("CREATE INDEX instances_by_workflow ON instances (workflow, created_at)")
    db.execute(
        "CREATE INDEX instances_by_parent ON instances (parent_id) WHERE parent_id IS NOT NULL"
    )
    db.execute(
        "CREATE INDEX instances_by_finish ON instances (finished_at) WHERE finished_at IS NOT NULL"
    )
    db.execute(
        """
        CREATE TABLE steps (
            instance_id TEXT NOT NULL,
            key         TEXT NOT NULL,
            state       TEXT NOT NULL,
            value       TEXT,
            error       TEXT,
            attempts    INTEGER NOT NULL,
            started_at  REAL NOT NULL,
            finished_at REAL NOT NULL,
            PRIMARY KEY (instance_id, key)
        ) WITHOUT ROWID
        """
    )


def _schema_2(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE signals (
            instance_id TEXT NOT NULL,
            key         TEXT NOT NULL,
            payload     TEXT,
            created_at  REAL NOT NULL,
            PRIMARY KEY (instance_id, key)
        ) WITHOUT ROWID
        """
    )
    db.execute(
        """
        CREATE TABLE timers (
            instance_id TEXT NOT NULL,
            key         TEXT NOT NULL,
            deadline    REAL NOT NULL,
            kind        TEXT NOT NULL,
            fired       INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (instance_id, key)
        ) WITHOUT ROWID
        """
    )
    db.execute("CREATE INDEX timers_due ON timers (deadline) WHERE fired = 0")


#: Migrations in order; the schema version of a database is how many have run on it.
#: A new release appends to this list and never edits what is there.
MIGRATIONS: Final[tuple[_Migration, ...]] = (_schema_1, _schema_2)
SCHEMA_VERSION: Final = len(MIGRATIONS)

_INSTANCE_COLUMNS: Final = (
    "instance_id, workflow, status, parent_id, input, output, error, status_message,"
    " waiting_on, created_at, updated_at, finished_at"
)
_UPSERT_STEP: Final = """
    INSERT INTO steps (instance_id, key, state, value, error, attempts, started_at, finished_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (instance_id, key) DO UPDATE SET
        state = excluded.state, value = excluded.value, error = excluded.error,
        attempts = excluded.attempts, started_at = excluded.started_at,
        finished_at = excluded.finished_at
    WHERE steps.state != 'completed'
"""


def _instance(row: Any) -> InstanceRecord:
    (iid, workflow, status, parent, input_, output, error, message, waiting, c, u, f) = row
    return InstanceRecord(
        instance_id=iid,
        workflow=workflow,
        status=status,
        parent_id=parent,
        input=input_,
        output=output,
        error=error,
        status_message=message,
        waiting_on=tuple(json.loads(waiting)),
        created_at=c,
        updated_at=u,
        finished_at=f,
    )


@final
class SQLiteStorage(RuleStorage):
    """A :class:`~memable.storage.Storage` in a SQLite file (the default).

    The file is created if missing, opened in WAL mode with ``synchronous=FULL`` unless
    ``synchronous="normal"`` is asked for (faster; a power cut may lose the last commits,
    a process crash loses nothing). One engine owns a file at a time: a second engine, in
    this process or another, gets a :class:`~memable.StorageError` on entering. Other
    programs (such as the ``memable`` CLI) may read the file meanwhile.

    Args:
        path: The database file, or ``":memory:"`` for a private in-memory database.
        synchronous: SQLite's ``synchronous`` level, ``"full"`` (default) or ``"normal"``.

    Example:
        >>> import memable
        >>> from memable.storage import SQLiteStorage
        >>> engine = memable.Engine(SQLiteStorage("orders.db", synchronous="normal"))
    """

    def __init__(
        self, path: str | os.PathLike[str], *, synchronous: Literal["full", "normal"] = "full"
    ) -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        self.path = os.fspath(path)
        self.synchronous = synchronous
        self._db: sqlite3.Connection | None = None
        self._lock_file: IO[str] | None = None
        self._mutex = threading.Lock()

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.path!r}, synchronous={self.synchronous!r})"

    # -- life cycle -------------------------------------------------------------------------

    def open(self) -> None:
        with self._mutex:
            if self._db is not None:
                raise StorageError(f"{self!r} is already open")
            if self.path != ":memory:":
                self._lock_file = _take_lock(self.path)
            try:
                self._db = self._connect()
            except BaseException:
                self._release_lock()
                raise

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        try:
            with self._errors("opening"):
                if self.path != ":memory:":
                    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    if str(mode).lower() != "wal":
                        raise StorageError(
                            f"SQLite database {self.path!r} refused WAL mode (got {mode!r})"
                        )
                db.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
                self._migrate(db)
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
            if self._db is not None:
                db, self._db = self._db, None
                with self._errors("closing"):
                    db.close()
            self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the file releases the lock
            self._lock_file = None

    # -- plumbing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            if "file is not a database" in str(exc):
                message = f"{self.path!r} is not a SQLite database"
            elif "readonly database" in str(exc):
                message = (
                    f"SQLite error while {doing} {self.path!r}: {exc} (memable needs to write "
                    "the file and to create its -wal and -shm files in the same directory)"
                )
            else:
                message = f"SQLite error while {doing} {self.path!r}: {exc}"
            raise StorageError(message) from exc

    @contextlib.contextmanager
    def _read(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._mutex, self._errors(doing):
            if self._db is None:
                raise StorageError(f"{self!r} is not open")
            yield self._db

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
        with self._read("reading") as db:
            return _get(db, instance_id)

    def list_instances(
        self,
        *,
        workflow: str | None = None,
        status: InstanceState | None = None,
        limit: int | None = None,
        parent_id: str | None = None,
    ) -> list[InstanceRecord]:
        where: list[str] = []
        params: list[object] = []
        if parent_id is not None:
            where.append("parent_id = ?")
            params.append(parent_id)
        if workflow is not None:
            where.append("workflow = ?")
            params.append(workflow)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        sql = f"SELECT {_INSTANCE_COLUMNS} FROM instances"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, instance_id LIMIT ?"
        params.append(-1 if limit is None else limit)
        with self._read("listing instances in") as db:
            rows = db.execute(sql, params).fetchall()
        return [_instance(row) for row in rows]

    def load_steps(self, instance_id: str) -> list[StepRecord]:
        with self._read("loading steps from") as db:
            return _steps(db, instance_id)

    def load_history(self, instance_id: str) -> History:
        with self._read("loading the history of an instance from") as db:
            db.execute("BEGIN")  # one consistent snapshot of the three tables
            try:
                steps = _steps(db, instance_id)
                signals = [
                    SignalRecord(instance_id=instance_id, key=k, payload=p, created_at=c)
                    for k, p, c in db.execute(
                        "SELECT key, payload, created_at FROM signals WHERE instance_id = ?",
                        (instance_id,),
                    )
                ]
                timers = _timers(db, "instance_id = ?", (instance_id,))
            finally:
                db.execute("COMMIT")
        return History(steps=steps, signals=signals, timers=timers)

    def next_deadline(self) -> float | None:
        with self._read("reading timers from") as db:
            row = db.execute("SELECT min(deadline) FROM timers WHERE fired = 0").fetchone()
        return None if row[0] is None else float(row[0])

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

    # -- the transaction primitives ---------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_SQLiteTx]:
        with self._transaction("writing to") as db:
            yield _SQLiteTx(db)


@final
class _SQLiteTx:
    """The primitives of :class:`~memable.storage._tx.Tx` as SQL in one open transaction."""

    __slots__ = ("_db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def instance(self, instance_id: str) -> InstanceRecord | None:
        return _get(self._db, instance_id)

    def family(self, instance_id: str) -> list[InstanceRecord]:
        rows = self._db.execute(
            f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE instance_id = ?"
            " OR (instance_id > ? AND instance_id < ?) ORDER BY instance_id",
            (instance_id, *descendant_range(instance_id)),
        ).fetchall()
        return [_instance(row) for row in rows]

    def children(self, parent_id: str, prefix: str = "") -> list[InstanceRecord]:
        rows = self._db.execute(
            f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE parent_id = ?"
            " AND substr(instance_id, 1, ?) = ?",
            (parent_id, len(prefix), prefix),
        ).fetchall()
        return [_instance(row) for row in rows]

    def signal(self, instance_id: str, key: str) -> SignalRecord | None:
        row = self._db.execute(
            "SELECT payload, created_at FROM signals WHERE instance_id = ? AND key = ?",
            (instance_id, key),
        ).fetchone()
        if row is None:
            return None
        return SignalRecord(instance_id=instance_id, key=key, payload=row[0], created_at=row[1])

    def timers(self, instance_id: str) -> list[TimerRecord]:
        return _timers(self._db, "instance_id = ?", (instance_id,))

    def due_timers(self, now: float, limit: int) -> list[TimerRecord]:
        return _timers(
            self._db, "fired = 0 AND deadline <= ? ORDER BY deadline LIMIT ?", (now, limit)
        )

    def insert(self, row: InstanceRecord | SignalRecord | TimerRecord) -> bool:
        if isinstance(row, InstanceRecord):
            return _insert(self._db, row)
        if isinstance(row, SignalRecord):
            sql = "INSERT INTO signals (instance_id, key, payload, created_at) VALUES (?, ?, ?, ?)"
            params: tuple[object, ...] = (row.instance_id, row.key, row.payload, row.created_at)
        else:
            sql = (
                "INSERT INTO timers (instance_id, key, deadline, kind, fired)"
                " VALUES (?, ?, ?, ?, ?)"
            )
            params = (row.instance_id, row.key, row.deadline, row.kind, row.fired)
        return bool(self._db.execute(sql + " ON CONFLICT DO NOTHING", params).rowcount)

    def put_step(self, step: StepRecord) -> bool:
        params = (step.instance_id, step.key, step.state, step.value, step.error, step.attempts,
                  step.started_at, step.finished_at)  # fmt: skip
        return bool(self._db.execute(_UPSERT_STEP, params).rowcount)

    def update(self, instance_id: str, guard: Guard, changes: Mapping[str, object]) -> bool:
        columns: list[str] = []
        params: list[object] = []
        for name, value in changes.items():
            if name not in COLUMNS:
                raise ValueError(f"not an instance column: {name!r}")
            columns.append(f"{name} = ?")
            params.append(json.dumps(value) if name == "waiting_on" else value)
        sql = f"UPDATE instances SET {', '.join(columns)} WHERE instance_id = ?"
        params.append(instance_id)
        if guard.status:
            sql += f" AND status IN ({', '.join('?' * len(guard.status))})"
            params.extend(sorted(guard.status))
        return bool(self._db.execute(sql, params).rowcount)

    def fire(self, instance_id: str, key: str) -> None:
        self._db.execute(
            "UPDATE timers SET fired = 1 WHERE instance_id = ? AND key = ?", (instance_id, key)
        )

    def delete_dead_steps(self, instance_id: str) -> None:
        self._db.execute(
            "DELETE FROM steps WHERE instance_id = ? AND state = 'dead'", (instance_id,)
        )

    def delete_family(self, instance_id: str) -> None:
        family = (instance_id, *descendant_range(instance_id))
        for table in ("steps", "signals", "timers", "instances"):
            self._db.execute(
                f"DELETE FROM {table} WHERE instance_id = ?"
                " OR (instance_id > ? AND instance_id < ?)",
                family,
            )


def _get(db: sqlite3.Connection, instance_id: str) -> InstanceRecord | None:
    row = db.execute(
        f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE instance_id = ?", (instance_id,)
    ).fetchone()
    return None if row is None else _instance(row)


def _steps(db: sqlite3.Connection, instance_id: str) -> list[StepRecord]:
    rows = db.execute(
        "SELECT key, state, value, error, attempts, started_at, finished_at"
        " FROM steps WHERE instance_id = ?",
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


def _timers(db: sqlite3.Connection, where: str, params: tuple[object, ...]) -> list[TimerRecord]:
    rows = db.execute(
        f"SELECT instance_id, key, deadline, kind, fired FROM timers WHERE {where}", params
    ).fetchall()
    return [
        TimerRecord(instance_id=i, key=k, deadline=d, kind=kind, fired=bool(f))
        for i, k, d, kind, f in rows
    ]


def _insert(db: sqlite3.Connection, record: InstanceRecord) -> bool:
    return bool(
        db.execute(
            f"INSERT INTO instances ({_INSTANCE_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
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
            ),
        ).rowcount
    )


def _take_lock(path: str) -> IO[str]:
    """Lock ``{path}.lock`` for this process, or raise StorageError naming the holder."""
    # Next to the real file: every name of the file (symlinks, "..") meets the same lock.
    lock_path = os.path.realpath(path) + ".lock"
    try:
        handle = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held while open
    except OSError as exc:
        raise StorageError(f"cannot create the lock file {lock_path!r}: {exc}") from exc
    try:
        _lock_exclusive(handle)
    except OSError as exc:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StorageError(
            f"SQLite database {path!r} is in use by another engine (process {holder});"
            " one engine owns a SQLite file at a time (use Postgres to share one database)"
        ) from exc
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock_exclusive(handle: IO[str]) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)

else:
    import fcntl

    def _lock_exclusive(handle: IO[str]) -> None:
        # flock, not lockf: a second open file in the same process conflicts too.
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


SQLiteStorage.__module__ = "memable.storage"
