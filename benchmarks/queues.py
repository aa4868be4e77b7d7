"""Queues: throughput through a concurrency-10 queue, and how soon a freed slot is reused.

``python benchmarks/queues.py [--count 1000] [--backend asyncio|trio]
[--storage sqlite|memory|postgres] [--engines 1|2]``

- **throughput**: *count* trivial workflows (one step each) enqueued by 100 tasks into a
  paused queue of concurrency 10 (enqueues per second), then the queue is resumed:
  completed workflows per second from the resume to the last result.
- **slot reuse**: a queue of concurrency 1 and 300 trivial workflows (enqueued while it is
  paused, then resumed); for each pair of
  consecutive instances, the time from the end of one body to the start of the next (the
  slot is freed by committing the first's completion, then admission starts the next):
  p50 and p99 in milliseconds.

``--storage postgres`` (a throwaway server with fsync, as ``benchmarks/postgres.py``
starts, or ``MEMABLE_BENCH_POSTGRES``) measures, on one server in one run: the throughput
with 1 and with 2 engine *processes* (``_queue_engine.py``; the queue is filled while
paused, the engines start, then it is resumed; done when the database counts every
instance completed), DBOS Transact beside it (``_dbos_queues_side.py``: its
``global_concurrency=10`` queue with its default 1 s poll and with a 10 ms poll, timed
from its first enqueue, as it dequeues at once), and the slot reuse on Postgres and on
SQLite. ``--engines 2`` then also runs the in-process throughput with two engines.
Writes ``benchmarks/results/queues-latest.json``.

The issue's reference: DBOS Transact 3.4 on Postgres, ``Queue(global_concurrency=10)``,
completes 10 workflows/s with its default 1 s poll (131-224/s with a 10 ms poll).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import anyio.to_thread

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


POSTGRES: list[str] = []  # the server's URL, once started


def make_storage(kind: str, folder: str, name: str) -> Callable[[], Storage]:
    """A factory of storages on one database (each call: another engine's storage)."""
    if kind == "postgres":
        from memable.storage import PostgresStorage

        schema = f"bench_{uuid.uuid4().hex[:8]}"
        return lambda: PostgresStorage(POSTGRES[0], schema=schema)
    if kind == "sqlite":
        path = Path(folder) / name
        return lambda: SQLiteStorage(path)
    memory = MemoryStorage()
    return lambda: memory


@contextlib.contextmanager
def postgres() -> Iterator[None]:
    given = os.environ.get("MEMABLE_BENCH_POSTGRES")
    if given:
        POSTGRES.append(given)
        yield
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests import pg  # the test suite's throwaway cluster

    servers = pg.server(fsync=True)
    POSTGRES.append(next(servers).dsn)
    try:
        yield
    finally:
        servers.close()


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


async def throughput(kind: str, count: int, engines: int = 1) -> tuple[float, float]:
    """(enqueued per second, completed per second once the paused queue is resumed)."""
    queue = Queue("ten", concurrency=10)
    with tempfile.TemporaryDirectory() as folder:
        storages = make_storage(kind, folder, "throughput.db")
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(engines - 1):  # helpers: they admit and run too
                await stack.enter_async_context(
                    Engine(storages(), workflows=[trivial], queues=[queue])
                )
            engine = await stack.enter_async_context(
                Engine(storages(), workflows=[trivial], queues=[queue])
            )
            await engine.pause_queue(queue)
            started = time.perf_counter()
            invocations = await enqueue_all(engine, queue, count)
            enqueued = time.perf_counter()
            await engine.resume_queue(queue)
            for invocation in invocations:
                await invocation.result(finished=True)
            done = time.perf_counter()
    return count / (enqueued - started), count / (done - enqueued)


async def slot_reuse(kind: str, count: int) -> list[float]:
    queue = Queue("one", concurrency=1)
    marks.clear()
    with tempfile.TemporaryDirectory() as folder:
        storage = make_storage(kind, folder, "reuse.db")()
        async with Engine(storage, workflows=[marked], queues=[queue]) as engine:
            await engine.pause_queue(queue)
            invocations = [await engine.enqueue(queue, marked, n) for n in range(count)]
            await engine.resume_queue(queue)
            for invocation in invocations:
                await invocation.result()
    ordered = sorted(marks)
    return [(nxt[0] - prev[1]) * 1000 for prev, nxt in itertools.pairwise(ordered)]


HERE = Path(__file__).resolve().parent


async def fill(schema: str, count: int) -> None:
    """Enqueue *count* instances into the paused queue ``ten`` (then this engine stops)."""
    from memable.storage import PostgresStorage

    queue = Queue("ten", concurrency=10)
    storage = PostgresStorage(POSTGRES[0], schema=schema)
    async with Engine(storage, workflows=[trivial], queues=[queue]) as engine:
        await engine.pause_queue(queue)
        await enqueue_all(engine, queue, count)


def start_engines(schema: str, engines: int, backend: str) -> list[subprocess.Popen[str]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent / "src"),
                                                      env.get("PYTHONPATH")]))  # fmt: skip
    command = [sys.executable, str(HERE / "_queue_engine.py"), POSTGRES[0], schema, backend]
    return [
        subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(engines)
    ]


