"""The engine's background tasks: the timer scheduler and retention."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import anyio

from ._exceptions import StorageError

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["TimerScheduler", "retain"]

logger = logging.getLogger("memable")


class TimerScheduler:
    """Sleeps exactly until the earliest unfired timer deadline, fires, repeats.

    There is no polling: a timer written with a nearer deadline wakes it early
    (:meth:`added`), and overdue timers fire as soon as it starts.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.next_deadline: float | None = None  # what it sleeps until (None: no timer)
        self._scope: anyio.CancelScope | None = None  # of its sleep
        self._stale = False  # a nearer timer was written since it read the deadline
        self._asleep = False

    async def run(self) -> None:
        engine = self._engine
        storage = engine._storage
        with engine._system_task():
            while True:
                self._stale = False
                try:
                    deadline = await engine._storage_call(storage.next_deadline)
                except StorageError:
                    await storage_trouble("reading timers")
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
                            await engine._clock.sleep_until(datetime.fromtimestamp(deadline, UTC))
                    finally:
                        self._asleep = False
                self._scope = None
                if scope.cancelled_caught:
                    continue
                try:
                    claimed = await engine._storage_call(storage.fire_timers, engine._now())
                except StorageError:
                    await storage_trouble("firing timers")
                    continue
                for record in claimed:
                    engine._runner.claimed(record)

    def added(self, deadline: float) -> None:
        """Wake the scheduler if *deadline* is nearer than the one it sleeps until."""
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
            and (self.next_deadline is None or self.next_deadline > self._engine._now())
        )


async def retain(engine: Engine) -> None:
    """Purge by retention periodically: every tenth of the shortest retention, at most
    hourly, at least every second."""
    own = {wf.name: wf.retention for wf in engine._workflows.values() if wf.retention}
    default = engine._retention
    interval = min(
        timedelta(hours=1),
        max(timedelta(seconds=1), min([*own.values(), *([default] if default else [])]) / 10),
    )
    storage = engine._storage
    with engine._system_task():
        while True:
            now = engine._now()
            try:
                for name, retention in own.items():
                    await engine._storage_call(
                        storage.purge,
                        finished_before=now - retention.total_seconds(),
                        workflow=name,
                    )
                if default is not None:
                    await engine._storage_call(
                        storage.purge,
                        finished_before=now - default.total_seconds(),
                        exclude=tuple(own),
                    )
            except StorageError:
                logger.exception("storage failed while purging; trying again later")
            await engine._clock.sleep_until(engine._clock.now() + interval)


async def storage_trouble(doing: str) -> None:
    """A background task met a storage error: log it, wait a little, try again."""
    logger.exception("storage failed while %s; retrying in a second", doing)
    await anyio.sleep(1.0)
