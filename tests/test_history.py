"""The history API: what an instance did (steps, attempts, signals, timers, children),
listing pages with filters and a cursor, and waiting through suspensions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import attrs
import pytest

import memable
from memable import Context, Engine, RetryPolicy, SuspendPoint
from memable.testing import ManualClock

from .helpers import StorageFactory

APPROVAL = SuspendPoint("approval:v1", bool)
NOTE = SuspendPoint("note:v1", str)
START = datetime(2026, 1, 1, tzinfo=UTC)


@attrs.frozen
class Order:
    sku: str
    qty: int


def make_flow(clock: ManualClock, fails: list[bool]) -> memable.Workflow[Order, str]:
    """A workflow that prices (1 s), charges (fails while *fails* says so), waits for an
    approval and a note, sleeps an hour, and labels two items in a fan-out."""

    async def price(order: Order) -> int:
        await clock.advance(timedelta(seconds=1))
        return 7 * order.qty

    async def charge(cents: int) -> str:
        if fails and fails.pop(0):
            raise ConnectionError("card service down")
        return f"ch-{cents}"

    async def label(ctx: Context, item: str) -> str:
        return f"label {item}"

    @memable.workflow("order")
    async def order(ctx: Context, order: Order) -> str:
        cents = await ctx.step("price:v1", price, order)
        receipt = await ctx.step("charge:v1", charge, cents, retry=RetryPolicy.fixed(2, 0))
        if not await ctx.suspend(APPROVAL, status="waiting for a manager"):
            return "rejected"
        note = await ctx.suspend(NOTE)
        await ctx.sleep("cool-off:v1", timedelta(hours=1))
        labels = await ctx.fan_out("label:v1", label, ["a", "b"])
        return f"{receipt} {note} {labels}"

    return order


async def test_history_of_a_resumed_instance(make_storage: StorageFactory) -> None:
    """Steps with states, attempts, times and previews; a dead letter that resume retried
    stays as an earlier attempt; early and delivered signals; timers; children."""
    clock = ManualClock(START)
    fails = [True, True]  # both attempts of the first run fail
    wf = make_flow(clock, fails)
    async with Engine(make_storage(), workflows=[wf], clock=clock) as engine:
        inv = await engine.invoke(wf, Order("sku-1", 3), instance_id="o1")
        failed = await inv.wait()
        assert isinstance(failed, memable.Failed)
        first = await engine.history(wf, "o1")
        assert [(s.key, s.state, s.attempts) for s in first.steps] == [
            ("price:v1", "completed", 1),
            ("charge:v1", "dead", 2),
        ]
        price = first.steps[0]
        assert price.duration == timedelta(seconds=1)
        assert (price.value_type, price.value) == ("int", "21")
        dead = first.steps[1]
        assert dead.error is not None
        assert dead.error.type == "ConnectionError"
        assert "card service down" in dead.error.message
        assert "Traceback" in dead.error.traceback

        await engine.resume(wf, "o1")
        assert isinstance(await inv.wait(), memable.Suspended)
        await engine.signal(wf, "o1", NOTE, "fragile")  # early: not waited on yet
        await engine.signal(wf, "o1", APPROVAL, True)  # delivered: it waits on it
        assert isinstance(await inv.wait(), memable.Suspended)  # sleeping

        asleep = await engine.history(wf, "o1")
        assert asleep.instance.status == "suspended"
        assert asleep.instance.waiting_on == ("cool-off:v1",)
        assert asleep.instance.input == Order("sku-1", 3)  # decoded: registered
        assert [(s.key, s.state) for s in asleep.steps] == [
            ("price:v1", "completed"),
            ("charge:v1", "retried"),
            ("charge:v1", "completed"),
        ]
        assert asleep.steps[2].value == '"ch-21"'
        assert {s.key: s.state for s in asleep.signals} == {
            "note:v1": "early",
            "approval:v1": "delivered",
        }
        timers = [(t.key, t.kind, t.fired) for t in asleep.timers]
        assert timers == [("cool-off:v1", "sleep", False)]
        assert asleep.timers[0].deadline == clock.now() + timedelta(hours=1)

        await clock.advance(timedelta(hours=1))
        assert await inv.result(finished=True) == "ch-21 fragile ['label a', 'label b']"
        done = await engine.history(wf, "o1")
        assert done.instance.output == "ch-21 fragile ['label a', 'label b']"
        assert done.timers[0].fired
        assert [(c.instance_id, c.status) for c in done.children] == [
            ("o1/label:v1-0", "completed"),
            ("o1/label:v1-1", "completed"),
        ]
        assert done.children[0].output == "label a"
        assert done.steps[-1].key == "label:v1"  # the fan-out's record


async def test_history_refuses_unknown_and_foreign_ids(make_storage: StorageFactory) -> None:
    clock = ManualClock(START)
    wf = make_flow(clock, [])

    @memable.workflow("other")
    async def other(ctx: Context) -> None:
        pass

    async with Engine(make_storage(), workflows=[wf, other], clock=clock) as engine:
        await engine.run(other, instance_id="x")
        with pytest.raises(memable.InstanceNotFound, match="'nope'"):
            await engine.history(wf, "nope")
        with pytest.raises(memable.InstanceConflict, match="'x'"):
            await engine.history(wf, "x")


async def test_instances_pages_filters_and_cursor(make_storage: StorageFactory) -> None:
    """Newest first; a cursor walks every page once; filters by key waited on, parent,
    creation time; input and output decoded."""
    clock = ManualClock(START)

    @memable.workflow("wait")
    async def wait(ctx: Context, n: int) -> int:
        if n % 3 == 0:
            return n
        if n % 3 == 1:
            await ctx.suspend(APPROVAL)
        else:
            await ctx.suspend(NOTE)
        return n

    async with Engine(make_storage(), workflows=[wait], clock=clock) as engine:
        for n in range(10):
            await (await engine.invoke(wait, n, instance_id=f"i{n}")).wait()
            await clock.advance(timedelta(seconds=1))
        seen: list[str] = []
        after = None
        pages = 0
        while True:
            page = await engine.instances(wait, limit=3, after=after)
            assert isinstance(page, memable.Page)
            assert len(page) <= 3
            seen += [info.instance_id for info in page]
            pages += 1
            if page.next is None:
                break
            after = page.next
        assert seen == [f"i{n}" for n in reversed(range(10))]
        assert pages == 4
        everything = await engine.instances()
        assert everything.next is None
        assert len(everything) == 10
        assert everything[0].input == 9
        assert everything[0].output == 9
        waiting = await engine.instances(waiting_on="approval:v1")
        assert [i.instance_id for i in waiting] == ["i7", "i4", "i1"]
        later = await engine.instances(created_after=START + timedelta(seconds=7, milliseconds=1))
        assert [i.instance_id for i in later] == ["i9", "i8"]
        assert list(await engine.instances(parent_id="i1")) == []
        with pytest.raises(ValueError, match="cursor"):
            await engine.instances(after="garbage!")
        with pytest.raises(ValueError, match="timezone-aware"):
            await engine.instances(created_after=datetime(2026, 1, 1))


async def test_instances_filters_children_by_parent(make_storage: StorageFactory) -> None:
    async def double(ctx: Context, n: int) -> int:
        return 2 * n

    @memable.workflow("fan")
    async def fan(ctx: Context) -> list[int]:
        return await ctx.fan_out("double:v1", double, [1, 2, 3])

    async with Engine(make_storage(), workflows=[fan]) as engine:
        assert await engine.run(fan, instance_id="f") == [2, 4, 6]
        children = await engine.instances(parent_id="f", limit=2)
        assert len(children) == 2
        assert children.next is not None
        rest = await engine.instances(parent_id="f", after=children.next)
        ids = [c.instance_id for c in [*children, *rest]]
        assert sorted(ids) == ["f/double:v1-0", "f/double:v1-1", "f/double:v1-2"]
        assert {c.output for c in [*children, *rest]} == {2, 4, 6}


async def test_wait_finished_waits_through_suspensions(make_storage: StorageFactory) -> None:
    clock = ManualClock(START)

    @memable.workflow("nap")
    async def nap(ctx: Context) -> str:
        await ctx.sleep("nap:v1", timedelta(minutes=5))
        return "rested " + await ctx.suspend(NOTE)

    async with Engine(make_storage(), workflows=[nap], clock=clock) as engine:
        inv = await engine.invoke(nap, instance_id="n")
        assert isinstance(await inv.wait(), memable.Suspended)
        with pytest.raises(memable.WorkflowSuspended):
            await inv.result()
        async with anyio.create_task_group() as tg:
            results: list[str] = []

            async def waiter() -> None:
                results.append(await inv.result(finished=True))

            tg.start_soon(waiter)
            await clock.advance(timedelta(minutes=5))
            while (await engine.state(nap, "n")).waiting_on != ("note:v1",):
                await anyio.sleep(0.01)
            await engine.signal(nap, "n", NOTE, "well")
        assert results == ["rested well"]
        outcome = await inv.wait(finished=True)
        assert outcome == memable.Completed(output="rested well")
