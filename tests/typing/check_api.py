"""Type-checked, never run: mypy --strict (warn_unused_ignores) proves the API's typing.

Each ``assert_type`` pins an inferred type; each ``# type: ignore[code]`` line is misuse that
mypy must reject (an unneeded ignore is itself an error).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal, assert_type

import attrs

import memable
from memable import Context, Engine, RetryPolicy, SuspendPoint


@attrs.frozen
class Receipt:
    order_id: str


@memable.workflow("order")
async def order(ctx: Context, order_id: str) -> Receipt:
    return Receipt(order_id)


@memable.workflow("tick")
async def tick(ctx: Context) -> int:
    return 1


async def fetch(n: int) -> Receipt:
    return Receipt(str(n))


def blocking(text: str) -> bytes:
    return text.encode()


async def label(ctx: Context, sku: str) -> float:
    return 1.0


approval = SuspendPoint("approval:v1", bool)
maybe = SuspendPoint[int | None]("maybe:v1", int | None)


async def engine_checks(engine: Engine) -> None:
    assert_type(order, memable.Workflow[str, Receipt])
    assert_type(tick, memable.Workflow[None, int])
    invocation = await engine.invoke(order, "x")
    assert_type(invocation, memable.Invocation[Receipt])
    assert_type(await engine.invoke(tick), memable.Invocation[int])
    assert_type(await engine.run(order, "x", instance_id="o-1"), Receipt)
    assert_type(await invocation.result(), Receipt)
    assert_type(await invocation.wait(), memable.Outcome[Receipt])
    assert_type(engine.handle(order, "o-1"), memable.Invocation[Receipt])
    assert_type(await engine.resume(order, "o-1"), memable.Invocation[Receipt])
    assert_type(await engine.signal(order, "o-1", approval, True), memable.Invocation[Receipt])
    assert_type(await engine.state(order, "o-1"), memable.InstanceInfo)
    assert_type(await engine.purge(timedelta(days=1)), int)
    assert_type(approval, SuspendPoint[bool])

    # Workflow[I, O] is contravariant in I and covariant in O; Invocation[O] is covariant.
    print(await engine.run(order, "x"))
    anything: object = await engine.run(tick)
    assert_type(anything, object)
    invocations: list[memable.Invocation[object]] = [invocation, await engine.invoke(tick)]
    assert_type(invocations, list[memable.Invocation[object]])
    wide: memable.Workflow[str, object] = order
    assert_type(await engine.run(wide, "x"), object)
    narrow_input: memable.Workflow[Literal["a"], Receipt] = order
    letter: Literal["a"] = "a"
    assert_type(await engine.run(narrow_input, letter), Receipt)
    outcome: memable.Outcome[object] = await invocation.wait()
    assert_type(outcome, memable.Outcome[object])
    widened: memable.Workflow[object, Receipt] = order  # type: ignore[assignment]
    narrowed: memable.Workflow[str, int] = order  # type: ignore[assignment]
    receipts: list[memable.Invocation[Receipt]] = [await engine.invoke(tick)]  # type: ignore[arg-type]
    print(widened, narrowed, receipts)

    await engine.invoke(order, 5)  # type: ignore[misc]
    await engine.invoke(order)  # type: ignore[arg-type]
    await engine.invoke(tick, "extra")  # type: ignore[misc]
    await engine.run(order, b"x")  # type: ignore[misc]
    await engine.signal(order, "o-1", approval, 1)  # type: ignore[misc]
    await engine.signal(order, "o-1", approval, "yes")  # type: ignore[misc]


async def context_checks(ctx: Context) -> None:
    assert_type(await ctx.step("k", fetch, 1), Receipt)
    assert_type(await ctx.step_sync("k2", blocking, "a"), bytes)
    assert_type(await ctx.suspend(approval), bool)
    assert_type(await ctx.suspend(SuspendPoint("a", bool)), bool)
    assert_type(await ctx.suspend(maybe), int | None)
    assert_type(await ctx.child("c", order, "x"), Receipt)
    assert_type(await ctx.fan_out("f", order, ["a", "b"]), list[Receipt])
    assert_type(await ctx.fan_out("g", label, ["a"], limit=2), list[float])
    settled = await ctx.fan_out("h", label, ["a"], settle=True)
    assert_type(settled, list[memable.Ok[float] | memable.Err])

    await ctx.step("k3", fetch, "one")  # type: ignore[arg-type]
    await ctx.step("k4", fetch, 1, 2)  # type: ignore[arg-type]
    await ctx.step("k5", fetch)  # type: ignore[arg-type]
    await ctx.step("k6", blocking, "a")  # type: ignore[arg-type]
    await ctx.sleep("k7", 5)  # seconds, as anyio.sleep
    await ctx.fan_out("k8", order, [1, 2])  # type: ignore[arg-type]


def retry_checks() -> None:
    assert_type(RetryPolicy.fixed(3, timedelta(seconds=1)).delay, float)
    assert_type(RetryPolicy.exponential(3, timedelta(seconds=1), timedelta(minutes=1)), RetryPolicy)
    assert_type(RetryPolicy(attempts=2, delay=timedelta(seconds=1)).max_delay, float)

    RetryPolicy.fixed(3, "1")  # type: ignore[arg-type]
    RetryPolicy.exponential(3, base=None)  # type: ignore[arg-type]
    RetryPolicy(attempts=2, delay="1")  # type: ignore[arg-type]


async def operations_checks(engine: Engine) -> None:
    history = await engine.history(order, "o-1")
    assert_type(history, memable.History)
    assert_type(history.steps, tuple[memable.StepInfo, ...])
    assert_type(history.steps[0].duration, timedelta)
    assert_type(history.signals[0].state, Literal["delivered", "early", "timed_out"])
    assert_type(history.children, tuple[memable.InstanceInfo, ...])
    page = await engine.instances(order, status="failed", waiting_on="approval:v1", limit=10)
    assert_type(page, memable.Page[memable.InstanceInfo])
    assert_type(page.next, str | None)
    assert_type(page[0], memable.InstanceInfo)
    invocation = engine.handle(order, "o-1")
    assert_type(await invocation.result(finished=True), Receipt)
    assert_type(await invocation.wait(finished=True), memable.Outcome[Receipt])

    await engine.instances(order, "failed")  # type: ignore[call-arg]
    await engine.instances(status="lost")  # type: ignore[arg-type]


async def queue_checks(engine: Engine) -> None:
    emails = memable.Queue("emails", concurrency=10, rate_limit=(100, timedelta(minutes=1)))
    assert_type(emails.rate_limit, tuple[int, float] | None)
    assert_type(await engine.enqueue(emails, order, "x"), memable.Invocation[Receipt])
    assert_type(await engine.enqueue(emails, tick), memable.Invocation[int])
    assert_type(
        await engine.enqueue(emails, order, "x", instance_id="o-1", priority=5),
        memable.Invocation[Receipt],
    )
    assert_type(await (await engine.enqueue(emails, order, "x")).result(), Receipt)
    assert_type(await engine.pause_queue(emails), None)
    assert_type(await engine.resume_queue("emails"), None)
    queued: list[memable.Invocation[object]] = [await engine.enqueue(emails, tick)]
    print(queued)

    await engine.enqueue(emails, order, 5)  # type: ignore[misc]
    await engine.enqueue(emails, order)  # type: ignore[arg-type]
    await engine.enqueue(emails, tick, "extra")  # type: ignore[misc]
    await engine.enqueue(order, "x")  # type: ignore[call-overload]
    await engine.enqueue(emails, order, "x", priority="high")  # type: ignore[call-overload]
    memable.Queue("q", concurrency="3")  # type: ignore[arg-type]
    memable.Queue("q", rate_limit=(1, "s"))  # type: ignore[arg-type]


def schedule_checks() -> None:
    nightly = memable.Schedule(order, cron="0 3 * * *", input="nightly", tz="Europe/Paris")
    assert_type(nightly, memable.Schedule[str])
    assert_type(memable.Schedule(tick, every=timedelta(minutes=5)), memable.Schedule[None])
    Engine(schedules=[nightly, memable.Schedule(tick, every=300.0, catch_up=True)])

    memable.Schedule(order, every="5m")  # type: ignore[arg-type]
    memable.Schedule(tick, every=5, overlap="queue")  # type: ignore[arg-type]
