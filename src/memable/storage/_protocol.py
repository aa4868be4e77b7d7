"""The storage protocol: a handful of synchronous methods, each one transaction."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .._records import (
        Admission,
        Fence,
        History,
        InstanceRecord,
        InstanceState,
        QueueRecord,
        ScheduleRecord,
        SignalOutcome,
        SignalRecord,
        StepRecord,
        Write,
    )

__all__ = ["TAKEN", "QueueStorage", "SharedStorage", "Storage"]

#: The prefix of an id in :meth:`SharedStorage.hints` whose instance is not claimable.
TAKEN: Final = "\x01"


@runtime_checkable
class Storage(Protocol):
    """Where an engine keeps instances and step records.

    Every method is synchronous and is one transaction; the engine calls them from worker
    threads through ``anyio.to_thread.run_sync`` with its own limiter, never on the event
    loop (as many threads at once as the storage's ``threads`` attribute says, 1 if it has
    none). Implementations raise :class:`~memable.StorageError` (with the cause chained)
    for any failure of the underlying store. The built-in backends inherit every
    state-changing method from one place (``memable._rules`` over a handful of
    transaction primitives), so they obey the same rules.

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
        parent_id: str | None = None,
        waiting_on: str | None = None,
        created_after: float | None = None,
        before: tuple[float, str] | None = None,
        newest_first: bool = False,
    ) -> list[InstanceRecord]:
        """Return instances, oldest first, filtered by workflow, status and parent.

        *waiting_on* keeps the instances suspended on that key; *created_after* those
        created later than that time. With *newest_first* they come newest first, ordered
        by ``(created_at, instance_id)``, starting after the *before* position (a page's
        cursor): a page costs one index range scan, whatever the table holds.
        """
        ...

    def load_retired(self, instance_id: str) -> list[StepRecord]:
        """Return the dead letters that ``resume`` retired (earlier attempts; history only)."""
        ...

    def load_steps(self, instance_id: str) -> list[StepRecord]:
        """Return every step record of an instance (one query)."""
        ...

    def load_history(self, instance_id: str) -> History:
        """Return the steps, signals and timers of an instance, in one read.

        The engine reads a history before it replays an instance through an optional
        method, ``load_replay(instance_id)``, returning a
        :class:`~memable.storage.Recorded` (only what replay needs: SQLite reads a
        50,000-step history as one string a step); a storage without it is read
        through this method and :meth:`Recorded.of <memable.storage.Recorded.of>`.
        """
        ...

    def commit(self, writes: Sequence[Write]) -> list[bool]:
        """Apply *writes* in order, in one transaction; return which of them applied.

        A :class:`~memable.storage.StepRecord` is inserted or replaces a dead letter; a
        ``completed`` record is never overwritten. An
        :class:`~memable.storage.InstanceUpdate` whose ``only_if`` does not hold is skipped.
        A :class:`~memable.storage.TimerRecord` is inserted unless its key has one already;
        so is an :class:`~memable.storage.InstanceRecord` (a child) unless its id exists.
        """
        ...

    def deliver_signal(self, signal: SignalRecord) -> tuple[SignalOutcome, InstanceRecord | None]:
        """Store a payload and, if the instance waits on its key, claim it; one transaction.

        Returns ``"not_found"`` (no instance), ``"finished"`` (completed, failed or
        cancelled: nothing stored), ``"superseded"`` (the key already has a payload:
        nothing stored), ``"timed_out"`` (its deadline passed first: nothing stored),
        ``"claimed"`` (stored, and the instance was ``suspended`` on this key and is now
        ``running``), or ``"stored"`` (kept for when
        the instance reaches the point). The record is the instance after the transaction
        (``None`` if not found), except for ``"claimed"``: then it is the instance the
        caller must run — the claimed one, or for a child its top-level ancestor, since
        claiming a child also claims its suspended ancestors (children run inside their
        parent).
        """
        ...

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
        """Record a ``running`` instance as ``suspended`` on *waiting_on*; one transaction.

        With *extend*, the instance is ``suspended`` already (by the same run, a moment
        ago) and *waiting_on* adds keys registered since; refused if it was claimed.
        With *fence* (shared databases), the run's engine must still hold the top-level
        instance, else :class:`~memable.StorageError` and nothing changes.

        Refused (``False``, nothing suspended) when any key in *waiting_on* already has a
        signal, or a timer that fired or is due at *now* (which this call fires: a due
        ``timeout`` timer gets its timed-out marker), or a child of a fan-out it waits for
        is ``running``: then the caller runs the instance again at once.
        """
        ...

    def next_deadline(self) -> float | None:
        """Return the earliest deadline of the timers not yet fired, or ``None``."""
        ...

    def fire_timers(self, now: float, limit: int = 500) -> list[InstanceRecord]:
        """Fire at most *limit* timers due at *now*; claim the instances suspended on them.

        One transaction: each due timer is marked fired (a ``timeout`` timer stores its
        timed-out marker unless a payload came first); every instance ``suspended`` on a
        fired key becomes ``running``, and the instances to run are returned (for a child,
        its top-level ancestor, as in :meth:`deliver_signal`).
        """
        ...

    def cancel(
        self, instance_id: str, *, reason: str, now: float
    ) -> tuple[InstanceRecord | None, InstanceRecord | None]:
        """End a ``running`` or ``suspended`` instance and its descendants as ``cancelled``.

        One transaction. Returns the record as it was before (``None`` if it was not
        cancellable) and the instance to run because of it, if any: cancelling a child
        claims a parent suspended on its fan-out (its top-level ancestor is returned).
        """
        ...

    def purge(
        self,
        *,
        finished_before: float,
        workflow: str | None = None,
        exclude: Sequence[str] = (),
        batch: int = 100,
        limit: int | None = None,
    ) -> int:
        """Delete finished top-level instances with everything of theirs; return how many.

        Deletes instances ``completed``, ``failed`` or ``cancelled`` before
        *finished_before* (of *workflow* if given, none of *exclude*), with all their
        steps, signals, timers and descendants: one transaction per *batch* instances, at
        most *limit* instances in all (``None``: every one). The engine asks for one batch
        per call, so that other writes go between batches.
        Running and suspended instances are never deleted.
        """
        ...

    def restart(
        self, instance_id: str, *, only_if: Sequence[InstanceState], updated_at: float
    ) -> InstanceRecord | None:
        """Set the instance ``running`` again and delete its dead letters, in one transaction.

        Only if its status is in *only_if*; returns the updated record, else ``None``.
        Its ``failed`` and ``cancelled`` descendants are set ``running`` again too (their
        dead letters deleted), so a fan-out that failed runs those children again.
        """
        ...


