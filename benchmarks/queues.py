"""Queues: throughput through a concurrency-10 queue, and how soon a freed slot is reused.

``python benchmarks/queues.py [--count 1000] [--backend asyncio|trio] [--storage sqlite|memory]``

- **throughput**: *count* trivial workflows (one step each) enqueued by 100 tasks into a
  paused queue of concurrency 10 (enqueues per second), then the queue is resumed:
  completed workflows per second from the resume to the last result.
- **slot reuse**: a queue of concurrency 1 and 300 trivial workflows (enqueued while it is
  paused, then resumed); for each pair of
  consecutive instances, the time from the end of one body to the start of the next (the
  slot is freed by committing the first's completion, then admission starts the next):
  p50 and p99 in milliseconds.

The issue's reference: DBOS Transact 3.4 on Postgres, ``Queue(global_concurrency=10)``,
completes 10 workflows/s with its default 1 s poll (131-224/s with a 10 ms poll).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import anyio

import memable
from memable import Context, Engine, Queue
from memable.storage import MemoryStorage, SQLiteStorage, Storage

DBOS_DEFAULT_PER_S = 10.0


async def double(n: int) -> int:
    return 2 * n


@memable.workflow("trivial")
async def trivial(ctx: Context, n: int) -> int:
    return await ctx.step("double:v1", double, n)


marks: list[tuple[float, float]] = []


@memable.workflow("marked")
async def marked(ctx: Context, n: int) -> int:
    started = time.perf_counter()
    value = await ctx.step("double:v1", double, n)
    marks.append((started, time.perf_counter()))
    return value


def make_storage(kind: str, folder: str, name: str) -> Storage:
    return SQLiteStorage(Path(folder) / name) if kind == "sqlite" else MemoryStorage()


async def enqueue_all(engine: Engine, queue: Queue, count: int) -> list[memable.Invocation[int]]:
    """Enqueue *count* instances from 100 tasks at once (their rows share commits)."""
    invocations: list[memable.Invocation[int]] = []

    async def enqueuer(start: int) -> None:
        for n in range(start, count, 100):
            invocations.append(await engine.enqueue(queue, trivial, n))

    async with anyio.create_task_group() as tg:
        for start in range(min(100, count)):
            tg.start_soon(enqueuer, start)
    return invocations


async def throughput(kind: str, count: int) -> tuple[float, float]:
    """(enqueued per second, completed per second once the paused queue is resumed)."""
    queue = Queue("ten", concurrency=10)
    with tempfile.TemporaryDirectory() as folder:
        storage = make_storage(kind, folder, "throughput.db")
        async with Engine(storage, workflows=[trivial], queues=[queue]) as engine:
            await engine.pause_queue(queue)
            started = time.perf_counter()
            invocations = await enqueue_all(engine, queue, count)
            enqueued = time.perf_counter()
            await engine.resume_queue(queue)
            for invocation in invocations:
                await invocation.result()
            done = time.perf_counter()
    return count / (enqueued - started), count / (done - enqueued)


async def slot_reuse(kind: str, count: int) -> list[float]:
    queue = Queue("one", concurrency=1)
    marks.clear()
    with tempfile.TemporaryDirectory() as folder:
        storage = make_storage(kind, folder, "reuse.db")
        async with Engine(storage, workflows=[marked], queues=[queue]) as engine:
            await engine.pause_queue(queue)
            invocations = [await engine.enqueue(queue, marked, n) for n in range(count)]
            await engine.resume_queue(queue)
            for invocation in invocations:
                await invocation.result()
    ordered = sorted(marks)
    return [(nxt[0] - prev[1]) * 1000 for prev, nxt in itertools.pairwise(ordered)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--storage", choices=["sqlite", "memory"], default="sqlite")
    args = parser.parse_args()
    enqueue_rate, rate = anyio.run(throughput, args.storage, args.count, backend=args.backend)
    gaps = anyio.run(slot_reuse, args.storage, 300, backend=args.backend)
    p99 = statistics.quantiles(gaps, n=100)[98]
    print(f"{args.backend}/{args.storage}: {args.count} enqueued at {enqueue_rate:,.0f}/s")
    print(
        f"{args.backend}/{args.storage}: {args.count} workflows through concurrency 10:"
        f" {rate:,.0f}/s = {rate / DBOS_DEFAULT_PER_S:.0f}x DBOS's default (10/s; target >= 10x)"
    )
    print(
        f"{args.backend}/{args.storage}: slot freed -> next start: p50"
        f" {statistics.median(gaps):.2f} ms, p99 {p99:.2f} ms (target p99 <= 20 ms)"
    )


if __name__ == "__main__":
    main()
