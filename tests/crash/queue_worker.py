"""A process the queue crash test kills with SIGKILL: it drains a queue of concurrency 3.

``python queue_worker.py DB LOG JOBS BACKEND`` enqueues JOBS instances (idempotent ids, so a
restarted worker enqueues nothing twice) into a queue of concurrency 3 and waits for all of
them; then prints ``DONE``. Each body appends ``start ID PID`` and ``end ID PID`` to LOG
(fsynced), so the test can tell how many bodies were in flight at once, across processes.
"""

from __future__ import annotations

import os
import random
import sys

import anyio

import memable
from memable import Context, Engine, Queue

QUEUE = Queue("crashy", concurrency=3)


def note(log_path: str, text: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{text} {os.getpid()}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


async def run(db: str, log: str, jobs: int) -> None:
    @memable.workflow("job")
    async def job(ctx: Context, n: int) -> int:
        note(log, f"start {ctx.instance_id}")
        await anyio.sleep(random.uniform(0.01, 0.05))
        note(log, f"end {ctx.instance_id}")
        return n

    async with Engine(db, workflows=[job], queues=[QUEUE]) as engine:
        invocations = [
            await engine.enqueue(QUEUE, job, n, instance_id=f"job-{n}") for n in range(jobs)
        ]
        for invocation in invocations:
            await invocation.result()
    print("DONE", flush=True)


if __name__ == "__main__":
    db_path, log_path, count, backend = sys.argv[1:5]
    anyio.run(run, db_path, log_path, int(count), backend=backend)
