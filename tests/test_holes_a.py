"""Holes: sibling waits, cancel racing completion, cancelled suspended children, key bumps."""

from __future__ import annotations

from datetime import timedelta

import anyio
import anyio.lowlevel
import pytest

import memable
from memable import Context, Engine, SuspendPoint
from memable.testing import ManualClock

from .helpers import StorageFactory

P = SuspendPoint("p:v1", bool)
Q = SuspendPoint("q:v1", bool)
GO = SuspendPoint("go:v1", bool)

HOUR = timedelta(hours=1)


def siblings_workflow() -> memable.Workflow[str, str]:
    """Siblings wait in one run; the input picks the arrangement; the output says what ended."""

    async def flow(ctx: Context, arrangement: str) -> str:
        ended: list[str] = []

        async def wait_p() -> None:
            await ctx.suspend(P)
            ended.append("p")

        async def nap() -> None:
            await ctx.sleep("t", HOUR)
            ended.append("t")

        async def wait_with_timeout(point: SuspendPoint[bool], hours: int) -> None:
            try:
                await ctx.suspend(point, timeout=timedelta(hours=hours))
                ended.append(f"{point.key}=signal")
            except memable.SuspendTimeout:
                ended.append(f"{point.key}=timeout")

        async with anyio.create_task_group() as tg:
            if arrangement == "suspend-first":
                tg.start_soon(wait_p)
                tg.start_soon(nap)
            elif arrangement == "sleep-first":
                tg.start_soon(nap)
                tg.start_soon(wait_p)
            else:
                tg.start_soon(wait_with_timeout, P, 1)
                tg.start_soon(wait_with_timeout, Q, 2)
        return ",".join(sorted(ended))

    return memable.Workflow("siblings", flow)


async def assert_suspended_on(
    engine: Engine,
    wf: memable.Workflow[str, str],
    invocation: memable.Invocation[str],
    keys: tuple[str, ...],
) -> None:
    """The next outcome and the stored state both say: suspended on exactly *keys*."""
    outcome = await invocation.wait()
    assert isinstance(outcome, memable.Suspended), outcome
    assert outcome.waiting_on == keys
    info = await engine.state(wf, invocation.instance_id)
    assert (info.status, info.waiting_on) == ("suspended", keys)


@pytest.mark.parametrize("arrangement", ["suspend-first", "sleep-first"])
async def test_a_suspend_and_a_sleep_in_siblings_are_both_awaited(
    make_storage: StorageFactory, arrangement: str
) -> None:
    """Both sibling keys are recorded; a signal alone or the timer alone resumes the instance."""
    clock = ManualClock()
    wf = siblings_workflow()
    async with Engine(make_storage(), workflows=[wf], clock=clock) as engine:
        for i in range(20):
            by_signal = await engine.invoke(wf, arrangement, instance_id=f"s-{i}")
            await assert_suspended_on(engine, wf, by_signal, ("p:v1", "t"))
            await engine.signal(wf, f"s-{i}", P, True)
            await assert_suspended_on(engine, wf, by_signal, ("t",))
            await clock.advance(HOUR)
            assert await by_signal.result() == "p,t"

            by_timer = await engine.invoke(wf, arrangement, instance_id=f"c-{i}")
            await assert_suspended_on(engine, wf, by_timer, ("p:v1", "t"))
            await clock.advance(HOUR)
            await assert_suspended_on(engine, wf, by_timer, ("p:v1",))
            await engine.signal(wf, f"c-{i}", P, True)
            assert await by_timer.result() == "p,t"


async def test_two_suspends_with_timeouts_in_siblings_are_both_awaited(
    make_storage: StorageFactory,
) -> None:
    """Two timed suspends: both keys recorded; a signal alone or one deadline alone resumes."""
    clock = ManualClock()
    wf = siblings_workflow()
    both = ("p:v1", "q:v1")
    async with Engine(make_storage(), workflows=[wf], clock=clock) as engine:
        for i in range(20):
            by_signal = await engine.invoke(wf, "timeouts", instance_id=f"s-{i}")
            await assert_suspended_on(engine, wf, by_signal, both)
            await engine.signal(wf, f"s-{i}", P, True)
            await assert_suspended_on(engine, wf, by_signal, ("q:v1",))
            await clock.advance(2 * HOUR)
            assert await by_signal.result() == "p:v1=signal,q:v1=timeout"

            by_timer = await engine.invoke(wf, "timeouts", instance_id=f"c-{i}")
            await assert_suspended_on(engine, wf, by_timer, both)
            await clock.advance(HOUR)
            await assert_suspended_on(engine, wf, by_timer, ("q:v1",))
            await engine.signal(wf, f"c-{i}", Q, True)
            assert await by_timer.result() == "p:v1=timeout,q:v1=signal"


