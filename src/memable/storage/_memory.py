"""In-memory storage: the small reference backend, for tests and throwaway engines."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, final

import attrs

from .._exceptions import StorageError
from .._records import History, InstanceRecord, InstanceState, SignalRecord, StepRecord, TimerRecord
from .._state import FINISHED
from .._tx import COLUMNS, Guard
from ._base import DictQueues, RuleStorage, family_ids

__all__ = ["MemoryStorage"]

_Rows = dict[str, dict[str, Any]]


@final
class MemoryStorage(DictQueues, RuleStorage):
    """A :class:`~memable.storage.Storage` that keeps everything in dictionaries.

    Nothing survives the process, but the same ``MemoryStorage`` object may be handed to
    one engine after another, which is how tests simulate a restart without a file.

    Example:
        >>> import memable
        >>> from memable.storage import MemoryStorage
        >>> engine = memable.Engine(MemoryStorage())
    """

    threads = 1
    holds_claims = False  # one engine at a time

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._instances: dict[str, InstanceRecord] = {}
        self._tables: dict[str, _Rows] = {"steps": {}, "signals": {}, "timers": {}, "retired": {}}
        self._named: dict[str, dict[str, Any]] = {"queues": {}, "schedules": {}}  # by name
        self._undo: list[Callable[[], None]] | None = None
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

    # -- reads ------------------------------------------------------------------------------

    def get_instance(self, instance_id: str) -> InstanceRecord | None:
        with self._lock:
            return self._instances.get(instance_id)

    def list_instances(self, *, workflow: str | None = None, status: InstanceState | None = None,
                       limit: int | None = None, parent_id: str | None = None,
                       waiting_on: str | None = None, created_after: float | None = None,
                       before: tuple[float, str] | None = None,
                       newest_first: bool = False) -> list[InstanceRecord]:  # fmt: skip
        with self._lock:
            found = [
                r
                for r in self._instances.values()
                if workflow in (None, r.workflow)
                and status in (None, r.status)
                and parent_id in (None, r.parent_id)
                and (waiting_on is None or (r.status == "suspended" and waiting_on in r.waiting_on))
                and (created_after is None or r.created_at > created_after)
                and (before is None or (r.created_at, r.instance_id) < before)
            ]
        found.sort(key=lambda r: (r.created_at, r.instance_id), reverse=newest_first)
        return found if limit is None else found[:limit]

    def load_steps(self, instance_id: str) -> list[StepRecord]:
        with self._lock:
            return list(self._tables["steps"].get(instance_id, {}).values())

    def load_history(self, instance_id: str) -> History:
        with self._lock:
            rows = {name: list(t.get(instance_id, {}).values()) for name, t in self._tables.items()}
        return History(steps=rows["steps"], signals=rows["signals"], timers=rows["timers"])

    def load_retired(self, instance_id: str) -> list[StepRecord]:
        with self._lock:
            return list(self._tables["retired"].get(instance_id, {}).values())

    def next_deadline(self) -> float | None:
        with self._lock:
            timers = [t for ts in self._tables["timers"].values() for t in ts.values()]
        return min((t.deadline for t in timers if not t.fired), default=None)

    def purgeable(
        self, *, finished_before: float, workflow: str | None, exclude: Sequence[str], limit: int
    ) -> list[str]:
        with self._lock:
            found = [r.instance_id for r in self._instances.values()
                     if r.parent_id is None and r.finished_at is not None
                     and r.finished_at < finished_before and r.status in FINISHED
                     and workflow in (None, r.workflow) and r.workflow not in exclude]  # fmt: skip
        return found[:limit]

    # -- the transaction primitives ---------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[MemoryStorage]:
        with self._lock:
            self._undo = []
            try:
                yield self
            except BaseException:
                for undo in reversed(self._undo):
                    undo()
                raise
            finally:
                self._undo = None

    def _set(self, table: dict[str, Any], key: str, value: Any) -> None:
        """Change one entry, remembering how to undo it if the transaction fails."""
        assert self._undo is not None, "written outside a transaction"
        if key in table:
            old = table[key]
            self._undo.append(lambda: table.__setitem__(key, old))
        else:
            self._undo.append(lambda: table.pop(key, None))
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value

    def _rows(self, name: str, instance_id: str) -> dict[str, Any]:
        table = self._tables[name]
        if instance_id not in table:
            self._set(table, instance_id, {})
        return table[instance_id]

    def claimant(self, workflow: str) -> str | None:
        return None

    def instance(self, instance_id: str) -> InstanceRecord | None:
        return self._instances.get(instance_id)

    def family(self, instance_id: str) -> list[InstanceRecord]:
        return [self._instances[i] for i in family_ids(iter(self._instances), instance_id)]

    def children(self, parent_id: str, prefix: str = "",
                 status: frozenset[InstanceState] = frozenset(),
                 limit: int | None = None) -> list[InstanceRecord]:  # fmt: skip
        found = [r for r in self._instances.values()
                 if r.parent_id == parent_id and r.instance_id.startswith(prefix)
                 and (not status or r.status in status)]  # fmt: skip
        return found[:limit]

    def signal(self, instance_id: str, key: str) -> SignalRecord | None:
        return self._tables["signals"].get(instance_id, {}).get(key)

    def timers(self, instance_id: str) -> list[TimerRecord]:
        return list(self._tables["timers"].get(instance_id, {}).values())

    def due_timers(self, now: float, limit: int) -> list[TimerRecord]:
        timers = self._tables["timers"].values()
        due = [t for ts in timers for t in ts.values() if not t.fired and t.deadline <= now]
        return sorted(due, key=lambda t: t.deadline)[:limit]

    def insert(self, row: InstanceRecord | SignalRecord | TimerRecord) -> bool:
        if isinstance(row, InstanceRecord):
            table: dict[str, Any] = self._instances
            key = row.instance_id
        else:
            table = self._rows("signals" if isinstance(row, SignalRecord) else "timers",
                               row.instance_id)  # fmt: skip
            key = row.key
        if key in table:
            return False
        self._set(table, key, row)
        return True

    def put_steps(self, steps: Sequence[StepRecord]) -> list[bool]:
        return [self._put_step(step) for step in steps]

    def _put_step(self, step: StepRecord) -> bool:
        rows = self._rows("steps", step.instance_id)
        if (old := rows.get(step.key)) is not None and old.state == "completed":
            return False
        self._set(rows, step.key, step)
        return True

    def holders(self, instance_ids: Sequence[str]) -> dict[str, tuple[str | None, int]]:
        found = [self._instances.get(i) for i in instance_ids]
        return {r.instance_id: (r.owner, r.epoch) for r in found if r is not None}

    def update(self, instance_id: str, guard: Guard, changes: Mapping[str, object]) -> bool:
        assert set(changes) <= COLUMNS, sorted(set(changes) - COLUMNS)
        record = self._instances.get(instance_id)
        if record is None or not guard.allows(record.status):
            return False
        self._set(self._instances, instance_id, attrs.evolve(record, **changes))  # type: ignore[arg-type]
        return True

    def fire(self, instance_id: str, key: str) -> None:
        timers = self._rows("timers", instance_id)
        self._set(timers, key, attrs.evolve(timers[key], fired=True))

    def delete_signal(self, instance_id: str, key: str) -> bool:
        signals = self._tables["signals"].get(instance_id, {})
        found = key in signals
        if found:
            self._set(signals, key, None)
        return found

    def retire_dead_steps(self, instance_id: str) -> None:
        steps, retired = self._rows("steps", instance_id), self._rows("retired", instance_id)
        for key in [key for key, step in steps.items() if step.state == "dead"]:
            self._set(retired, f"{len(retired)}", steps[key])
            self._set(steps, key, None)

    def delete_family(self, instance_id: str) -> None:
        for member in family_ids(iter(list(self._instances)), instance_id):
            for table in self._tables.values():
                self._set(table, member, None)
            self._set(self._instances, member, None)


MemoryStorage.__module__ = "memable.storage"
