"""Suspend points, signals, cancellation and status streams (asyncio and trio)."""

from __future__ import annotations

import gc
from datetime import timedelta
from pathlib import Path

import anyio
import attrs
import pytest

import memable
import memable._run
from memable import Context, Engine, SuspendPoint
from memable.testing import ManualClock, crash_at

from .helpers import StorageFactory, peek

APPROVAL = SuspendPoint("approval:v1", bool)


@attrs.frozen
class Line:
    sku: str
    quantity: int


def approval_flow(ran: list[str]) -> memable.Workflow[str, str]:
    """price → suspend(approval) → charge; *ran* records what ran."""

    async def price(order_id: str) -> int:
        ran.append("price")
        return 12

    async def charge(order_id: str) -> str:
        ran.append("charge")
        return f"charged {order_id}"

    async def flow(ctx: Context, order_id: str) -> str:
        await ctx.step("price:v1", price, order_id)
        if not await ctx.suspend(APPROVAL, status="waiting for a manager"):
            ran.append("declined")
            return "declined"
        ran.append("after approval")
        return await ctx.step("charge:v1", charge, order_id)

    return memable.Workflow("approval", flow)


async def test_suspend_signal_complete_across_restarts(db_path: Path) -> None:
    """A suspended instance survives restarts; the signal completes it; nothing repeats."""
    ran: list[str] = []
    wf = approval_flow(ran)
    async with Engine(db_path, workflows=[wf]) as engine:
        outcome = await (await engine.invoke(wf, "o-1", instance_id="o-1")).wait()
        assert outcome == memable.Suspended(
            waiting_on=("approval:v1",), status="waiting for a manager"
        )
        with pytest.raises(memable.WorkflowSuspended) as caught:
            await engine.handle(wf, "o-1").result()
        assert caught.value.key == "approval:v1"
    async with Engine(db_path, workflows=[wf]) as engine:  # nothing to recover: suspended
        assert (await engine.state(wf, "o-1")).status == "suspended"
        assert engine._runner.runs == {}
    async with Engine(db_path, workflows=[wf]) as engine:
        invocation = await engine.signal(wf, "o-1", APPROVAL, True)
        assert await invocation.result() == "charged o-1"
    assert ran == ["price", "after approval", "charge"]


async def test_an_early_signal_is_kept(make_storage: StorageFactory) -> None:
    """A signal sent before the workflow reaches the point is consumed there."""
    ran: list[str] = []
    reached, release = anyio.Event(), anyio.Event()

    async def slow() -> int:
        reached.set()
        await release.wait()
        return 1

    @memable.workflow("early")
    async def wf(ctx: Context) -> bool:
        await ctx.step("slow", slow)
        ran.append("before point")
        return await ctx.suspend(APPROVAL)

    async with Engine(make_storage(), workflows=[wf]) as engine:
        invocation = await engine.invoke(wf, instance_id="e")
        await reached.wait()
        await engine.signal(wf, "e", APPROVAL, False)
        release.set()
        assert await invocation.result() is False
    assert ran.count("before point") <= 2  # once, or twice if it re-ran to pick it up


async def test_wrong_payloads_store_nothing(make_storage: StorageFactory) -> None:
    """A payload of the wrong type is a TypeMismatch and is not stored."""
    maybe = SuspendPoint[int | None]("maybe:v1", int | None)
    lines = SuspendPoint[list[Line]]("lines:v1", list[Line])

    @memable.workflow("typed")
    async def wf(ctx: Context) -> str:
        count = await ctx.suspend(maybe)
        got = await ctx.suspend(lines)
        return f"{count} {got}"

    async with Engine(make_storage(), workflows=[wf]) as engine:
        invocation = await engine.invoke(wf, instance_id="t")
        await invocation.wait()
        with pytest.raises(memable.TypeMismatch) as caught:
            await engine.signal(wf, "t", maybe, "three")  # type: ignore[misc]
        assert caught.value.key == "maybe:v1"
        with pytest.raises(memable.TypeMismatch):
            await engine.signal(wf, "t", APPROVAL, 1)  # type: ignore[misc]
        await engine.signal(wf, "t", maybe, None)  # not superseded: nothing was stored
        await invocation.wait()
        with pytest.raises(memable.TypeMismatch):
            await engine.signal(wf, "t", lines, [Line("a", 1), "b"])  # type: ignore[misc]
        await engine.signal(wf, "t", lines, [Line("a", 2)])
        assert await invocation.result() == "None [Line(sku='a', quantity=2)]"


