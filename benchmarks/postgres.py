"""memable on PostgreSQL beside the psycopg floor and DBOS, measured in one run.

``python benchmarks/postgres.py [--quick] [--rounds 3] [--no-dbos]`` starts a throwaway
PostgreSQL cluster (fsync on; needs the server programs; ``MEMABLE_BENCH_POSTGRES=URL``
uses a server of yours instead) and prints:

- the floor: psycopg INSERT + COMMIT over a Unix socket, directly and through
  ``anyio.to_thread.run_sync`` (the floor memable is held to: target at most 1.5 times);
- a sequential durable step (10-step workflows, one engine) and its ratio to the floor;
- 100 workflows x 10 steps started at once: steps/s with 1 engine process and with 2;
- DBOS Transact (if installed) on the same server, in its own database: the same
  sequential and 100 x 10 workflows (awaited in its process: no polling counted), and
  the ratios (targets: 100 x 10 concurrent at least 20 times DBOS's);
- these figures in interleaved rounds (floor, memable, DBOS, floor, ...), medians printed;
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
import uuid
from pathlib import Path
from urllib.parse import quote, urlencode

import anyio
import anyio.lowlevel
import anyio.to_thread
import psycopg
import psycopg.conninfo
from psycopg import sql

import memable
from memable import Context, Engine, SuspendPoint
from memable.storage import PostgresStorage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests import pg  # noqa: E402  (the test suite's throwaway cluster)

GO = SuspendPoint("go:v1", int)
#: The memable this run measures (the engine processes it starts import the same one).
SRC = str(Path(memable.__file__).resolve().parents[1])


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
    env = {**os.environ, "PYTHONPATH": SRC}
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
    env = {**os.environ, "PYTHONPATH": SRC}
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


_SCHEMAS: list[str] = []


def fresh(name: str) -> str:
    """A schema no run used before (dropped at the end: a server of yours stays clean)."""
    schema = f"bench_{name}_{uuid.uuid4().hex[:8]}"
    _SCHEMAS.append(schema)
    return schema


def drop_schemas(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for schema in _SCHEMAS:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.execute("DROP TABLE IF EXISTS floor")


def dbos_url(dsn: str, database: str = "memable_dbos_bench") -> str:
    """A URL for DBOS's system database on the server of *dsn* (its own database)."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    auth = quote(str(info.get("user") or "postgres"))
    if info.get("password"):
        auth += ":" + quote(str(info["password"]))
    host = str(info.get("host") or "")
    query: dict[str, str] = {}
    if host.startswith("/"):  # a Unix socket
        query["host"] = host
        host = ""
    if info.get("port"):
        query["port"] = str(info["port"])
    url = f"postgresql://{auth}@{host}/{database}"
    return url + ("?" + urlencode(query) if query else "")


def dbos(dsn: str, quick: bool) -> dict[str, float]:
    """DBOS's figures on the same server (in a subprocess: DBOS is a singleton)."""
    command = [sys.executable, str(HERE / "_dbos_side.py"), "--postgres", dbos_url(dsn)]
    out = subprocess.run(
        [*command, *(["--quick"] if quick else [])], capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise RuntimeError(f"the DBOS run failed:\n{out.stderr[-2000:]}")
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--no-dbos", action="store_true", help="leave DBOS out")
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
        rounds: list[dict[str, float]] = []
        for _ in range(options.rounds):  # interleaved: each figure sees the same machine
            r: dict[str, float] = floor(dsn, 10 * n)
            r["seq_step_us"] = anyio.run(sequential, dsn, fresh("seq"), n)
            r["seq_ratio"] = r["seq_step_us"] / r["floor_to_thread_us"]
            wall = anyio.run(concurrent, dsn, fresh("conc"), 100)
            r["concurrent_1_engine_steps_per_s"] = 100 * 10 / wall
            r["concurrent_2_engines_steps_per_s"] = two_processes(dsn, fresh("two"), 100)
            if not options.no_dbos:
                peer = dbos(dsn, options.quick)
                r["dbos_seq_step_us"] = peer["sequential_us_per_step"]
                r["dbos_concurrent_steps_per_s"] = peer["concurrent_steps_per_s"]
                r["dbos_seq / memable_seq"] = r["dbos_seq_step_us"] / r["seq_step_us"]
                r["concurrent_1 / dbos"] = (
                    r["concurrent_1_engine_steps_per_s"] / r["dbos_concurrent_steps_per_s"]
                )
                r["concurrent_2 / dbos"] = (
                    r["concurrent_2_engines_steps_per_s"] / r["dbos_concurrent_steps_per_s"]
                )
            rounds.append(r)
        figures = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
        figures["takeover_s_lease_2"] = takeover(dsn, fresh("takeover"), 2.0)
        latencies = anyio.run(signal_latency, dsn, fresh("signal"), 50 if options.quick else 200)
        figures["signal_p50_ms"] = statistics.median(latencies)
        figures["signal_p99_ms"] = statistics.quantiles(latencies, n=100)[98]
    finally:
        if servers is not None:
            servers.close()
        else:
            drop_schemas(dsn)
    width = max(map(len, figures))
    print(f"medians of {options.rounds} interleaved rounds (take-over and signals: one run)")
    for name, value in figures.items():
        print(f"{name:<{width}}  {value:10.2f}")
    targets = [
        ("sequential step / to_thread floor", figures["seq_ratio"], "<= 1.5",
         figures["seq_ratio"] <= 1.5),
        ("take-over after SIGKILL (s, lease 2)", figures["takeover_s_lease_2"], "<= 3.0",
         figures["takeover_s_lease_2"] <= 3.0),
        ("cross-engine signal p99 (ms)", figures["signal_p99_ms"], "<= 20",
         figures["signal_p99_ms"] <= 20),
    ]  # fmt: skip
    if "concurrent_1 / dbos" in figures:
        for engines in (1, 2):
            ratio = figures[f"concurrent_{engines} / dbos"]
            targets.append((f"100x10 concurrent, {engines} engine(s) / DBOS", ratio, ">= 20",
                            ratio >= 20))  # fmt: skip
    for label, value, target, met in targets:
        print(f"{label:<{width + 8}}  {value:8.2f}  target {target:<7} {'yes' if met else 'NO'}")
    out = HERE / "results" / "postgres-latest.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
