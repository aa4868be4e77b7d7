"""The transaction primitives every storage backend implements, and nothing more.

A backend holds SQL or dict operations, never rules: what a signal, a due timer, a
suspend, a cancel, a resume, a purge or a child's end does is decided once, in
:mod:`memable._rules`, over these few calls made inside one transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Protocol, final

import attrs

from ._exceptions import StorageError

if TYPE_CHECKING:
    from ._records import (
        InstanceRecord,
        InstanceState,
        QueueRecord,
        ScheduleRecord,
        SignalRecord,
        StepRecord,
        TimerRecord,
    )

__all__ = ["COLUMNS", "Fenced", "Guard", "Tx"]

#: The instance fields a compare-and-set may change. ``owner`` and ``epoch`` matter on a
#: database shared by several engines; a single-process backend may ignore them.
COLUMNS: Final = frozenset(
    {
        "status",
        "status_message",
        "output",
        "error",
        "waiting_on",
        "finished_at",
        "updated_at",
        "owner",
        "epoch",
    }
)


class Fenced(StorageError):
    """A write of an engine that no longer holds the instance (or whose lease expired)
    was refused: another engine runs it now, or it was cancelled. The run stops."""


@final
@attrs.frozen
class Guard:
    """What must still hold of an instance's row for a compare-and-set to apply.

    ``status`` is the set of states the row may be in (empty: any). ``holder`` is the
    ``(owner, epoch)`` the row must still have (``None``: not checked): the fencing token
    of a database shared by several engines, where a claim bumps the epoch. A
    single-process backend, which stores no owner, may ignore it.

    Example:
        >>> Guard(frozenset({"running"})).allows("suspended")
        False
        >>> Guard(holder=("e-1", 3)).holds("e-1", 2)
        False
    """

    status: frozenset[InstanceState] = frozenset()
    holder: tuple[str | None, int] | None = None

    def allows(self, status: InstanceState) -> bool:
        """Whether a row in *status* passes this guard."""
        return not self.status or status in self.status

    def holds(self, owner: str | None, epoch: int) -> bool:
        """Whether a row held by *owner* at *epoch* passes this guard."""
        return self.holder is None or self.holder == (owner, epoch)


class Tx(Protocol):
    """One open transaction of a backend: reads see its own writes; all or nothing.

    On a database shared by several engines the transaction has locked its engine's
    row (``FOR SHARE``) before any write, so an engine whose lease expired writes nothing.
    """

    #: Whether rows record who holds them (``owner``, ``epoch``): a database shared by
    #: several engines. The rules then let go of an instance on every move, bump the
    #: epoch on every claim, and compare-and-set on the holder too.
    holds_claims: bool

    def claimant(self, workflow: str) -> str | None:
        """The engine that takes an instance of *workflow* this transaction claims: its
        own engine if that runs the workflow, else ``None`` (if rows hold claims)."""
        ...

    def instance(self, instance_id: str) -> InstanceRecord | None:
        """The instance's row, read for update (``None`` if there is none)."""
        ...

    def family(self, instance_id: str) -> list[InstanceRecord]:
        """The instance and all its descendants (ids ``{instance_id}/...``), read for update."""
        ...

    def children(
        self,
        parent_id: str,
        prefix: str = "",
        status: frozenset[InstanceState] = frozenset(),
        limit: int | None = None,
    ) -> list[InstanceRecord]:
        """The direct children of *parent_id* whose ids start with *prefix* (if given), in
        one of the states in *status* (if given), at most *limit* of them (if given).

        A fan-out's wake-up asks only for the children in a few states (``running``),
        so a backend should serve ``(parent_id, status, instance_id)`` from an index:
        the cost must not grow with the children in other states.
        """
        ...

    def signal(self, instance_id: str, key: str) -> SignalRecord | None:
        """The payload (or timed-out marker) stored for a suspend point, if any."""
        ...

    def timers(self, instance_id: str) -> list[TimerRecord]:
        """Every timer of an instance."""
        ...

    def due_timers(self, now: float, limit: int) -> list[TimerRecord]:
        """At most *limit* unfired timers due at *now*, earliest first."""
        ...

    def insert(self, row: InstanceRecord | SignalRecord | TimerRecord) -> bool:
        """Insert *row* unless its key exists; return whether it was inserted."""
        ...

    def put_steps(self, steps: Sequence[StepRecord]) -> list[bool]:
        """Insert step records, or replace dead letters, never a completed result (the
        first writer wins); return which of them were written."""
        ...

    def holders(self, instance_ids: Sequence[str]) -> dict[str, tuple[str | None, int]]:
        """``(owner, epoch)`` of each of these instances that exists, read for update."""
        ...

    def update(self, instance_id: str, guard: Guard, changes: Mapping[str, object]) -> bool:
        """Compare-and-set: apply *changes* (fields of :data:`COLUMNS`) if *guard* holds."""
        ...

    def fire(self, instance_id: str, key: str) -> None:
        """Mark a timer fired."""
        ...

    def delete_signal(self, instance_id: str, key: str) -> bool:
        """Delete the payload stored for a suspend point; return whether there was one."""
        ...

    def retire_dead_steps(self, instance_id: str) -> None:
        """Move the dead letters of an instance out of its steps (``resume``).

        Its completed results stay. The dead letters are kept as earlier attempts, for
        :meth:`~memable.storage.Storage.load_retired` (the history), never replayed.
        """
        ...

    def delete_family(self, instance_id: str) -> None:
        """Delete an instance and its descendants with their steps, signals and timers."""
        ...

    # -- queues and schedules ----------------------------------------------------------------
    #
    # Admission (memable._rules.admit) is exact because every move of a queue's instance
    # into ``running`` happens in a transaction that first holds the queue's row: there
    # the running instances are counted and the free slots filled. Instances leave
    # ``running`` anywhere (finish, suspend, cancel), which only frees slots.

    def queue(self, name: str) -> QueueRecord | None:
        """The queue's row, read for update (``None`` if there is none).

        The row stays locked against every other transaction that reads it this way
        until this one ends, and whatever is read *after* this call (the count of running
        instances, the queued instances) must see every transaction committed before the
        lock was granted. SQLite and memory: the engine's single write lock does it.
        Postgres: ``SELECT ... FROM queues WHERE name = %s FOR UPDATE`` (blocking, not
        ``SKIP LOCKED``: the holder is another admission that ends in milliseconds, and
        a waiter that skipped would leave a slot it just freed to the next poll), with
        the following statements run after it under READ COMMITTED.
        """
        ...

    def put_queue(self, row: QueueRecord, *, replace: bool = True) -> bool:
        """Insert the queue's row, or replace every column of the one of the same name;
        with ``replace=False`` only insert it if there is none (Postgres: ``ON CONFLICT
        DO NOTHING``, which waits for a concurrent insert to commit). Return whether it
        was written."""
        ...

    def running_count(self, queue: str) -> int:
        """How many instances of *queue* are ``running`` (top-level ones: only they have
        a queue). Must count rows, never a cached number, after :meth:`queue`."""
        ...

    def queued(self, queue: str, workflows: Collection[str], limit: int) -> list[InstanceRecord]:
        """At most *limit* ``enqueued`` instances of *queue* whose workflow is one of
        *workflows*, in start order: ``priority`` highest first, then ``created_at``,
        then ``instance_id`` (both ascending). Postgres may add ``FOR UPDATE``; the rows
        are changed only by compare-and-set (:meth:`update` guarded on ``enqueued``)."""
        ...

    def schedule(self, name: str) -> ScheduleRecord | None:
        """The schedule's row, read for update (``None`` if there is none).

        Locked as :meth:`queue` locks a queue's row (Postgres: ``FOR UPDATE``), so two
        engines handling the same tick serialise here and the second sees the first's
        ``last_tick``."""
        ...

    def put_schedule(self, row: ScheduleRecord, *, replace: bool = True) -> bool:
        """Insert or replace the schedule's row, or only insert it (as :meth:`put_queue`)."""
        ...
