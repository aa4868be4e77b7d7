"""Queues: exact concurrency and rate limits, start order, restarts, dedupe, suspension.

Concurrency is measured by the workflow bodies themselves (how many are in flight at
once); rate limits by the clock times at which bodies start, under a ManualClock.
"""

from __future__ import annotations

from datetime import timedelta

import anyio
import pytest

import memable
from memable import Context, Engine, Queue, SuspendPoint
from memable.testing import ManualClock

from .helpers import StorageFactory

GO = SuspendPoint("go:v1", bool)


class InFlight:
    """Bodies call enter/leave: the most in flight at once, and the start order."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.started: list[str] = []
        self.done: list[str] = []
        self.gate = anyio.Event()

    def enter(self, name: str) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        self.started.append(name)

    def leave(self) -> None:
        self.now -= 1


def gated(flight: InFlight, name: str = "gated") -> memable.Workflow[int, int]:
    """A workflow whose body stays in flight until the gate opens."""

    @memable.workflow(name)
    async def body(ctx: Context, n: int) -> int:
        flight.enter(ctx.instance_id)
        try:
            await flight.gate.wait()
            await anyio.sleep(0.001)
        finally:
            flight.leave()
        flight.done.append(ctx.instance_id)
        return n

    return body


async def test_concurrency_is_never_exceeded_with_concurrent_enqueuers(
    make_storage: StorageFactory,
) -> None:
    """8 tasks enqueue 48 instances at once into a queue of 3: never more than 3 run."""
    flight = InFlight()
    wf = gated(flight)
    queue = Queue("three", concurrency=3)
    invocations: list[memable.Invocation[int]] = []
    async with Engine(make_storage(), workflows=[wf], queues=[queue]) as engine:

        async def enqueuer(k: int) -> None:
            for i in range(6):
                invocations.append(await engine.enqueue(queue, wf, k * 10 + i))

        async with anyio.create_task_group() as tg:
            for k in range(8):
                tg.start_soon(enqueuer, k)
        while flight.now < 3:  # the first three are admitted and held at the gate
            await anyio.sleep(0.001)
        flight.gate.set()
        results = sorted([await invocation.result() for invocation in invocations])
    assert results == sorted(k * 10 + i for k in range(8) for i in range(6))
    assert flight.peak == 3
    assert len(flight.started) == 48


async def test_restarts_keep_queued_work_and_the_limit(make_storage: StorageFactory) -> None:
    """Engines in sequence, each stopped with work running and queued: every instance
    runs to its end and never more than 2 at once. (A body that reached its end just as
    an engine stopped with ``shutdown_timeout=0`` may have had its completion cut off, and
    then runs again in the next engine: a workflow body is replayed, only steps are
    once. So every id ends at least once; the stored outcome is each one's own.)"""
    flight = InFlight()
    wf = gated(flight)
    queue = Queue("two", concurrency=2)
    ids = [f"job-{i}" for i in range(12)]
    async with Engine(make_storage(), workflows=[wf], queues=[queue], shutdown_timeout=0) as engine:
        for i, instance_id in enumerate(ids):
            await engine.enqueue(queue, wf, i, instance_id=instance_id)
        while flight.now < 2:
            await anyio.sleep(0.001)
    assert flight.now == 0  # the two running were cancelled by shutdown
    assert flight.peak == 2
    for _ in range(2):  # a restart that finishes a few, then stops again
        async with Engine(
            make_storage(), workflows=[wf], queues=[queue], shutdown_timeout=0
        ) as engine:
            while flight.now < 2:
                await anyio.sleep(0.001)
            flight.gate.set()
            await engine.handle(wf, ids[len(flight.started) // 3]).wait()
            flight.gate = anyio.Event()
    flight.gate.set()
    async with Engine(make_storage(), workflows=[wf], queues=[queue]) as engine:
        results = [await engine.handle(wf, instance_id).result() for instance_id in ids]
        states = {(await engine.state(wf, instance_id)).status for instance_id in ids}
    assert results == list(range(12))
    assert states == {"completed"}
    assert set(flight.done) == set(ids)
    assert flight.peak == 2


async def test_rate_limit_holds_over_every_window(make_storage: StorageFactory) -> None:
    """At most 3 starts in any 10 s of the engine's clock, and as many as that allows."""
    clock = ManualClock()
    t0 = clock.now()
    starts: list[float] = []

    @memable.workflow("rated")
    async def rated(ctx: Context, n: int) -> int:
        starts.append((clock.now() - t0).total_seconds())
        return n

    queue = Queue("rated", rate_limit=(3, timedelta(seconds=10)))
    async with Engine(make_storage(), workflows=[rated], queues=[queue], clock=clock) as engine:
        invocations = [await engine.enqueue(queue, rated, i) for i in range(10)]
        for second in range(31):
            # The starts the limit allows by now have their bodies running before the clock
            # moves on (an admission still in flight would otherwise start them later in
            # virtual time than it admitted them); any other start shows in the windows.
            with anyio.fail_after(30):
                while len(starts) < min(10, 3 * (second // 10 + 1)):
                    await anyio.sleep(0.001)
            await clock.advance(timedelta(seconds=1))
        results = [await invocation.result() for invocation in invocations]
    assert results == list(range(10))
    for start in starts:
        assert sum(start <= other < start + 10 for other in starts) <= 3, starts
    assert sorted(starts) == [0, 0, 0, 10, 10, 10, 20, 20, 20, 30]


async def test_start_order_is_priority_then_age(make_storage: StorageFactory) -> None:
    """A paused queue of one slot starts the highest priority first, then the oldest."""
    flight = InFlight()
    flight.gate.set()
    wf = gated(flight)
    queue = Queue("ordered", concurrency=1)
    plan = [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1), ("f", 9)]
    async with Engine(make_storage(), workflows=[wf], queues=[queue]) as engine:
        await engine.pause_queue(queue)
        invocations = [
            await engine.enqueue(queue, wf, i, instance_id=name, priority=priority)
            for i, (name, priority) in enumerate(plan)
        ]
        assert {(await engine.state(wf, name)).status for name, _ in plan} == {"enqueued"}
        info = await engine.state(wf, "b")
        assert (info.queue, info.priority) == ("ordered", 5)
        await engine.resume_queue("ordered")
        for invocation in invocations:
            await invocation.result()
    assert flight.started == ["f", "b", "d", "a", "c", "e"]


async def test_pause_lasts_across_restarts(make_storage: StorageFactory) -> None:
    """A paused queue stays paused for the next engine until it is resumed."""
    flight = InFlight()
    flight.gate.set()
    wf = gated(flight)
    queue = Queue("held", concurrency=4)
    async with Engine(make_storage(), workflows=[wf], queues=[queue]) as engine:
        await engine.pause_queue(queue)
        await engine.enqueue(queue, wf, 1, instance_id="held-1")
    async with Engine(make_storage(), workflows=[wf], queues=[queue]) as engine:
        assert (await engine.state(wf, "held-1")).status == "enqueued"
        await engine.resume_queue(queue)
        assert await engine.handle(wf, "held-1").result() == 1
    assert flight.started == ["held-1"]


async def test_enqueue_is_idempotent_by_id(make_storage: StorageFactory) -> None:
    """The same id and input attach to the instance (it runs once); another input is a
    conflict, and so is an id of another workflow."""
    flight = InFlight()
    flight.gate.set()
    wf = gated(flight)
    other = gated(flight, "other")
    queue = Queue("dedupe", concurrency=2)
    async with Engine(make_storage(), workflows=[wf, other], queues=[queue]) as engine:
        first = await engine.enqueue(queue, wf, 7, instance_id="once")
        second = await engine.enqueue(queue, wf, 7, instance_id="once")
        assert second.instance_id == first.instance_id == "once"
        assert await second.result() == 7
        with pytest.raises(memable.InstanceConflict, match="different input"):
            await engine.enqueue(queue, wf, 8, instance_id="once")
        with pytest.raises(memable.InstanceConflict, match="belongs to workflow"):
            await engine.enqueue(queue, other, 7, instance_id="once")
        again = await engine.enqueue(queue, wf, 7, instance_id="once")
        assert await again.result() == 7
    assert flight.started == ["once"]


async def test_a_suspended_instance_gives_its_slot_back_and_keeps_its_place(
    make_storage: StorageFactory,
) -> None:
    """With one slot: A suspends, B runs meanwhile; A signalled while B runs waits
    ``enqueued`` and starts before D, which was enqueued after A, with its history (its
    step before the suspension does not run again)."""
    started: list[str] = []
    steps: list[str] = []
    gate = anyio.Event()

    async def before(name: str) -> str:
        steps.append(name)
        return name

    @memable.workflow("waits")
    async def waits(ctx: Context, name: str) -> str:
        started.append(ctx.instance_id)
        if name == "a":
            await ctx.step("before", before, name)
            await ctx.suspend(GO)
        if name == "b":
            await gate.wait()
        return name

    queue = Queue("one", concurrency=1)
    async with Engine(make_storage(), workflows=[waits], queues=[queue]) as engine:
        a = await engine.enqueue(queue, waits, "a", instance_id="a")
        assert isinstance(await a.wait(), memable.Suspended)
        b = await engine.enqueue(queue, waits, "b", instance_id="b")
        d = await engine.enqueue(queue, waits, "d", instance_id="d")
        while started[-1:] != ["b"]:
            await anyio.sleep(0.001)
        await engine.signal(waits, "a", GO, True)
        assert (await engine.state(waits, "a")).status == "enqueued"
        assert (await engine.state(waits, "d")).status == "enqueued"
        gate.set()
        assert [await b.result(), await a.result(), await d.result()] == ["b", "a", "d"]
    assert started == ["a", "b", "a", "d"]
    assert steps == ["a"]


async def test_cancel_an_enqueued_instance(make_storage: StorageFactory) -> None:
    """An enqueued instance can be cancelled; it never starts."""
    flight = InFlight()
    flight.gate.set()
    wf = gated(flight)
    queue = Queue("cancels", concurrency=1)
    async with Engine(make_storage(), workflows=[wf], queues=[queue]) as engine:
        await engine.pause_queue(queue)
        invocation = await engine.enqueue(queue, wf, 1, instance_id="doomed")
        assert await engine.cancel(wf, "doomed", reason="not needed")
        await engine.resume_queue(queue)
        assert await invocation.wait() == memable.Cancelled(reason="not needed")
        assert (await engine.state(wf, "doomed")).status == "cancelled"
        assert await (await engine.enqueue(queue, wf, 2)).result() == 2
    assert len(flight.started) == 1


async def test_resume_of_a_failed_instance_goes_through_the_queue(
    make_storage: StorageFactory,
) -> None:
    """resume() puts a failed instance of a queue back in its place; admission runs it."""
    attempts: list[int] = []

    @memable.workflow("flaky")
    async def flaky(ctx: Context) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first try fails")
        return "ok"

    queue = Queue("retries", concurrency=1)
    async with Engine(make_storage(), workflows=[flaky], queues=[queue]) as engine:
        invocation = await engine.enqueue(queue, flaky, instance_id="f")
        assert isinstance(await invocation.wait(), memable.Failed)
        await engine.pause_queue(queue)
        await engine.resume(flaky, "f")
        assert (await engine.state(flaky, "f")).status == "enqueued"
        await engine.resume_queue(queue)
        assert await invocation.result() == "ok"


async def test_bad_queue_input_is_refused() -> None:
    """Limits, priorities, names and conflicting definitions are checked at the call."""
    with pytest.raises(ValueError, match="concurrency"):
        Queue("q", concurrency=0)
    with pytest.raises(ValueError, match="count"):
        Queue("q", rate_limit=(0, 1.0))
    with pytest.raises(ValueError, match="period"):
        Queue("q", rate_limit=(1, 0))
    with pytest.raises(TypeError, match="rate_limit must be"):
        Queue("q", rate_limit=5)  # type: ignore[arg-type]
    with pytest.raises(memable.InvalidKey):
        Queue("a/b")

    @memable.workflow("noop")
    async def noop(ctx: Context) -> int:
        return 1

    queue = Queue("q", concurrency=1)
    async with Engine(workflows=[noop], queues=[queue]) as engine:
        with pytest.raises(TypeError, match="priority"):
            await engine.enqueue(queue, noop, priority="high")  # type: ignore[call-overload]
        with pytest.raises(ValueError, match="already defined"):
            await engine.enqueue(Queue("q", concurrency=2), noop)
        with pytest.raises(ValueError, match="no queue 'nope'"):
            await engine.pause_queue("nope")
        assert await (await engine.enqueue(Queue("q", concurrency=1), noop)).result() == 1


def test_only_admission_starts_an_instance_of_a_queue() -> None:
    """The rules refuse to move a queued instance to running except from enqueued, and
    the state table connects enqueued only to running and cancelled."""
    from memable._rules import move
    from memable._state import IllegalTransition, can_move
    from memable.storage import InstanceRecord, MemoryStorage

    assert [s for s in ("running", "cancelled", "suspended") if can_move("enqueued", s)] == [
        "running",
        "cancelled",
    ]
    storage = MemoryStorage()
    record = InstanceRecord(instance_id="q-1", workflow="wf", status="suspended", input="{}",
                            created_at=0.0, updated_at=0.0, queue="q")  # fmt: skip
    with storage.transaction() as tx:
        tx.insert(record)
        with pytest.raises(IllegalTransition, match="only by admission"):
            move(tx, record, "running", 1.0)
        back = move(tx, record, "enqueued", 1.0)
        assert back is not None
        assert back.status == "enqueued"
        started = move(tx, back, "running", 2.0)
        assert started is not None
        assert started.status == "running"


async def test_a_lost_admission_answer_heals(make_storage: StorageFactory) -> None:
    """The first admission commits but its answer is lost (a storage error after the
    write): the started instance is not left running without a task — the engine's
    re-scan after storage trouble runs it, and the next admissions go on."""
    from memable.testing import FaultyStorage

    flight = InFlight()
    flight.gate.set()
    wf = gated(flight)
    queue = Queue("healing", concurrency=1)
    storage = FaultyStorage(make_storage(), fail_on={1}, methods={"admit"}, when="after")
    async with Engine(storage, workflows=[wf], queues=[queue]) as engine:
        first = await engine.enqueue(queue, wf, 1, instance_id="first")
        second = await engine.enqueue(queue, wf, 2, instance_id="second")
        assert [await first.result(), await second.result()] == [1, 2]
    assert storage.failures == ["admit"]
    assert flight.started == ["first", "second"]
    assert flight.peak == 1