class QueueStorage(Protocol):
    """What a storage adds for queues and schedules (the built-in backends have it).

    Each method is one transaction of the rules in ``memable._rules`` over the queue and
    schedule primitives of the backend's transactions.
    """

    def define_queue(self, row: QueueRecord) -> QueueRecord:
        """Store the queue's limits, creating its row; its pause and rate window stay."""
        ...

    def pause_queue(self, name: str, paused: bool) -> bool:
        """Pause or resume the queue's admission; whether the queue has a row."""
        ...

    def admit(self, name: str, *, now: float, workflows: Collection[str]) -> Admission:
        """Start the queue's next ``enqueued`` instances of *workflows* that its
        concurrency and rate limit allow, holding the queue's row while it counts."""
        ...

    def list_queues(self) -> list[tuple[QueueRecord, dict[str, int]]]:
        """Every queue's row, by name, with how many of its instances are ``enqueued``,
        ``running`` and ``suspended`` (statuses with none are left out); a plain read."""
        ...

    def list_schedules(self) -> list[ScheduleRecord]:
        """Every schedule's row, by name; a plain read."""
        ...

    def define_schedule(self, name: str, now: float) -> ScheduleRecord:
        """The schedule's row, created with ``last_tick`` *now* if it has none."""
        ...

    def tick_schedule(
        self,
        name: str,
        *,
        expected: float,
        last_tick: float,
        records: Sequence[InstanceRecord],
        overlap: bool,
    ) -> tuple[ScheduleRecord | None, list[InstanceRecord] | None]:
        """Compare-and-set the schedule's last tick from *expected* to *last_tick* and
        create the instances of the ticks (skipped when *overlap* is false and the
        previous one is unfinished); on a stale *expected*, the stored row and ``None``."""


@runtime_checkable
class SharedStorage(Storage, Protocol):
    """A storage several engines share (each in its own process or machine).

    An engine that finds these methods runs its instances under claims: each engine
    registers a row with a fresh id (:attr:`engine_id`, set by ``open``) and renews it
    with :meth:`heartbeat`; instances it creates or claims are held by it at an epoch,
    and every write of a run carries that claim (:class:`~memable.storage.Fence`), so a
    paused engine's late writes are refused. :meth:`claim` reaps engines whose lease
    expired and claims what is claimable; :meth:`hints` waits for another engine's
    writes. ``close`` hands the engine's instances back at once.
    """

    #: This engine's id while open (a fresh one per ``open``), else ``None``.
    engine_id: str | None
    #: Seconds an engine may go without a heartbeat before others reap it.
    lease: float
    #: Seconds between polls for work when no hint comes.
    poll_interval: float
    #: The names of the workflows this engine runs (the engine sets it): an instance of
    #: one that this engine's transaction claims is held by this engine at once.
    runs: frozenset[str]

    def claim(
        self, workflows: Sequence[str], limit: int, *, held: bool = True
    ) -> list[InstanceRecord]:
        """Reap expired engines; claim up to *limit* claimable top-level ``running``
        instances of *workflows*; return them (with *held*, also the ``running`` ones
        this engine holds already)."""
        ...

    def acquire(self, instance_id: str) -> InstanceRecord | None:
        """Claim one claimable top-level instance (or find it held here); else ``None``."""
        ...

    def heartbeat(self, held: Sequence[tuple[str, int]]) -> list[str] | None:
        """Renew this engine's lease (on a connection of its own).

        Returns the ids among *held* (``(instance_id, epoch)`` pairs) that this engine
        no longer holds, or ``None`` if the engine was reaped: then a new
        :attr:`engine_id` is registered and the engine must stop every run.
        """
        ...

    def hints(self, timeout: float) -> list[str] | None:
        """Wait up to *timeout* seconds for another engine's changes (a dedicated
        connection, not the pool); return the instance ids they name (``""``: any), or
        ``None`` after the listener reconnected (everything must be polled again).

        An id prefixed with :data:`TAKEN` names an instance that nobody can claim now
        (its writer holds it, or it waits or ended): it concerns those who wait for it or
        follow it, not the claimer."""
        ...
