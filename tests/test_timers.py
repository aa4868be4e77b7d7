"""Durable timers, the scheduler, and the controllable clock (asyncio and trio)."""

from __future__ import annotations

import functools
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

import memable
from memable import Context, Engine, SuspendPoint
from memable._background import TimerScheduler
from memable._kernel import Claims
from memable.storage import SQLiteStorage, Storage, TimerRecord
from memable.testing import ManualClock, MemoryStorage, crash_at

from .helpers import StorageFactory, peek


def napper(after: list[str], delay: timedelta, name: str = "nap") -> memable.Workflow[None, str]:
    async def wf(ctx: Context) -> str:
        await ctx.sleep("nap:v1", delay)
        after.append(ctx.instance_id)
        return "rested"

    return memable.Workflow(name, wf)


async def test_sleep_suspends_until_the_deadline(make_storage: StorageFactory) -> None:
    """A sleeping instance is suspended on its timer, and resumes only once it is due."""
    clock = ManualClock()
    after: list[str] = []
    wf = napper(after, timedelta(hours=1))
    async with Engine(make_storage(), workflows=[wf], clock=clock) as engine:
        invocation = await engine.invoke(wf, instance_id="n")
        assert await invocation.wait() == memable.Suspended(waiting_on=("nap:v1",))
        await clock.advance(timedelta(minutes=59))
        assert (await engine.state(wf, "n")).status == "suspended"
        await clock.advance(timedelta(minutes=1))
        assert await invocation.result() == "rested"
        assert await engine.run(wf, instance_id="n") == "rested"
    assert after == ["n"]


async def test_sleep_across_a_restart(db_path: Path) -> None:
    """A timer outlives its engine; an overdue one fires when the next engine starts."""
    clock = ManualClock()
    after: list[str] = []
    wf = napper(after, timedelta(days=1))
    async with Engine(db_path, workflows=[wf], clock=clock) as engine:
        await (await engine.invoke(wf, instance_id="a")).wait()
        await (await engine.invoke(wf, instance_id="b")).wait()
    async with Engine(db_path, workflows=[wf], clock=clock) as engine:
        await clock.advance(timedelta(days=1))
        assert await engine.handle(wf, "a").result() == "rested"
    await clock.advance(timedelta(days=1))  # no engine runs: b's timer is now overdue
    async with Engine(db_path, workflows=[wf], clock=clock) as engine:
        with anyio.fail_after(10):
            while (await engine.state(wf, "b")).status != "completed":
                await anyio.sleep(0.01)
    assert sorted(after) == ["a", "b"]


async def test_sleep_until_and_argument_checks(make_storage: StorageFactory) -> None:
    """sleep_until takes an aware datetime, sleep seconds or a timedelta; wrong arguments
    are TypeErrors, impossible ones ValueErrors, before anything is recorded."""
    clock = ManualClock(datetime(2026, 3, 1, tzinfo=UTC))

    @memable.workflow("until")
    async def wf(ctx: Context, kind: str) -> str:
        if kind == "naive":
            await ctx.sleep_until("u", datetime(2026, 3, 2))
        elif kind == "text":
            await ctx.sleep("s", "5")  # type: ignore[arg-type]
        elif kind == "nan":
            await ctx.sleep("s", float("nan"))
        elif kind == "forever":
            await ctx.sleep("s", timedelta.max)
        elif kind == "seconds":
            await ctx.sleep("s", 60.0)
        else:
            await ctx.sleep_until("u", datetime(2026, 3, 2, tzinfo=UTC))
        return kind

    async with Engine(make_storage(), workflows=[wf], clock=clock) as engine:
        for kind, error in [
            ("naive", "TypeError"), ("text", "TypeError"), ("nan", "ValueError"),
            ("forever", "ValueError"),
        ]:  # fmt: skip
            outcome = await (await engine.invoke(wf, kind, instance_id=kind)).wait()
            assert isinstance(outcome, memable.Failed)
            assert outcome.error.type == error, outcome
        seconds = await engine.invoke(wf, "seconds")
        assert isinstance(await seconds.wait(), memable.Suspended)
        invocation = await engine.invoke(wf, "ok")
        assert isinstance(await invocation.wait(), memable.Suspended)
        await clock.advance(timedelta(seconds=60))
        assert await seconds.result() == "seconds"
        await clock.set(datetime(2026, 3, 2, tzinfo=UTC))
        assert await invocation.result() == "ok"

    def timers(storage: Storage, instance_id: str) -> list[TimerRecord]:
        return storage.load_history(instance_id).timers

    for kind in ("naive", "text", "nan", "forever"):  # refused before anything was recorded
        assert peek(make_storage(), functools.partial(timers, instance_id=kind)) == []


