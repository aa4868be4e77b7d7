"""The storage methods the engine calls, each one transaction of :mod:`memable._rules`.

A backend subclasses :class:`RuleStorage` and supplies :meth:`~RuleStorage.transaction`
(a :class:`~memable.storage._tx.Tx` inside one transaction) and a few plain reads; it
inherits every state-changing method from here, so it holds no rules of its own.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import typing
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, TypeVar

from .. import _rules
from .._records import (
    Admission,
    Fence,
    InstanceRecord,
    InstanceState,
    QueueRecord,
    ScheduleRecord,
    SignalOutcome,
    SignalRecord,
    Write,
)
from .._tx import Tx

__all__ = ["DictQueues", "RuleStorage", "family_ids"]

R = TypeVar("R")


class RuleStorage:
    """The state-changing half of :class:`~memable.storage.Storage`, over :class:`Tx`.

    Subclasses implement :meth:`transaction` and :meth:`purgeable`.
    """

    #: How many worker threads the engine may use for this storage at once.
    threads: int = 1

    def transaction(self) -> contextlib.AbstractContextManager[Tx]:
        """Open one transaction: committed when the block ends, rolled back on an error."""
        raise NotImplementedError

    def purgeable(
        self, *, finished_before: float, workflow: str | None, exclude: Sequence[str], limit: int
    ) -> list[str]:
        """Ids of finished top-level instances older than *finished_before* (a plain read)."""
        raise NotImplementedError

    def list_children(
        self, parent_id: str, prefix: str, status: frozenset[InstanceState]
    ) -> list[InstanceRecord]:
        """The children of a fan-out (ids starting with *prefix*) in one of *status*."""
        with self.transaction() as tx:
            return tx.children(parent_id, prefix, status)

    def count_children(self, parent_id: str, prefix: str, status: frozenset[InstanceState]) -> int:
        """How many children of a fan-out are in one of *status* (a backend may count
        without reading the rows)."""
        return len(self.list_children(parent_id, prefix, status))

    def atomically(self, decide: Callable[[Tx], R]) -> R:
        """Run *decide* in one transaction. A backend whose transactions can deadlock
        (row locks on a shared database) runs it again after one; the rules are pure
        over :class:`Tx`, so running them again is safe."""
        with self.transaction() as tx:
            return decide(tx)

    def create_instance(self, record: InstanceRecord) -> tuple[InstanceRecord, bool]:
        return self.atomically(lambda tx: _rules.create(tx, record))

    def commit(self, writes: Sequence[Write]) -> list[bool]:
        return self.atomically(lambda tx: _rules.commit(tx, writes))

    def deliver_signal(self, signal: SignalRecord) -> tuple[SignalOutcome, InstanceRecord | None]:
        return self.atomically(lambda tx: _rules.deliver_signal(tx, signal))

    def suspend(
        self,
        instance_id: str,
        *,
        waiting_on: Sequence[str],
        status_message: str | None,
        now: float,
        extend: bool = False,
        fence: Fence | None = None,
    ) -> bool:
        return self.atomically(
            lambda tx: _rules.suspend(
                tx,
                instance_id,
                waiting_on=waiting_on,
                status_message=status_message,
                now=now,
                extend=extend,
                fence=fence,
            )
        )

    def fire_timers(self, now: float, limit: int = 500) -> list[InstanceRecord]:
        return self.atomically(lambda tx: _rules.fire_timers(tx, now, limit))

    def cancel(
        self, instance_id: str, *, reason: str, now: float
    ) -> tuple[InstanceRecord | None, InstanceRecord | None]:
        return self.atomically(lambda tx: _rules.cancel(tx, instance_id, reason=reason, now=now))

    def restart(
        self, instance_id: str, *, only_if: Sequence[InstanceState], updated_at: float
    ) -> InstanceRecord | None:
        only = tuple(only_if)
        return self.atomically(
            lambda tx: _rules.restart(tx, instance_id, only_if=only, now=updated_at)
        )

    def purge(
        self,
        *,
        finished_before: float,
        workflow: str | None = None,
        exclude: Sequence[str] = (),
        batch: int = 100,
        limit: int | None = None,
    ) -> int:
        """Delete finished top-level instances in batches of *batch*, a transaction each;
        at most *limit* of them (one batch when *limit* is *batch*: the engine purges one
        batch per call, so that other writes go between batches)."""
        purged = 0
        while limit is None or purged < limit:
            size = batch if limit is None else min(batch, limit - purged)
            ids = self.purgeable(
                finished_before=finished_before, workflow=workflow, exclude=exclude, limit=size
            )
            if not ids:
                return purged
            with self.purge_transaction() as tx:
                done = _rules.purge(tx, ids)
            purged += done
            if done == 0:  # every candidate was resumed meanwhile: nothing more to find
                return purged
        return purged

    def purge_transaction(self) -> contextlib.AbstractContextManager[Tx]:
        """The transaction of one purge batch (a backend may make it cheaper to commit)."""
        return self.transaction()

    # -- queues and schedules ---------------------------------------------------------------

    def define_queue(self, row: QueueRecord) -> QueueRecord:
        """Store a queue's limits (its pause and rate window stay); return its row."""
        return self.atomically(lambda tx: _rules.define_queue(tx, row))

    def pause_queue(self, name: str, paused: bool) -> bool:
        """Pause or resume a queue's admission; whether the queue has a row."""
        return self.atomically(lambda tx: _rules.pause_queue(tx, name, paused))

    def admit(self, name: str, *, now: float, workflows: Collection[str]) -> Admission:
        """Start the queue's next instances that its limits allow (one transaction)."""
        return self.atomically(lambda tx: _rules.admit(tx, name, now=now, workflows=workflows))

    def define_schedule(self, name: str, now: float) -> ScheduleRecord:
        """The schedule's row, created at *now* if it has none."""
        return self.atomically(lambda tx: _rules.define_schedule(tx, name, now))

    def tick_schedule(
        self,
        name: str,
        *,
        expected: float,
        last_tick: float,
        records: Sequence[InstanceRecord],
        overlap: bool,
    ) -> tuple[ScheduleRecord | None, list[InstanceRecord] | None]:
        """Handle due ticks by compare-and-set on the schedule's last tick (see _rules.tick)."""
        return self.atomically(
            lambda tx: _rules.tick(
                tx, name, expected=expected, last_tick=last_tick, records=records, overlap=overlap
            )
        )


