"""In-memory storage, for tests and throwaway engines."""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from typing import final

import attrs

from .._exceptions import StorageError
from ._records import InstanceRecord, InstanceState, InstanceUpdate, StepRecord, Write

__all__ = ["MemoryStorage"]


@final
class MemoryStorage:
    """A :class:`~memable.storage.Storage` that keeps everything in dictionaries.

    Nothing survives the process, but the same ``MemoryStorage`` object may be handed to
    one engine after another, which is how tests simulate a restart without a file.

    Example:
        >>> import memable
        >>> from memable.storage import MemoryStorage
        >>> engine = memable.Engine(MemoryStorage())
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._instances: dict[str, InstanceRecord] = {}
        self._steps: dict[str, dict[str, StepRecord]] = {}
        self._owned = False

    def __repr__(self) -> str:
        return f"<MemoryStorage with {len(self._instances)} instances>"

    def open(self) -> None:
        with self._lock:
            if self._owned:
                raise StorageError("this MemoryStorage is already in use by another engine")
            self._owned = True

    def close(self) -> None:
        with self._lock:
            self._owned = False

    def create_instance(self, record: InstanceRecord) -> tuple[InstanceRecord, bool]:
        with self._lock:
            existing = self._instances.get(record.instance_id)
            if existing is not None:
                return existing, False
            self._instances[record.instance_id] = record
            return record, True

    def get_instance(self, instance_id: str) -> InstanceRecord | None:
        with self._lock:
            return self._instances.get(instance_id)

    def list_instances(
        self,
        *,
        workflow: str | None = None,
        status: InstanceState | None = None,
        limit: int | None = None,
    ) -> list[InstanceRecord]:
        with self._lock:
            found = [
                record
                for record in self._instances.values()
                if (workflow is None or record.workflow == workflow)
                and (status is None or record.status == status)
            ]
        found.sort(key=lambda r: (r.created_at, r.instance_id))
        return found if limit is None else found[:limit]

    def load_steps(self, instance_id: str) -> list[StepRecord]:
        with self._lock:
            return list(self._steps.get(instance_id, {}).values())

    def commit(self, writes: Sequence[Write]) -> None:
        with self._lock:
            for write in writes:
                if isinstance(write, StepRecord):
                    steps = self._steps.setdefault(write.instance_id, {})
                    old = steps.get(write.key)
                    if old is None or old.state != "completed":
                        steps[write.key] = write
                else:
                    self._apply(write)

    def _apply(self, update: InstanceUpdate) -> None:
        record = self._instances.get(update.instance_id)
        if record is None or (update.only_if and record.status not in update.only_if):
            return
        changes = {
            name: value
            for name in (
                "status",
                "status_message",
                "output",
                "error",
                "waiting_on",
                "finished_at",
                "updated_at",
            )
            if (value := getattr(update, name)) is not None
        }
        self._instances[update.instance_id] = attrs.evolve(record, **changes)

    def restart(
        self, instance_id: str, *, only_if: Collection[InstanceState], updated_at: float
    ) -> InstanceRecord | None:
        with self._lock:
            record = self._instances.get(instance_id)
            if record is None or record.status not in only_if:
                return None
            record = attrs.evolve(
                record,
                status="running",
                error=None,
                finished_at=None,
                waiting_on=(),
                updated_at=updated_at,
            )
            self._instances[instance_id] = record
            steps = self._steps.get(instance_id, {})
            for key in [key for key, step in steps.items() if step.state == "dead"]:
                del steps[key]
            return record
