"""A trio service with the engine as one of its tasks, in the service's own nursery.

``nursery.start(run_engine)`` enters the engine in a task of the service's nursery and
hands the running engine back; the other tasks of the service use it: here a feeder that
invokes a thumbnail job per image, and a watcher that prints each job's live status
stream. Steps retry a flaky download and give a slow resize a timeout, falling back to a
placeholder. Cancelling the nursery stops the engine (instances still running stay
``running`` in storage and the next start recovers them).

    python examples/trio_service.py thumbs.db
"""

from __future__ import annotations

import sys
from datetime import timedelta

import trio

import memable
from memable import Context, Engine, RetryPolicy

IMAGES = ["cat.jpg", "dog.jpg", "huge.tiff"]
attempts: dict[str, int] = {}


async def download(name: str) -> bytes:
    attempts[name] = attempts.get(name, 0) + 1
    if attempts[name] < 3:  # the image server drops the first two connections
        raise ConnectionError(f"{name}: connection reset")
    await trio.sleep(0.01)
    return name.encode() * 10


async def resize(name: str, data: bytes) -> str:
    if name.endswith(".tiff"):
        await trio.sleep(60)  # far too slow: the step's timeout cancels it
    return f"{name}: {len(data)} bytes -> 128px"


async def placeholder(name: str) -> str:
    return f"{name}: placeholder"


@memable.workflow("thumbnail")
async def thumbnail(ctx: Context, name: str) -> str:
    data = await ctx.step(
        "download:v1", download, name, retry=RetryPolicy.fixed(attempts=3, delay=0.01)
    )
    ctx.set_status(f"downloaded {len(data)} bytes")
    try:
        return await ctx.step("resize:v1", resize, name, data, timeout=timedelta(seconds=0.2))
    except memable.StepTimeout:
        ctx.set_status("resize timed out")
        return await ctx.step("placeholder:v1", placeholder, name)


async def run_engine(
    db: str, *, task_status: trio.TaskStatus[Engine] = trio.TASK_STATUS_IGNORED
) -> None:
    """The engine as a service task: started, handed over, kept until cancelled."""
    async with Engine(db, workflows=[thumbnail]) as engine:
        task_status.started(engine)
        await trio.sleep_forever()


async def watch(engine: Engine, invocation: memable.Invocation[str], lines: list[str]) -> None:
    async for status in invocation.status():  # live; ends when the job finishes
        lines.append(f"{invocation.instance_id}: {status.status} {status.message or ''}")
    lines.append(f"{invocation.instance_id}: {await invocation.result()}")


async def main(db: str = "thumbs.db") -> list[str]:
    lines: list[str] = []
    async with trio.open_nursery() as nursery:
        engine = await nursery.start(run_engine, db)
        async with trio.open_nursery() as jobs:
            for name in IMAGES:
                invocation = await engine.invoke(thumbnail, name, instance_id=f"thumb-{name}")
                jobs.start_soon(watch, engine, invocation, lines)
        nursery.cancel_scope.cancel()  # stop the service, engine included
    for line in lines:
        print(line.rstrip())
    return lines


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "thumbs.db")
