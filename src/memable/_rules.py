"""The rules of state, written once, over a backend's transaction primitives.

Each function here is one transaction's worth of decisions: what a signal, a due timer,
a suspension, a cancel, a resume, a purge and a child's end do to an instance and its
family. They read and write only through :class:`~memable.storage._tx.Tx` (rows read for
update, insert-if-absent, compare-and-set, delete a family), so every backend — the
in-memory reference, SQLite, and any shared database — obeys the same rules. Every status
change goes through :func:`move`, which checks :mod:`memable._state`'s table: an illegal
transition is an internal error naming the instance, never a silent write.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Final

import attrs

from . import _ids
from ._records import (
    Admission,
    Fence,
    InstanceRecord,
    InstanceState,
    InstanceUpdate,
    QueueRecord,
    ScheduleRecord,
    SignalDrop,
    SignalOutcome,
    SignalRecord,
    StepRecord,
    Suspension,
    TimerRecord,
    Write,
)
from ._state import FINISHED, IllegalTransition, check_move
from ._tx import Fenced, Guard, Tx

__all__ = [
    "admit",
    "cancel",
    "check_fence",
    "check_holders",
    "commit",
    "create",
    "define_queue",
    "define_schedule",
    "deliver_signal",
    "fire_timers",
    "move",
    "pause_queue",
    "purge",
    "restart",
    "suspend",
    "tick",
]

_LIVE: Final = frozenset[InstanceState]({"enqueued", "running", "suspended"})
#: The states from which an instance of a queue may be moved to ``running``: ``enqueued``
#: (admission), and ``running`` (recovery or ``resume`` of one that holds its slot).
_QUEUED_RUNS_FROM: Final = frozenset[InstanceState]({"enqueued", "running"})

#: How many instances one admission transaction starts at most.
ADMIT_BATCH: Final = 100
_RUNNING: Final = frozenset[InstanceState]({"running"})


def move(
    tx: Tx, record: InstanceRecord, new: InstanceState, now: float, **changes: object
) -> InstanceRecord | None:
    """Move *record* to *new* (checked against the state table) by compare-and-set.

    The compare is on the status and on the holder ``(owner, epoch)`` read with it.
    Every move lets go of the instance (``owner`` becomes ``None``); a move to
    ``running`` is a claim and bumps the epoch, so whoever held it before is fenced off;
    the engine whose transaction this is takes a top-level instance if it runs the
    workflow, else one that does claims it later (on a shared database).

    An instance of a queue starts ``running`` only from ``enqueued``, which only
    admission does (:func:`admit`, holding the queue's row), so the queue's limits hold.
    Returns the new row, or ``None`` if the row changed since it was read.
    """
    check_move(record.instance_id, record.status, new)
    if new == "running" and record.queue is not None and record.status not in _QUEUED_RUNS_FROM:
        raise IllegalTransition(
            f"instance {record.instance_id!r} of queue {record.queue!r} can start running"
            " only by admission"
        )
    fields: dict[str, object] = {"status": new, "updated_at": now, **changes}
    guard = Guard(frozenset({record.status}))
    if tx.holds_claims:
        fields["owner"] = None
        if new == "running":
            fields["epoch"] = record.epoch + 1
            if record.parent_id is None:  # the engine deciding takes it, if it runs it
                fields["owner"] = tx.claimant(record.workflow)
        guard = Guard(guard.status, holder=(record.owner, record.epoch))
    if not tx.update(record.instance_id, guard, fields):
        return None
    return attrs.evolve(record, **fields)  # type: ignore[arg-type]


def create(tx: Tx, record: InstanceRecord) -> tuple[InstanceRecord, bool]:
    """Insert a new instance unless its id exists: the stored one, and whether it is new."""
    existing = tx.instance(record.instance_id)
    if existing is None and tx.insert(record):
        return record, True
    # It exists, or another transaction inserted it since the read (a shared database).
    existing = existing or tx.instance(record.instance_id)
    assert existing is not None
    return existing, False


def commit(tx: Tx, writes: Sequence[Write]) -> list[bool]:
    """Apply the writes of running instances; return which of them applied.

    The step records go first, all in one call (they read nothing the other writes
    change, nor the reverse), then the other writes in order.

    A step record never overwrites a completed result; timers, signals and child instances
    are inserted unless they exist; a signal drop deletes a payload nobody can read; a
    suspension applies :func:`suspend` (applied: the instance is suspended); an
    update applies only while its ``only_if`` holds, and one that changes the status is
    checked against the state table. An instance that
    finishes takes its unfinished descendants with it (cancelled: nothing drives them).
    A :class:`~memable.storage.Fence` refuses the whole commit (:class:`Fenced`) unless
    its engine still holds the instance at its epoch.
    """
    fences = [write for write in writes if isinstance(write, Fence)]
    if fences:  # every claim checked up front, in one read
        check_holders(fences, tx.holders(sorted({fence.instance_id for fence in fences})))
    applied: list[bool] = [True] * len(writes)
    # Step records touch nothing the other writes read (nor the reverse): all of them in
    # one call, whichever callers of a group commit they came from.
    steps = [(index, write) for index, write in enumerate(writes) if isinstance(write, StepRecord)]
    if steps:
        written = tx.put_steps([step for _, step in steps])
        for (index, _), ok in zip(steps, written, strict=True):
            applied[index] = ok
    for index, write in enumerate(writes):
        if isinstance(write, (StepRecord, Fence)):
            continue
        if isinstance(write, InstanceUpdate):
            applied[index] = _update(tx, write)
        elif isinstance(write, SignalDrop):
            applied[index] = tx.delete_signal(write.instance_id, write.key)
        elif isinstance(write, Suspension):
            applied[index] = suspend(
                tx,
                write.instance_id,
                waiting_on=write.waiting_on,
                status_message=write.status_message,
                now=write.now,
                extend=write.extend,
            )
        else:
            applied[index] = tx.insert(write)
    return applied


def check_holders(fences: Sequence[Fence], holders: Mapping[str, tuple[str | None, int]]) -> None:
    """Raise :class:`Fenced` unless every fence's engine holds its instance at its epoch
    (*holders*: ``(owner, epoch)`` of the instances that exist, read for update)."""
    for fence in fences:
        _check_holder(fence, holders.get(fence.instance_id), fence.suspended)


def check_fence(tx: Tx, fence: Fence, *, suspended: bool = False) -> None:
    """Raise :class:`Fenced` unless *fence*'s engine holds its instance at its epoch.

    With *suspended*, the run itself suspended the instance a moment ago (letting it
    go): then only the epoch must be the same (nobody claimed it since).
    """
    _check_holder(fence, tx.holders([fence.instance_id]).get(fence.instance_id), suspended)


def _check_holder(
    fence: Fence, holder: tuple[str | None, int] | None, suspended: bool = False
) -> None:
    if holder is not None:
        owner, epoch = holder
        if epoch == fence.epoch and (owner == fence.owner or (suspended and owner is None)):
            return
    raise Fenced(
        f"instance {fence.instance_id!r} is no longer held by this engine (another engine"
        " claimed it, it was cancelled, or this engine's lease expired); its write is"
        " refused and its run here stops"
    )


def _update(tx: Tx, update: InstanceUpdate) -> bool:
    changes: dict[str, object] = {
        name: value
        for name in ("status_message", "output", "error", "waiting_on", "finished_at")
        if (value := getattr(update, name)) is not None
    }
    changes["updated_at"] = update.updated_at
    guard = Guard(frozenset(update.only_if))
    if update.status is None:
        return tx.update(update.instance_id, guard, changes)
    record = tx.instance(update.instance_id)
    if record is None or not guard.allows(record.status):
        return False
    moved = move(tx, record, update.status, update.updated_at, **changes)
    if moved is not None and update.status in FINISHED:
        _end_orphans(tx, moved, update.updated_at)
    return moved is not None


def _end_orphans(tx: Tx, record: InstanceRecord, now: float) -> None:
    """Cancel the unfinished descendants of an instance that has just finished."""
    for member in tx.family(record.instance_id):
        if member.instance_id != record.instance_id and member.status in _LIVE:
            _cancel_one(tx, member, f"its parent {record.status}", now)


def deliver_signal(tx: Tx, signal: SignalRecord) -> tuple[SignalOutcome, InstanceRecord | None]:
    """Store a payload and claim the instance if it waits on the point.

    ``"superseded"`` or ``"timed_out"`` (a payload, or the deadline, came first) store
    nothing. ``"claimed"`` returns the instance to run: the claimed one, or for a child its
    top-level ancestor (children run inside their parent).
    """
    record = tx.instance(signal.instance_id)
    if record is None:
        return "not_found", None
    if record.status in FINISHED:
        return "finished", record
    existing = tx.signal(signal.instance_id, signal.key)
    if existing is not None:
        return ("timed_out" if existing.timed_out else "superseded"), record
    if record.status == "suspended" and signal.key in record.waiting_on:
        tx.insert(attrs.evolve(signal, early=False))
        return "claimed", _claim(tx, record, signal.created_at)
    tx.insert(attrs.evolve(signal, early=True))
    return "stored", record


def suspend(
    tx: Tx,
    instance_id: str,
    *,
    waiting_on: Sequence[str],
    status_message: str | None,
    now: float,
    extend: bool = False,
    fence: Fence | None = None,
) -> bool:
    """Record a running instance as suspended on *waiting_on*, unless one has come.

    Refused (nothing suspended; the run goes again) when a waited point has a payload, a
    waited timer has fired or is due at *now* (firing it here), or a child the instance
    waits for is running. With *extend*, the instance was just suspended by the same run
    and *waiting_on* adds keys registered meanwhile (refused if it was claimed since).
    With *fence*, the run's engine must still hold the top-level instance
    (:class:`Fenced` otherwise).
    """
    if fence is not None:
        check_fence(tx, fence, suspended=extend or fence.instance_id != instance_id)
    record = tx.instance(instance_id)
    if record is None or record.status != ("suspended" if extend else "running"):
        return False
    timers = {timer.key: timer for timer in tx.timers(instance_id)}
    ready = False
    for key in waiting_on:
        if _ids.is_children_key(key):
            prefix = _ids.child_prefix(instance_id, _ids.fan_out_of(key))
            if tx.children(instance_id, prefix, _RUNNING, limit=1):
                ready = True
            continue
        if tx.signal(instance_id, key) is not None:
            ready = True
        timer = timers.get(key)
        if timer is not None and (timer.fired or timer.deadline <= now):
            if not timer.fired:
                _fire(tx, timer, now)
            ready = True
    if ready:
        if extend:  # it was suspended a moment ago: take it back to run it again
            # (an instance of a queue gave its slot back: it waits for admission again)
            move(tx, record, "enqueued" if record.queue is not None else "running", now)
        return False
    changes: dict[str, object] = {"waiting_on": tuple(waiting_on), "status_message": status_message}
    if extend:
        changes["updated_at"] = now
        holder = (record.owner, record.epoch) if tx.holds_claims else None
        return tx.update(instance_id, Guard(frozenset({"suspended"}), holder=holder), changes)
    return move(tx, record, "suspended", now, **changes) is not None


def fire_timers(tx: Tx, now: float, limit: int = 500) -> list[InstanceRecord]:
    """Fire at most *limit* due timers; return the instances to run (top-level, once each)."""
    claimed: dict[str, InstanceRecord] = {}
    for timer in tx.due_timers(now, limit):
        _fire(tx, timer, now)
        record = tx.instance(timer.instance_id)
        if record is not None and record.status == "suspended" and timer.key in record.waiting_on:
            root = _claim(tx, record, now)
            claimed[root.instance_id] = root
    return list(claimed.values())


def cancel(
    tx: Tx, instance_id: str, *, reason: str, now: float
) -> tuple[InstanceRecord | None, InstanceRecord | None]:
    """End a running or suspended instance and its unfinished descendants as cancelled.

    Returns the row as it was before (``None`` if it was not cancellable), and the
    instance to run because of it, if any: a cancelled child counts as a finished child,
    so a parent suspended on its fan-out is claimed (its top-level ancestor returned).
    """
    record = tx.instance(instance_id)
    if record is None or record.status not in _LIVE:
        return None, None
    for member in tx.family(instance_id):
        if member.status in _LIVE:
            _cancel_one(tx, member, reason, now)
    return record, _child_ended(tx, record, now)


def restart(
    tx: Tx, instance_id: str, *, only_if: Sequence[InstanceState], now: float
) -> InstanceRecord | None:
    """Set an instance running again and retire its dead letters (``resume``).

    Only from a state in *only_if*. Its failed and cancelled descendants run again too
    (their dead letters retired: kept for the history as earlier attempts), so a fan-out
    that failed runs those children again. An instance of a queue that is not running
    goes back to its place in the queue.
    """
    record = tx.instance(instance_id)
    if record is None or record.status not in only_if:
        return None
    if record.status == "running" and record.owner is not None:
        return None  # an engine holds it (runs it, or is reaped first if it died)
    restarted: InstanceRecord | None = None
    for member in tx.family(instance_id):
        is_self = member.instance_id == instance_id
        if is_self or member.status in ("failed", "cancelled"):
            queued = member.queue is not None and member.status != "running"
            new: InstanceState = "enqueued" if queued else "running"
            moved = move(tx, member, new, now, error=None, finished_at=None)
            tx.retire_dead_steps(member.instance_id)
            if is_self:
                restarted = moved
    return restarted


def purge(tx: Tx, instance_ids: Sequence[str]) -> int:
    """Delete those of *instance_ids* that are finished, with their families."""
    purged = 0
    for instance_id in instance_ids:
        record = tx.instance(instance_id)  # checked again: it may have been resumed
        if record is not None and record.status in FINISHED:
            tx.delete_family(instance_id)
            purged += 1
    return purged


def _cancel_one(tx: Tx, record: InstanceRecord, reason: str, now: float) -> None:
    move(tx, record, "cancelled", now, status_message=reason, waiting_on=(), finished_at=now)
    for timer in tx.timers(record.instance_id):
        if not timer.fired:
            tx.fire(timer.instance_id, timer.key)


def _child_ended(tx: Tx, child: InstanceRecord, now: float) -> InstanceRecord | None:
    """A child finished outside its parent's run: claim the parent if it waits for it."""
    if child.parent_id is None:
        return None
    parent = tx.instance(child.parent_id)
    if parent is None or parent.status != "suspended":
        return None
    if not any(_ids.is_children_key(key) for key in parent.waiting_on):
        return None
    return _claim(tx, parent, now)


def _claim(tx: Tx, record: InstanceRecord, now: float) -> InstanceRecord:
    """Claim a suspended instance and its suspended ancestors; return the one to run.

    A child runs inside its parent, so the top-level ancestor is what runs. A
    top-level instance of a queue is returned ``enqueued``: admission starts it.
    """
    while True:
        # waiting_on stays: the run reads which keys were points (shown only while suspended).
        # An instance of a queue goes back to its place in the queue instead.
        moved = move(tx, record, "enqueued" if record.queue is not None else "running", now)
        record = moved if moved is not None else record
        if record.parent_id is None:
            return record
        parent = tx.instance(record.parent_id)
        if parent is None:  # pragma: no cover - a child is never stored without its parent
            return record
        if parent.status != "suspended":
            root = tx.instance(_ids.root_of(record.instance_id))
            return root if root is not None else parent
        record = parent


def _fire(tx: Tx, timer: TimerRecord, now: float) -> None:
    """Mark a timer fired; a suspend point's deadline leaves its timed-out marker."""
    tx.fire(timer.instance_id, timer.key)
    if timer.kind == "timeout":
        tx.insert(SignalRecord(instance_id=timer.instance_id, key=timer.key, payload=None,
                               created_at=now))  # fmt: skip


# -- queues -------------------------------------------------------------------------------


def define_queue(tx: Tx, row: QueueRecord) -> QueueRecord:
    """Store a queue's limits (creating its row), keeping its pause and its rate window."""
    stored = tx.queue(row.name)
    if stored is None:
        if tx.put_queue(row, replace=False):
            return row
        stored = tx.queue(row.name)  # another engine stored it meanwhile
        assert stored is not None, f"queue {row.name!r} vanished"
    row = attrs.evolve(row, paused=stored.paused, starts=stored.starts)
    if row != stored:
        tx.put_queue(row)
    return row


def pause_queue(tx: Tx, name: str, paused: bool) -> bool:
    """Pause or resume admission of a queue; whether it has a row (it is known)."""
    stored = tx.queue(name)
    if stored is None:
        return False
    if stored.paused != paused:
        tx.put_queue(attrs.evolve(stored, paused=paused))
    return True


def admit(
    tx: Tx, name: str, *, now: float, workflows: Collection[str], limit: int = ADMIT_BATCH
) -> Admission:
    """Start the queue's next instances, as many as its free slots and rate allow.

    The queue's row is held first (:meth:`Tx.queue`), then the running instances are
    counted: under that lock no other admission can start one, so the count is exact.
    At most *limit* are started, in start order, of *workflows* only (the engine runs
    only what it registered). The rate limit is a sliding-window log in the row: a start
    at *now* is allowed while fewer than ``rate_count`` starts lie in the last
    ``rate_period`` seconds, so no window of that length ever holds more.
    """
    row = tx.queue(name)
    if row is None or row.paused:
        return Admission()
    free = limit
    if row.concurrency is not None:
        free = min(free, row.concurrency - tx.running_count(name))
    starts = row.starts
    count, period = row.rate_count, row.rate_period
    if count is not None and period is not None:
        starts = tuple(t for t in starts if t > now - period)
        free = min(free, count - len(starts))
    started: list[InstanceRecord] = []
    if free > 0:
        for record in tx.queued(name, workflows, free):
            moved = move(tx, record, "running", now)
            if moved is not None:
                started.append(moved)
    retry_at = None
    if count is not None and period is not None:
        starts = (*starts, *(now for _ in started))[-count:]
        if starts != row.starts:
            tx.put_queue(attrs.evolve(row, starts=starts))
        if len(starts) >= count:
            retry_at = starts[-count] + period
    return Admission(started=tuple(started), full=len(started) == limit, retry_at=retry_at)


# -- schedules ----------------------------------------------------------------------------


def define_schedule(tx: Tx, name: str, now: float) -> ScheduleRecord:
    """The schedule's row; a new schedule starts at *now* (no tick before it is due)."""
    row = tx.schedule(name)
    if row is None:
        row = ScheduleRecord(name=name, last_tick=now)
        if not tx.put_schedule(row, replace=False):  # another engine stored it meanwhile
            row = tx.schedule(name)
            assert row is not None, f"schedule {name!r} vanished"
    return row


def tick(
    tx: Tx,
    name: str,
    *,
    expected: float,
    last_tick: float,
    records: Sequence[InstanceRecord],
    overlap: bool,
) -> tuple[ScheduleRecord | None, list[InstanceRecord] | None]:
    """Handle a schedule's due ticks by compare-and-set on its last tick.

    Applies only while the stored ``last_tick`` is still *expected* (else returns the
    stored row and ``None``: another engine, or an earlier run, handled them; the caller
    recomputes from that row). Then sets ``last_tick`` to *last_tick* and creates the
    instances of the ticks (*records*, ids unique per tick), unless *overlap* is false and
    the schedule's previous instance has not finished: then the ticks are skipped. Returns
    the new row and the instances created (to run).
    """
    row = tx.schedule(name)
    if row is None or row.last_tick != expected:
        return row, None
    if not overlap and row.last_run is not None:
        previous = tx.instance(row.last_run)
        if previous is not None and previous.status not in FINISHED:
            records = ()
    created: list[InstanceRecord] = []
    for record in records:
        stored, new = create(tx, record)
        if new:
            created.append(stored)
    last_run = records[-1].instance_id if records else row.last_run
    row = ScheduleRecord(name=name, last_tick=last_tick, last_run=last_run)
    tx.put_schedule(row)
    return row, created
