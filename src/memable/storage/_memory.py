"""In-memory storage, for tests and throwaway engines."""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from typing import final

import attrs

from .._exceptions import StorageError
from ._records import (
    History,
    InstanceRecord,
    InstanceState,
    InstanceUpdate,
    SignalOutcome,
    SignalRecord,
    StepRecord,
    TimerRecord,
    Write,
)

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
        self._signals: dict[str, dict[str, SignalRecord]] = {}
        self._timers: dict[str, dict[str, TimerRecord]] = {}
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
        parent_id: str | None = None,
    ) -> list[InstanceRecord]:
        with self._lock:
            found = [
                record
                for record in self._instances.values()
                if (workflow is None or record.workflow == workflow)
                and (status is None or record.status == status)
                and (parent_id is None or record.parent_id == parent_id)
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
                elif isinstance(write, TimerRecord):
                    self._timers.setdefault(write.instance_id, {}).setdefault(write.key, write)
                elif isinstance(write, InstanceRecord):
                    self._instances.setdefault(write.instance_id, write)
                elif isinstance(write, InstanceUpdate):
                    self._apply(write)

    def load_history(self, instance_id: str) -> History:
        with self._lock:
            return History(
                steps=list(self._steps.get(instance_id, {}).values()),
                signals=list(self._signals.get(instance_id, {}).values()),
                timers=list(self._timers.get(instance_id, {}).values()),
            )

    def deliver_signal(self, signal: SignalRecord) -> tuple[SignalOutcome, InstanceRecord | None]:
        with self._lock:
            record = self._instances.get(signal.instance_id)
            if record is None:
                return "not_found", None
            if record.status in ("completed", "failed", "cancelled"):
                return "finished", record
            signals = self._signals.setdefault(signal.instance_id, {})
            if signal.key in signals:
                return "superseded", record
            signals[signal.key] = signal
            if record.status == "suspended" and signal.key in record.waiting_on:
                return "claimed", self._claim(record, signal.created_at)
            return "stored", record

    def suspend(
        self,
        instance_id: str,
        *,
        waiting_on: Sequence[str],
        status_message: str | None,
        now: float,
    ) -> bool:
        with self._lock:
            signals = self._signals.get(instance_id, {})
            if any(key in signals for key in waiting_on) or any(
                r.parent_id == instance_id and r.status == "running"
                for r in self._instances.values()
            ):
                return False
            timers = self._timers.get(instance_id, {})
            due = [timers[k] for k in waiting_on if k in timers and timers[k].deadline <= now]
            if due:
                for timer in due:
                    self._fire(timer, now)
                return False
            record = self._instances.get(instance_id)
            if record is None or record.status != "running":
                return False
            self._instances[instance_id] = attrs.evolve(
                record,
                status="suspended",
                waiting_on=tuple(waiting_on),
                status_message=status_message,
                updated_at=now,
            )
            return True

    def next_deadline(self) -> float | None:
        with self._lock:
            deadlines = [
                timer.deadline
                for timers in self._timers.values()
                for timer in timers.values()
                if not timer.fired
            ]
        return min(deadlines, default=None)

    def fire_timers(self, now: float) -> list[InstanceRecord]:
        claimed: list[InstanceRecord] = []
        with self._lock:
            due = sorted(
                (
                    timer
                    for timers in self._timers.values()
                    for timer in timers.values()
                    if not timer.fired and timer.deadline <= now
                ),
                key=lambda timer: timer.deadline,
            )
            for timer in due:
                self._fire(timer, now)
                record = self._instances.get(timer.instance_id)
                if (
                    record is not None
                    and record.status == "suspended"
                    and (timer.key in record.waiting_on)
                ):
                    claimed.append(self._claim(record, now))
        return claimed

    def cancel(self, instance_id: str, *, reason: str, now: float) -> InstanceRecord | None:
        with self._lock:
            record = self._instances.get(instance_id)
            if record is None or record.status not in ("running", "suspended"):
                return None
            for member in self._family(instance_id):
                if member.status in ("running", "suspended"):
                    self._instances[member.instance_id] = attrs.evolve(
                        member,
                        status="cancelled",
                        status_message=reason,
                        waiting_on=(),
                        updated_at=now,
                        finished_at=now,
                    )
                timers = self._timers.get(member.instance_id, {})
                for timer in list(timers.values()):
                    timers[timer.key] = attrs.evolve(timer, fired=True)
            return record

    def purge(
        self,
        *,
        finished_before: float,
        workflow: str | None = None,
        exclude: Sequence[str] = (),
    ) -> int:
        purged = 0
        with self._lock:
            for record in list(self._instances.values()):
                if (
                    record.parent_id is None
                    and record.status in ("completed", "failed", "cancelled")
                    and record.finished_at is not None
                    and record.finished_at < finished_before
                    and (workflow is None or record.workflow == workflow)
                    and record.workflow not in exclude
                ):
                    for member in self._family(record.instance_id):
                        for table in (self._steps, self._signals, self._timers):
                            table.pop(member.instance_id, None)
                        del self._instances[member.instance_id]
                    purged += 1
        return purged

    def _family(self, instance_id: str) -> list[InstanceRecord]:
        """The instance and its descendants (child ids are ``{parent}/{key}-{i}``)."""
        prefix = instance_id + "/"
        return [
            record
            for record in self._instances.values()
            if record.instance_id == instance_id or record.instance_id.startswith(prefix)
        ]

    def _claim(self, record: InstanceRecord, now: float) -> InstanceRecord:
        """Claim *record* and its suspended ancestors; return the instance to run."""
        while True:
            record = attrs.evolve(record, status="running", waiting_on=(), updated_at=now)
            self._instances[record.instance_id] = record
            if record.parent_id is None:
                return record
            parent = self._instances[record.parent_id]
            if parent.status != "suspended":
                while parent.parent_id is not None:
                    parent = self._instances[parent.parent_id]
                return parent
            record = parent

    def _fire(self, timer: TimerRecord, now: float) -> None:
        self._timers[timer.instance_id][timer.key] = attrs.evolve(timer, fired=True)
        if timer.kind == "timeout":
            self._signals.setdefault(timer.instance_id, {}).setdefault(
                timer.key,
                SignalRecord(instance_id=timer.instance_id, key=timer.key, payload=None,
                             created_at=now),
            )  # fmt: skip

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
            restarted = record
            for member in self._family(instance_id):
                if member is record or member.status in ("failed", "cancelled"):
                    member = attrs.evolve(
                        member,
                        status="running",
                        error=None,
                        finished_at=None,
                        waiting_on=(),
                        updated_at=updated_at,
                    )
                    self._instances[member.instance_id] = member
                    if member.instance_id == instance_id:
                        restarted = member
                    steps = self._steps.get(member.instance_id, {})
                    for key in [key for key, step in steps.items() if step.state == "dead"]:
                        del steps[key]
            return restarted


MemoryStorage.__module__ = "memable.storage"
