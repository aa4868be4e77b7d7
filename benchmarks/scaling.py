"""Scaling: each figure at two sizes and the exponent between them (cost ~ size ** exponent).

``python benchmarks/scaling.py [--quick]`` (or ``nox -s bench -- --scaling``). Every
measurement runs in a fresh interpreter (``--row NAME --size N`` runs one and prints JSON),
so memory figures and caches do not leak from one into the next; SQLite files live in a
temporary directory, ``synchronous=FULL``. An exponent of 1 means the total cost grows
linearly with the size (constant cost per item), 0 means flat. Targets from issue 16.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

import memable
from memable import Context, Engine, SuspendPoint
from memable.storage import (
    InstanceRecord,
    InstanceState,
    SQLiteStorage,
    StepRecord,
    TimerRecord,
)

HERE = Path(__file__).resolve().parent
Figures = dict[str, float]
GO = SuspendPoint("go:v1", int)


async def _one(n: int) -> int:
    return n


# -- fan-out: N suspended children, each signalled ---------------------------------------------


async def _child(ctx: Context, i: int) -> int:
    return await ctx.suspend(GO)


@memable.workflow("fan")
async def fan(ctx: Context, n: int) -> int:
    return sum(await ctx.fan_out("kids:v1", _child, list(range(n))))


async def fanout_wake(path: Path, n: int) -> Figures:
    async with Engine(path, workflows=[fan]) as engine:
        invocation = await engine.invoke(fan, n, instance_id="p")
        await invocation.wait()
        started = time.perf_counter()
        for i in range(n):
            await engine.signal(fan, f"p/kids:v1-{i}", GO, i)
        while (await engine.state(fan, "p")).status != "completed":
            await anyio.sleep(0.005)
        total = time.perf_counter() - started
        assert await invocation.result() == n * (n - 1) // 2
    return {"total_s": total, "ms_per_wake": total / n * 1e3}


# -- overdue timers at start ------------------------------------------------------------------

RESUMED: list[float] = []


@memable.workflow("napper")
async def napper(ctx: Context) -> int:
    await ctx.sleep("nap:v1", 3600)
    RESUMED.append(time.perf_counter())
    return 1


def timers_setup(path: Path, n: int) -> None:
    storage = SQLiteStorage(path, synchronous="normal")
    storage.open()
    past = time.time() - 60
    envelope = '{"type":"None","value":null}'
    for start in range(0, n, 5000):
        writes: list[Any] = []
        for i in range(start, min(n, start + 5000)):
            iid = f"t{i:07d}"
            writes.append(InstanceRecord(instance_id=iid, workflow="napper", status="suspended",
                                         input=envelope, waiting_on=("nap:v1",),
                                         created_at=past, updated_at=past))  # fmt: skip
            writes.append(TimerRecord(instance_id=iid, key="nap:v1", deadline=past, kind="sleep"))
        storage.commit(writes)
    storage.close()


async def timers_overdue(path: Path, n: int) -> Figures:
    idle = _rss_mib()
    started = time.perf_counter()
    async with Engine(path, workflows=[napper]):
        with anyio.move_on_after(8):  # the first resumes and the memory they take
            while len(RESUMED) < n:
                await anyio.sleep(0.01)
        window = time.perf_counter() - started
        resumed = len(RESUMED)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "first_resume_ms": (RESUMED[0] - started) * 1e3 if RESUMED else math.inf,
        "resumed_per_s": resumed / window,
        "peak_rss_above_idle_mib": peak - idle,
    }


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- purge while a run() goes on -------------------------------------------------------------


@memable.workflow("single")
async def single(ctx: Context) -> int:
    return await ctx.step("one:v1", _one, 1)


def purge_setup(path: Path, n: int) -> None:
    storage = SQLiteStorage(path, synchronous="normal")
    storage.open()
    past = time.time() - 3600
    envelope = '{"type":"None","value":null}'
    for start in range(0, n, 5000):
        writes: list[Any] = []
        for i in range(start, min(n, start + 5000)):
            iid = f"f{i:07d}"
            one = '{"type":"int","value":1}'
            writes.append(InstanceRecord(instance_id=iid, workflow="single", status="completed",
                                         input=envelope, output=one, created_at=past,
                                         updated_at=past, finished_at=past))  # fmt: skip
            writes.append(StepRecord(instance_id=iid, key="one:v1", state="completed",
                                     value='{"type":"int","value":1}', attempts=1,
                                     started_at=past, finished_at=past))  # fmt: skip
        storage.commit(writes)
    storage.close()


async def purge_run(path: Path, n: int) -> Figures:
    from datetime import timedelta

    latencies: list[float] = []
    async with Engine(path, workflows=[single]) as engine:
        await engine.run(single)  # warm up
        purged = 0
        started = time.perf_counter()

        async def purge() -> None:
            nonlocal purged
            purged = await engine.purge(older_than=timedelta(minutes=1))

        async with anyio.create_task_group() as tg:
            tg.start_soon(purge)
            await anyio.sleep(0.05)
            while purged == 0:
                t = time.perf_counter()
                await engine.run(single)
                latencies.append(time.perf_counter() - t)
                await anyio.sleep(0.02)
        took = time.perf_counter() - started
    assert purged == n, purged
    latencies.sort()
    return {
        "purge_s": took,
        "run_max_ms": latencies[-1] * 1e3,
        "run_median_ms": latencies[len(latencies) // 2] * 1e3,
    }


# -- list pages -------------------------------------------------------------------------------


def list_setup(path: Path, n: int) -> None:
    """N instances: a tenth suspended, the rest completed, created over time."""
    storage = SQLiteStorage(path, synchronous="normal")
    storage.open()
    envelope = '{"type":"None","value":null}'
    for start in range(0, n, 5000):
        writes: list[Any] = []
        for i in range(start, min(n, start + 5000)):
            at = 1_700_000_000.0 + i
            status: InstanceState = "suspended" if i % 10 == 0 else "completed"
            finished = None if status == "suspended" else at
            writes.append(InstanceRecord(instance_id=f"l{i:07d}", workflow="single",
                                         status=status, input=envelope, created_at=at,
                                         updated_at=at, finished_at=finished))  # fmt: skip
        storage.commit(writes)
    storage.close()


async def list_page(path: Path, n: int) -> Figures:
    """The steady-state cost of a page: the first page and the two after it, once untimed
    (the connection's first query, its statement cache and page cache warming up), then
    100 times; the median of those 300 (a shared machine's bursts of load last longer
    than a few dozen pages of ~1.5 ms)."""
    async with Engine(path, workflows=[single], resume_on_start=False) as engine:
        times: list[float] = []
        for round_ in range(101):
            after = None
            for _ in range(3):
                started = time.perf_counter()
                page = await engine.instances(single, status="suspended", limit=100, after=after)
                if round_:
                    times.append(time.perf_counter() - started)
                assert len(page) == 100
                after = page.next
    return {"page_ms": statistics.median(times) * 1e3}


# -- replay ----------------------------------------------------------------------------------


_MARKS: dict[str, float] = {}


async def _final() -> int:
    _MARKS.setdefault("final", time.perf_counter())
    return 0


@memable.workflow("long")
async def long(ctx: Context, n: int) -> int:
    for i in range(n):
        await ctx.step(f"s{i}", _one, i)
    return await ctx.step("final", _final)


def replay_setup(path: Path, n: int) -> None:
    """An instance that recorded N steps and died before its last (in another process)."""
    from memable.testing import crash_at

    async def record() -> None:
        async with Engine(path, workflows=[long]) as engine:
            with crash_at(engine, "final"):
                await engine.invoke(long, n, instance_id="long")
                while engine._runner.runs:
                    await anyio.sleep(0.01)

    anyio.run(record)


async def replay(path: Path, n: int) -> Figures:
    """Recovery in a fresh process, as after a crash: the history load and the replay."""
    stall = stall_cpu = 0.0

    async def ticker(stop: anyio.Event) -> None:
        # The longest gap between two ticks of 1 ms, in wall time (what another task waits,
        # the machine's other load included) and in this process's CPU time over the gap
        # (the work that held the loop, without the time the OS gave other processes).
        nonlocal stall, stall_cpu
        last, last_cpu = time.perf_counter(), time.process_time()
        while not stop.is_set():
            await anyio.sleep(0.001)
            now, cpu = time.perf_counter(), time.process_time()
            stall, stall_cpu = max(stall, now - last), max(stall_cpu, cpu - last_cpu)
            last, last_cpu = now, cpu

    storage = SQLiteStorage(path)
    name = "load_replay"  # the engine's read of the history (load_history before it)
    load = getattr(storage, name)

    def timed_load(instance_id: str) -> Any:
        _MARKS.setdefault("load", time.perf_counter())
        return load(instance_id)

    setattr(storage, name, timed_load)  # time the history load
    async with Engine(storage, workflows=[long]) as engine:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker, stop)
            await engine.handle(long, "long").result()
            stop.set()
    return {
        "us_per_step": (_MARKS["final"] - _MARKS["load"]) / n * 1e6,
        "longest_stall_ms": stall * 1e3,
        "longest_stall_cpu_ms": stall_cpu * 1e3,
    }


# -- suspend vs complete ---------------------------------------------------------------------


@memable.workflow("suspends")
async def suspends(ctx: Context) -> int:
    return await ctx.suspend(GO)


@memable.workflow("completes")
async def completes(ctx: Context) -> int:
    return 1


async def _burst(path: Path, wf: memable.Workflow[None, int], n: int) -> float:
    async with Engine(path, workflows=[wf]) as engine:
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(engine.invoke, wf)
        while engine._runner.runs:
            await anyio.sleep(0.001)
        return (time.perf_counter() - started) / n * 1e6


async def suspend_vs_complete(path: Path, n: int) -> Figures:
    times = {"suspend": [], "complete": []}  # type: dict[str, list[float]]
    for rep in range(3):
        times["suspend"].append(await _burst(path.with_suffix(f".s{rep}"), suspends, n))
        times["complete"].append(await _burst(path.with_suffix(f".c{rep}"), completes, n))
    s, c = sorted(times["suspend"])[1], sorted(times["complete"])[1]
    return {"ratio": s / c, "suspend_us": s, "complete_us": c}


# -- structured results ----------------------------------------------------------------------


async def structured(path: Path, rows: int) -> Figures:
    data = [{"id": i, "name": f"item {i}", "price": i * 1.5, "tags": ["a", "b"], "ok": True}
            for i in range(rows)]  # fmt: skip
    size = len(json.dumps(data))

    async def big(i: int) -> list[dict[str, Any]]:
        return data

    @memable.workflow("structured")
    async def wf(ctx: Context, steps: int) -> int:
        return sum([len(await ctx.step(f"b{i}", big, i)) for i in range(steps)])

    async with Engine(path, workflows=[wf]) as engine:
        # Warm: what a process does once (import the fast extra's encoder, plan the
        # type) is not throughput.
        await engine.run(wf, 1)
        started = time.perf_counter()
        await engine.run(wf, 20)
        return {"mb_per_s": size * 20 / (time.perf_counter() - started) / 1e6}


async def structured_stdlib(path: Path, rows: int) -> Figures:
    """The same without the ``fast`` extra: Python's own encoder writes every value."""
    from memable import _serde

    _serde._fast_dumps = lambda: None  # type: ignore[assignment]  # this process only
    return await structured(path, rows)


# -- concurrency -----------------------------------------------------------------------------


@memable.workflow("ten-steps")
async def ten_steps(ctx: Context, n: int) -> int:
    total = 0
    for i in range(n):
        total += await ctx.step(f"s{i}", _one, i)
    return total


async def concurrent(path: Path, n: int) -> Figures:
    async with Engine(path, workflows=[ten_steps]) as engine:
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(engine.run, ten_steps, 10)
        return {"steps_per_s": n * 10 / (time.perf_counter() - started)}


# -- the table -------------------------------------------------------------------------------

Row = tuple[
    str,  # name
    Callable[[Path, int], Any],  # measure
    Callable[[Path, int], None] | None,  # setup, in another process
    tuple[int, int],  # sizes
    tuple[int, int],  # quick sizes
    str,  # the figure shown
    str,  # how the exponent is taken: "total" (the figure is a total cost), "per" (a cost
    # per item: exponent of the total = 1 + that of the figure), "rate" (items per second),
    # "flat" (a latency or a ratio that should not grow)
    str,  # target
]

ROWS: list[Row] = [
    ("fan-out: signal all N suspended children", fanout_wake, None, (250, 1000), (100, 400),
     "ms_per_wake", "per", "exponent <= 1.1"),
    ("overdue timers at start: first resume (ms)", timers_overdue, timers_setup,
     (10_000, 100_000), (2_000, 20_000), "first_resume_ms", "flat", "<= 100 ms"),
    ("overdue timers at start: peak RSS above idle (MiB)", timers_overdue, timers_setup,
     (10_000, 100_000), (2_000, 20_000), "peak_rss_above_idle_mib", "flat", "<= 100 MiB"),
    ("purge N finished: a 1-step run() meanwhile, max (ms)", purge_run, purge_setup,
     (10_000, 100_000), (2_000, 20_000), "run_max_ms", "flat", "<= 50 ms"),
    ("instances(status=...) page of 100 (ms)", list_page, list_setup, (10_000, 100_000),
     (2_000, 20_000), "page_ms", "flat", "exponent <= 0.1"),
    ("replay: µs per step incl. history load", replay, replay_setup, (5_000, 50_000),
     (1_000, 10_000), "us_per_step", "per", "<= 10 µs"),
    ("replay: longest stall of another task (ms)", replay, replay_setup, (5_000, 50_000),
     (1_000, 10_000), "longest_stall_ms", "flat", "<= 20 ms"),
    ("replay: longest stall in CPU time (ms)", replay, replay_setup, (5_000, 50_000),
     (1_000, 10_000), "longest_stall_cpu_ms", "flat", "<= 20 ms"),
    ("suspend / complete, N concurrent", suspend_vs_complete, None, (100, 1000), (100, 300),
     "ratio", "flat", "<= 1.5"),
    ("structured list[dict] results, rows per value (MB/s)", structured, None, (2000, 20000),
     (2000, 20000), "mb_per_s", "rate", ">= 40 MB/s"),
    ("the same without the fast extra (orjson) (MB/s)", structured_stdlib, None, (2000, 20000),
     (2000, 20000), "mb_per_s", "rate", "(reported)"),
    ("N concurrent x 10 steps (steps/s)", concurrent, None, (100, 5000), (100, 2000),
     "steps_per_s", "rate", "at 5,000 >= 90% of at 100"),
]  # fmt: skip


def one(name: str, size: int, backend: str) -> Figures:
    row = next(r for r in ROWS if r[1].__name__ == name)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        if row[2] is not None:
            subprocess.run(
                [sys.executable, __file__, "--setup", name, "--size", str(size), "--db", str(path)],
                check=True,
            )
        figures: Figures = anyio.run(row[1], path, size, backend=backend)
    return figures


def measure(name: str, size: int, backend: str) -> Figures:
    out = subprocess.run(
        [sys.executable, __file__, "--row", name, "--size", str(size), "--backend", backend],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{name} at {size} failed:\n{out.stderr[-3000:]}")
    figures: Figures = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def exponent(kind: str, n1: int, n2: int, f1: float, f2: float) -> float:
    scale = math.log(n2 / n1)
    if kind == "total":
        return math.log(f2 / f1) / scale
    if kind == "per":
        return 1 + math.log(f2 / f1) / scale
    if kind == "rate":  # items per second: the total time grows as n / rate
        return 1 - math.log(f2 / f1) / scale
    return math.log(f2 / f1) / scale if f1 > 0 and f2 > 0 else math.nan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--repeat", type=int, default=3, help="medians of this many runs")
    parser.add_argument("--row")
    parser.add_argument("--setup")
    parser.add_argument("--size", type=int)
    parser.add_argument("--db")
    args = parser.parse_args()
    if args.setup:
        row = next(r for r in ROWS if r[1].__name__ == args.setup)
        assert row[2] is not None
        row[2](Path(args.db), args.size)
        return 0
    if args.row:
        print(json.dumps(one(args.row, args.size, args.backend)))
        return 0
    runs: dict[tuple[str, int], list[Figures]] = {}
    for rep in range(args.repeat):  # interleaved: every row at both sizes, then again
        for _, fn, _, sizes, quick, *_ in ROWS:
            for n in quick if args.quick else sizes:
                if len(runs.setdefault((fn.__name__, n), [])) <= rep:
                    runs[fn.__name__, n].append(measure(fn.__name__, n, args.backend))
                    print(f"{fn.__name__} at {n}: {runs[fn.__name__, n][-1]}", file=sys.stderr)
    cache = {
        key: {name: statistics.median(f[name] for f in figures) for name in figures[0]}
        for key, figures in runs.items()
    }
    lines = [
        f"# memable scaling ({args.backend}{', quick' if args.quick else ''},"
        f" medians of {args.repeat} interleaved runs)\n",
        "| workload | size 1 | figure | size 2 | figure | exponent | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for title, fn, _, sizes, quick, figure, kind, target in ROWS:
        n1, n2 = quick if args.quick else sizes
        values = [cache[fn.__name__, n][figure] for n in (n1, n2)]
        exp = exponent(kind, n1, n2, *values)
        lines.append(
            f"| {title} | {n1:,} | {values[0]:,.2f} | {n2:,} | {values[1]:,.2f} | {exp:.2f} |"
            f" {target} |"
        )
    c100 = cache.get(("concurrent", (ROWS[-1][4] if args.quick else ROWS[-1][3])[0]))
    c_big = cache.get(("concurrent", (ROWS[-1][4] if args.quick else ROWS[-1][3])[1]))
    if c100 and c_big:
        share = c_big["steps_per_s"] / c100["steps_per_s"]
        lines.append(f"\nconcurrent: the larger size runs at {share:.0%} of the smaller's rate.")
    lines.append(
        "\nDBOS beside these: see `run.py` (sequential, concurrent, replay inside the workflow"
        " body, structured results); DBOS has no counterpart run here for the other rows."
    )
    report = "\n".join(lines) + "\n"
    print(report)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / f"scaling{'-quick' if args.quick else ''}.md").write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
