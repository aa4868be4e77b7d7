"""Helpers shared by the tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from memable.storage import MemoryStorage, Storage

T = TypeVar("T")

#: A factory of storages over one database (the ``make_storage`` fixture).
StorageFactory = Callable[[], Storage]


def peek(storage: Storage, read: Callable[[Storage], T]) -> T:
    """Read from *storage* directly (opening and closing it unless it is in memory)."""
    if isinstance(storage, MemoryStorage):
        return read(storage)
    storage.open()
    try:
        return read(storage)
    finally:
        storage.close()