class DictQueues:
    """The queue and schedule primitives (and reads) of a dict-based backend, whose
    transactions hold one lock: it holds every row read (see :meth:`Tx.queue`)."""

    # Provided by the backend:
    _lock: threading.RLock
    _instances: dict[str, InstanceRecord]
    _named: dict[str, dict[str, Any]]  # "queues" and "schedules", by name

    def _set(self, table: dict[str, Any], key: str, value: Any) -> None:
        raise NotImplementedError

    def queue(self, name: str) -> QueueRecord | None:
        return typing.cast("QueueRecord | None", self._named["queues"].get(name))

    def put_queue(self, row: QueueRecord, *, replace: bool = True) -> bool:
        return self._put(self._named["queues"], row.name, row, replace)

    def _put(self, table: dict[str, Any], name: str, row: object, replace: bool) -> bool:
        if not replace and name in table:
            return False
        self._set(table, name, row)
        return True

    def running_count(self, queue: str) -> int:
        return sum(r.queue == queue and r.status == "running" for r in self._instances.values())

    def queued(self, queue: str, workflows: Collection[str], limit: int) -> list[InstanceRecord]:
        found = [r for r in self._instances.values() if r.queue == queue
                 and r.status == "enqueued" and r.workflow in workflows]  # fmt: skip
        return sorted(found, key=lambda r: (-r.priority, r.created_at, r.instance_id))[:limit]

    def schedule(self, name: str) -> ScheduleRecord | None:
        return typing.cast("ScheduleRecord | None", self._named["schedules"].get(name))

    def put_schedule(self, row: ScheduleRecord, *, replace: bool = True) -> bool:
        return self._put(self._named["schedules"], row.name, row, replace)

    def list_queues(self) -> list[tuple[QueueRecord, dict[str, int]]]:
        with self._lock:
            counts = collections.Counter(
                (r.queue, r.status) for r in self._instances.values() if r.queue is not None
            )
            return [
                (row, {status: n for (name, status), n in counts.items() if name == row.name})
                for row in sorted(self._named["queues"].values(), key=lambda row: row.name)
            ]

    def list_schedules(self) -> list[ScheduleRecord]:
        with self._lock:
            return sorted(self._named["schedules"].values(), key=lambda row: row.name)


def family_ids(ids: Iterator[str], instance_id: str) -> list[str]:
    """The ids among *ids* in the family of *instance_id* (for dict-based backends)."""
    prefix = instance_id + "/"
    return [i for i in ids if i == instance_id or i.startswith(prefix)]
