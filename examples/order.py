"""An order workflow: steps with retries, a typed approval signal and a durable timer.

Run it twice: ``python examples/order.py``. The first run suspends the order until it is
approved, approves it and finishes; the second finds the finished instance and runs nothing.
"""

from __future__ import annotations

import sys
from datetime import timedelta

import anyio
import attrs

import memable
from memable import Context, Engine, RetryPolicy, SuspendPoint


@attrs.frozen
class Receipt:
    order_id: str
    approved: bool
    charge_id: str | None = None


async def fetch_price(order_id: str) -> int:
    return 1250  # cents; imagine an HTTP call


async def charge(order_id: str, cents: int) -> str:
    return f"ch-{order_id}-{cents}"  # imagine a payment API


approval = SuspendPoint("approval:v1", bool)


@memable.workflow("order")
async def order(ctx: Context, order_id: str) -> Receipt:
    price = await ctx.step(
        "price:v1",
        fetch_price,
        order_id,
        timeout=5,
        retry=RetryPolicy.exponential(attempts=4, base=1.0),
    )
    if not await ctx.suspend(approval, status=f"approve {price}?", timeout=timedelta(days=2)):
        return Receipt(order_id, approved=False)
    await ctx.sleep("cool-off:v1", timedelta(milliseconds=50))
    return Receipt(order_id, True, await ctx.step("charge:v1", charge, order_id, price))


async def main(path: str = "orders.db") -> Receipt:
    async with Engine(path, workflows=[order]) as engine:
        invocation = await engine.invoke(order, "o-17", instance_id="order-o-17")
        outcome = await invocation.wait()
        print(outcome)
        # Signal only while it waits for approval: after a crash in the cool-off, a rerun
        # finds it suspended on the timer, and a second approval would be SignalSuperseded.
        if isinstance(outcome, memable.Suspended) and approval.key in outcome.waiting_on:
            await engine.signal(order, "order-o-17", approval, True)  # checked against bool
        async for status in invocation.status():  # ends when the instance finishes
            print(status.status, status.message)
        receipt = await invocation.result()
        print(receipt)
        return receipt


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "orders.db")
