"""memable beside the SQLite floor and DBOS Transact, measured in one run.

``python benchmarks/run.py [--quick] [--repeat N]`` (or ``nox -s bench``). Repetitions are
interleaved (floor, memable, DBOS, floor, memable, DBOS ...) so all three see the same
machine. Prints a table of medians (with min and max) and the ratios against the targets of
DESIGN.md §8, and writes ``benchmarks/results/latest.json`` and ``latest.md``. Exits non-zero
only if a measurement errors.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.to_thread

import memable
from memable import Context, Engine, _serde
from memable.storage import SQLiteStorage
from memable.testing import crash_at

HERE = Path(__file__).resolve().parent
Figures = dict[str, float]


# -- the floor: stdlib sqlite3 ---------------------------------------------------------------


def _floor_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)")
    return db


def _insert_commit(db: sqlite3.Connection, n: int) -> None:
    db.execute("BEGIN")
    db.execute("INSERT INTO t VALUES (?, ?)", (f"k{n}", '{"type":"int","value":1}'))
    db.execute("COMMIT")


def floor(rows: int) -> Figures:
    with tempfile.TemporaryDirectory() as tmp:
        db = _floor_db(Path(tmp) / "direct.db")
        started = time.perf_counter()
        for n in range(rows):
            _insert_commit(db, n)
        direct = (time.perf_counter() - started) / rows * 1e6
        db.close()

        db = _floor_db(Path(tmp) / "thread.db")

        async def through_threads() -> float:
            limiter = anyio.CapacityLimiter(1)
            started = time.perf_counter()
            for n in range(rows):
                await anyio.to_thread.run_sync(_insert_commit, db, n, limiter=limiter)
            return (time.perf_counter() - started) / rows * 1e6

        threaded = anyio.run(through_threads)
        db.close()

        db = _floor_db(Path(tmp) / "batched.db")
        started = time.perf_counter()
        for batch in range(0, rows * 10, 100):
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO t VALUES (?, ?)",
                [(f"k{n}", "v") for n in range(batch, batch + 100)],
            )
            db.execute("COMMIT")
        batched = (time.perf_counter() - started) / (rows * 10) * 1e6
        db.close()
    return {
        "floor_direct_us": direct,
        "floor_to_thread_us": threaded,
        "floor_batched_us_per_row": batched,
    }


# -- memable ------------------------------------------------------------------------------------


async def _one(n: int) -> int:
    return n


@memable.workflow("ten-steps")
async def ten_steps(ctx: Context, n: int) -> int:
    total = 0
    for i in range(n):
        total += await ctx.step(f"s{i}", _one, i)
    return total


async def _sequential(
    path: Path, synchronous: Literal["full", "normal"], workflows: int
) -> Figures:
    storage = SQLiteStorage(path, synchronous=synchronous)
    async with Engine(storage, workflows=[ten_steps]) as engine:
        await engine.run(ten_steps, 10)  # warm up
        cpu, started = time.process_time(), time.perf_counter()
        for _ in range(workflows):
            await engine.run(ten_steps, 10)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
        # A step's own cost, without its share of the instance's creation and completion
        # (two more commits per 10-step workflow): 20-step workflows beside 10-step ones,
        # interleaved, the difference per extra step.
        tens: list[float] = []
        twenties: list[float] = []
        for _ in range(max(3, workflows // 3)):
            for steps, times in ((10, tens), (20, twenties)):
                started = time.perf_counter()
                await engine.run(ten_steps, steps)
                times.append(time.perf_counter() - started)
    return {
        "us_per_step": wall / (workflows * 10) * 1e6,
        "cpu_us_per_step": cpu / (workflows * 10) * 1e6,
        "marginal_us_per_step": (statistics.median(twenties) - statistics.median(tens)) / 10 * 1e6,
    }


async def _concurrent(path: Path, count: int) -> float:
    async with Engine(path, workflows=[ten_steps]) as engine:
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(engine.run, ten_steps, 10)
        return count * 10 / (time.perf_counter() - started)


def _long_workflow(steps: int, marks: dict[str, float]) -> memable.Workflow[None, int]:
    async def final() -> int:
        marks.setdefault("final", time.perf_counter())
        return 0

    async def long(ctx: Context) -> int:
        marks.setdefault("body", time.perf_counter())
        for i in range(steps):
            await ctx.step(f"s{i}", _one, i)
        return await ctx.step("final", final)

    return memable.Workflow("long", long)


async def _record_long(path: Path, steps: int) -> None:
    """Record *steps* steps, then crash before the last one."""
    long = _long_workflow(steps, {})
    async with Engine(path, workflows=[long]) as engine:
        with crash_at(engine, "final"):
            await engine.invoke(long, instance_id="long")
            with anyio.fail_after(120):
                while engine._runner.runs:
                    await anyio.sleep(0.01)


async def _recover(path: Path, steps: int) -> Figures:
    """In a fresh process: recover the crashed instance; time its start and its replay."""
    marks: dict[str, float] = {}
    long = _long_workflow(steps, marks)
    storage = SQLiteStorage(path)
    name = "load_replay"  # the engine's read of the history (load_history before it)
    load = getattr(storage, name)

    def timed_load(instance_id: str) -> Any:
        marks.setdefault("load", time.perf_counter())
        return load(instance_id)

    setattr(storage, name, timed_load)  # time the history load
    entered = time.perf_counter()
    async with Engine(storage, workflows=[long]) as engine:
        await engine.handle(long, "long").result()
    return {
        # Fair: the history load is part of replaying.
        "replay_us_per_step": (marks["final"] - marks["load"]) / steps * 1e6,
        # As reported before: from the body's start, the history already loaded.
        "replay_body_us_per_step": (marks["final"] - marks["body"]) / steps * 1e6,
        "recovery_start_ms": (marks["body"] - entered) * 1e3,
    }


def _replay(path: Path, steps: int) -> Figures:
    anyio.run(_record_long, path, steps)
    out = subprocess.run(
        [sys.executable, __file__, "--recover", str(path), str(steps)],
        capture_output=True,
        text=True,
        check=True,
    )
    figures: Figures = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


async def _structured(path: Path, count: int) -> float:
    rows = [{"id": i, "name": f"item {i}", "price": i * 1.5, "tags": ["a", "b"], "ok": True}
            for i in range(2000)]  # fmt: skip

    async def big(n: int) -> list[dict[str, Any]]:
        return rows

    @memable.workflow("structured")
    async def structured(ctx: Context, steps: int) -> int:
        return sum([len(await ctx.step(f"b{i}", big, i)) for i in range(steps)])

    async with Engine(path, workflows=[structured]) as engine:
        # Warm, as DBOS is by then: the first structured value imports the fast extra's
        # encoder (once per process), which is not throughput.
        await engine.run(structured, 1)
        started = time.perf_counter()
        await engine.run(structured, count)
        return len(json.dumps(rows)) * count / (time.perf_counter() - started) / 1e6


async def _reinvoke(path: Path, calls: int) -> float:
    async with Engine(path, workflows=[ten_steps]) as engine:
        await engine.run(ten_steps, 10, instance_id="done")
        started = time.perf_counter()
        for _ in range(calls):
            await engine.run(ten_steps, 10, instance_id="done")
        return (time.perf_counter() - started) / calls * 1e6


async def _large(path: Path, count: int) -> float:
    payload = "x" * (100 * 1024)

    async def big(n: int) -> str:
        return payload

    @memable.workflow("large")
    async def large(ctx: Context) -> int:
        return sum([len(await ctx.step(f"b{i}", big, i)) for i in range(count)])

    async with Engine(path, workflows=[large]) as engine:
        started = time.perf_counter()
        total = await engine.run(large)
        return total / (time.perf_counter() - started) / 1e6


def memable_figures(quick: bool) -> Figures:
    figures: Figures = {}
    workflows = 5 if quick else 30
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("asyncio", "trio"):
            for sync in ("full", "normal"):
                result = anyio.run(
                    _sequential,
                    Path(tmp) / f"seq-{backend}-{sync}.db",
                    sync,
                    workflows,
                    backend=backend,
                )
                figures[f"seq_{sync}_{backend}_us"] = result["us_per_step"]
                figures[f"seq_{sync}_{backend}_marginal_us"] = result["marginal_us_per_step"]
                if sync == "full":
                    figures[f"cpu_{backend}_us"] = result["cpu_us_per_step"]
        count = 20 if quick else 100
        figures["concurrent_steps_per_s"] = anyio.run(_concurrent, Path(tmp) / "conc.db", count)
        figures.update(_replay(Path(tmp) / "replay.db", 200 if quick else 1000))
        figures["reinvoke_completed_us"] = anyio.run(
            _reinvoke, Path(tmp) / "reinvoke.db", 10 if quick else 50
        )
        figures["large_results_mb_per_s"] = anyio.run(
            _large, Path(tmp) / "large.db", 5 if quick else 20
        )
        figures["structured_results_mb_per_s"] = anyio.run(
            _structured, Path(tmp) / "structured.db", 5 if quick else 20
        )
        fast = _serde._fast_dumps
        _serde._fast_dumps = lambda: None  # type: ignore[assignment]  # as without orjson
        try:
            figures["structured_results_stdlib_mb_per_s"] = anyio.run(
                _structured, Path(tmp) / "structured-stdlib.db", 5 if quick else 20
            )
        finally:
            _serde._fast_dumps = fast
    figures.update(import_times(3 if quick else 7))
    return figures


def import_times(runs: int) -> Figures:
    """``import anyio`` and ``import memable`` + the first ``Engine()``, each in a fresh
    interpreter with its bytecode cached (written by a first run), interleaved."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def one(code: str) -> float:
        timed = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
        out = subprocess.run(
            [sys.executable, "-c", timed], capture_output=True, text=True, check=True, env=env
        )
        return float(out.stdout) * 1e3

    one("import memable; memable.Engine()")  # writes the .pyc files
    anyio_ms, memable_ms = [], []
    for _ in range(runs):
        anyio_ms.append(one("import anyio"))
        memable_ms.append(one("import anyio; import memable; memable.Engine()"))
    return {
        "import_anyio_ms": statistics.median(anyio_ms),
        "import_memable_ms": statistics.median(memable_ms),
    }


