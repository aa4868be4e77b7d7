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
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NoReturn, final

import anyio

from .._engine import Engine, kernel_of
from .._exceptions import StorageError
from .._invocation import Invocation
from .._outcome import Suspended
from .._records import Suspension, Write
from ..storage import MemoryStorage, Storage

__all__ = ["FaultyStorage", "ManualClock", "MemoryStorage", "crash_at", "run_until_suspended"]

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
        self._engines: list[weakref.WeakMethod[Callable[[], bool]]] = []

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
            >>> import anyio
            >>> from datetime import timedelta
            >>> clock = ManualClock()
            >>> anyio.run(clock.advance, timedelta(days=3))
            >>> clock.now().isoformat()
            '2026-01-04T00:00:00+00:00'
        """
        if delta < timedelta(0):
            raise ValueError(f"a clock only moves forward, not by {delta}")
        self._now += delta
        woken = [sleeper for sleeper in self._sleepers if sleeper.deadline <= self._now]
        for sleeper in woken:
            sleeper.event.set()
        await self._settle()

    def attach(self, settled: Callable[[], bool]) -> None:
        """Called by each engine using this clock with a method that says whether it has
        fired every due timer, so that :meth:`advance` can wait for it (held weakly)."""
        self._engines = [ref for ref in self._engines if ref() is not None]
        self._engines.append(weakref.WeakMethod(settled))

    def _settled(self) -> bool:
        return all(check() for ref in self._engines if (check := ref()) is not None)

    async def _settle(self) -> None:
        """Wait until every engine on this clock has fired the timers that are due."""
        with anyio.move_on_after(_SETTLE_LIMIT):
            while not self._settled():
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

    ``await invocation.wait()`` on the crashed instance in the same engine raises
    :class:`~memable.NotStarted` once the run has ended: the instance is ``running`` in
    storage but nothing runs it any more. Leave the engine and open a new one on the same
    storage to see it recovered.

    Example:
        >>> import anyio, memable
        >>> from memable.testing import MemoryStorage, crash_at
        >>> charged: list[str] = []
        >>> async def charge(order_id: str) -> str:
        ...     charged.append(order_id)
        ...     return f"ch-{order_id}"
        >>> @memable.workflow("order")
        ... async def order(ctx: memable.Context, order_id: str) -> str:
        ...     return await ctx.step("charge:v1", charge, order_id)
        >>> async def main() -> str:
        ...     storage = MemoryStorage()
        ...     async with memable.Engine(storage, workflows=[order]) as engine:
        ...         with crash_at(engine, "charge:v1", when="after"):
        ...             invocation = await engine.invoke(order, "o-1", instance_id="o-1")
        ...             try:
        ...                 await invocation.wait()  # returns once the run has "died"
        ...             except memable.NotStarted:
        ...                 print("crashed")
        ...         print((await engine.state(order, "o-1")).status)
        ...     async with memable.Engine(storage, workflows=[order]) as engine:  # a restart
        ...         return await engine.handle(order, "o-1").result()
        >>> anyio.run(main)
        crashed
        running
        'ch-o-1'
        >>> charged  # the body ran twice: at least once, recorded exactly once
        ['o-1', 'o-1']
    """
    point = (key, when)
    points = kernel_of(engine).crash_points
    points.add(point)
    try:
        yield
    finally:
        points.discard(point)


async def run_until_suspended(
    invocation: Invocation[Any], *, waiting_on: Collection[str] = ()
) -> Suspended:
    """Wait for *invocation* and return its :class:`~memable.Suspended` outcome.

    Fails the test (``AssertionError``, naming the instance and what it did instead) if the
    instance completes, fails or is cancelled, or if it does not wait on every key of
    *waiting_on*.

    Example:
        >>> import anyio, memable
        >>> from memable.testing import run_until_suspended
        >>> approval = memable.SuspendPoint("approval:v1", bool)
        >>> @memable.workflow("order")
        ... async def order(ctx: memable.Context) -> bool:
        ...     return await ctx.suspend(approval, status="approve?")
        >>> async def main() -> bool:
        ...     async with memable.Engine(workflows=[order]) as engine:
        ...         invocation = await engine.invoke(order)
        ...         suspended = await run_until_suspended(invocation, waiting_on=["approval:v1"])
        ...         print(suspended.status)
        ...         await engine.signal(order, invocation.instance_id, approval, True)
        ...         return await invocation.result()
        >>> anyio.run(main)
        approve?
        True
    """
    outcome = await invocation.wait()
    if not isinstance(outcome, Suspended):
        raise AssertionError(
            f"instance {invocation.instance_id!r} of {invocation.workflow.name!r} did not "
            f"suspend: {outcome!r}"
        )
    missing = [key for key in waiting_on if key not in outcome.waiting_on]
    if missing:
        raise AssertionError(
            f"instance {invocation.instance_id!r} suspended waiting on "
            f"{list(outcome.waiting_on)}, not on {missing}"
        )
    return outcome


