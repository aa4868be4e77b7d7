"""memable beside LangGraph's SQLite checkpointer, the same workflows side by side.

``python benchmarks/langgraph_side.py`` (``--quick`` for small counts and one repetition) needs
``langgraph`` and ``langgraph-checkpoint-sqlite``, which are not dependencies of memable:
``python -m pip install langgraph langgraph-checkpoint-sqlite``. Without them it prints
why and exits 0.

LangGraph runs its functional API — an ``@entrypoint`` whose side effects are ``@task``
calls, the nearest thing to memable's steps — on ``AsyncSqliteSaver`` (aiosqlite; WAL,
``synchronous=FULL``, a commit per write), with ``durability="sync"`` (a checkpoint is
written before the next step starts; LangGraph's default, ``"async"``, writes it while the
next step runs). memable runs the same workflows on its default SQLite storage (WAL,
``synchronous=FULL``). The repetitions are interleaved (memable, LangGraph, memable, ...)
so both see the same machine; the medians (min-max) are printed and written to
``results/langgraph-latest.json``.

- ``sequential_us_per_step``: workflows of 10 trivial steps, one after the other.
- ``concurrent_steps_per_s``: 100 workflows of 10 steps started at once.
- ``resume_{N}_us_per_step``: a workflow of N steps (100, 1,000) whose last step failed
  once is resumed (memable: ``engine.resume``; LangGraph: ``ainvoke(None)`` on its
  thread); time from the resume call to the last step's body, per recorded step replayed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

import memable
from memable import Context, Engine

HERE = Path(__file__).parent
Figures = dict[str, float]


def missing() -> str | None:
    for module in ("langgraph", "langgraph.checkpoint.sqlite"):
        try:
            found = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            found = None
        if found is None:
            return (
                f"{module} is not installed: python -m pip install langgraph "
                "langgraph-checkpoint-sqlite (not a dependency of memable)"
            )
    return None


def resume_sizes(counts: dict[str, int]) -> list[int]:
    return [n for n in (100, 1000) if n <= counts["resume"]]


# -- memable --------------------------------------------------------------------------------------


async def memable_figures(directory: Path, counts: dict[str, int]) -> Figures:
    async def one(i: int) -> int:
        return i

    @memable.workflow("ten-steps")
    async def ten_steps(ctx: Context, n: int) -> int:
        total = 0
        for i in range(n):
            total += await ctx.step(f"s{i}", one, i)
        return total

    marks: dict[str, float] = {}
    failing = [True]

    async def final() -> int:
        marks.setdefault("final", time.perf_counter())
        if failing and failing.pop():
            raise RuntimeError("the last step fails once")
        return 1

    @memable.workflow("long")
    async def long(ctx: Context, n: int) -> int:
        total = 0
        for i in range(n):
            total += await ctx.step(f"s{i}", one, i)
        return total + await ctx.step("final", final)

    figures: Figures = {}
    async with Engine(str(directory / "seq.db"), workflows=[ten_steps]) as engine:
        await engine.run(ten_steps, 10)  # warm up
        started = time.perf_counter()
        for _ in range(counts["sequential"]):
            await engine.run(ten_steps, 10)
        elapsed = time.perf_counter() - started
        figures["sequential_us_per_step"] = elapsed / (counts["sequential"] * 10) * 1e6
    async with Engine(str(directory / "conc.db"), workflows=[ten_steps]) as engine:
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(counts["concurrent"]):
                tg.start_soon(engine.run, ten_steps, 10)
        elapsed = time.perf_counter() - started
        figures["concurrent_steps_per_s"] = counts["concurrent"] * 10 / elapsed
    for n in resume_sizes(counts):
        failing[:] = [True]
        async with Engine(str(directory / f"resume-{n}.db"), workflows=[long]) as engine:
            invocation = await engine.invoke(long, n, instance_id="long")
            assert isinstance(await invocation.wait(), memable.Failed)
            marks.clear()
            started = time.perf_counter()
            resumed = await engine.resume(long, "long")
            assert await resumed.result() == n * (n - 1) // 2 + 1
            figures[f"resume_{n}_us_per_step"] = (marks["final"] - started) / n * 1e6
    return figures


# -- LangGraph ------------------------------------------------------------------------------------


async def langgraph_figures(directory: Path, counts: dict[str, int]) -> Figures:
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
    from langgraph.func import entrypoint, task

    @task
    async def one(i: int) -> int:
        return i

    marks: dict[str, float] = {}
    failing = [True]

    @task
    async def final() -> int:
        marks.setdefault("final", time.perf_counter())
        if failing and failing.pop():
            raise RuntimeError("the last step fails once")
        return 1

    def config(thread: str) -> Any:
        return {"configurable": {"thread_id": thread}}

    figures: Figures = {}
    async with AsyncSqliteSaver.from_conn_string(str(directory / "lg-seq.db")) as saver:

        @entrypoint(checkpointer=saver)
        async def ten_steps(n: int) -> int:
            total = 0
            for i in range(n):
                total += await one(i)
            return total

        await ten_steps.ainvoke(10, config("warm-up"), durability="sync")
        started = time.perf_counter()
        for k in range(counts["sequential"]):
            await ten_steps.ainvoke(10, config(f"seq-{k}"), durability="sync")
        elapsed = time.perf_counter() - started
        figures["sequential_us_per_step"] = elapsed / (counts["sequential"] * 10) * 1e6
    async with AsyncSqliteSaver.from_conn_string(str(directory / "lg-conc.db")) as saver:

        @entrypoint(checkpointer=saver)
        async def ten_steps_c(n: int) -> int:
            total = 0
            for i in range(n):
                total += await one(i)
            return total

        await ten_steps_c.ainvoke(10, config("warm-up"), durability="sync")  # creates tables
        started = time.perf_counter()
        await asyncio.gather(
            *(
                ten_steps_c.ainvoke(10, config(f"conc-{k}"), durability="sync")
                for k in range(counts["concurrent"])
            )
        )
        elapsed = time.perf_counter() - started
        figures["concurrent_steps_per_s"] = counts["concurrent"] * 10 / elapsed
    for n in resume_sizes(counts):
        failing[:] = [True]
        path = str(directory / f"lg-resume-{n}.db")
        async with AsyncSqliteSaver.from_conn_string(path) as saver:

            @entrypoint(checkpointer=saver)
            async def long(k: int) -> int:
                total = 0
                for i in range(k):
                    total += await one(i)
                return total + await final()

            try:
                await long.ainvoke(n, config("long"), durability="sync")
            except RuntimeError:
                pass
            else:
                raise AssertionError("the last step should have failed")
            marks.clear()
            started = time.perf_counter()
            result = await long.ainvoke(None, config("long"), durability="sync")
            assert result == n * (n - 1) // 2 + 1
            figures[f"resume_{n}_us_per_step"] = (marks["final"] - started) / n * 1e6
    return figures


# -- the run --------------------------------------------------------------------------------------


async def measure(side: Callable[[Path, dict[str, int]], Awaitable[Figures]],
                  counts: dict[str, int]) -> Figures:  # fmt: skip
    with tempfile.TemporaryDirectory() as directory:
        return await side(Path(directory), counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition")
    parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args()
    reason = missing()
    if reason is not None:
        print(f"LangGraph side skipped: {reason}")
        return 0
    logging.getLogger("memable").setLevel(logging.CRITICAL)  # the failure is on purpose
    from importlib.metadata import version

    counts = {"sequential": 5, "concurrent": 20, "resume": 100} if args.quick else {
        "sequential": 20, "concurrent": 100, "resume": 1000}  # fmt: skip
    repeat = args.repeat or (1 if args.quick else 3)
    runs: dict[str, list[Figures]] = {"memable": [], "langgraph": []}
    for _ in range(repeat):
        runs["memable"].append(asyncio.run(measure(memable_figures, counts)))
        runs["langgraph"].append(asyncio.run(measure(langgraph_figures, counts)))
    summary: dict[str, dict[str, dict[str, float]]] = {
        side: {
            key: {
                "median": statistics.median(run[key] for run in side_runs),
                "min": min(run[key] for run in side_runs),
                "max": max(run[key] for run in side_runs),
            }
            for key in side_runs[0]
        }
        for side, side_runs in runs.items()
    }
    machine = (
        f"{platform.machine()}, Python {platform.python_version()}, langgraph "
        f"{version('langgraph')}, langgraph-checkpoint-sqlite "
        f"{version('langgraph-checkpoint-sqlite')}, {repeat} interleaved repetitions, "
        f"counts {counts}"
    )
    print(machine)
    print("| figure | memable | LangGraph (durability='sync') | ratio |")
    print("|---|---|---|---|")
    for key in summary["memable"]:
        ours, theirs = summary["memable"][key], summary["langgraph"][key]
        ratio = (
            theirs["median"] / ours["median"]
            if key.endswith("_us_per_step")
            else ours["median"] / theirs["median"]
        )

        def cell(f: dict[str, float]) -> str:
            return f"{f['median']:,.1f} ({f['min']:,.1f}-{f['max']:,.1f})"

        print(f"| {key} | {cell(ours)} | {cell(theirs)} | memable {ratio:.1f}x |")
    if not args.quick:
        out = HERE / "results" / "langgraph-latest.json"
        out.write_text(json.dumps({"machine": machine, **summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
