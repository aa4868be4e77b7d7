"""Shared fixtures: every async test runs on asyncio and trio, over every storage."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import pytest

from memable.storage import MemoryStorage, SQLiteStorage, Storage

StorageFactory = Callable[[], Storage]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both backends, explicitly: anyio would silently skip a missing trio."""
    backend: str = request.param
    return backend


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run every ``async def`` test under anyio's plugin (and so on both backends)."""
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.add_marker(pytest.mark.anyio)


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