async def drain(schema: str, count: int, engines: int, backend: str) -> float:
    """Completed per second once the filled queue is resumed, with *engines* processes."""
    import psycopg

    from memable.storage import PostgresStorage

    processes = start_engines(schema, engines, backend)
    try:
        for process in processes:
            assert process.stdout is not None
            ready = await anyio.to_thread.run_sync(process.stdout.readline)
            assert ready.strip() == "READY", "an engine process failed to start"
        with psycopg.connect(POSTGRES[0], autocommit=True) as conn:
            query = f"SELECT count(*) FROM {schema}.instances WHERE status = 'completed'"

            def completed() -> int:
                row = conn.execute(query).fetchone()
                return 0 if row is None else int(row[0])

            # An engine of no workflows and no queues: it resumes the queue, runs nothing.
            async with Engine(PostgresStorage(POSTGRES[0], schema=schema)) as engine:
                started = time.perf_counter()
                await engine.resume_queue("ten")
                while completed() < count:
                    await anyio.sleep(0.002)
                done = time.perf_counter()
    finally:
        for process in processes:
            process.communicate(timeout=30)  # closes its stdin: it stops
    return count / (done - started)


def dbos(count: int, poll: float) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, str(HERE / "_dbos_queues_side.py"), POSTGRES[0], str(count), str(poll)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, float] = json.loads(out.splitlines()[-1])
    return result


def postgres_run(count: int, repeat: int, backend: str) -> dict[str, float]:
    """Everything on one server, the repetitions interleaved: medians."""
    runs: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(repeat):
        for engines in (1, 2):
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            anyio.run(fill, schema, count, backend=backend)
            rate = anyio.run(drain, schema, count, engines, backend, backend=backend)
            runs[f"processes_{engines}_per_s"].append(rate)
        default = dbos(100, 1.0)  # 100 at about 10/s: the first poll counts once
        runs["dbos_default_poll_per_s"].append(default["completed_per_s"])
        fast = dbos(count, 0.01)
        runs["dbos_10ms_poll_per_s"].append(fast["completed_per_s"])
        runs["dbos_peak_in_flight"].append(max(default["peak_in_flight"], fast["peak_in_flight"]))
        for kind in ("postgres", "sqlite"):
            gaps = anyio.run(slot_reuse, kind, 300, backend=backend)
            runs[f"reuse_{kind}_p50_ms"].append(statistics.median(gaps))
            runs[f"reuse_{kind}_p99_ms"].append(statistics.quantiles(gaps, n=100)[98])
    return {name: statistics.median(values) for name, values in runs.items()}


def report_postgres(figures: dict[str, float], count: int, backend: str) -> None:
    for engines in (1, 2):
        rate = figures[f"processes_{engines}_per_s"]
        print(
            f"{backend}/postgres: {count} workflows through concurrency 10, {engines} engine"
            f" process{'es' if engines > 1 else ''}: {rate:,.0f}/s"
            f" = {rate / DBOS_DEFAULT_PER_S:.0f}x DBOS's nominal default (10/s; target >= 10x),"
            f" {rate / figures['dbos_default_poll_per_s']:.0f}x DBOS measured"
            f" ({figures['dbos_default_poll_per_s']:.1f}/s default poll),"
            f" {rate / figures['dbos_10ms_poll_per_s']:.1f}x DBOS with a 10 ms poll"
            f" ({figures['dbos_10ms_poll_per_s']:.0f}/s)"
        )
    print(f"DBOS: most in flight at once {figures['dbos_peak_in_flight']:.0f} (its limit: 10)")
    for kind in ("postgres", "sqlite"):
        print(
            f"{backend}/{kind}: slot freed -> next start: p50"
            f" {figures[f'reuse_{kind}_p50_ms']:.2f} ms,"
            f" p99 {figures[f'reuse_{kind}_p99_ms']:.2f} ms (target p99 <= 20 ms)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--storage", choices=["sqlite", "memory", "postgres"], default="sqlite")
    parser.add_argument("--engines", type=int, choices=[1, 2], default=1)
    parser.add_argument("--repeat", type=int, default=1, help="interleaved runs (Postgres)")
    args = parser.parse_args()
    if args.storage == "postgres":
        with postgres():
            figures = postgres_run(args.count, args.repeat, args.backend)
            if args.engines == 2:
                _, rate = anyio.run(throughput, "postgres", args.count, 2, backend=args.backend)
                figures["in_process_2_engines_per_s"] = rate
                print(f"{args.backend}/postgres: 2 engines in one process: {rate:,.0f}/s")
        report_postgres(figures, args.count, args.backend)
        out = HERE / "results" / "queues-latest.json"
        out.write_text(json.dumps(figures, indent=2) + "\n")
        return
    enqueue_rate, rate = anyio.run(
        throughput, args.storage, args.count, args.engines, backend=args.backend
    )
    gaps = anyio.run(slot_reuse, args.storage, 300, backend=args.backend)
    p99 = statistics.quantiles(gaps, n=100)[98]
    print(f"{args.backend}/{args.storage}: {args.count} enqueued at {enqueue_rate:,.0f}/s")
    print(
        f"{args.backend}/{args.storage}: {args.count} workflows through concurrency 10"
        f" ({args.engines} engine{'s' if args.engines > 1 else ''}):"
        f" {rate:,.0f}/s = {rate / DBOS_DEFAULT_PER_S:.0f}x DBOS's default (10/s; target >= 10x)"
    )
    print(
        f"{args.backend}/{args.storage}: slot freed -> next start: p50"
        f" {statistics.median(gaps):.2f} ms, p99 {p99:.2f} ms (target p99 <= 20 ms)"
    )


if __name__ == "__main__":
    main()