async def test_racing_signallers_exactly_one_wins(make_storage: StorageFactory) -> None:
    """20 concurrent signals: one is taken, 19 are superseded, the rest runs once."""
    after: list[int] = []
    point = SuspendPoint("pick:v1", int)

    @memable.workflow("race")
    async def wf(ctx: Context) -> int:
        value = await ctx.suspend(point)
        after.append(value)
        return value

    winners: list[int] = []
    losers: list[int] = []
    async with Engine(make_storage(), workflows=[wf]) as engine:
        invocation = await engine.invoke(wf, instance_id="r")
        await invocation.wait()

        async def send(n: int) -> None:
            try:
                await engine.signal(wf, "r", point, n)
            except memable.SignalSuperseded as exc:
                assert exc.key == "pick:v1"
                losers.append(n)
            except memable.SignalRejected as exc:
                # Storage that commits in parallel (Postgres) may finish the winner's run
                # before a losing signal is looked at: then it is rejected as finished.
                assert exc.key == "pick:v1"
                assert "completed" in str(exc)
                losers.append(n)
            else:
                winners.append(n)

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(send, n)
        assert len(winners) == 1
        assert len(losers) == 19
        assert await invocation.result() == winners[0]
    assert after == winners


async def test_signal_errors(make_storage: StorageFactory) -> None:
    """Unknown → InstanceNotFound; finished → SignalRejected; a second payload → superseded."""
    ran: list[str] = []
    wf = approval_flow(ran)
    async with Engine(make_storage(), workflows=[wf]) as engine:
        with pytest.raises(memable.InstanceNotFound):
            await engine.signal(wf, "nobody", APPROVAL, True)
        await (await engine.invoke(wf, "x", instance_id="s")).wait()
        await engine.signal(wf, "s", APPROVAL, False)
        assert await engine.handle(wf, "s").result() == "declined"
        with pytest.raises(memable.SignalRejected) as caught:
            await engine.signal(wf, "s", APPROVAL, True)
        assert (caught.value.key, caught.value.reason) == (
            "approval:v1",
            "instance 's' is completed",
        )

        other = SuspendPoint("other:v1", int)

        @memable.workflow("two-points")
        async def two(ctx: Context) -> int:
            await ctx.suspend(SuspendPoint("first:v1", int))
            return await ctx.suspend(other)

        engine.register(two)
        await (await engine.invoke(two, instance_id="t")).wait()
        await engine.signal(two, "t", other, 1)  # early: stored
        with pytest.raises(memable.SignalSuperseded):
            await engine.signal(two, "t", other, 2)


async def test_suspend_timeout_both_ways(make_storage: StorageFactory) -> None:
    """Before the deadline the payload wins; after it, SuspendTimeout, and signals lose."""
    clock = ManualClock()

    @memable.workflow("deadline")
    async def wf(ctx: Context) -> str:
        try:
            return str(await ctx.suspend(APPROVAL, timeout=timedelta(days=2)))
        except memable.SuspendTimeout as exc:
            return f"timed out at {exc.key}"

    async with Engine(make_storage(), workflows=[wf], clock=clock) as engine:
        early = await engine.invoke(wf, instance_id="early")
        late = await engine.invoke(wf, instance_id="late")
        await early.wait()
        await late.wait()
        await engine.signal(wf, "early", APPROVAL, True)
        assert await early.result() == "True"
        await clock.advance(timedelta(days=3))
        assert await late.result() == "timed out at approval:v1"
        assert await early.result() == "True"
        with pytest.raises(memable.SignalRejected):
            await engine.signal(wf, "late", APPROVAL, True)


async def signal_once(
    engine: Engine, wf: memable.Workflow[None, str], instance_id: str, out: list[str]
) -> None:
    """Signal approval; record whether it won or was superseded by the deadline (or came
    after the deadline's run finished the instance: on a shared database that run may be
    quicker than the signal)."""
    try:
        await engine.signal(wf, instance_id, APPROVAL, True)
        out.append("won")
    except (memable.SignalSuperseded, memable.SignalRejected):
        out.append("lost")


