"""Load: many concurrent instances with steps, timers and signals; nothing lost.

CI runs modest counts; ``nox -s crash`` (marker ``slow``) runs 10,000 instances and 1,000
concurrent signals.
"""

from __future__ import annotations

import collections
from datetime import timedelta
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

import memable
import memable._run
from memable import Context, Engine, SuspendPoint
from memable.testing import ManualClock

GO = SuspendPoint("go:v1", int)


async def load(path: Path, instances: int, signals: int) -> None:
    clock = ManualClock()
    bodies: collections.Counter[str] = collections.Counter()

    async def step(instance_id: str, n: int) -> int:
        bodies[f"{instance_id}:{n}"] += 1
        await anyio.lowlevel.checkpoint()
        return n

    @memable.workflow("load")
    async def wf(ctx: Context, signalled: bool) -> int:
        total = 0
        for n in range(3):
            total += await ctx.step(f"s{n}", step, ctx.instance_id, n)
        await ctx.sleep("t", timedelta(minutes=1))
        if signalled:
            total += await ctx.suspend(GO)
        return total

    async with Engine(path, workflows=[wf], clock=clock) as engine:
        invocations: list[memable.Invocation[int]] = []

        async def start(n: int) -> None:
            invocations.append(await engine.invoke(wf, n < signals, instance_id=f"i{n}"))

        async with anyio.create_task_group() as tg:
            for n in range(instances):
                tg.start_soon(start, n)
        for invocation in invocations:
            assert isinstance(await invocation.wait(), memable.Suspended)
        await clock.advance(timedelta(minutes=1))

        async def signal(n: int) -> None:
            await engine.signal(wf, f"i{n}", GO, 10)

        async with anyio.create_task_group() as tg:
            for n in range(signals):
                tg.start_soon(signal, n)
        with anyio.fail_after(600):
            results = {i.instance_id: await i.result() for i in invocations}
    assert results == {f"i{n}": 3 + (10 if n < signals else 0) for n in range(instances)}
    assert len(bodies) == instances * 3
    assert set(bodies.values()) == {1}


async def test_load_in_ci(tmp_path: Path) -> None:
    """500 instances x (3 steps + a timer), 200 concurrent signals: all complete once."""
    await load(tmp_path / "load.db", instances=500, signals=200)


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_full_load(tmp_path: Path) -> None:
    """10,000 instances and 1,000 concurrent signals (nox -s crash)."""
    await load(tmp_path / "load.db", instances=10_000, signals=1_000)


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_ten_thousand_suspended_instances_hold_nothing(tmp_path: Path) -> None:
    """10,000 suspended instances: no run, context or subscriber is left in the engine."""
    import gc

    @memable.workflow("parked")
    async def wf(ctx: Context) -> int:
        return await ctx.suspend(GO)

    async with Engine(tmp_path / "parked.db", workflows=[wf]) as engine:

        async def park(n: int) -> None:
            await (await engine.invoke(wf, instance_id=f"p{n}")).wait()

        async with anyio.create_task_group() as tg:
            for n in range(10_000):
                tg.start_soon(park, n)
        assert len(await engine.instances(status="suspended", limit=None)) == 10_000
        gc.collect()
        held = sum(isinstance(o, memable.Context | memable._run.Run) for o in gc.get_objects())
        assert (len(engine._runner.runs), len(engine._kernel.status), held) == (0, 0, 0)
