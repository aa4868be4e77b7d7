"""Bounds that keep an engine's memory and pauses flat: max_running, batched purges."""

from __future__ import annotations

import gc
from datetime import timedelta
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import memable
from memable import Context, Engine
from memable.storage import InstanceRecord, StepRecord
from memable.testing import ManualClock

from .helpers import StorageFactory

INPUT = '{"type":"None","value":null}'


def gated(started: list[str], gate: anyio.Event) -> memable.Workflow[str, str]:
    async def wait_for_gate() -> str:
        await gate.wait()
        return "done"

    async def wf(ctx: Context, name: str) -> str:
        started.append(name)
        return await ctx.step("gate:v1", wait_for_gate)

    return memable.Workflow("gated", wf)


async def test_max_running_admits_in_order(make_storage: StorageFactory) -> None:
    """At most max_running instances run at once; the others wait and start in the order
    they were invoked, as slots free up."""
    started: list[str] = []
    gate = anyio.Event()
    wf = gated(started, gate)
    names = [f"i{n}" for n in range(7)]
    async with Engine(make_storage(), workflows=[wf], max_running=3) as engine:
        invocations = [await engine.invoke(wf, name, instance_id=name) for name in names]
        with anyio.fail_after(10):
            while len(started) < 3:
                await anyio.sleep(0.01)
        await anyio.sleep(0.05)
        assert started == names[:3]  # the others wait for a slot
        gate.set()
        with anyio.fail_after(10):
            for invocation in invocations:
                assert await invocation.result() == "done"
    assert sorted(started) == names


async def test_one_slot_runs_instances_one_after_another_in_order(
    make_storage: StorageFactory,
) -> None:
    """With max_running=1 instances run strictly one at a time, in the order invoked."""
    started: list[str] = []
    gate = anyio.Event()
    gate.set()
    wf = gated(started, gate)
    names = [f"i{n}" for n in range(6)]
    async with Engine(make_storage(), workflows=[wf], max_running=1) as engine:
        invocations = [await engine.invoke(wf, name, instance_id=name) for name in names]
        with anyio.fail_after(10):
            for invocation in invocations:
                assert await invocation.result() == "done"
    assert started == names


async def test_an_instance_cancelled_while_it_waits_never_runs(
    make_storage: StorageFactory,
) -> None:
    """An instance cancelled while it waits for a slot does not run when its turn comes."""
    started: list[str] = []
    gate = anyio.Event()
    wf = gated(started, gate)
    async with Engine(make_storage(), workflows=[wf], max_running=1) as engine:
        first = await engine.invoke(wf, "a", instance_id="a")
        second = await engine.invoke(wf, "b", instance_id="b")
        with anyio.fail_after(10):
            while not started:
                await anyio.sleep(0.01)
        assert await engine.cancel(wf, "b", reason="not needed")
        gate.set()
        with anyio.fail_after(10):
            assert await first.result() == "done"
            assert await second.wait() == memable.Cancelled(reason="not needed")
    assert started == ["a"]


async def test_due_timers_are_claimed_as_slots_free_up(make_storage: StorageFactory) -> None:
    """Many due timers with one slot: every instance resumes, one after another."""
    clock = ManualClock()

    @memable.workflow("napper")
    async def wf(ctx: Context, n: int) -> int:
        await ctx.sleep("nap:v1", timedelta(hours=1))
        return n

    async with Engine(make_storage(), workflows=[wf], clock=clock, max_running=1) as engine:
        invocations = [await engine.invoke(wf, n, instance_id=f"n{n}") for n in range(12)]
        for invocation in invocations:
            assert isinstance(await invocation.wait(), memable.Suspended)
        await clock.advance(timedelta(hours=1))
        with anyio.fail_after(10):
            for n in range(12):
                while (await engine.state(wf, f"n{n}")).status != "completed":
                    await anyio.sleep(0.01)
        assert [await i.result() for i in invocations] == list(range(12))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_max_running_is_checked(bad: object) -> None:
    """max_running is a positive int (or None for no bound); anything else is refused."""
    with pytest.raises(ValueError, match="max_running"):
        Engine(max_running=bad)  # type: ignore[arg-type]
    Engine(max_running=None)


async def test_purge_goes_batch_by_batch(make_storage: StorageFactory) -> None:
    """A purge is many short storage calls (other writes go between them) that together
    delete every finished instance, and never a running or suspended one."""

    @memable.workflow("quick")
    async def quick(ctx: Context, n: int) -> int:
        return n

    storage = make_storage()
    calls: list[int] = []
    purge = storage.purge

    def counting_purge(**kwargs: Any) -> int:
        done = purge(**kwargs)
        calls.append(done)
        return done

    storage.purge = counting_purge  # type: ignore[method-assign]
    async with Engine(storage, workflows=[quick]) as engine:
        async with anyio.create_task_group() as tg:
            for n in range(450):
                tg.start_soon(engine.run, quick, n)
        assert await engine.purge(older_than=timedelta(0)) == 450
        assert list(await engine.instances(limit=None)) == []
    assert len(calls) > 2
    assert all(done <= 1000 for done in calls)
    assert calls[-1] == 0


def test_storage_purge_stops_at_its_limit(make_storage: StorageFactory) -> None:
    """Storage.purge(limit=n) deletes at most n finished instances."""
    storage = make_storage()
    storage.open()
    try:
        for n in range(5):
            record = InstanceRecord(
                instance_id=f"i{n}",
                workflow="w",
                status="completed",
                input="{}",
                created_at=n,
                updated_at=n,
                finished_at=n,
            )
            storage.create_instance(record)
        assert storage.purge(finished_before=100.0, batch=2, limit=3) == 3
        assert len(storage.list_instances()) == 2
        assert storage.purge(finished_before=100.0) == 2
    finally:
        storage.close()