async def test_signal_and_deadline_race(make_storage: StorageFactory) -> None:
    """Exactly one of the signal and the deadline wins, every time."""
    clock = ManualClock()

    @memable.workflow("race-deadline")
    async def wf(ctx: Context) -> str:
        try:
            return str(await ctx.suspend(APPROVAL, timeout=timedelta(hours=1)))
        except memable.SuspendTimeout:
            return "timeout"

    async with Engine(make_storage(), workflows=[wf], clock=clock) as engine:
        for n in range(8):
            invocation = await engine.invoke(wf, instance_id=f"r{n}")
            await invocation.wait()
            signalled: list[str] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(signal_once, engine, wf, f"r{n}", signalled)
                tg.start_soon(clock.advance, timedelta(hours=2))
            result = await invocation.result()
            assert (result, signalled) in (("True", ["won"]), ("timeout", ["lost"]))


async def test_several_points_at_once(make_storage: StorageFactory) -> None:
    """Sibling tasks wait on two points; each signal resumes; it suspends on what is left."""
    first, second = SuspendPoint("a:v1", int), SuspendPoint("b:v1", str)

    @memable.workflow("siblings")
    async def wf(ctx: Context) -> str:
        got: dict[str, object] = {}

        async def wait_a() -> None:
            got["a"] = await ctx.suspend(first)

        async def wait_b() -> None:
            got["b"] = await ctx.suspend(second)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_a)
            tg.start_soon(wait_b)
        return f"{got['a']}{got['b']}"

    async with Engine(make_storage(), workflows=[wf]) as engine:
        invocation = await engine.invoke(wf, instance_id="s")
        outcome = await invocation.wait()
        assert isinstance(outcome, memable.Suspended)
        assert outcome.waiting_on == ("a:v1", "b:v1")
        await engine.signal(wf, "s", second, "x")
        outcome = await invocation.wait()
        assert isinstance(outcome, memable.Suspended)
        assert outcome.waiting_on == ("a:v1",)
        await engine.signal(wf, "s", first, 1)
        assert await invocation.result() == "1x"


async def test_cancel(make_storage: StorageFactory) -> None:
    """Cancel ends suspended and running instances for good; their finally blocks run."""
    cleaned: list[str] = []
    started = anyio.Event()
    ran: list[str] = []

    async def hang() -> int:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cleaned.append("hang")
        return 0  # pragma: no cover

    async def after() -> int:
        ran.append("after")
        return 1

    @memable.workflow("cancellable")
    async def wf(ctx: Context, mode: str) -> int:
        if mode == "suspend":
            await ctx.suspend(APPROVAL)
        else:
            await ctx.step("hang", hang)
        return await ctx.step("after", after)

    async with Engine(make_storage(), workflows=[wf]) as engine:
        suspended = await engine.invoke(wf, "suspend", instance_id="s")
        await suspended.wait()
        await engine.cancel(wf, "s", reason="customer left")
        assert await suspended.wait() == memable.Cancelled(reason="customer left")
        with pytest.raises(memable.WorkflowCancelled) as caught:
            await suspended.result()
        assert caught.value.reason == "customer left"

        running = await engine.invoke(wf, "run", instance_id="r")
        await started.wait()
        await engine.cancel(wf, "r", reason="stop")
        assert await running.wait() == memable.Cancelled(reason="stop")
        assert cleaned == ["hang"]
        with pytest.raises(memable.SignalRejected):
            await engine.signal(wf, "s", APPROVAL, True)
        with pytest.raises(memable.InstanceNotFound):
            await engine.cancel(wf, "nobody")
        done = await engine.invoke(wf, "suspend", instance_id="d")
        await engine.signal(wf, "d", APPROVAL, True)
        assert await done.result() == 1
        await engine.cancel(wf, "d")  # finished: nothing happens
        assert (await engine.state(wf, "d")).status == "completed"
    async with Engine(make_storage(), workflows=[wf]) as engine:
        assert {i.instance_id: i.status for i in await engine.instances()} == {
            "s": "cancelled",
            "r": "cancelled",
            "d": "completed",
        }
    assert ran == ["after"]


async def test_resume_a_suspended_instance(make_storage: StorageFactory) -> None:
    """resume() re-runs a suspended instance, which suspends again where it waits."""
    ran: list[str] = []
    wf = approval_flow(ran)
    async with Engine(make_storage(), workflows=[wf]) as engine:
        await (await engine.invoke(wf, "x", instance_id="s")).wait()
        outcome = await (await engine.resume(wf, "s")).wait()
        assert isinstance(outcome, memable.Suspended)
        assert outcome.waiting_on == ("approval:v1",)
        assert (await engine.state(wf, "s")).status == "suspended"
    assert ran == ["price"]