async def test_three_day_approval_in_virtual_time(make_storage: StorageFactory) -> None:
    """Step, approval with a two-day deadline, a one-day cool-off, step: no real waiting."""
    clock = ManualClock()
    approval = SuspendPoint("approval:v1", bool)
    ran: list[str] = []

    async def record(what: str) -> str:
        ran.append(what)
        return what

    @memable.workflow("approval-flow")
    async def wf(ctx: Context, order: str) -> str:
        await ctx.step("quote:v1", record, "quote")
        try:
            approved = await ctx.suspend(approval, timeout=timedelta(days=2))
        except memable.SuspendTimeout:
            return "expired"
        await ctx.sleep("cool-off:v1", timedelta(days=1))
        return await ctx.step("ship:v1", record, "ship" if approved else "cancel")

    async with Engine(make_storage(), workflows=[wf], clock=clock) as engine:
        fast = await engine.invoke(wf, "o-1", instance_id="fast")
        slow = await engine.invoke(wf, "o-2", instance_id="slow")
        await fast.wait()
        await slow.wait()
        await clock.advance(timedelta(hours=20))
        await engine.signal(wf, "fast", approval, True)
        assert isinstance(await fast.wait(), memable.Suspended)  # cooling off
        await clock.advance(timedelta(days=1))
        assert await fast.result() == "ship"
        await clock.advance(timedelta(days=1))
        assert await slow.result() == "expired"
    assert ran == ["quote", "quote", "ship"]


async def test_a_nearer_timer_wakes_the_scheduler(make_storage: StorageFactory) -> None:
    """The scheduler sleeps until the earliest deadline and is woken by a nearer one."""
    clock = ManualClock()
    after: list[str] = []
    far, near = napper(after, timedelta(days=10), "far"), napper(after, timedelta(hours=1), "near")
    async with Engine(make_storage(), workflows=[far, near], clock=clock) as engine:
        await (await engine.invoke(far, instance_id="far")).wait()
        assert engine._life._timers.next_deadline is not None
        await (await engine.invoke(near, instance_id="near")).wait()
        await clock.advance(timedelta(hours=2))
        assert await engine.handle(near, "near").result() == "rested"
        assert (await engine.state(far, "far")).status == "suspended"
    assert after == ["near"]


async def test_a_timer_due_while_running_is_not_lost(make_storage: StorageFactory) -> None:
    """A timer that falls due while its instance is busy is seen before it suspends."""
    clock = ManualClock()
    release = anyio.Event()
    busy = anyio.Event()

    async def block() -> int:
        busy.set()
        await release.wait()
        return 1

    @memable.workflow("busy-sleeper")
    async def wf(ctx: Context) -> str:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ctx.step, "block", block)
            await ctx.sleep("nap", timedelta(minutes=5))
        return "both done"

    async with Engine(make_storage(), workflows=[wf], clock=clock) as engine:
        invocation = await engine.invoke(wf, instance_id="b")
        await busy.wait()
        await clock.advance(timedelta(minutes=10))  # due while the step still runs
        release.set()
        with anyio.fail_after(10):
            assert await invocation.result() == "both done"


async def test_many_timers_fire_exactly_once(make_storage: StorageFactory) -> None:
    """200 instances with random delays: one big advance fires each once."""
    clock = ManualClock()
    rng = random.Random(7)
    after: list[str] = []

    @memable.workflow("many")
    async def wf(ctx: Context, minutes: int) -> int:
        await ctx.sleep("t", timedelta(minutes=minutes))

        async def note() -> int:
            after.append(ctx.instance_id)
            return minutes

        return await ctx.step("after", note)

    async with Engine(make_storage(), workflows=[wf], clock=clock) as engine:
        invocations = [
            await engine.invoke(wf, rng.randint(1, 1000), instance_id=f"m{n}") for n in range(200)
        ]
        for invocation in invocations:
            await invocation.wait()
        await clock.advance(timedelta(days=1))
        with anyio.fail_after(30):
            for invocation in invocations:
                await invocation.result()
    assert sorted(after) == sorted(f"m{n}" for n in range(200))


async def test_the_real_clock(tmp_path: Path) -> None:
    """With the system clock, a short durable sleep completes after its deadline."""
    after: list[str] = []
    wf = napper(after, timedelta(milliseconds=50))
    async with Engine(SQLiteStorage(tmp_path / "t.db"), workflows=[wf]) as engine:
        started = engine._kernel.now()
        assert await (await engine.invoke(wf, instance_id="r")).wait() is not None
        with anyio.fail_after(10):
            while (await engine.state(wf, "r")).status != "completed":
                await anyio.sleep(0.01)
        finished = (await engine.state(wf, "r")).finished_at
        assert finished is not None
        assert finished.timestamp() >= started + 0.05