@final
class FaultyStorage:
    """A storage that fails on purpose: wraps another and raises on chosen calls.

    Every call of a storage method is counted (1, 2, …) across all methods, or only
    across *methods* if given. Calls whose number is in *fail_on* raise a
    :class:`~memable.StorageError` (``disk I/O error`` by default) — before the wrapped
    storage runs (``when="before"``: nothing is written), or after it ran and committed
    (``when="after"``: the write happened but the engine is told it failed).

    Args:
        inner: The storage to wrap.
        fail_on: Call numbers that fail.
        methods: Count only these methods (e.g. ``{"commit"}``). The engine suspends an
            instance through a commit: with ``"suspend"`` (and not ``"commit"``) in
            *methods*, a commit that writes a :class:`~memable.storage.Suspension`
            counts as a ``suspend`` call; the engine reads a history through a
            storage's ``load_replay`` where it has one, counted as ``load_history``.
        when: ``"before"`` or ``"after"`` the wrapped call.
        error: The message of the raised error.

    Example:
        >>> from memable.testing import FaultyStorage, MemoryStorage
        >>> storage = FaultyStorage(MemoryStorage(), fail_on={3}, methods={"commit"})
    """

    _METHODS = frozenset(
        {
            "open", "close", "create_instance", "get_instance", "list_instances",
            "load_steps", "load_history", "commit", "deliver_signal", "suspend",
            "next_deadline", "fire_timers", "cancel", "purge", "purgeable", "restart",
            "define_queue", "pause_queue", "admit", "define_schedule", "tick_schedule",
        }
    )  # fmt: skip

    def __init__(
        self,
        inner: Storage,
        *,
        fail_on: Collection[int],
        methods: Collection[str] | None = None,
        when: Literal["before", "after"] = "before",
        error: str = "disk I/O error",
    ) -> None:
        unknown = set(methods or ()) - self._METHODS
        if unknown:
            raise ValueError(f"not storage methods: {sorted(unknown)}")
        self.inner = inner
        self.fail_on = frozenset(fail_on)
        self.methods = None if methods is None else frozenset(methods)
        self.when = when
        self.error = error
        self.calls = 0
        self.failures: list[str] = []

    def __repr__(self) -> str:
        return f"FaultyStorage({self.inner!r}, fail_on={sorted(self.fail_on)})"

    @property
    def runs(self) -> frozenset[str]:
        """The workflows the engine runs, set on a shared storage (Postgres) by its engine:
        they reach the wrapped storage, which claims for the engine what it runs."""
        inner: Any = self.inner  # a SharedStorage's attribute (AttributeError on others)
        runs: frozenset[str] = inner.runs
        return runs

    @runs.setter
    def runs(self, value: frozenset[str]) -> None:
        inner: Any = self.inner
        inner.runs = value

    def _counted(self, name: str) -> bool:
        return name in self._METHODS and (self.methods is None or name in self.methods)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if name == "commit" and self._counted("suspend") and not self._counted("commit"):
            # The engine suspends through the group commit: a commit that writes a
            # suspension counts as a "suspend" call.
            def commit(writes: Sequence[Write]) -> Any:
                if any(isinstance(write, Suspension) for write in writes):
                    return self._call("suspend", method, writes)
                return method(writes)

            return commit
        if name == "load_replay":  # the engine's read of a history: counted as one
            name = "load_history"
        if not self._counted(name):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._call(name, method, *args, **kwargs)

        return call

    def _call(self, name: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        fail = self.calls in self.fail_on
        if fail and self.when == "before":
            self._fail(name)
        result = method(*args, **kwargs)
        if fail:
            self._fail(name)
        return result

    def _fail(self, name: str) -> NoReturn:
        self.failures.append(name)
        raise StorageError(f"{self.error} (injected into call {self.calls}, {name})")
