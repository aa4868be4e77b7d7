"""DBOS Transact draining a concurrency-10 queue on Postgres (for ``benchmarks/queues.py``).

``python benchmarks/_dbos_queues_side.py URL COUNT POLL`` (a subprocess: DBOS is a
process-wide singleton) enqueues *COUNT* trivial workflows (one step each) into
``DBOS.register_queue("ten", global_concurrency=10, polling_interval_sec=POLL)``, its
system database a new one on the server of *URL*. Prints one JSON object: workflows
completed per second from the first enqueue to the last result (DBOS dequeues as soon as
work is there), and the most bodies in flight at once (its limit held?).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid


async def measure(url: str, count: int, poll: float) -> dict[str, float]:
    from dbos import DBOS, DBOSConfig

    base, _, query = url.partition("?")
    database = f"dbos_queue_{uuid.uuid4().hex[:8]}"
    config: DBOSConfig = {
        "name": "queuebench",
        "system_database_url": f"{base.rsplit('/', 1)[0]}/{database}"
        + (f"?{query}" if query else ""),
        "log_level": "ERROR",
    }
    DBOS(config=config)
    running = 0
    peak = 0

    @DBOS.step()
    async def double(n: int) -> int:
        return 2 * n

    @DBOS.workflow()
    async def trivial(n: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            return await double(n)
        finally:
            running -= 1

    DBOS.launch()
    try:
        queue = await DBOS.register_queue_async(
            "ten", global_concurrency=10, polling_interval_sec=poll
        )
        started = time.perf_counter()
        handles = [await queue.enqueue_async(trivial, n) for n in range(count)]
        enqueued = time.perf_counter()
        for handle in handles:
            await handle.get_result()
        done = time.perf_counter()
    finally:
        DBOS.destroy()
    return {
        "completed_per_s": count / (done - started),
        "enqueued_per_s": count / (enqueued - started),
        "peak_in_flight": peak,
    }


if __name__ == "__main__":
    url, count, poll = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    print(json.dumps(asyncio.run(measure(url, count, poll))))
