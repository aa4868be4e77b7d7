"""The engine's background tasks: the timer scheduler, the healer and retention.

Each catches what storage throws at it, logs it and tries again after a backoff: a
background task never stops the engine (a bad row fails or skips one instance only).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import anyio

from ._log import logger

if TYPE_CHECKING:
    from ._kernel import Kernel
    from ._records import InstanceRecord
    from ._runner import Runner
    from .storage._protocol import Storage

__all__ = ["TimerScheduler", "heal", "recover", "retain"]


_BATCH = 500  # due timers fired per transaction, at most
_FIRST_BATCH = 32  # the first batch after a sleep: the first instance resumes at once


class TimerScheduler:
    """Sleeps exactly until the earliest unfired timer deadline, fires, repeats.

    There is no polling: a timer written with a nearer deadline wakes it early
    (:meth:`added`, the kernel's ``wake_timers``), and overdue timers fire as soon as it
    starts, in bounded batches: at most as many as there are free task slots
    (``max_running``), and at most 500 per transaction.
    """

    def __init__(
        self,
        kernel: Kernel,
        claimed: Callable[[InstanceRecord], None],
        room: Callable[[], Awaitable[int]],
    ) -> None:
        self._kernel = kernel
        self._claimed = claimed
        self._room = room  # waits for task slots; how many are free
        self.next_deadline: float | None = None  # what it sleeps until (None: no timer)
        self._scope: anyio.CancelScope | None = None  # of its sleep
        self._stale = False  # a nearer timer was written since it read the deadline
        self._asleep = False
        self._busy = False  # the last batch was full: more timers are likely due
        self._batch = _FIRST_BATCH
        kernel.wake_timers = self.added

    async def run(self) -> None:
        kernel = self._kernel
        while True:
            self._stale = False
            try:
                deadline = await kernel.store.next_deadline()
            except Exception:
                await storage_trouble(kernel, "reading timers")
                continue
            self.next_deadline = deadline
            if self._stale:
                continue  # a nearer timer was written meanwhile
            with anyio.CancelScope() as scope:
                self._scope = scope
                self._asleep = True
                try:
                    if deadline is None:
                        await anyio.sleep_forever()
                    else:
                        await kernel.clock.sleep_until(_as_datetime(deadline))
                finally:
                    self._asleep = False
            self._scope = None
            if scope.cancelled_caught:
                continue
            # Claim no more instances than may run now: a burst of due timers (100,000
            # overdue at start) is fired in bounded batches as running instances end.
            free = await self._room()
            # Batches grow from small (the first due instance runs within milliseconds)
            # to _BATCH while timers keep coming due back to back.
            batch = self._batch if self._busy else _FIRST_BATCH
            with kernel.claims.claiming():  # what it fires is held here until it runs
                try:
                    claimed = await kernel.store.fire_timers(kernel.now(), min(free, batch))
                except Exception:
                    claimed = None
                if claimed is not None:
                    for record in claimed:
                        self._claimed(record)
            if claimed is None:
                await storage_trouble(kernel, "firing timers")
                continue
            self._busy = len(claimed) >= min(free, batch)  # more may be due right away
            self._batch = min(_BATCH, batch * 2) if self._busy else _FIRST_BATCH

    def added(self, deadline: float) -> None:
        """Wake the scheduler if *deadline* is nearer than the one it sleeps until.

        While it is awake (reading the next deadline, or firing), it reads again before
        it sleeps, whatever *deadline* is: a read that began before the timer was
        committed does not see it, and what it compares with meanwhile (``-inf`` after
        a wake-up for a re-read) says nothing about the timers that read will find.
        """
        if not self._asleep:
            self._stale = True
        if self.next_deadline is None or deadline < self.next_deadline:
            self.next_deadline = deadline
            self._stale = True
            if self._scope is not None:
                self._scope.cancel()

    def settled(self) -> bool:
        """Whether no timer is due that has not been fired (for ManualClock)."""
        return (
            self._asleep
            and not self._stale
            and (self.next_deadline is None or self.next_deadline > self._kernel.now())
        )


def _as_datetime(deadline: float) -> datetime:
    try:
        return datetime.fromtimestamp(deadline, UTC)
    except (OverflowError, OSError, ValueError):  # a corrupt row: never due
        return datetime.max.replace(tzinfo=UTC)


async def recover(kernel: Kernel, runner: Runner, storage: Storage, *, shared: bool) -> None:
    """Run the instances a crash left ``running`` (on a shared database: those nobody
    holds, claimed here), as the engine starts; report those of unregistered workflows."""
    if shared:
        # Claims pass over the instances of workflows not registered here: say so.
        for record in await kernel.store.call(storage.list_instances, status="running", limit=1000):
            if record.parent_id is None and record.owner is None:
                runner.claimed(record)  # claims it, or logs that it cannot run it
    records = await kernel.store.running()
    for record in records:
        if record.parent_id is None:  # children are driven by their parent
            runner.claimed(record)
    if records:
        logger.info("recovering %d running instances", len(records))


async def heal(kernel: Kernel, runner: Runner) -> None:
    """After storage trouble, re-scan: every ``running`` top-level instance without a
    task here gets one (a signal or claim whose answer was lost, a run that gave up)."""
    try:
        while True:
            await kernel.wait_trouble()
            delay = 0.05
            while True:
                await anyio.sleep(delay)
                with kernel.claims.claiming():  # what it finds held here gets its run
                    try:
                        records = await kernel.store.running()
                    except Exception:
                        logger.warning("storage still failing; re-scanning in %.2f s", delay)
                        delay = min(5.0, delay * 2)
                        continue
                    for record in records:
                        # Top-level, and neither run nor being created here right now.
                        if record.parent_id is None and record.instance_id not in runner.runs:
                            runner.claimed(record)
                break
            kernel.wake_timers(float("-inf"))  # the scheduler reads its deadline again
            kernel.rescanned()
    finally:  # the engine is closing: nobody waits for a re-scan that will not come
        kernel.rescanned(final=True)


async def retain(kernel: Kernel, default: timedelta | None) -> None:
    """Purge by retention periodically: every tenth of the shortest retention, at most
    hourly, at least every second."""
    own = {wf.name: wf.retention for wf in kernel.registry if wf.retention}
    interval = min(
        timedelta(hours=1),
        max(timedelta(seconds=1), min([*own.values(), *([default] if default else [])]) / 10),
    )
    while True:
        started = kernel.clock.now()
        now = started.timestamp()
        try:
            for name, retention in own.items():
                await kernel.store.purge(now - retention.total_seconds(), workflow=name)
            if default is not None:
                await kernel.store.purge(now - default.total_seconds(), exclude=tuple(own))
        except Exception:
            logger.exception("storage failed while purging; trying again later")
        # From the start of this round: time that passed while purging counts.
        await kernel.clock.sleep_until(started + interval)


async def storage_trouble(kernel: Kernel, doing: str) -> None:
    """A background task met a storage error: log it, wait a little, try again."""
    logger.exception("storage failed while %s; retrying in a second", doing)
    kernel.trouble()
    await anyio.sleep(1.0)
