"""Schedules: one instance per due tick, exactly once across restarts and skewed clocks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

import memable
from memable import Context, Engine, Schedule, SuspendPoint
from memable._ids import tick_id
from memable._schedule import CATCH_UP_LIMIT
from memable.testing import ManualClock

from .helpers import StorageFactory, peek

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FIVE = timedelta(minutes=5)
DONE = SuspendPoint("done:v1", bool)


def ticks(*minutes: int, name: str = "tick") -> list[str]:
    """The instance ids of the ticks at these minutes after T0."""
    return [tick_id(name, (T0 + timedelta(minutes=m)).timestamp()) for m in minutes]


def make_tick(runs: list[str]) -> memable.Workflow[None, None]:
    @memable.workflow("tick")
    async def tick(ctx: Context) -> None:
        runs.append(ctx.instance_id)

    return tick


def stored_ids(factory: StorageFactory) -> list[str]:
    return sorted(r.instance_id for r in peek(factory(), lambda s: s.list_instances()))


async def settle(runs: list[str], count: int) -> None:
    """Wait until *count* bodies have run (they start right after the tick)."""
    while len(runs) < count:
        await anyio.sleep(0.001)


async def test_a_day_of_a_five_minute_schedule_is_288_instances(
    make_storage: StorageFactory,
) -> None:
    """A day of virtual time, five minutes at a time: exactly one instance per tick."""
    runs: list[str] = []
    tick = make_tick(runs)
    clock = ManualClock(T0)
    schedule = Schedule(tick, every=FIVE, overlap="allow")
    async with Engine(make_storage(), schedules=[schedule], clock=clock):
        for _ in range(288):
            await clock.advance(FIVE)
        await settle(runs, 288)
    expected = ticks(*range(5, 24 * 60 + 1, 5))
    assert len(expected) == 288
    assert stored_ids(make_storage) == sorted(expected)
    assert sorted(runs) == sorted(expected)


async def test_ticks_run_once_across_restarts_with_skewed_clocks(
    make_storage: StorageFactory,
) -> None:
    """Engines one after another, their clocks 2 s behind or ahead of the last one's:
    every tick runs exactly once, none is skipped or repeated."""
    runs: list[str] = []
    tick = make_tick(runs)
    now = T0
    for skew in (0, -2, +2, -2, +2):
        clock = ManualClock(now + timedelta(seconds=skew))
        async with Engine(
            make_storage(), schedules=[Schedule(tick, every=FIVE)], clock=clock
        ) as engine:
            target = len(runs) + 3
            while len(runs) < target:  # a minute at a time, up to three more ticks
                await clock.advance(timedelta(minutes=1))
                for info in await engine.instances(tick):  # each run ends before the next tick
                    await engine.handle(tick, info.instance_id).wait()
            now = clock.now()
    expected = ticks(*range(5, 5 * 15 + 1, 5))
    assert runs == expected
    assert stored_ids(make_storage) == expected


async def test_missed_ticks_run_the_latest_only(make_storage: StorageFactory) -> None:
    """Down for an hour: the next engine runs only the latest missed tick."""
    runs: list[str] = []
    tick = make_tick(runs)
    async with Engine(
        make_storage(), schedules=[Schedule(tick, every=FIVE)], clock=ManualClock(T0)
    ):
        pass
    clock = ManualClock(T0 + timedelta(hours=1, seconds=30))
    async with Engine(make_storage(), schedules=[Schedule(tick, every=FIVE)], clock=clock) as e:
        await settle(runs, 1)
        await e.handle(tick, runs[0]).wait()  # finished before the next tick (overlap="skip")
        await clock.advance(FIVE)
        await settle(runs, 2)
    assert runs == ticks(60, 65)


async def test_catch_up_runs_every_missed_tick_up_to_the_cap(
    make_storage: StorageFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """catch_up=True: each missed tick of an hour runs; of a day, the latest 100."""
    runs: list[str] = []
    tick = make_tick(runs)

    def schedule() -> Schedule[None]:
        return Schedule(tick, every=FIVE, catch_up=True)

    async with Engine(make_storage(), schedules=[schedule()], clock=ManualClock(T0)):
        pass
    async with Engine(
        make_storage(), schedules=[schedule()], clock=ManualClock(T0 + timedelta(hours=1))
    ):
        await settle(runs, 12)
    assert sorted(runs) == ticks(*range(5, 61, 5))
    runs.clear()
    async with Engine(
        make_storage(), schedules=[schedule()], clock=ManualClock(T0 + timedelta(days=1, hours=1))
    ):
        await settle(runs, CATCH_UP_LIMIT)
    assert "missed more than 100 ticks; the older ones are dropped" in caplog.text
    latest = range(60 * 25 - 5 * (CATCH_UP_LIMIT - 1), 60 * 25 + 1, 5)
    assert sorted(runs) == ticks(*latest)
    assert len(stored_ids(make_storage)) == 12 + CATCH_UP_LIMIT


async def test_overlap_skip_skips_ticks_while_the_previous_run_goes_on(
    make_storage: StorageFactory,
) -> None:
    """The first run waits for a signal: the ticks meanwhile are skipped; "allow" runs them."""
    runs: list[str] = []

    @memable.workflow("slow")
    async def slow(ctx: Context) -> None:
        runs.append(ctx.instance_id)  # the first run appends twice: again after the signal
        if ctx.instance_id == ticks(5, name="slow")[0]:
            await ctx.suspend(DONE)

    clock = ManualClock(T0)
    async with Engine(
        make_storage(), schedules=[Schedule(slow, every=FIVE)], clock=clock
    ) as engine:
        await clock.advance(FIVE)
        await settle(runs, 1)
        assert isinstance(await engine.handle(slow, runs[0]).wait(), memable.Suspended)
        await clock.advance(FIVE)
        await clock.advance(FIVE)
        assert runs == ticks(5, name="slow")
        await engine.signal(slow, runs[0], DONE, True)
        await engine.handle(slow, runs[0]).wait()
        await clock.advance(FIVE)
        await settle(runs, 3)
    assert runs == ticks(5, 5, 20, name="slow")


async def test_cron_in_a_time_zone(make_storage: StorageFactory) -> None:
    """``0 9 * * *`` in Paris ticks at 08:00 UTC in winter, once a day."""
    runs: list[str] = []
    tick = make_tick(runs)
    clock = ManualClock(T0)
    schedule = Schedule(tick, cron="0 9 * * *", tz="Europe/Paris", overlap="allow")
    async with Engine(make_storage(), schedules=[schedule], clock=clock):
        for day in (1, 2):
            for _ in range(24):
                await clock.advance(timedelta(hours=1))
            # A tick's run has started, but its body may wait for storage (its history)
            # while the clock moves on: the day's tick runs before the next day begins.
            await settle(runs, day)
    assert runs == ["tick@2026-01-01T08:00:00Z", "tick@2026-01-02T08:00:00Z"]


async def test_schedules_with_input_and_names() -> None:
    """Two schedules of one workflow need their own names; the input reaches each run."""
    seen: list[tuple[str, str]] = []

    @memable.workflow("greet")
    async def greet(ctx: Context, who: str) -> None:
        seen.append((ctx.instance_id, who))

    clock = ManualClock(T0)
    schedules = [
        Schedule(greet, every=60, input="ann", name="ann", overlap="allow"),
        Schedule(greet, every=timedelta(minutes=2), input="bob", name="bob"),
    ]
    async with Engine(schedules=schedules, clock=clock):
        await clock.advance(timedelta(minutes=1))
        await clock.advance(timedelta(minutes=1))
        while len(seen) < 3:
            await anyio.sleep(0.001)
    assert sorted(seen) == [
        ("ann@2026-01-01T00:01:00Z", "ann"),
        ("ann@2026-01-01T00:02:00Z", "ann"),
        ("bob@2026-01-01T00:02:00Z", "bob"),
    ]


async def test_bad_schedules_are_refused() -> None:
    """Each mistake is a clear error when the schedule or the engine is made."""
    runs: list[str] = []
    tick = make_tick(runs)

    @memable.workflow("needs")
    async def needs(ctx: Context, n: int) -> None:
        pass

    with pytest.raises(ValueError, match="one of cron= and every="):
        Schedule(tick)
    with pytest.raises(ValueError, match="one of cron= and every="):
        Schedule(tick, cron="* * * * *", every=5)
    with pytest.raises(ValueError, match="bad cron expression"):
        Schedule(tick, cron="every day")
    with pytest.raises(ValueError, match="unknown time zone"):
        Schedule(tick, cron="* * * * *", tz="Mars/Olympus")
    with pytest.raises(ValueError, match="every must be positive"):
        Schedule(tick, every=0)
    with pytest.raises(ValueError, match="overlap"):
        Schedule(tick, every=5, overlap="queue")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes an input="):
        Engine(schedules=[Schedule(needs, every=5)])
    with pytest.raises(memable.TypeMismatch):
        Engine(schedules=[Schedule(needs, every=5, input="five")])
    with pytest.raises(ValueError, match="two schedules are named 'tick'"):
        Engine(schedules=[Schedule(tick, every=5), Schedule(tick, every=7)])


async def test_a_lost_tick_answer_neither_repeats_nor_strands_the_tick(
    make_storage: StorageFactory,
) -> None:
    """The first tick commits but its answer is lost: the tick is not made again, and its
    instance (stored running, without a task) is run by the re-scan after the trouble."""
    from memable.testing import FaultyStorage

    runs: list[str] = []
    tick = make_tick(runs)
    clock = ManualClock(T0)
    storage = FaultyStorage(make_storage(), fail_on={1}, methods={"tick_schedule"}, when="after")
    schedule = Schedule(tick, every=FIVE, overlap="allow")
    async with Engine(storage, schedules=[schedule], clock=clock) as engine:
        await clock.advance(FIVE)
        assert isinstance(await engine.handle(tick, ticks(5)[0]).wait(), memable.Completed)
        await clock.advance(FIVE)
        await settle(runs, 2)
    assert storage.failures == ["tick_schedule"]
    assert runs == ticks(5, 10)