async def test_a_sibling_that_steps_before_suspending_is_awaited_too(
    make_storage: StorageFactory,
) -> None:
    """A slow step finishing after the other sibling waits: both keys end in waiting_on."""
    clock = ManualClock()
    gates: dict[str, tuple[anyio.Event, anyio.Event]] = {}

    async def flow(ctx: Context) -> str:
        sleeping, release = gates[ctx.instance_id]

        async def slow() -> str:
            await release.wait()
            return "slow"

        async def step_then_suspend() -> None:
            await ctx.step("slow", slow)
            await ctx.suspend(P)

        async def nap() -> None:
            sleeping.set()
            await ctx.sleep("t", HOUR)

        async with anyio.create_task_group() as tg:
            tg.start_soon(step_then_suspend)
            tg.start_soon(nap)
        return "done"

    wf = memable.Workflow("step-sibling", flow)
    async with Engine(make_storage(), workflows=[wf], clock=clock) as engine:
        for i in range(20):
            gates[f"x-{i}"] = (anyio.Event(), anyio.Event())
            sleeping, release = gates[f"x-{i}"]
            invocation = await engine.invoke(wf, instance_id=f"x-{i}")
            await sleeping.wait()
            for _ in range(i % 5 + 1):
                await anyio.lowlevel.checkpoint()
            release.set()
            outcome = await invocation.wait()
            assert isinstance(outcome, memable.Suspended), outcome
            assert outcome.waiting_on == ("p:v1", "t")
            info = await engine.state(wf, f"x-{i}")
            assert (info.status, info.waiting_on) == ("suspended", ("p:v1", "t"))
            await engine.signal(wf, f"x-{i}", P, True)
            outcome = await invocation.wait()
            assert isinstance(outcome, memable.Suspended), outcome
            assert outcome.waiting_on == ("t",)
            await clock.advance(HOUR)
            assert await invocation.result() == "done"


