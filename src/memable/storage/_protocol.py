"""The storage protocol: a handful of synchronous methods, each one transaction."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol, runtime_checkable

from ._records import InstanceRecord, InstanceState, StepRecord, Write

__all__ = ["Storage"]


@runtime_checkable
class Storage(Protocol):
    """Where an engine keeps instances and step records.

    Every method is synchronous and is one transaction; the engine calls them from worker
    threads through ``anyio.to_thread.run_sync`` with its own limiter, never on the event
    loop. Implementations raise :class:`~memable.StorageError` (with the cause chained) for
    any failure of the underlying store.

    Example:
        >>> from memable.storage import MemoryStorage, Storage
        >>> isinstance(MemoryStorage(), Storage)
        True
    """

    def open(self) -> None:
        """Connect, create or migrate the schema, and take ownership of the store."""

    def close(self) -> None:
        """Release the store. Calling it twice is harmless."""

    def create_instance(self, record: InstanceRecord) -> tuple[InstanceRecord, bool]:
        """Insert *record* unless its id exists; return the stored record and whether it is new."""
        ...

    def get_instance(self, instance_id: str) -> InstanceRecord | None:
        """Return the instance, or ``None``."""
        ...

    def list_instances(
        self,
        *,
        workflow: str | None = None,
        status: InstanceState | None = None,
        limit: int | None = None,
    ) -> list[InstanceRecord]:
        """Return instances, oldest first, filtered by workflow name and status."""
        ...

    def load_steps(self, instance_id: str) -> list[StepRecord]:
        """Return every step record of an instance (one query)."""
        ...

    def commit(self, writes: Sequence[Write]) -> None:
        """Apply *writes* in order, in one transaction.

        A :class:`~memable.storage.StepRecord` is inserted or replaces a dead letter; a
        ``completed`` record is never overwritten. An
        :class:`~memable.storage.InstanceUpdate` whose ``only_if`` does not hold is skipped.
        """

    def restart(
        self, instance_id: str, *, only_if: Collection[InstanceState], updated_at: float
    ) -> InstanceRecord | None:
        """Set the instance ``running`` again and delete its dead letters, in one transaction.

        Only if its status is in *only_if*; returns the updated record, else ``None``.
        """
        ...
