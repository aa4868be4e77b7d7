"""DBOS Transact doing the benchmark's workflows on its default SQLite set-up.

Run by ``benchmarks/run.py`` in a subprocess (DBOS is a process-wide singleton); prints one
JSON object of figures. ``python benchmarks/_dbos_side.py --quick`` for a small run.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path


async def measure(quick: bool) -> dict[str, float]:
    from dbos import DBOS, DBOSConfig, SetWorkflowID

    tmp = tempfile.mkdtemp()
    config: DBOSConfig = {
        "name": "bench",
        "system_database_url": f"sqlite:///{Path(tmp) / 'dbos.sqlite'}",
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
    finally:
        DBOS.destroy()
    return {
        "sequential_us_per_step": sequential,
        "concurrent_steps_per_s": concurrent,
        "reinvoke_completed_us": reinvoke,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(measure("--quick" in sys.argv))))
