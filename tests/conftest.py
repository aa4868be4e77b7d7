"""Shared fixtures: every async test runs on asyncio and trio (``anyio_mode = "auto"``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from memable.storage import MemoryStorage, SQLiteStorage

from . import pg
from .helpers import StorageFactory

pytest_plugins = ["pytester"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both backends, explicitly: anyio would silently skip a missing trio."""
    backend: str = request.param
    return backend


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[pg.PostgresServer]:
    """A PostgreSQL server for the session: a throwaway cluster, or MEMABLE_TEST_POSTGRES.

    Without one, the Postgres tests skip (saying why) — except in CI (env ``CI`` set),
    where they fail: CI installs the server (``.ci/run``).
    """
    try:
        servers = pg.server()
        server = next(servers)
    except (FileNotFoundError, KeyError, OSError) as exc:
        reason = f"no PostgreSQL server: {exc} (install postgresql or set MEMABLE_TEST_POSTGRES)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    yield server
    servers.close()


@pytest.fixture
def postgres_dsn(postgres_server: pg.PostgresServer) -> str:
    """The URL of the test server (for tests that make their own PostgresStorage)."""
    return postgres_server.dsn


@pytest.fixture(params=["sqlite", "memory", "postgres"])
def make_storage(request: pytest.FixtureRequest, tmp_path: Path) -> StorageFactory:
    """Return a factory of storages over one database.

    Each call gives a fresh storage object on the same data (the same SQLite file, the
    same MemoryStorage, or the same Postgres schema — fresh for each test), so a new
    engine made with it is "the process after a restart".
    """
    if request.param == "sqlite":
        path = tmp_path / "memable.db"
        return lambda: SQLiteStorage(path)
    if request.param == "postgres":
        from memable.storage import PostgresStorage

        server: pg.PostgresServer = request.getfixturevalue("postgres_server")
        schema = server.new_schema()
        return lambda: PostgresStorage(server.dsn, schema=schema, pool_size=4)
    shared = MemoryStorage()
    return lambda: shared


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A SQLite file path in a fresh temporary directory."""
    return tmp_path / "memable.db"