async def test_status_stream(make_storage: StorageFactory) -> None:
    """subscribe() sees running, suspended, running, completed, then ends."""
    seen: list[tuple[str, str | None]] = []
    ran: list[str] = []
    wf = approval_flow(ran)
    async with Engine(make_storage(), workflows=[wf]) as engine:
        invocation = await engine.invoke(wf, "x", instance_id="s")
        await invocation.wait()
        subscribed = anyio.Event()

        async def watch() -> None:
            async for status in invocation.status():
                seen.append((status.status, status.message))
                subscribed.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await subscribed.wait()
            await engine.signal(wf, "s", APPROVAL, True)
        assert seen == [
            ("suspended", "waiting for a manager"),
            ("running", "waiting for a manager"),
            ("completed", "waiting for a manager"),
        ]
        final = [status async for status in engine.subscribe(wf, "s")]
        assert [s.status for s in final] == ["completed"]


async def test_suspended_instances_hold_no_memory(make_storage: StorageFactory) -> None:
    """Thousands of suspended instances leave no task, run or context in the engine."""
    wf = approval_flow([])

    async def suspend_many(engine: Engine, start: int, count: int) -> None:
        async def one(n: int) -> None:
            await engine.invoke(wf, "x", instance_id=f"i{n}")

        async with anyio.create_task_group() as tg:
            for n in range(start, start + count):
                tg.start_soon(one, n)

    def engine_objects() -> int:
        gc.collect()
        kinds = (memable.Context, memable._run.Run)
        return sum(isinstance(obj, kinds) for obj in gc.get_objects())

    async with Engine(make_storage(), workflows=[wf]) as engine:
        await suspend_many(engine, 0, 10)
        while len(await engine.instances(status="suspended", limit=None)) < 10:
            await anyio.sleep(0.01)
        with anyio.fail_after(30):
            while engine._runner.runs:
                await anyio.sleep(0.01)
        small = (len(engine._runner.runs), len(engine._kernel.status), engine_objects())
        await suspend_many(engine, 10, 2000)
        while len(await engine.instances(status="suspended", limit=None)) < 2010:
            await anyio.sleep(0.05)
        # Storage shows a suspension as soon as its (group) commit lands; the runs end
        # when their tasks next get the event loop.
        with anyio.fail_after(30):
            while engine._runner.runs:
                await anyio.sleep(0.01)
        large = (len(engine._runner.runs), len(engine._kernel.status), engine_objects())
    assert small == large == (0, 0, 0)


async def test_step_and_suspend_keys_do_not_mix(make_storage: StorageFactory) -> None:
    """A key recorded as a step cannot become a suspend point, nor the reverse — also a key
    the instance is suspended on right now, with no signal or timer recorded yet."""
    hold = SuspendPoint("hold:v1", int)

    def version(as_step: bool) -> memable.Workflow[None, str]:
        async def one() -> bool:
            return True

        async def wf(ctx: Context) -> str:
            try:
                if as_step:
                    value = str(await ctx.step("k:v1", one))
                else:
                    value = str(await ctx.suspend(SuspendPoint("k:v1", bool)))
            except memable.SuspendedStepConflict as exc:
                return f"conflict: {exc}"
            await ctx.suspend(hold)
            return value

        return memable.Workflow("mixed", wf)

    step_version, point_version = version(True), version(False)
    async with Engine(make_storage(), workflows=[step_version]) as engine:
        await (await engine.invoke(step_version, instance_id="a")).wait()
    async with Engine(make_storage(), workflows=[point_version]) as engine:
        # a: recorded as a step, replayed by a signal, now used as a point.
        invocation = await engine.signal(point_version, "a", hold, 1)
        assert (await invocation.result()).startswith("conflict")
        # b: suspended on the point (no payload, no timer); c: the point has a payload.
        for instance_id in ("b", "c"):
            outcome = await (await engine.invoke(point_version, instance_id=instance_id)).wait()
            assert outcome == memable.Suspended(waiting_on=("k:v1",))
        signalled = await engine.signal(point_version, "c", SuspendPoint("k:v1", bool), True)
        assert await signalled.wait() == memable.Suspended(waiting_on=("hold:v1",))
    async with Engine(make_storage(), workflows=[step_version]) as engine:
        for instance_id in ("b", "c"):
            invocation = await engine.resume(step_version, instance_id)
            result = await invocation.result()
            assert result.startswith("conflict"), result
            assert "'k:v1'" in result


