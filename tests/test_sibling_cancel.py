"""A sibling task that the workflow cancels does not suspend the instance.

The pattern of a reminder timer in a sibling task of a suspend point: when the approval
is already there, the workflow cancels the reminder task, which must then end instead of
suspending the instance on its timer (found by the approval service example, where an
approval before the reminder was deferred until the reminder's timer fired).
"""

from __future__ import annotations

from datetime import timedelta

import anyio

import memable
from memable import Context, Engine, SuspendPoint
from memable.testing import ManualClock

from .helpers import StorageFactory

approval = SuspendPoint("approval:v1", bool)


def make_workflow(sent: list[str]) -> memable.Workflow[str, str]:
    async def remind(order_id: str) -> None:
        sent.append(order_id)

    @memable.workflow("nag")
    async def nag(ctx: Context, order_id: str) -> str:
        async def reminder() -> None:
            await ctx.sleep("remind-after:v1", timedelta(days=1))
            await ctx.step("remind:v1", remind, order_id)

        async with anyio.create_task_group() as tg:
            tg.start_soon(reminder)
            approved = await ctx.suspend(approval)
            tg.cancel_scope.cancel()
        return "charged" if approved else "refused"

    return nag


async def test_approval_before_the_reminder_finishes_the_instance(
    make_storage: StorageFactory,
) -> None:
    sent: list[str] = []
    nag = make_workflow(sent)
    clock = ManualClock()
    async with Engine(make_storage(), workflows=[nag], clock=clock) as engine:
        invocation = await engine.invoke(nag, "o-1", instance_id="o-1")
        outcome = await invocation.wait()
        assert isinstance(outcome, memable.Suspended)
        assert sorted(outcome.waiting_on) == ["approval:v1", "remind-after:v1"]
        await engine.signal(nag, "o-1", approval, True)
        with anyio.fail_after(10):
            assert await invocation.result() == "charged"  # not deferred to the timer
    assert sent == []


async def test_reminder_then_approval(make_storage: StorageFactory) -> None:
    sent: list[str] = []
    nag = make_workflow(sent)
    clock = ManualClock()
    async with Engine(make_storage(), workflows=[nag], clock=clock) as engine:
        invocation = await engine.invoke(nag, "o-2", instance_id="o-2")
        await invocation.wait()
        await clock.advance(timedelta(days=1))
        outcome = await invocation.wait()
        assert isinstance(outcome, memable.Suspended)
        assert outcome.waiting_on == ("approval:v1",)
        assert sent == ["o-2"]
        await engine.signal(nag, "o-2", approval, False)
        with anyio.fail_after(10):
            assert await invocation.result() == "refused"
    assert sent == ["o-2"]