# -- DBOS ---------------------------------------------------------------------------------------


def dbos_figures(quick: bool) -> Figures | str:
    """DBOS's figures (on its default journal and on WAL), or why there are none."""
    if importlib.util.find_spec("dbos") is None:
        return "dbos is not installed (nox -s bench installs it)"
    figures: Figures = {}
    for mode in ("default", "wal"):
        command = [sys.executable, str(HERE / "_dbos_side.py"), *(["--quick"] if quick else [])]
        if mode == "wal":
            command.append("--wal")
        out = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"the DBOS run failed:\n{out.stderr[-2000:]}")
        prefix = "" if mode == "default" else "wal."
        for key, value in json.loads(out.stdout.strip().splitlines()[-1]).items():
            figures[prefix + key] = value
    return figures


# -- the report ----------------------------------------------------------------------------------

NAN = float("nan")
TARGETS: list[tuple[str, str, Callable[[dict[str, float]], float | None], str, float]] = [
    # name, formula, value, comparison, target (DESIGN.md §8 and issue 16)
    ("sequential step / to_thread floor", "seq_full_asyncio_us / floor_to_thread_us",
     lambda m: m["seq_full_asyncio_us"] / m["floor_to_thread_us"], "<=", 1.25),
    ("sequential step, creation and completion aside (20-step - 10-step workflow) / floor",
     "seq_full_asyncio_marginal_us / floor_to_thread_us",
     lambda m: m["seq_full_asyncio_marginal_us"] / m["floor_to_thread_us"], "<=", 1.25),
    ("DBOS step / memable step (old: DBOS on its default journal)",
     "dbos.sequential_us_per_step / seq_full_asyncio_us",
     lambda m: m.get("dbos.sequential_us_per_step", NAN) / m["seq_full_asyncio_us"], ">=", 5.0),
    ("DBOS step / memable step (fair: DBOS on WAL too)",
     "dbos.wal.sequential_us_per_step / seq_full_asyncio_us",
     lambda m: m.get("dbos.wal.sequential_us_per_step", NAN) / m["seq_full_asyncio_us"], ">=",
     5.0),
    ("100x10 concurrent / one-commit-per-step rate",
     "concurrent_steps_per_s * floor_to_thread_us / 1e6",
     lambda m: m["concurrent_steps_per_s"] * m["floor_to_thread_us"] / 1e6, ">=", 10.0),
    ("100x10 concurrent steps/s vs DBOS (WAL)",
     "concurrent_steps_per_s / dbos.wal.concurrent_steps_per_s",
     lambda m: m["concurrent_steps_per_s"] / m.get("dbos.wal.concurrent_steps_per_s", NAN), ">=",
     30.0),
    ("replay µs per step, history load included", "replay_us_per_step",
     lambda m: m["replay_us_per_step"], "<=", 10.0),
    ("DBOS replay / memable replay (old: DBOS with its polls, memable without its load)",
     "dbos.replay_with_polls_us_per_step / replay_body_us_per_step",
     lambda m: m.get("dbos.replay_with_polls_us_per_step", NAN) / m["replay_body_us_per_step"],
     ">=", 50.0),
    ("DBOS replay / memable replay (fair: both inside the body, memable's load counted)",
     "dbos.replay_us_per_step / replay_us_per_step",
     lambda m: m.get("dbos.replay_us_per_step", NAN) / m["replay_us_per_step"], ">=", 50.0),
    ("recovered instance running after start, fresh process (ms)", "recovery_start_ms",
     lambda m: m["recovery_start_ms"], "<=", 50.0),
    ("structured list[dict] results (MB/s)", "structured_results_mb_per_s",
     lambda m: m["structured_results_mb_per_s"], ">=", 40.0),
    ("the same without the fast extra (orjson) (MB/s)", "structured_results_stdlib_mb_per_s",
     lambda m: m["structured_results_stdlib_mb_per_s"], ">=", 40.0),
    ("import memable + Engine() - import anyio (ms)", "import_memable_ms - import_anyio_ms",
     lambda m: m["import_memable_ms"] - m["import_anyio_ms"], "<=", 30.0),
]  # fmt: skip