async def test_cancel_racing_completion_agrees_with_storage(make_storage: StorageFactory) -> None:
    """Whichever of cancel and completion wins, wait(), state() and cancel()'s answer agree."""
    gates: dict[str, tuple[anyio.Event, anyio.Event]] = {}

    async def flow(ctx: Context) -> str:
        entered, gate = gates[ctx.instance_id]

        async def last() -> str:
            entered.set()
            await gate.wait()
            return "done"

        return await ctx.step("last", last)

    wf = memable.Workflow("racy", flow)
    seen: set[str] = set()
    rounds = 30
    async with Engine(make_storage(), workflows=[wf]) as engine:
        for i in range(rounds):
            instance_id = f"r-{i}"
            gates[instance_id] = (anyio.Event(), anyio.Event())
            entered, gate = gates[instance_id]
            invocation = await engine.invoke(wf, instance_id=instance_id)
            await entered.wait()
            cancelled: list[bool] = []

            async def finish(delay: int, gate: anyio.Event = gate) -> None:
                for _ in range(delay):
                    await anyio.lowlevel.checkpoint()
                gate.set()

            async def cancel(
                delay: int, instance_id: str = instance_id, cancelled: list[bool] = cancelled
            ) -> None:
                for _ in range(delay):
                    await anyio.lowlevel.checkpoint()
                cancelled.append(await engine.cancel(wf, instance_id))

            if i == 0:  # cancel first, for certain
                await cancel(0)
                gate.set()
            elif i == rounds - 1:  # completion first, for certain
                gate.set()
                assert await invocation.result() == "done"
                await cancel(0)
            else:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(finish, i % 4)
                    tg.start_soon(cancel, (i // 4) % 4)
            outcome = await invocation.wait()
            status = (await engine.state(wf, instance_id)).status
            if isinstance(outcome, memable.Completed):
                assert (outcome.output, status, cancelled) == ("done", "completed", [False])
                seen.add("completed")
            else:
                assert isinstance(outcome, memable.Cancelled), outcome
                assert (status, cancelled) == ("cancelled", [True])
                seen.add("cancelled")
    assert seen == {"completed", "cancelled"}


async def suspending_child(ctx: Context, n: int) -> int:
    """Child 0 completes; the others wait for GO."""
    if n:
        await ctx.suspend(GO)
    return n


async def test_cancelling_a_suspended_child_fails_a_fail_fast_parent(
    make_storage: StorageFactory,
) -> None:
    """Cancelling a suspended child fails its fail-fast parent at once and cancels the rest."""

    @memable.workflow("ff-parent")
    async def wf(ctx: Context) -> list[int]:
        return await ctx.fan_out("kids", suspending_child, range(3))

    async with Engine(make_storage(), workflows=[wf]) as engine:
        outcome = await (await engine.invoke(wf, instance_id="p")).wait()
        assert isinstance(outcome, memable.Suspended)
        assert outcome.children == 2
        assert await engine.cancel(wf, "p/kids-1") is True
        with anyio.fail_after(10):
            final = await engine.handle(wf, "p").wait()
        assert isinstance(final, memable.Failed), final
        assert final.error.type == "memable.ChildFailed"
        assert "kids-1" in final.error.message
        info = await engine.state(wf, "p")
        assert info.status == "failed"
        assert (await engine.state(wf, "p/kids-1")).status == "cancelled"
        assert (await engine.state(wf, "p/kids-2")).status == "cancelled"
        assert (await engine.state(wf, "p/kids-0")).status == "completed"


async def test_cancelling_a_suspended_child_of_a_settling_parent(
    make_storage: StorageFactory,
) -> None:
    """settle=True: a cancelled child is an Err; the parent waits for the last one, then ends."""

    @memable.workflow("settle-parent")
    async def wf(ctx: Context) -> list[str]:
        settled = await ctx.fan_out("kids", suspending_child, range(3), settle=True)
        labels = []
        for item in settled:
            if isinstance(item, memable.Ok):
                labels.append(f"ok:{item.value}")
            else:
                labels.append(f"err:{item.error.type}")
        return labels

    async with Engine(make_storage(), workflows=[wf]) as engine:
        outcome = await (await engine.invoke(wf, instance_id="p")).wait()
        assert isinstance(outcome, memable.Suspended)
        assert outcome.children == 2
        assert await engine.cancel(wf, "p/kids-1") is True
        handle = engine.handle(wf, "p")
        outcome = await handle.wait()
        assert isinstance(outcome, memable.Suspended), outcome
        assert (outcome.children, outcome.waiting_on) == (1, ())
        info = await engine.state(wf, "p")
        assert (info.status, info.waiting_on) == ("suspended", ())
        with pytest.raises(memable.WorkflowSuspended) as caught:
            await handle.result()
        assert "_children" not in str(caught.value)
        await engine.signal(wf, "p/kids-2", GO, True)
        with anyio.fail_after(10):
            result = await handle.result()
        assert result == ["ok:0", "err:memable.WorkflowCancelled", "ok:2"]


async def test_a_bumped_fan_out_key_does_not_livelock(make_storage: StorageFactory) -> None:
    """After a fan-out key bump the parent completes, old children end cancelled, none run."""

    async def waiting_child(ctx: Context, n: int) -> int:
        await ctx.suspend(GO)
        return n

    async def quick_child(ctx: Context, n: int) -> int:
        return n

    async def v1(ctx: Context) -> list[int]:
        return await ctx.fan_out("kids:v1", waiting_child, range(2))

    async def v2(ctx: Context) -> list[int]:
        return await ctx.fan_out("kids:v2", quick_child, range(2))

    old, new = memable.Workflow("bump", v1), memable.Workflow("bump", v2)
    with anyio.fail_after(20):
        async with Engine(make_storage(), workflows=[old]) as engine:
            outcome = await (await engine.invoke(old, instance_id="p")).wait()
            assert isinstance(outcome, memable.Suspended)
            assert outcome.children == 2
    with anyio.fail_after(20):
        async with Engine(make_storage(), workflows=[new]) as engine:
            handle = await engine.resume(new, "p")
            assert await handle.result() == [0, 1]
            for n in range(2):
                assert (await engine.state(new, f"p/kids:v1-{n}")).status == "cancelled"
                assert (await engine.state(new, f"p/kids:v2-{n}")).status == "completed"
    with anyio.fail_after(20):
        async with Engine(make_storage(), workflows=[new]) as engine:
            assert list(await engine.instances(status="running")) == []
            assert (await engine.state(new, "p")).status == "completed"


async def test_resuming_past_a_settled_fan_out_does_not_livelock(
    make_storage: StorageFactory,
) -> None:
    """``resume`` restarts a settled fan-out's failed child, but nothing drives it any more
    (the fan-out's result is recorded): the parent completes, the child ends cancelled, and
    neither leaving the engine block nor the next engine's start waits on it."""
    attempts = {"after": 0, "child": 0}

    async def flaky_child(ctx: Context, n: int) -> int:
        if n == 1:
            attempts["child"] += 1
            raise RuntimeError("child boom")
        return n

    async def after() -> str:
        attempts["after"] += 1
        if attempts["after"] == 1:
            raise memable.Permanent("not yet")
        return "done"

    async def parent(ctx: Context) -> str:
        settled = await ctx.fan_out("kids", flaky_child, range(3), settle=True)
        oks = sum(isinstance(s, memable.Ok) for s in settled)
        return f"{oks} ok, {await ctx.step('after:v1', after)}"

    wf = memable.Workflow("settled-resume", parent)
    with anyio.fail_after(20):
        async with Engine(make_storage(), workflows=[wf], shutdown_timeout=5) as engine:
            outcome = await (await engine.invoke(wf, instance_id="p")).wait()
            assert isinstance(outcome, memable.Failed), outcome
            assert (await engine.state(wf, "p/kids-1")).status == "failed"
            handle = await engine.resume(wf, "p")
            assert await handle.result() == "2 ok, done"
            # The restarted child is not run again (its fan-out is recorded): it is ended.
            assert (await engine.state(wf, "p/kids-1")).status == "cancelled"
            assert attempts["child"] == 1
    with anyio.fail_after(20):
        async with Engine(make_storage(), workflows=[wf]) as engine:
            assert list(await engine.instances(status="running")) == []
            assert (await engine.state(wf, "p")).status == "completed"
    assert attempts == {"after": 2, "child": 1}
