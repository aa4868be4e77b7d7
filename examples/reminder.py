"""A durable timer that survives restarts: the engine stops while the timer is pending.

``python examples/reminder.py``: the first engine starts the workflow, which sleeps; that
engine exits with the instance suspended (no task, no memory). A second engine fires the
overdue timer when it starts and the workflow finishes.
"""

from __future__ import annotations

import sys
from datetime import timedelta

import anyio

import memable
from memable import Context, Engine


async def send(message: str) -> str:
    return f"sent: {message}"  # imagine an e-mail


@memable.workflow("reminder")
async def reminder(ctx: Context, message: str) -> str:
    await ctx.sleep("wait:v1", timedelta(milliseconds=200))
    return await ctx.step("send:v1", send, message)


async def main(path: str = "reminders.db") -> str:
    async with Engine(path, workflows=[reminder]) as engine:
        invocation = await engine.invoke(reminder, "water the plants", instance_id="r-1")
        print("first engine:", await invocation.wait())
    await anyio.sleep(0.3)  # the timer falls due while no engine runs
    async with Engine(path, workflows=[reminder]) as engine:
        invocation = engine.handle(reminder, "r-1")
        async for status in invocation.status():  # ends when the instance finishes
            print("second engine:", status.status)
        result = await invocation.result()
        print("second engine:", result)
        return result


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "reminders.db")
