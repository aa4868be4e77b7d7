"""Shared fixtures: every async test runs on asyncio and trio (``anyio_mode = "auto"``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from memable.storage import MemoryStorage, SQLiteStorage

from .helpers import StorageFactory

pytest_plugins = ["pytester"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both backends, explicitly: anyio would silently skip a missing trio."""
    backend: str = request.param
    return backend


@pytest.fixture(params=["sqlite", "memory"])
def make_storage(request: pytest.FixtureRequest, tmp_path: Path) -> StorageFactory:
    """Return a factory of storages over one database.

    Each call gives a fresh storage object on the same data (the same SQLite file, or the
    same MemoryStorage), so a new engine made with it is "the process after a restart".
    """
    if request.param == "sqlite":
        path = tmp_path / "memable.db"
        return lambda: SQLiteStorage(path)
    shared = MemoryStorage()
    return lambda: shared


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A SQLite file path in a fresh temporary directory."""
    return tmp_path / "memable.db"
