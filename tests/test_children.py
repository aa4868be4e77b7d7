"""Children and fan-out: order, limits, fail-fast, settle, crashes, nesting, suspension, purge."""

from __future__ import annotations

import collections
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

import memable
from memable import Context, Engine, SuspendPoint
from memable.testing import ManualClock

from .helpers import StorageFactory, peek

GO = SuspendPoint("go:v1", bool)


@memable.workflow("double")
async def double(ctx: Context, n: int) -> int:
    async def times_two(n: int) -> int:
        return 2 * n

    return await ctx.step("times-two", times_two, n)


async def test_results_in_item_order_and_children_are_instances(
    make_storage: StorageFactory,
) -> None:
    """Results come back in item order; each child is a real instance with a parent link."""

    async def slow_label(ctx: Context, n: int) -> str:
        await anyio.sleep(0.001 * (5 - n))  # later items finish first
        return f"label-{n}"

    @memable.workflow("parent")
    async def parent(ctx: Context, count: int) -> list[str]:
        labels = await ctx.fan_out("label:v1", slow_label, list(range(count)))
        doubled = await ctx.fan_out("double:v1", double, [1, 2, 3])
        single = await ctx.child("one:v1", double, 21)
        return [*labels, *map(str, doubled), str(single)]

    async with Engine(make_storage(), workflows=[parent, double]) as engine:
        result = await engine.run(parent, 5, instance_id="p")
        assert result == [f"label-{n}" for n in range(5)] + ["2", "4", "6", "42"]
        infos = {i.instance_id: i for i in await engine.instances(limit=None)}
        assert infos["p/label:v1-3"].parent_id == "p"
        assert infos["p/double:v1-2"].workflow == "double"
        assert infos["p/one:v1-0"].status == "completed"
        assert len(infos) == 1 + 5 + 3 + 1
        child = await engine.state(double, "p/double:v1-1")
        assert (child.status, child.parent_id) == ("completed", "p")
        assert (await engine.state(parent, "p/label:v1-0")).status == "completed"


async def test_the_limit_is_respected(make_storage: StorageFactory) -> None:
    """Never more than `limit` children run at once; limit < 1 is a ValueError."""
    running = 0
    peak = 0

    async def work(ctx: Context, n: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.002)
        running -= 1
        return n

    @memable.workflow("limited")
    async def wf(ctx: Context, limit: int) -> list[int]:
        return await ctx.fan_out("w", work, range(20), limit=limit)

    async with Engine(make_storage(), workflows=[wf]) as engine:
        assert await engine.run(wf, 3) == list(range(20))
        assert 1 < peak <= 3
        outcome = await (await engine.invoke(wf, 0)).wait()
        assert isinstance(outcome, memable.Failed)
        assert outcome.error.type == "ValueError"
        assert "at least 1, not 0" in outcome.error.message


async def test_fail_fast_cancels_siblings(make_storage: StorageFactory) -> None:
    """The first failure cancels running siblings, starts no new ones, raises ChildFailed."""
    started: list[int] = []
    cleaned: list[int] = []
    blocking = anyio.Event()

    async def child(ctx: Context, n: int) -> int:
        async def body(n: int) -> int:
            started.append(n)
            if n == 0:
                await blocking.wait()  # let the siblings start
                raise ValueError("child 0 broke")
            blocking.set()
            try:
                await anyio.sleep_forever()
            finally:
                cleaned.append(n)
            return n  # pragma: no cover

        return await ctx.step("body", body, n)

    @memable.workflow("fail-fast")
    async def wf(ctx: Context) -> str:
        try:
            await ctx.fan_out("kids", child, range(10), limit=3)
        except memable.ChildFailed as exc:
            assert isinstance(exc.__cause__, memable.StepFailed)
            return exc.instance_id
        return "no failure"  # pragma: no cover

    async with Engine(make_storage(), workflows=[wf]) as engine:
        assert await engine.run(wf, instance_id="f") == "f/kids-0"
        statuses = collections.Counter(
            i.status for i in await engine.instances(limit=None) if i.parent_id == "f"
        )
    assert sorted(started) == [0, 1, 2]
    assert sorted(cleaned) == [1, 2]
    assert statuses == {"failed": 1, "cancelled": 9}


