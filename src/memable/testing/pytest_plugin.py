"""memable's pytest plugin: engines on every storage, both anyio backends, a manual clock.

Installed with memable (entry point ``pytest11``), so its fixtures are there in any
project that has memable and pytest; add ``-p no:memable`` to switch it off. Every
fixture is named ``memable_*``, so none shadows a fixture of yours or of anyio's.

Fixtures:

- ``memable_backend``: ``"asyncio"`` and ``"trio"`` (ini option ``memable_backends``).
  anyio picks the backend from its own ``anyio_backend`` fixture; let it follow this one
  with three lines in your ``conftest.py``::

      @pytest.fixture
      def anyio_backend(memable_backend: str) -> str:
          return memable_backend

- ``memable_storage_kind``: ``"memory"`` and ``"sqlite"`` (ini option
  ``memable_storages``), plus ``"postgres"`` when ``MEMABLE_TEST_POSTGRES`` holds a URL.
- ``memable_storage``: a factory of storages over the test's own database; each call
  gives the storage a restarted process would open (a fresh ``SQLiteStorage`` on the same
  file, or the same ``MemoryStorage``).
- ``memable_clock``: a :class:`~memable.testing.ManualClock`.
- ``memable_engines``: make engines on that storage and clock,
  ``async with memable_engines(workflows=[wf]) as engine`` — a second one after the
  first has left its block is "the process after a restart".
- ``memable_engine``: one running engine (async; needs ``anyio_backend``); add workflows
  with ``memable_engine.register(wf)``.

Storages are an extension point: :data:`STORAGES` maps a kind to a function of the
test's temporary directory that returns a storage factory.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from memable import Engine
    from memable.storage import Storage
    from memable.testing import ManualClock

__all__ = ["STORAGES", "EngineFactory", "StorageFactory"]

#: A factory of storages over one database: each call is a process opening it again.
StorageFactory = Callable[[], "Storage"]
#: ``memable_engines``: keyword arguments of :class:`~memable.Engine` except storage and clock.
EngineFactory = Callable[..., "Engine"]

#: The environment variable that turns the ``postgres`` storage kind on (a database URL).
POSTGRES_ENV = "MEMABLE_TEST_POSTGRES"


def _memory(tmp_path: Path) -> StorageFactory:
    from memable.storage import MemoryStorage

    shared = MemoryStorage()
    return lambda: shared


def _sqlite(tmp_path: Path) -> StorageFactory:
    from memable.storage import SQLiteStorage

    path = tmp_path / "memable.db"
    return lambda: SQLiteStorage(path)


def _postgres(tmp_path: Path) -> StorageFactory:
    import memable.storage

    url = os.environ.get(POSTGRES_ENV, "")
    if not url:
        pytest.skip(f"set {POSTGRES_ENV} to a database URL to test on Postgres")
    storage_class: Any = getattr(memable.storage, "PostgresStorage", None)
    if storage_class is None:
        pytest.fail("this memable has no PostgresStorage", pytrace=False)
    schema = f"test_{uuid.uuid4().hex[:16]}"  # every test gets tables of its own
    return lambda: storage_class(url, schema=schema)


#: Storage kinds: name → a function of the test's ``tmp_path`` giving a storage factory.
#: Add an entry (from a ``conftest.py``) to test on a storage of your own.
STORAGES: dict[str, Callable[[Path], StorageFactory]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "postgres": _postgres,
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "memable_backends",
        "anyio backends for the memable_backend fixture",
        type="args",
        default=["asyncio", "trio"],
    )
    parser.addini(
        "memable_storages",
        f"storage kinds for the memable_storage fixtures (postgres only with {POSTGRES_ENV} set)",
        type="args",
        default=["memory", "sqlite", "postgres"],
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    config = metafunc.config
    if "memable_backend" in metafunc.fixturenames:
        backends = list(config.getini("memable_backends"))
        metafunc.parametrize("memable_backend", backends)
    if "memable_storage_kind" in metafunc.fixturenames:
        kinds = [
            kind
            for kind in config.getini("memable_storages")
            if kind != "postgres" or os.environ.get(POSTGRES_ENV)
        ]
        unknown = [kind for kind in kinds if kind not in STORAGES]
        if unknown:
            raise pytest.UsageError(f"memable_storages: unknown storage kinds {unknown}")
        metafunc.parametrize("memable_storage_kind", kinds)


@pytest.fixture
def memable_storage(memable_storage_kind: str, tmp_path: Path) -> StorageFactory:
    """A factory of storages over this test's database (``memory``, ``sqlite``, …)."""
    return STORAGES[memable_storage_kind](tmp_path)


@pytest.fixture
def memable_clock() -> ManualClock:
    """A clock that stands still until ``await memable_clock.advance(...)``."""
    from memable.testing import ManualClock

    return ManualClock()


@pytest.fixture
def memable_engines(memable_storage: StorageFactory, memable_clock: ManualClock) -> EngineFactory:
    """Make engines on this test's storage and clock: ``memable_engines(workflows=[wf])``."""
    from memable import Engine

    def make(**kwargs: Any) -> Engine:
        return Engine(memable_storage(), clock=memable_clock, **kwargs)

    return make


@pytest.fixture
async def memable_engine(
    anyio_backend: object, memable_engines: EngineFactory
) -> AsyncIterator[Engine]:
    """A running engine on this test's storage and clock; ``register()`` your workflows."""
    async with memable_engines() as engine:
        yield engine