GO = memable.SuspendPoint("go:v1", int)


async def waiting_child(ctx: Context, i: int) -> int:
    return await ctx.suspend(GO) + i


@memable.workflow("wide")
async def wide(ctx: Context, settle: bool) -> list[int]:
    """Every child's result; -1 for a failed or cancelled one (settle=True)."""
    if settle:
        settled = await ctx.fan_out("kids:v1", waiting_child, range(12), settle=True)
        return [r.value if isinstance(r, memable.Ok) else -1 for r in settled]
    return await ctx.fan_out("kids:v1", waiting_child, range(12))


async def test_a_wide_fan_out_wakes_child_by_child(make_storage: StorageFactory) -> None:
    """Each signal to a suspended child runs it inside its parent; the parent counts the
    children still waiting and finishes with every result in item order, including a
    child cancelled from outside (settle=True: an Err)."""
    async with Engine(make_storage(), workflows=[wide]) as engine:
        invocation = await engine.invoke(wide, True, instance_id="p")
        assert await invocation.wait() == memable.Suspended(
            waiting_on=(), status="waiting for 12 children", children=12
        )
        assert await engine.cancel(wide, "p/kids:v1-5", reason="not this one")
        for i in range(12):
            if i != 5:
                await engine.signal(wide, f"p/kids:v1-{i}", GO, 100)
            if i == 8:
                with anyio.fail_after(10):
                    while (
                        await engine.state(wide, "p")
                    ).status_message != "waiting for 3 children":
                        await anyio.sleep(0.01)
        with anyio.fail_after(10):
            while (await engine.state(wide, "p")).status != "completed":
                await anyio.sleep(0.01)
        results = await invocation.result()
    assert results == [-1 if i == 5 else 100 + i for i in range(12)]


async def test_a_fail_fast_fan_out_fails_when_a_waiting_child_is_cancelled(
    make_storage: StorageFactory,
) -> None:
    """Cancelling one suspended child of a fail-fast fan-out fails the parent at once and
    cancels the siblings still waiting."""
    async with Engine(make_storage(), workflows=[wide]) as engine:
        invocation = await engine.invoke(wide, False, instance_id="q")
        assert isinstance(await invocation.wait(), memable.Suspended)
        await engine.signal(wide, "q/kids:v1-0", GO, 1)
        with anyio.fail_after(10):
            while (await engine.state(wide, "q")).status != "suspended":
                await anyio.sleep(0.01)
        assert await engine.cancel(wide, "q/kids:v1-3", reason="stop")
        with anyio.fail_after(10):
            while (await engine.state(wide, "q")).status != "failed":
                await anyio.sleep(0.01)
        with pytest.raises(memable.WorkflowFailed):
            await invocation.result()
        assert (await engine.state(wide, "q/kids:v1-0")).status == "completed"
        assert (await engine.state(wide, "q/kids:v1-7")).status == "cancelled"


async def test_other_tasks_run_during_a_long_replay(make_storage: StorageFactory) -> None:
    """A 10,000-step replay lets another task of the process run again and again while it
    goes on (it takes a checkpoint every few milliseconds, not once a step), and runs none
    of the recorded steps."""
    n = 10_000
    storage = make_storage()
    storage.open()
    try:
        storage.create_instance(InstanceRecord(instance_id="long", workflow="long-replay",
                                               status="running", input=INPUT,
                                               created_at=1.0, updated_at=1.0))  # fmt: skip
        storage.commit([StepRecord(instance_id="long", key=f"s{i}", state="completed",
                                   value=f'{{"type":"int","value":{i}}}', attempts=1,
                                   started_at=1.0, finished_at=1.0)
                        for i in range(n)])  # fmt: skip
    finally:
        storage.close()
    ticks = 0
    during: list[int] = []
    ran: list[int] = []

    async def one(i: int) -> int:
        ran.append(i)
        return i

    @memable.workflow("long-replay")
    async def long(ctx: Context) -> int:
        start = ticks  # the history is loaded: the replay starts
        total = 0
        for i in range(n):
            total += await ctx.step(f"s{i}", one, i)
        during.append(ticks - start)
        return total

    async def sibling() -> None:
        nonlocal ticks
        while True:
            await anyio.lowlevel.checkpoint()
            ticks += 1

    async with Engine(make_storage(), workflows=[long]) as engine, anyio.create_task_group() as tg:
        tg.start_soon(sibling)
        with anyio.fail_after(60):
            assert await engine.handle(long, "long").result() == sum(range(n))
        tg.cancel_scope.cancel()
    assert ran == []
    assert during[0] >= 2, during


async def test_a_finished_run_leaves_nothing_for_the_garbage_collector(
    make_storage: StorageFactory,
) -> None:
    """What a run of the engine builds is freed by reference counting when it ends: no
    reference cycles of memable's objects (which only the collector frees, late and at a
    cost that grows with everything else alive, as with thousands of waiting instances)."""

    async def double(n: int) -> int:
        return 2 * n

    @memable.workflow("doubler")
    async def wf(ctx: Context, n: int) -> int:
        return await ctx.step("a:v1", double, n) + await ctx.step("b:v1", double, n)

    async with Engine(make_storage(), workflows=[wf]) as engine:
        assert await engine.run(wf, 1) == 4  # first use: lazily imported modules
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for n in range(20):
                assert await engine.run(wf, n) == 4 * n
            gc.collect()
            cyclic = {
                type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith("memable")
            }
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert cyclic == set()