async def test_settle_collects_every_outcome(make_storage: StorageFactory) -> None:
    """settle=True runs all children and returns Ok or Err for each, in order."""

    async def maybe(ctx: Context, n: int) -> int:
        if n % 2:
            raise KeyError(n)
        return n

    @memable.workflow("settle")
    async def wf(ctx: Context) -> list[str]:
        out = []
        for result in await ctx.fan_out("m", maybe, range(4), settle=True):
            match result:
                case memable.Ok(value=value):
                    out.append(f"ok {value}")
                case memable.Err(instance_id=instance_id, error=error):
                    out.append(f"err {instance_id} {error.type}")
        return out

    async with Engine(make_storage(), workflows=[wf]) as engine:
        expected = ["ok 0", "err s/m-1 KeyError", "ok 2", "err s/m-3 KeyError"]
        assert await engine.run(wf, instance_id="s") == expected
        assert await engine.run(wf, instance_id="s") == expected


async def test_crash_mid_fan_out_reruns_only_unfinished_children(db_path: Path) -> None:
    """After a crash, finished children are not run again; unfinished ones reuse their steps."""
    bodies: collections.Counter[str] = collections.Counter()
    gate = anyio.Event()

    def make(block: bool) -> memable.Workflow[None, list[int]]:
        async def child(ctx: Context, n: int) -> int:
            async def first(n: int) -> int:
                bodies[f"first-{n}"] += 1
                return n

            async def second(n: int) -> int:
                bodies[f"second-{n}"] += 1
                if block and n >= 3:
                    await gate.wait()  # children 3 and 4 never finish before the crash
                return n * 10

            await ctx.step("first", first, n)
            return await ctx.step("second", second, n)

        async def parent(ctx: Context) -> list[int]:
            return await ctx.fan_out("kids", child, range(5), limit=5)

        return memable.Workflow("crashy-parent", parent)

    blocking = make(block=True)
    async with Engine(db_path, workflows=[blocking], shutdown_timeout=0) as engine:
        await engine.invoke(blocking, instance_id="p")
        with anyio.fail_after(10):  # until children 0-2 finished and 3-4 are blocked
            while True:
                status = {i.instance_id: i.status for i in await engine.instances(limit=None)}
                done = [status.get(f"p/kids-{n}") for n in range(3)]
                if done == ["completed"] * 3 and bodies["second-3"] == bodies["second-4"] == 1:
                    break
                await anyio.sleep(0.005)
    assert bodies["second-0"] == bodies["second-1"] == bodies["second-2"] == 1
    finishing = make(block=False)
    async with Engine(db_path, workflows=[finishing]) as engine:
        assert await engine.handle(finishing, "p").result() == [0, 10, 20, 30, 40]
        assert await engine.run(finishing, instance_id="p") == [0, 10, 20, 30, 40]
    assert {k: v for k, v in bodies.items() if k.startswith("first")} == {
        f"first-{n}": 1 for n in range(5)
    }
    assert [bodies[f"second-{n}"] for n in range(5)] == [1, 1, 1, 2, 2]


async def test_three_levels(make_storage: StorageFactory) -> None:
    """Fan-outs nest: grandchildren have ids under their parent's."""

    async def leaf(ctx: Context, n: int) -> int:
        return n

    async def middle(ctx: Context, n: int) -> int:
        return sum(await ctx.fan_out("leaf", leaf, range(n)))

    @memable.workflow("root")
    async def root(ctx: Context) -> list[int]:
        return await ctx.fan_out("mid", middle, [2, 3])

    async with Engine(make_storage(), workflows=[root]) as engine:
        assert await engine.run(root, instance_id="r") == [1, 3]
        ids = {i.instance_id for i in await engine.instances(limit=None)}
    assert {"r/mid-0/leaf-1", "r/mid-1/leaf-2"} <= ids
    assert len(ids) == 1 + 2 + 5


async def test_a_suspended_child_suspends_the_parent(make_storage: StorageFactory) -> None:
    """A child waiting on a signal suspends its parent; signalling the child completes both."""
    clock = ManualClock()

    async def child(ctx: Context, n: int) -> str:
        if n == 1:
            assert await ctx.suspend(GO)
        if n == 2:
            await ctx.sleep("nap", timedelta(hours=1))
        return f"c{n}"

    @memable.workflow("waiting-parent")
    async def wf(ctx: Context) -> list[str]:
        return await ctx.fan_out("kids", child, range(3))

    async with Engine(make_storage(), workflows=[wf], clock=clock) as engine:
        invocation = await engine.invoke(wf, instance_id="w")
        outcome = await invocation.wait()
        assert isinstance(outcome, memable.Suspended)
        assert outcome.status == "waiting for 2 children"
        assert engine._runner.runs == {}
        await engine.signal(wf, "w/kids-1", GO, True)
        outcome = await invocation.wait()
        assert isinstance(outcome, memable.Suspended)
        assert outcome.status == "waiting for 1 child"
        await clock.advance(timedelta(hours=1))
        assert await invocation.result() == ["c0", "c1", "c2"]


