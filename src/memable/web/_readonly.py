"""A SQLite database read without owning it, beside the engine that does (a stand-in for
the storage's own read-only mode: the dashboard needs reads only)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

from .._exceptions import StorageError
from .._records import History, InstanceRecord, InstanceState, StepRecord
from ..storage._sqlite import (
    SCHEMA_VERSION,
    checked_step,
    decode_instance,
    read_instance,
    read_listing,
    read_signals,
    read_steps,
    read_timers,
)

__all__ = ["ReadOnlySQLite"]


class ReadOnlySQLite:
    """Reads of a SQLite file opened with ``mode=ro``: no ownership, no migration, no writes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._db: sqlite3.Connection | None = None
        self._mutex = threading.Lock()

    def __repr__(self) -> str:
        return f"ReadOnlySQLite({self.path!r})"

    def open(self) -> None:
        if not os.path.isfile(self.path):
            raise StorageError(f"no SQLite database at {self.path!r}")
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
        try:
            db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read SQLite database {self.path!r}: {exc}") from exc
        if version != SCHEMA_VERSION:
            db.close()
            raise StorageError(
                f"SQLite database {self.path!r} has schema version {version}, this memable"
                f" reads version {SCHEMA_VERSION}; open it once with an engine of"
                " this version first"
            )
        self._db = db

    def close(self) -> None:
        with self._mutex:
            if self._db is not None:
                self._db.close()
                self._db = None

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            if self._db is None:
                raise StorageError("this database is not open")
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise StorageError(f"SQLite error while reading the database: {exc}") from exc

    def get_instance(self, instance_id: str) -> InstanceRecord | None:
        with self._read() as db:
            return read_instance(db, instance_id)

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
        sql, params = read_listing(
            workflow=workflow, status=status, parent_id=parent_id, waiting_on=waiting_on,
            created_after=created_after, before=before, newest_first=newest_first,
        )  # fmt: skip
        params.append(-1 if limit is None else limit)
        with self._read() as db:
            rows = db.execute(sql, params).fetchall()
        return [decode_instance(row) for row in rows]

    def count_instances(self, *, limit: int, **filters: Any) -> int:
        """How many instances a listing with *filters* has, counting at most *limit*."""
        sql, params = read_listing(before=None, newest_first=False, parent_id=None, **filters)
        params.append(limit)
        select = sql.split(" FROM instances", 1)
        inner = "SELECT 1 FROM instances" + select[1]
        with self._read() as db:
            return int(db.execute(f"SELECT count(*) FROM ({inner})", params).fetchone()[0])

    def load_history(self, instance_id: str) -> History:
        with self._read() as db:
            db.execute("BEGIN")  # one snapshot of the three tables
            try:
                return History(
                    steps=read_steps(db, instance_id),
                    signals=read_signals(db, instance_id),
                    timers=read_timers(db, instance_id),
                )
            finally:
                db.execute("COMMIT")

    def load_retired(self, instance_id: str) -> list[StepRecord]:
        with self._read() as db:
            rows = db.execute(
                "SELECT key, error, attempts, started_at, finished_at FROM retired_steps"
                " WHERE instance_id = ? ORDER BY started_at",
                (instance_id,),
            ).fetchall()
        return [
            checked_step(instance_id, key, "dead", None, error, attempts, start, end)
            for key, error, attempts, start, end in rows
        ]
