"""An engine process draining the benchmark's queue (for ``benchmarks/queues.py``).

``python benchmarks/_queue_engine.py URL SCHEMA BACKEND``: an engine on the Postgres
schema that runs the ``trivial`` workflow and admits for ``Queue("ten", concurrency=10)``;
prints ``READY`` once it runs, and stops when its standard input closes.
"""

from __future__ import annotations

import sys

import anyio
import anyio.to_thread

import memable
from memable import Context, Engine, Queue
from memable.storage import PostgresStorage

QUEUE = Queue("ten", concurrency=10)


async def double(n: int) -> int:
    return 2 * n


@memable.workflow("trivial")
async def trivial(ctx: Context, n: int) -> int:
    return await ctx.step("double:v1", double, n)


async def serve(url: str, schema: str) -> None:
    async with Engine(PostgresStorage(url, schema=schema), workflows=[trivial], queues=[QUEUE]):
        print("READY", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)


if __name__ == "__main__":
    anyio.run(serve, sys.argv[1], sys.argv[2], backend=sys.argv[3])