# -- memable.testing -----------------------------------------------------------------------------


def test_manual_clock_basics() -> None:
    """The clock starts at 2026-01-01 UTC, stands still, and only moves forward."""
    clock = ManualClock()
    assert clock.now() == datetime(2026, 1, 1, tzinfo=UTC)
    assert clock.now() == clock.now()
    with pytest.raises(ValueError, match="timezone-aware"):
        ManualClock(datetime(2026, 1, 1))

    async def go() -> None:
        await clock.advance(timedelta(hours=1))
        with pytest.raises(ValueError, match="forward"):
            await clock.advance(timedelta(seconds=-1))

    anyio.run(go)
    assert clock.now() == datetime(2026, 1, 1, 1, tzinfo=UTC)
    assert isinstance(clock, memable.Clock)
    assert memable.testing.MemoryStorage is MemoryStorage


async def test_crash_injection_before_the_body(make_storage: StorageFactory) -> None:
    """crash_at(..., when='before'): the body does not run; a new engine runs it once."""
    runs: list[str] = []

    async def charge() -> str:
        runs.append("charge")
        return "c"

    @memable.workflow("crash-before")
    async def wf(ctx: Context) -> str:
        return await ctx.step("charge:v1", charge)

    async with Engine(make_storage(), workflows=[wf]) as engine:
        with crash_at(engine, "charge:v1"):
            await engine.invoke(wf, instance_id="c")
            with pytest.raises(memable.NotStarted):
                await engine.handle(wf, "c").wait()
    assert runs == []
    assert peek(make_storage(), lambda s: s.get_instance("c")).status == "running"  # type: ignore[union-attr]
    async with Engine(make_storage(), workflows=[wf]) as engine:
        assert await engine.handle(wf, "c").result() == "c"
    assert runs == ["charge"]


async def test_generated_ids_follow_the_engines_clock(make_storage: StorageFactory) -> None:
    """Generated ids come from the injected clock: their order is creation order."""
    clock = ManualClock()

    @memable.workflow("ids")
    async def wf(ctx: Context) -> None:
        pass

    async with Engine(make_storage(), workflows=[wf], clock=clock) as engine:
        ids = []
        for _ in range(3):
            ids.append((await engine.invoke(wf)).instance_id)
            await clock.advance(timedelta(days=1))
        infos = await engine.instances(wf)
    assert sorted(ids) == ids == [info.instance_id for info in infos][::-1]  # newest first
    assert int(ids[0].split("-")[0], 16) // 1_000_000_000 == int(
        datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    )


class _Timers:
    """The scheduler's view of storage: timers in a dict, and a read of the next deadline
    whose answer can be held back (a slow read: taken before a commit, seen after it)."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.store = self
        self.deadlines: dict[str, float] = {}
        self.fired: list[str] = []
        self.gate: anyio.Event | None = None
        self.reading = anyio.Event()
        self.wake_timers: object = None  # set by the scheduler
        self.claims = Claims()

    def now(self) -> float:
        return self.clock.now().timestamp()

    async def next_deadline(self) -> float | None:
        answer = min(self.deadlines.values(), default=None)
        gate = self.gate
        if gate is not None:
            self.reading.set()
            await gate.wait()
        return answer

    async def fire_timers(self, now: float, limit: int) -> list[object]:
        for key, deadline in list(self.deadlines.items()):
            if deadline <= now:
                del self.deadlines[key]
                self.fired.append(key)
        return []


async def test_a_timer_written_while_the_scheduler_reads_is_not_missed() -> None:
    """A read of the next deadline that began before a timer was committed does not see
    it: the scheduler reads again, so the timer fires when due (here: a run resumed by
    the first timer writes the second while the scheduler reads what comes next)."""
    clock = ManualClock()
    timers = _Timers(clock)

    async def room() -> int:
        return 100

    scheduler = TimerScheduler(timers, lambda record: None, room)  # type: ignore[arg-type]
    clock.attach(scheduler.settled)
    start = timers.now()
    async with anyio.create_task_group() as tg:
        tg.start_soon(scheduler.run)
        timers.deadlines["a"] = start + 3600
        scheduler.added(start + 3600)
        await clock.advance(timedelta(0))  # asleep until a
        gate = timers.gate = anyio.Event()
        async with anyio.create_task_group() as advancing:
            # It fires a, then reads (slowly) what is next ...
            advancing.start_soon(clock.advance, timedelta(hours=1))
            await timers.reading.wait()
            timers.deadlines["b"] = start + 7200  # ... while b is committed
            scheduler.added(start + 7200)
            timers.gate = None
            gate.set()
        await clock.advance(timedelta(hours=1))
        assert timers.fired == ["a", "b"]
        tg.cancel_scope.cancel()
