"""Helpers for testing workflows: a clock you move by hand, crash injection, storage.

Example:
    >>> import anyio, memable
    >>> from datetime import timedelta
    >>> from memable.testing import ManualClock, MemoryStorage
    >>> @memable.workflow("reminder")
    ... async def reminder(ctx: memable.Context) -> str:
    ...     await ctx.sleep("wait:v1", timedelta(days=3))
    ...     return "remind!"
    >>> async def main() -> str:
    ...     clock = ManualClock()
    ...     async with memable.Engine(MemoryStorage(), workflows=[reminder], clock=clock) as engine:
    ...         invocation = await engine.invoke(reminder)
    ...         await invocation.wait()               # suspended on the timer
    ...         await clock.advance(timedelta(days=3))  # fires it at once
    ...         return await invocation.result()
    >>> anyio.run(main)
    'remind!'
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Literal, final

import anyio
import anyio.lowlevel

from .._engine import Engine
from ..storage import MemoryStorage

__all__ = ["ManualClock", "MemoryStorage", "crash_at"]

#: Real seconds :meth:`ManualClock.advance` waits at most for engines to fire timers.
_SETTLE_LIMIT = 10.0


@final
class _Sleeper:
    __slots__ = ("deadline", "event")

    def __init__(self, deadline: datetime) -> None:
        self.deadline = deadline
        self.event = anyio.Event()


@final
class ManualClock:
    """A :class:`~memable.Clock` that stands still until :meth:`advance` moves it.

    Give it to ``Engine(clock=...)``: durable timers then fire when the test advances
    the clock, so a flow that waits three days is tested in milliseconds.

    Args:
        start: The initial time (timezone-aware); 2026-01-01 00:00 UTC by default.

    Example:
        >>> from datetime import timedelta
        >>> clock = ManualClock()
        >>> clock.now().isoformat()
        '2026-01-01T00:00:00+00:00'
    """

    def __init__(self, start: datetime | None = None) -> None:
        if start is None:
            start = datetime(2026, 1, 1, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError(f"ManualClock needs a timezone-aware start, not {start!r}")
        self._now = start.astimezone(UTC)
        self._sleepers: set[_Sleeper] = set()
        self._engines: weakref.WeakSet[Engine] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"ManualClock({self._now.isoformat()})"

    def now(self) -> datetime:
        """Return the clock's current time."""
        return self._now

    async def sleep_until(self, deadline: datetime) -> None:
        """Return once :meth:`advance` has moved the clock to *deadline* or past it."""
        if deadline <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        sleeper = _Sleeper(deadline)
        self._sleepers.add(sleeper)
        try:
            await sleeper.event.wait()
        finally:
            self._sleepers.discard(sleeper)

    async def advance(self, delta: timedelta) -> None:
        """Move the clock forward by *delta* and let the engines fire what fell due.

        When this returns, every timer due by the new time has fired, and the instances
        it resumed have started running (``await invocation.wait()`` then waits for them).

        Example:
            >>> from datetime import timedelta
            >>> async def test(clock: ManualClock) -> None:
            ...     await clock.advance(timedelta(days=3))
        """
        if delta < timedelta(0):
            raise ValueError(f"a clock only moves forward, not by {delta}")
        self._now += delta
        woken = [sleeper for sleeper in self._sleepers if sleeper.deadline <= self._now]
        for sleeper in woken:
            sleeper.event.set()
        await self._settle()

    def _attach(self, engine: Engine) -> None:
        """Called by an engine using this clock, so :meth:`advance` can wait for it."""
        self._engines.add(engine)

    async def _settle(self) -> None:
        """Wait until every engine on this clock has fired the timers that are due."""
        with anyio.move_on_after(_SETTLE_LIMIT):
            while not all(engine._timers_settled() for engine in list(self._engines)):
                await anyio.sleep(0.0005)
        # One more round, so the instances just claimed get to start.
        await anyio.lowlevel.checkpoint()

    async def set(self, when: datetime) -> None:
        """Move the clock forward to *when* (see :meth:`advance`)."""
        await self.advance(when - self._now)


@contextlib.contextmanager
def crash_at(
    engine: Engine, key: str, *, when: Literal["before", "after"] = "before"
) -> Iterator[None]:
    """End the next run that reaches step *key* as if the process died there.

    ``when="before"``: the step's body does not run. ``when="after"``: the body runs but
    its result is not recorded. Either way nothing more is written for that run: the
    instance stays ``running`` in storage, as after a real crash, and a new engine on
    the same storage recovers it.

    Example:
        >>> import memable
        >>> async def test(engine: memable.Engine, wf: memable.Workflow[str, int]) -> None:
        ...     with crash_at(engine, "charge:v1", when="after"):
        ...         await (await engine.invoke(wf, "o-1")).wait()
    """
    point = (key, when)
    engine._crash_points.add(point)
    try:
        yield
    finally:
        engine._crash_points.discard(point)