async def test_crash_injection_after_the_body(make_storage: StorageFactory) -> None:
    """crash_at(..., when='after'): the body ran, nothing was recorded; recovery runs it again."""
    runs: list[str] = []

    async def charge() -> str:
        runs.append("charge")
        return "c"

    async def ship() -> str:
        runs.append("ship")
        return "s"

    @memable.workflow("crashing")
    async def wf(ctx: Context) -> str:
        return await ctx.step("charge:v1", charge) + await ctx.step("ship:v1", ship)

    async with Engine(make_storage(), workflows=[wf]) as engine:
        with crash_at(engine, "charge:v1", when="after"):
            invocation = await engine.invoke(wf, instance_id="c")
            with pytest.raises(memable.NotStarted):
                await invocation.wait()
        assert (await engine.state(wf, "c")).status == "running"
    assert peek(make_storage(), lambda s: s.load_steps("c")) == []
    async with Engine(make_storage(), workflows=[wf]) as engine:
        assert await engine.handle(wf, "c").result() == "cs"
    assert runs == ["charge", "charge", "ship"]


async def test_status_stream_from_the_start(make_storage: StorageFactory) -> None:
    """Subscribed while running: running, suspended, running again, completed."""
    release = anyio.Event()

    async def hold() -> int:
        await release.wait()
        return 1

    @memable.workflow("watched")
    async def wf(ctx: Context) -> bool:
        await ctx.step("hold", hold)
        return await ctx.suspend(APPROVAL, status="approve?")

    seen: list[str] = []
    async with Engine(make_storage(), workflows=[wf]) as engine:
        invocation = await engine.invoke(wf, instance_id="w")
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                async for status in engine.subscribe(wf, "w"):
                    seen.append(status.status)
                    if status.status == "running" and not release.is_set():
                        release.set()
                    elif status.status == "suspended":
                        await engine.signal(wf, "w", APPROVAL, True)

            tg.start_soon(watch)
        assert await invocation.result() is True
    # A status message change is a change too ("running" again with "approve?").
    transitions = [s for n, s in enumerate(seen) if n == 0 or seen[n - 1] != s]
    assert transitions == ["running", "suspended", "running", "completed"]


async def test_a_status_stream_ends_with_its_engine(make_storage: StorageFactory) -> None:
    """A subscriber in an outer task is not left waiting once the engine's block ends."""
    ran: list[str] = []
    wf = approval_flow(ran)
    seen: list[str] = []
    async with anyio.create_task_group() as outer:
        async with Engine(make_storage(), workflows=[wf]) as engine:
            await (await engine.invoke(wf, "x", instance_id="s")).wait()
            subscribed = anyio.Event()

            async def watch() -> None:
                async for status in engine.subscribe(wf, "s"):
                    seen.append(status.status)
                    subscribed.set()

            outer.start_soon(watch)
            await subscribed.wait()
        # Leaving the outer task group waits for watch(): it must have ended by itself.
        outer.cancel_scope.deadline = anyio.current_time() + 10
    assert not outer.cancel_scope.cancelled_caught
    assert seen == ["suspended"]


async def test_leaving_a_status_stream_early(make_storage: StorageFactory) -> None:
    """``break`` out of a status loop: no aclosing() needed, no warning on trio (warnings
    are errors here), and the engine stops following the instance."""

    @memable.workflow("early")
    async def wf(ctx: Context) -> bool:
        return await ctx.suspend(APPROVAL, status="approve?")

    async with Engine(make_storage(), workflows=[wf]) as engine:
        invocation = await engine.invoke(wf, instance_id="e")
        assert isinstance(await invocation.wait(), memable.Suspended)
        async for status in invocation.status():
            assert status.status == "suspended"
            break
        gc.collect()
        assert len(engine._kernel.status) == 0
        stream = engine.subscribe(wf, "e")
        assert (await anext(stream)).message == "approve?"
        assert len(engine._kernel.status) == 1  # followed until the stream ends or is dropped
        del stream
        gc.collect()
        assert len(engine._kernel.status) == 0
        with pytest.raises(memable.InstanceNotFound):
            await anext(engine.subscribe(wf, "nope"))
        assert len(engine._kernel.status) == 0
