"""DBOS Transact doing the benchmark's workflows on SQLite (or Postgres).

Run by ``benchmarks/run.py`` in a subprocess (DBOS is a process-wide singleton); prints one
JSON object of figures. ``--postgres URL`` (run by ``benchmarks/postgres.py``): the
sequential and concurrent figures with DBOS's system database on that server.
``python benchmarks/_dbos_side.py --quick`` for a small run;
``--wal`` puts DBOS's system database in WAL mode first (memable's mode; DBOS's default
is SQLite's rollback journal), so the sequential ratio is not a journal-mode artefact.

Replay is timed inside the workflow body (from the re-run body's start to its last step's
start), so DBOS's polls for cancellation and results (1 s) are not counted as work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path


async def measure(quick: bool, wal: bool) -> dict[str, float]:
    from dbos import DBOS, DBOSConfig, SetWorkflowID

    tmp = tempfile.mkdtemp()
    database = Path(tmp) / "dbos.sqlite"
    if wal:  # the journal mode is kept in the file: DBOS opens it in WAL mode
        sqlite3.connect(database).execute("PRAGMA journal_mode = WAL").fetchone()
    config: DBOSConfig = {
        "name": "bench",
        "system_database_url": f"sqlite:///{database}",
        "log_level": "ERROR",
    }
    DBOS(config=config)

    @DBOS.step()
    async def step(i: int) -> int:
        return i

    @DBOS.workflow()
    async def ten_steps(n: int) -> int:
        total = 0
        for i in range(n):
            total += await step(i)
        return total

    gate = asyncio.Event()
    marks: dict[str, float] = {}

    @DBOS.step()
    async def final_step() -> int:
        marks["final"] = time.perf_counter()
        await gate.wait()
        return 1

    @DBOS.workflow()
    async def long(n: int) -> int:
        marks["body"] = time.perf_counter()
        total = 0
        for i in range(n):
            total += await step(i)
        return total + await final_step()

    rows = [{"id": i, "name": f"item {i}", "price": i * 1.5, "tags": ["a", "b"], "ok": True}
            for i in range(2000)]  # fmt: skip

    @DBOS.step()
    async def big(i: int) -> list[dict[str, object]]:
        return rows

    @DBOS.workflow()
    async def structured() -> int:
        return sum([len(await big(i)) for i in range(20)])

    DBOS.launch()
    try:
        workflows = 5 if quick else 30
        await ten_steps(10)  # warm up
        started = time.perf_counter()
        for _ in range(workflows):
            await ten_steps(10)
        sequential = (time.perf_counter() - started) / (workflows * 10) * 1e6

        count = 20 if quick else 100
        started = time.perf_counter()
        handles = [await DBOS.start_workflow_async(ten_steps, 10) for _ in range(count)]
        for handle in handles:
            await handle.get_result()
        concurrent = count * 10 / (time.perf_counter() - started)

        with SetWorkflowID("completed-id"):
            await ten_steps(10)
        calls = 10 if quick else 50
        started = time.perf_counter()
        for _ in range(calls):
            with SetWorkflowID("completed-id"):
                await ten_steps(10)
        reinvoke = (time.perf_counter() - started) / calls * 1e6

        # Replay: a workflow with `steps` recorded steps is cancelled while it waits in its
        # last step, then resumed; DBOS runs it again from the top, serving recorded steps.
        steps = 200 if quick else 1000
        with SetWorkflowID("long-id"):
            first = await DBOS.start_workflow_async(long, steps)
        while len(await DBOS.list_workflow_steps_async("long-id")) < steps:
            await asyncio.sleep(0.05)
        await DBOS.cancel_workflow_async("long-id")
        gate.set()
        with contextlib.suppress(Exception):
            await first.get_result()  # ends as cancelled
        started = time.perf_counter()
        marks.clear()
        resumed = await DBOS.resume_workflow_async("long-id")
        assert await resumed.get_result() == steps * (steps - 1) // 2 + 1
        replay_with_polls = (time.perf_counter() - started) / steps * 1e6
        replay = (marks["final"] - marks["body"]) / steps * 1e6

        started = time.perf_counter()
        await structured()
        structured_mb = len(json.dumps(rows)) * 20 / (time.perf_counter() - started) / 1e6
    finally:
        DBOS.destroy()
    return {
        "sequential_us_per_step": sequential,
        "concurrent_steps_per_s": concurrent,
        "reinvoke_completed_us": reinvoke,
        "replay_us_per_step": replay,
        "replay_with_polls_us_per_step": replay_with_polls,
        "structured_mb_per_s": structured_mb,
    }


async def measure_postgres(url: str, quick: bool) -> dict[str, float]:
    """DBOS with its system database on Postgres (``benchmarks/postgres.py``): the same
    sequential and 100 x 10 concurrent workflows as memable's, on the same server."""
    from dbos import DBOS, DBOSConfig

    config: DBOSConfig = {"name": "bench", "system_database_url": url, "log_level": "ERROR"}
    DBOS(config=config)

    @DBOS.step()
    async def step(i: int) -> int:
        return i

    @DBOS.workflow()
    async def ten_steps(n: int) -> int:
        total = 0
        for i in range(n):
            total += await step(i)
        return total

    DBOS.launch()
    try:
        await ten_steps(10)  # warm up
        workflows = 10 if quick else 30
        started = time.perf_counter()
        for _ in range(workflows):
            await ten_steps(10)
        sequential = (time.perf_counter() - started) / (workflows * 10) * 1e6
        # Started and awaited in this process: get_result awaits the workflow's task
        # (no polling of the database is counted).
        started = time.perf_counter()
        handles = [await DBOS.start_workflow_async(ten_steps, 10) for _ in range(100)]
        for handle in handles:
            await handle.get_result()
        concurrent = 100 * 10 / (time.perf_counter() - started)
    finally:
        DBOS.destroy()
    return {"sequential_us_per_step": sequential, "concurrent_steps_per_s": concurrent}


if __name__ == "__main__":
    if "--postgres" in sys.argv:
        url = sys.argv[sys.argv.index("--postgres") + 1]
        print(json.dumps(asyncio.run(measure_postgres(url, "--quick" in sys.argv))))
    else:
        print(json.dumps(asyncio.run(measure("--quick" in sys.argv, "--wal" in sys.argv))))
