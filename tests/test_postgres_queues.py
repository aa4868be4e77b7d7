"""Queues and schedules shared by three engines on one Postgres database.

Each engine has its own storage (its own connections and engine row) on one schema; the
queue's limit must hold across them, measured by the bodies themselves, and each tick of a
schedule must run exactly once whichever engine's clock (skewed by ±2 s) gets there first,
with an engine restarted on the way.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

import memable
from memable import Context, Engine, Queue, Schedule, StorageError
from memable._ids import tick_id
from memable.storage import Admission
from memable.testing import ManualClock

from .test_postgres import Factory, shared  # noqa: F401 - the fixture

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def test_concurrency_holds_across_three_engines(shared: Factory) -> None:  # noqa: F811
    """8 enqueuers spread over 3 engines put 48 instances in a queue of 3: never more than
    3 bodies run at once across the engines, and every instance runs to its end once."""
    in_flight = peak = 0
    done: list[str] = []
    gate = anyio.Event()

    @memable.workflow("job")
    async def job(ctx: Context, n: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await gate.wait()
            await anyio.sleep(0.002)
        finally:
            in_flight -= 1
        done.append(ctx.instance_id)
        return n

    queue = Queue("shared", concurrency=3)
    async with AsyncExitStack() as stack:
        engines = [
            await stack.enter_async_context(Engine(shared(), workflows=[job], queues=[queue]))
            for _ in range(3)
        ]
        invocations: list[memable.Invocation[int]] = []

        async def enqueuer(k: int) -> None:
            engine = engines[k % 3]
            for i in range(6):
                invocations.append(await engine.enqueue(queue, job, k * 10 + i))

        async with anyio.create_task_group() as tg:
            for k in range(8):
                tg.start_soon(enqueuer, k)
        with anyio.fail_after(30):
            while in_flight < 3:
                await anyio.sleep(0.005)
        gate.set()
        with anyio.fail_after(60):
            results = sorted([await invocation.result(finished=True) for invocation in invocations])
    assert results == sorted(k * 10 + i for k in range(8) for i in range(6))
    assert sorted(done) == sorted(i.instance_id for i in invocations)
    assert peak == 3


async def test_schedule_ticks_once_across_three_skewed_engines(shared: Factory) -> None:  # noqa: F811
    """Three engines, clocks 2 s behind, on time and 2 s ahead, run one five-minute schedule
    for an hour of virtual time, the middle one restarted half-way: each tick runs once."""
    runs: list[str] = []

    @memable.workflow("tick")
    async def tick(ctx: Context) -> None:
        runs.append(ctx.instance_id)

    def schedule() -> Schedule[None]:
        return Schedule(tick, every=timedelta(minutes=5), overlap="allow")

    clocks = [ManualClock(T0 + timedelta(seconds=skew)) for skew in (-2, 0, 2)]

    async def advance_all(delta: timedelta) -> None:
        for clock in clocks:
            await clock.advance(delta)

    async with AsyncExitStack() as stack:
        for clock in clocks[::2]:
            await stack.enter_async_context(Engine(shared(), schedules=[schedule()], clock=clock))
        for _ in range(2):
            async with Engine(shared(), schedules=[schedule()], clock=clocks[1]):
                for _ in range(6 * 5):  # half an hour, a minute at a time
                    await advance_all(timedelta(minutes=1))
        with anyio.fail_after(30):
            while len(set(runs)) < 13:
                await anyio.sleep(0.01)
        await anyio.sleep(0.2)  # a tick run twice would show up by now
    # The schedule was first stored at the first engine's time (T0 - 2 s): T0 is its first.
    expected = [tick_id("tick", (T0 + timedelta(minutes=m)).timestamp()) for m in range(0, 61, 5)]
    assert sorted(runs) == expected
    stored = shared.sql("SELECT instance_id FROM instances ORDER BY instance_id")
    assert [row[0] for row in stored] == expected


async def test_a_late_admission_is_waited_for_however_long_it_takes(shared: Factory) -> None:  # noqa: F811
    """An admission's call returns 1.5 s after its claim committed (a loaded machine): a
    waiter that reads the instance held by its own engine before its run exists waits for
    the admission to hand it over, and gets the result (not NotStarted)."""
    storage = shared()
    admit = storage.admit
    late: list[float] = []

    def late_admit(*args: Any, **kwargs: Any) -> Admission:
        admission = admit(*args, **kwargs)
        if admission.started:
            (held,) = shared.sql(
                "SELECT status, owner IS NOT NULL FROM instances WHERE instance_id = %s",
                admission.started[0].instance_id,
            )
            assert held == ("running", True)  # committed: held here, and no run yet
            started = time.monotonic()
            time.sleep(1.5)
            late.append(time.monotonic() - started)
        return admission

    storage.admit = late_admit  # type: ignore[method-assign]

    @memable.workflow("double")
    async def double(ctx: Context, n: int) -> int:
        return n * 2

    queue = Queue("late", concurrency=1)
    async with Engine(storage, workflows=[double], queues=[queue]) as engine:
        invocation = await engine.enqueue(queue, double, 21)
        with anyio.fail_after(30):
            assert await invocation.result() == 42
    assert len(late) == 1  # one admission, held 1.5 s: the waiter polls every 0.15 s


async def test_a_late_admission_whose_answer_is_lost_is_waited_for(shared: Factory) -> None:  # noqa: F811
    """The admission's claim commits, and its call fails 1 s later (the answer lost): a
    waiter that read the instance held here waits for the re-scan after that trouble,
    which runs it, and gets the result (not NotStarted)."""
    storage = shared()
    admit = storage.admit
    lost: list[str] = []

    def lossy_admit(*args: Any, **kwargs: Any) -> Admission:
        admission = admit(*args, **kwargs)
        if admission.started and not lost:
            lost.append(admission.started[0].instance_id)
            time.sleep(1.0)  # the claim is committed: held here, and no run yet
            raise StorageError("connection lost after the commit")
        return admission

    storage.admit = lossy_admit  # type: ignore[method-assign]

    @memable.workflow("double")
    async def double(ctx: Context, n: int) -> int:
        return n * 2

    queue = Queue("lossy", concurrency=1)
    async with Engine(storage, workflows=[double], queues=[queue]) as engine:
        invocation = await engine.enqueue(queue, double, 21)
        with anyio.fail_after(30):
            assert await invocation.result() == 42
    assert lost == [invocation.instance_id]