def summarise(runs: list[Figures]) -> dict[str, dict[str, float]]:
    values: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for key, value in run.items():
            values[key].append(value)
    return {
        key: {"median": statistics.median(v), "min": min(v), "max": max(v)}
        for key, v in values.items()
    }


def render(summary: dict[str, dict[str, float]], dbos_note: str | None, machine: str) -> str:
    medians = {key: stats["median"] for key, stats in summary.items()}
    lines = [
        f"# memable benchmark\n\n{machine}\n",
        "| figure | median | min | max |",
        "|---|---|---|---|",
    ]
    for key, stats in sorted(summary.items()):
        lines.append(f"| {key} | {stats['median']:.2f} | {stats['min']:.2f} | {stats['max']:.2f} |")
    if dbos_note:
        lines.append(f"\nDBOS: n/a — {dbos_note}")
    lines += ["", "| target | formula | measured | target | met |", "|---|---|---|---|---|"]
    for name, formula, value, op, target in TARGETS:
        try:
            measured = value(medians)
        except KeyError:
            measured = None
        if measured is None or measured != measured:  # missing or nan
            lines.append(f"| {name} | {formula} | n/a | {op} {target} | n/a |")
            continue
        met = measured <= target if op == "<=" else measured >= target
        lines.append(
            f"| {name} | {formula} | {measured:.2f} | {op} {target} | {'yes' if met else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--scaling", action="store_true", help="run scaling.py instead")
    parser.add_argument("--recover", nargs=2, metavar=("DB", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.recover:
        print(json.dumps(anyio.run(_recover, Path(args.recover[0]), int(args.recover[1]))))
        return 0
    if args.scaling:
        command = [sys.executable, str(HERE / "scaling.py"), *(["--quick"] if args.quick else [])]
        return subprocess.run(command, check=False).returncode
    repeat = args.repeat or (1 if args.quick else 3)
    runs: list[Figures] = []
    dbos_note: str | None = None
    for rep in range(repeat):
        figures: Figures = {}
        figures.update(floor(100 if args.quick else 300))
        figures.update(memable_figures(args.quick))
        dbos = dbos_figures(args.quick)
        if isinstance(dbos, str):
            dbos_note = dbos
        else:
            figures.update({f"dbos.{key}": value for key, value in dbos.items()})
        runs.append(figures)
        print(f"repetition {rep + 1}/{repeat} done", file=sys.stderr)
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()},"
        f" SQLite {sqlite3.sqlite_version}, memable from {Path(memable.__file__).parent}"
    )
    summary = summarise(runs)
    report = render(summary, dbos_note, machine)
    print(report)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "latest.json").write_text(
        json.dumps(
            {"machine": machine, "repeat": repeat, "figures": summary, "dbos": dbos_note}, indent=2
        )
        + "\n"
    )
    (results / "latest.md").write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
