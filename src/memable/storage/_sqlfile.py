"""A SQLite file's ownership (one engine at a time) and what other processes may do
beside its owner: read it, and leave requests in its inbox."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import sys
import threading
import urllib.parse
from collections.abc import Callable
from typing import IO, Final, final

from .._exceptions import StorageError
from ._sqlschema import SCHEMA_VERSION

__all__ = ["InboxClient", "connect_existing", "own_file", "owner_of"]


def connect_existing(path: str, *, read_only: bool) -> sqlite3.Connection:
    """A connection to an existing memable database of this schema version, that does
    not own the file (read-only, or to leave requests in its inbox)."""
    if path == ":memory:" or not os.path.isfile(path):
        raise StorageError(f"no SQLite database at {path!r}")
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + ("?mode=ro" if read_only else "")
    try:
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                             timeout=10.0)  # fmt: skip
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open SQLite database {path!r}: {exc}") from exc
    try:
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        except sqlite3.Error as exc:
            if "not a database" in str(exc):
                raise StorageError(f"{path!r} is not a SQLite database") from exc
            raise StorageError(f"cannot read SQLite database {path!r}: {exc}") from exc
        if version == 0 or "instances" not in tables:
            raise StorageError(f"{path!r} is not a memable database (no memable tables)")
        if version != SCHEMA_VERSION:
            newer = version > SCHEMA_VERSION
            raise StorageError(
                f"SQLite database {path!r} has schema version {version}, "
                + ("newer than this memable knows; upgrade memable" if newer else
                   "older than this memable's; an Engine of this version migrates it")
                + f" (this memable: {SCHEMA_VERSION})"
            )  # fmt: skip
    except BaseException:
        db.close()
        raise
    return db


@final
class InboxClient:
    """Leaves requests (signal, cancel, resume) for the engine that owns a SQLite file,
    and reads its answers; used by the ``memable`` command line. It never owns the file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = connect_existing(path, read_only=False)

    def close(self) -> None:
        self._db.close()

    def post(self, verb: str, instance_id: str, *, now: float, key: str | None = None,
             payload: str | None = None, reason: str | None = None) -> int:  # fmt: skip
        """Leave a request; return its id."""
        try:
            cursor = self._db.execute(
                "INSERT INTO inbox (verb, instance_id, key, payload, reason, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (verb, instance_id, key, payload, reason, now),
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot write to the inbox of {self.path!r}: {exc}") from exc
        assert cursor.lastrowid is not None
        return int(cursor.lastrowid)

    def answer(self, item_id: int) -> str | None:
        """The engine's answer to a request, once it has applied it (then forgotten)."""
        try:
            row = self._db.execute(
                "SELECT result FROM inbox WHERE id = ? AND done_at IS NOT NULL", (item_id,)
            ).fetchone()
            if row is not None:
                self._db.execute("DELETE FROM inbox WHERE id = ?", (item_id,))
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read the inbox of {self.path!r}: {exc}") from exc
        return None if row is None else str(row[0])

    def withdraw(self, item_id: int) -> bool:
        """Take back a request no engine applied; whether it was still unanswered."""
        try:
            cursor = self._db.execute(
                "DELETE FROM inbox WHERE id = ? AND done_at IS NULL", (item_id,)
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot write to the inbox of {self.path!r}: {exc}") from exc
        return bool(cursor.rowcount > 0)


def _in_use(path: str, holder: str) -> StorageError:
    return StorageError(
        f"SQLite database {path!r} is in use by another engine (process {holder});"
        " one engine owns a SQLite file at a time (use Postgres to share one database)"
    )


if sys.platform == "linux":
    import fcntl
    import struct

    # The owner's lock is one byte of the database file itself, far beyond any byte SQLite
    # reads, writes or locks (its locks sit at 1 GiB; a database ends before 2**48 bytes).
    # Whatever name reaches the file (symlink, hard link, bind mount) reaches that byte,
    # and there is no lock file to delete. It is an open-file-description lock: unlike
    # flock (emulated by byte-range locks on NFS and SMB, and one with them on the BSDs)
    # it cannot meet SQLite's own locks, and unlike those it stays held when another
    # descriptor of the file is closed (SQLite closes its descriptors as it likes).
    # Beside it the owner locks byte _OWNER_AT + 1 + its pid, for the error message.
    _OWNER_AT: Final = 1 << 62
    _FLOCK: Final = "@hhqqi"  # struct flock (flock64): l_type l_whence l_start l_len l_pid

    # fcntl byte-range locks belong to the process: closing *any* descriptor of a file drops
    # every one of them, SQLite's included. So a descriptor opened here is closed only when
    # no connection of this process uses the file: one refused because the file is owned
    # in this process is left to its owner, which closes it after its own connection.
    _OWNED: dict[tuple[int, int], list[int]] = {}  # (st_dev, st_ino) -> refused descriptors
    _OWNED_MUTEX = threading.Lock()

    def _range_lock(fd: int, command: int, kind: int, start: int, length: int) -> tuple[int, int]:
        """fcntl *command* (F_OFD_SETLK or F_OFD_GETLK); returns l_type and l_start."""
        arg = struct.pack(_FLOCK, kind, os.SEEK_SET, start, length, 0).ljust(64, b"\0")
        kind, _, start, _, _ = struct.unpack_from(_FLOCK, fcntl.fcntl(fd, command, arg))
        return kind, start

    def _holder(fd: int) -> str:
        try:
            kind, start = _range_lock(fd, fcntl.F_OFD_GETLK, fcntl.F_WRLCK, _OWNER_AT + 1, 1 << 32)
        except OSError:
            return "unknown"
        return "unknown" if kind == fcntl.F_UNLCK else str(start - _OWNER_AT - 1)

    def own_file(path: str) -> Callable[[], None]:
        """Own the database file *path* names, or raise StorageError; returns the release."""
        try:
            seen = os.stat(path)
        except OSError:
            pass  # not there yet (or not usable: os.open says why)
        else:
            with _OWNED_MUTEX:
                if (seen.st_dev, seen.st_ino) in _OWNED:
                    raise _in_use(path, str(os.getpid()))
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot open SQLite database {path!r}: {exc.strerror}") from exc
        info = os.fstat(fd)
        inode = (info.st_dev, info.st_ino)
        with _OWNED_MUTEX:
            refused = _OWNED.get(inode)
            if refused is not None:  # owned here since the stat above
                refused.append(fd)
                raise _in_use(path, str(os.getpid()))
            try:
                _range_lock(fd, fcntl.F_OFD_SETLK, fcntl.F_WRLCK, _OWNER_AT, 1)
            except OSError as exc:
                holder = _holder(fd)
                os.close(fd)  # no connection of this process uses the file
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise _in_use(path, holder) from exc
                raise StorageError(f"cannot lock SQLite database {path!r}: {exc.strerror}") from exc
            with contextlib.suppress(OSError):  # only ever used for the message
                _range_lock(fd, fcntl.F_OFD_SETLK, fcntl.F_WRLCK, _OWNER_AT + 1 + os.getpid(), 1)
            _OWNED[inode] = []

        def release() -> None:
            with _OWNED_MUTEX:
                for other in _OWNED.pop(inode):
                    os.close(other)
                os.close(fd)  # releases both locks

        return release

    def owner_of(path: str) -> str | None:
        """The process id of the engine that owns *path* (``"unknown"`` if it cannot be
        told), or ``None`` if no engine owns it.

        Call it before opening SQLite connections to the file in this process: closing
        a descriptor of the file drops this process's own SQLite locks on it.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            kind, _ = _range_lock(fd, fcntl.F_OFD_GETLK, fcntl.F_WRLCK, _OWNER_AT, 1)
            return None if kind == fcntl.F_UNLCK else _holder(fd)
        except OSError:
            return None
        finally:
            os.close(fd)

else:  # pragma: no cover - exercised on macOS, the BSDs and Windows only
    # No open-file-description locks here: a lock file beside the file's real path. Every
    # spelling of the path and every symlink meets it; hard links and a deleted lock file
    # do not (see docs/storage.md).

    def own_file(path: str) -> Callable[[], None]:
        """Lock ``{realpath}.lock`` for this process, or raise StorageError naming the holder."""
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
            raise _in_use(path, holder) from exc
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        return handle.close  # closing the file releases the lock

    def owner_of(path: str) -> str | None:
        """The process id of the engine that owns *path*, or ``None`` if none does."""
        lock_path = os.path.realpath(path) + ".lock"
        if not os.path.exists(lock_path):
            return None
        with open(lock_path, "a+", encoding="utf-8") as handle:
            try:
                _lock_exclusive(handle)
            except OSError:
                handle.seek(0)
                return handle.read().strip() or "unknown"
        return None  # closing it released the lock just taken

    if sys.platform == "win32":
        import msvcrt

        def _lock_exclusive(handle: IO[str]) -> None:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)

    else:
        import fcntl

        def _lock_exclusive(handle: IO[str]) -> None:
            # flock, not lockf: a second open file in the same process conflicts too.
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
