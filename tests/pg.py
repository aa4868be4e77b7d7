"""A throwaway PostgreSQL server for the tests, or the one ``MEMABLE_TEST_POSTGRES`` names.

The server is a fresh cluster in a temporary directory, started as the ``postgres`` user
when the tests run as root (``initdb`` refuses root), listening on a Unix socket in that
directory only. Each test gets a schema of its own (``PostgresStorage(schema=...)``).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Generator
from pathlib import Path

__all__ = ["PostgresServer", "find_bin", "server"]

_counter = itertools.count()


def find_bin(name: str) -> str | None:
    """The path of a PostgreSQL server program (``initdb``, ``pg_ctl``), if installed."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


class PostgresServer:
    """A running server: its URL, and how to restart it (for the chaos tests)."""

    def __init__(self, dsn: str, data: Path | None = None, user: str | None = None) -> None:
        self.dsn = dsn
        self.data = data
        self.user = user

    def new_schema(self) -> str:
        """A schema name no test used before (in this process)."""
        return f"t{os.getpid()}_{next(_counter)}"

    def _pg_ctl(self, *args: str) -> None:
        assert self.data is not None, "only a server started by the tests can be restarted"
        pg_ctl = find_bin("pg_ctl")
        assert pg_ctl is not None
        command = [pg_ctl, "-D", str(self.data), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True)

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "-w", "stop")

    def start(self) -> None:
        assert self.data is not None
        self._pg_ctl("-w", "-l", str(self.data.parent / "server.log"), "start")


def server(*, fsync: bool = False) -> Generator[PostgresServer]:
    """Start a throwaway server (stopped when the generator ends), or use the given one.

    The tests' server runs with ``fsync = off`` (nothing here survives a power cut, and
    no test cuts power); the benchmarks ask for ``fsync``.
    """
    given = os.environ.get("MEMABLE_TEST_POSTGRES")
    if given:
        yield PostgresServer(given)
        return
    initdb = find_bin("initdb")
    if initdb is None:
        raise FileNotFoundError("initdb (PostgreSQL's server programs) is not installed")
    root = Path(tempfile.mkdtemp(prefix="memable-pg-"))
    user: str | None = None
    if os.geteuid() == 0:
        user = "postgres"
        info = pwd.getpwnam(user)  # KeyError: Debian's postgresql package makes this user
        os.chown(root, info.pw_uid, info.pw_gid)
    data = root / "data"
    pg = PostgresServer(f"postgresql://postgres@/postgres?host={root}", data, user)
    run_as = [] if user is None else ["runuser", "-u", user, "--"]
    subprocess.run(
        [*run_as, initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
         "--no-sync"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:
        conf.write(
            f"listen_addresses = ''\nunix_socket_directories = '{root}'\nmax_connections = 300\n"
        )
        if not fsync:
            conf.write("fsync = off\nfull_page_writes = off\n")
    pg.start()
    try:
        yield pg
    finally:
        try:
            pg.stop("immediate")
        finally:
            shutil.rmtree(root, ignore_errors=True)
