"""memable on PostgreSQL beside the psycopg floor, measured in one run.

``python benchmarks/postgres.py [--quick]`` starts a throwaway PostgreSQL cluster (fsync
on; needs the server programs; ``MEMABLE_BENCH_POSTGRES=URL`` uses a server of yours
instead) and prints:

- the floor: psycopg INSERT + COMMIT over a Unix socket, directly and through
  ``anyio.to_thread.run_sync`` (the floor memable is held to: target at most 1.5 times);
- a sequential durable step (10-step workflows, one engine) and its ratio to the floor;
- 100 workflows x 10 steps started at once: steps/s with 1 engine process and with 2;
- the take-over time: from SIGKILL of an engine (lease 2 s) to its instance running in
  another engine (target ≤ lease + 1 s);
- cross-engine signal latency: from ``signal()`` on one engine to the workflow going on
  after its suspend point, for an instance started on another engine (p50, p99).

Writes ``benchmarks/results/postgres-latest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread
import psycopg

import memable
from memable import Context, Engine, SuspendPoint
from memable.storage import PostgresStorage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests import pg  # noqa: E402  (the test suite's throwaway cluster)

GO = SuspendPoint("go:v1", int)


def floor(dsn: str, rows: int) -> dict[str, float]:
    with psycopg.connect(dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS floor; CREATE TABLE floor (k text PRIMARY KEY, v text)")
        conn.commit()

        def insert(n: int) -> None:
            conn.execute("INSERT INTO floor VALUES (%s, %s)", (f"k{n}", '{"type":"int"}'))
            conn.commit()

        started = time.perf_counter()
        for n in range(rows):
            insert(n)
        direct = (time.perf_counter() - started) / rows * 1e6

        async def threaded() -> float:
            limiter = anyio.CapacityLimiter(1)
            started = time.perf_counter()
            for n in range(rows, 2 * rows):
                await anyio.to_thread.run_sync(insert, n, limiter=limiter)
            return (time.perf_counter() - started) / rows * 1e6

        return {"floor_direct_us": direct, "floor_to_thread_us": anyio.run(threaded)}


async def _one(n: int) -> int:
    return n


@memable.workflow("ten")
async def ten(ctx: Context, n: int) -> int:
    total = 0
    for i in range(10):
        total += await ctx.step(f"s{i}", _one, i)
    return total


async def sequential(dsn: str, schema: str, workflows: int) -> float:
    async with Engine(PostgresStorage(dsn, schema=schema), workflows=[ten]) as engine:
        await engine.run(ten, 0)  # warm up (prepared statements, pool)
        started = time.perf_counter()
        for n in range(workflows):
            await engine.run(ten, n)
        return (time.perf_counter() - started) / (workflows * 10) * 1e6


async def concurrent(dsn: str, schema: str, count: int, prefix: str = "c") -> float:
    """Run *count* ten-step workflows at once; return the wall time in seconds."""
    async with Engine(PostgresStorage(dsn, schema=schema), workflows=[ten]) as engine:
        await engine.run(ten, 0)
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for n in range(count):
                tg.start_soon(engine.run, ten, n)
        return time.perf_counter() - started


def two_processes(dsn: str, schema: str, count: int) -> float:
    """Two engine processes, *count* workflows each, started together: aggregate steps/s."""
    go = Path(tempfile.mkdtemp()) / "go"
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    code = (
        "import anyio, sys, time, os\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import postgres as b\n"
        "while not os.path.exists(sys.argv[4]): time.sleep(0.001)\n"
        "print(time.time(), anyio.run(b.concurrent, sys.argv[2], sys.argv[3], int(sys.argv[5])))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(HERE), dsn, schema, str(go), str(count)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    time.sleep(2.0)  # both engines open and warmed up
    go.touch()
    walls = [float(p.communicate()[0].split()[1]) for p in procs]
    return 2 * count * 10 / max(walls)


def takeover(dsn: str, schema: str, lease: float) -> float:
    """SIGKILL an engine holding a running instance; seconds until another runs it."""
    marks = Path(tempfile.mkdtemp()) / "marks"
    code = (
        "import anyio, sys, time\n"
        "import memable\n"
        "from memable.storage import PostgresStorage\n"
        "async def mark(n: int) -> int:\n"
        "    with open(sys.argv[3], 'a') as f: f.write(f'{time.time()}\\n')\n"
        "    await anyio.sleep(3600)\n"
        "    return n\n"
        "async def body(ctx: memable.Context, n: int) -> int:\n"
        "    return await ctx.step('mark', mark, n)\n"
        "wf = memable.Workflow('held', body)\n"
        "async def main() -> None:\n"
        "    s = PostgresStorage(sys.argv[1], schema=sys.argv[2], lease=float(sys.argv[4]))\n"
        "    async with memable.Engine(s, workflows=[wf]) as e:\n"
        "        if sys.argv[5] == 'start': await e.invoke(wf, 1, instance_id='held')\n"
        "        await anyio.sleep_forever()\n"
        "anyio.run(main)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    args = [dsn, schema, str(marks), str(lease)]
    victim = subprocess.Popen([sys.executable, "-c", code, *args, "start"], env=env)
    other = subprocess.Popen([sys.executable, "-c", code, *args, "serve"], env=env)
    try:
        while not marks.exists() or len(marks.read_text().split()) < 1:
            time.sleep(0.01)
        time.sleep(0.5)
        killed = time.time()
        victim.send_signal(signal.SIGKILL)
        while len(marks.read_text().split()) < 2:
            time.sleep(0.005)
        return float(marks.read_text().split()[1]) - killed
    finally:
        for p in (victim, other):
            p.kill()
            p.wait()


async def signal_latency(dsn: str, schema: str, count: int) -> list[float]:
    resumed: dict[str, float] = {}

    @memable.workflow("waiter")
    async def waiter(ctx: Context, n: int) -> int:
        got: int = await ctx.suspend(GO)
        resumed[ctx.instance_id] = time.perf_counter()
        return got

    latencies: list[float] = []
    async with (
        Engine(PostgresStorage(dsn, schema=schema), workflows=[waiter]) as a,
        Engine(PostgresStorage(dsn, schema=schema), workflows=[waiter]) as b,
    ):
        for n in range(count):
            invocation = await a.invoke(waiter, n, instance_id=f"w{n}")
            await invocation.wait()
            sent = time.perf_counter()
            await b.signal(waiter, f"w{n}", GO, n)
            while f"w{n}" not in resumed:
                await anyio.lowlevel.checkpoint()
            latencies.append((resumed[f"w{n}"] - sent) * 1000)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts")
    options = parser.parse_args()
    given = os.environ.get("MEMABLE_BENCH_POSTGRES")
    servers = None
    if given:
        dsn = given
    else:
        servers = pg.server(fsync=True)
        dsn = next(servers).dsn
    try:
        n = 20 if options.quick else 100
        figures: dict[str, float] = floor(dsn, 10 * n)
        figures["seq_step_us"] = anyio.run(sequential, dsn, "bench_seq", n)
        figures["seq_ratio"] = figures["seq_step_us"] / figures["floor_to_thread_us"]
        wall = anyio.run(concurrent, dsn, "bench_conc", 100)
        figures["concurrent_1_engine_steps_per_s"] = 100 * 10 / wall
        figures["concurrent_2_engines_steps_per_s"] = two_processes(dsn, "bench_two", 100)
        figures["takeover_s_lease_2"] = takeover(dsn, "bench_takeover", 2.0)
        latencies = anyio.run(signal_latency, dsn, "bench_signal", 50 if options.quick else 200)
        figures["signal_p50_ms"] = statistics.median(latencies)
        figures["signal_p99_ms"] = statistics.quantiles(latencies, n=100)[98]
    finally:
        if servers is not None:
            servers.close()
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value:10.2f}")
    out = HERE / "results" / "postgres-latest.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