async def test_recovery_never_runs_a_child_on_its_own(db_path: Path) -> None:
    """On restart, children run inside their parent, never as top-level instances."""
    roots: list[str] = []

    async def child(ctx: Context, n: int) -> int:
        assert "/" in ctx.instance_id
        return n

    @memable.workflow("guarded")
    async def wf(ctx: Context) -> list[int]:
        roots.append(ctx.instance_id)
        assert "/" not in ctx.instance_id
        return await ctx.fan_out("k", child, range(3))

    async with Engine(db_path, workflows=[wf]) as engine:
        await engine.run(wf, instance_id="g")
    # Make the whole family "running", as a crash at the worst moment would leave it.
    import sqlite3

    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE instances SET status = 'running'")
        db.execute("DELETE FROM steps WHERE instance_id = 'g'")
    async with Engine(db_path, workflows=[wf]) as engine:
        assert await engine.handle(wf, "g").result() == [0, 1, 2]
    assert roots == ["g", "g"]


async def test_cancelling_a_parent_cancels_its_children(make_storage: StorageFactory) -> None:
    """Cancel of a suspended parent marks every child cancelled too."""

    async def child(ctx: Context, n: int) -> int:
        await ctx.suspend(GO)
        return n

    @memable.workflow("cancel-family")
    async def wf(ctx: Context) -> list[int]:
        return await ctx.fan_out("k", child, range(2))

    async with Engine(make_storage(), workflows=[wf]) as engine:
        await (await engine.invoke(wf, instance_id="c")).wait()
        await engine.cancel(wf, "c", reason="stop")
        statuses = {i.instance_id: i.status for i in await engine.instances(limit=None)}
        assert statuses == dict.fromkeys(["c", "c/k-0", "c/k-1"], "cancelled")
        with pytest.raises(memable.SignalRejected):
            await engine.signal(wf, "c/k-0", GO, True)


async def test_purge_removes_expired_families_only(make_storage: StorageFactory) -> None:
    """purge deletes finished instances with their children and steps, nothing else."""
    clock = ManualClock()

    async def child(ctx: Context, n: int) -> int:
        return n

    @memable.workflow("purgeable")
    async def wf(ctx: Context, wait: bool) -> list[int]:
        if wait:
            await ctx.suspend(GO)
        return await ctx.fan_out("k", child, range(2))

    async with Engine(make_storage(), workflows=[wf], clock=clock) as engine:
        await engine.run(wf, False, instance_id="old")
        await (await engine.invoke(wf, True, instance_id="waiting")).wait()
        await clock.advance(timedelta(days=10))
        await engine.run(wf, False, instance_id="new")
        assert await engine.purge(older_than=timedelta(days=5)) == 1
        ids = {i.instance_id for i in await engine.instances(limit=None)}
        assert ids == {"waiting", "new", "new/k-0", "new/k-1"}
        with pytest.raises(ValueError, match="older_than"):
            await engine.purge(older_than=timedelta(days=-1))
    steps = peek(make_storage(), lambda s: s.load_steps("old") + s.load_steps("old/k-0"))
    assert steps == []


async def test_retention_purges_periodically(make_storage: StorageFactory) -> None:
    """Engine(retention=...) and a workflow's own retention purge in the background."""
    clock = ManualClock()

    @memable.workflow("short-lived", retention=timedelta(hours=1))
    async def short(ctx: Context) -> int:
        return 1

    @memable.workflow("long-lived")
    async def long(ctx: Context) -> int:
        return 2

    async with Engine(
        make_storage(), workflows=[short, long], clock=clock, retention=timedelta(days=30)
    ) as engine:
        await engine.run(short, instance_id="s")
        await engine.run(long, instance_id="l")
        await clock.advance(timedelta(hours=2))
        with anyio.fail_after(10):
            while len(await engine.instances()) != 1:
                await anyio.sleep(0.01)
        assert [i.instance_id for i in await engine.instances()] == ["l"]
        await clock.advance(timedelta(days=31))
        with anyio.fail_after(10):
            while await engine.instances():
                await anyio.sleep(0.01)
    with pytest.raises(ValueError, match="retention"):
        Engine(retention=timedelta(0))
