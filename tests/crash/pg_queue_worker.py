"""An engine process on a shared Postgres database, for the queue and schedule tests.

``python pg_queue_worker.py DSN SCHEMA LOG INDEX WORKERS MODE ARGS BACKEND`` prints
``READY``, waits for the file ``LOG.go``, then:

- ``queue JOBS CONCURRENCY RATE BODY LEASE``: runs the enqueuers ``k`` of 8 with ``k % WORKERS ==
  INDEX``; enqueuer ``k`` enqueues its share of ``job-0`` … ``job-{JOBS-1}`` (fixed ids:
  a restarted worker enqueues nothing twice) into queue ``shared`` (``RATE`` is
  ``count/seconds`` or ``-``). It serves until every job has completed, then prints
  ``DONE``. Each body sleeps up to BODY seconds and appends ``start ID PID TIME`` and
  ``end ID PID TIME`` to LOG. The engine's lease is LEASE seconds.
- ``schedule SKEW``: runs a schedule ticking every second (catch-up on, overlaps
  allowed) on a clock ``SKEW`` seconds off the real one, until SIGTERM; each tick's body
  appends ``tick ID PID``.

Every line is one ``write`` to a file opened ``O_APPEND``, fsynced: the file's order is
the order in which the bodies got there, across processes.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from datetime import UTC, datetime, timedelta

import anyio

import memable
from memable import Context, Engine, Queue, Schedule
from memable.storage import PostgresStorage

ENQUEUERS = 8
LEASE = 5.0  # a loaded machine must not have an engine reaped (its bodies would run again)


def note(log_path: str, text: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{text}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


class SkewedClock:
    """The real clock, *skew* seconds off (each engine's own idea of the time)."""

    def __init__(self, skew: float) -> None:
        self.skew = timedelta(seconds=skew)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.skew

    async def sleep_until(self, deadline: datetime) -> None:
        while (delay := (deadline - self.now()).total_seconds()) > 0:
            await anyio.sleep(delay)


def storage(dsn: str, schema: str, lease: float = LEASE) -> PostgresStorage:
    return PostgresStorage(dsn, schema=schema, lease=lease, pool_size=4)


async def go(log: str) -> None:
    print("READY", flush=True)
    while not await anyio.Path(log + ".go").exists():  # every worker starts at once
        await anyio.sleep(0.01)


async def queue(dsn: str, schema: str, log: str, index: int, workers: int, args: list[str]) -> None:
    jobs, concurrency = int(args[0]), int(args[1])
    rate = None if args[2] == "-" else (int(args[2].split("/")[0]), float(args[2].split("/")[1]))
    body, lease = float(args[3]), float(args[4])
    shared = Queue("shared", concurrency=concurrency, rate_limit=rate)
    pid = os.getpid()

    @memable.workflow("job")
    async def job(ctx: Context, n: int) -> int:
        note(log, f"start {ctx.instance_id} {pid} {time.time():.6f}")
        await anyio.sleep(random.uniform(body / 6, body))
        note(log, f"end {ctx.instance_id} {pid} {time.time():.6f}")
        return n

    async with Engine(storage(dsn, schema, lease), workflows=[job], queues=[shared]) as engine:
        await go(log)

        async def enqueuer(k: int) -> None:
            for n in range(k, jobs, ENQUEUERS):
                await engine.enqueue(shared, job, n, instance_id=f"job-{n}")

        async with anyio.create_task_group() as tg:
            for k in range(index, ENQUEUERS, workers):
                tg.start_soon(enqueuer, k)
        while True:  # serve until every job (whoever enqueued it) has completed
            infos = await engine.instances(job, status="completed", limit=None)
            if len(infos) == jobs:
                break
            await anyio.sleep(0.05)
    print("DONE", flush=True)


async def schedule(dsn: str, schema: str, log: str, skew: float) -> None:
    pid = os.getpid()

    @memable.workflow("tick")
    async def tick(ctx: Context) -> None:
        note(log, f"tick {ctx.instance_id} {pid}")

    every = Schedule(tick, every=1.0, catch_up=True, overlap="allow")
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async with Engine(storage(dsn, schema), schedules=[every], clock=SkewedClock(skew)):
            await go(log)
            async for _ in signals:
                break
    print("DONE", flush=True)


def main() -> None:
    dsn, schema, log, index, workers, mode, *args, backend = sys.argv[1:]
    if mode == "queue":
        anyio.run(queue, dsn, schema, log, int(index), int(workers), args, backend=backend)
    else:
        anyio.run(schedule, dsn, schema, log, float(args[0]), backend=backend)


if __name__ == "__main__":
    main()
