"""An engine process on a shared Postgres database, for the chaos tests.

``python pg_worker.py DSN SCHEMA LOG INSTANCES LEASE BACKEND`` prints ``READY``, waits for
the file ``LOG.go``, invokes instances ``i0`` … (idempotently: every worker invokes the same
ids, at once, in its own random order), then serves: it runs what it
holds or claims, signals the instances it sees suspended (through any engine: itself),
and exits 0 printing ``DONE`` once every instance has completed. Every step body appends
``instance key nonce pid`` to LOG (fsynced) before returning ``key:nonce``, so the test can
tell which execution of a body produced the recorded result, and in which process.
"""

from __future__ import annotations

import os
import random
import sys
import uuid
from datetime import timedelta

import anyio

import memable
from memable import Context, Engine, SuspendPoint
from memable.storage import PostgresStorage

GO = SuspendPoint("go:v1", int)
STEP_KEYS = ("a", "p0", "p1", "p2", "z")
CHILDREN = 2


def make_workflow(log_path: str) -> memable.Workflow[int, list[str]]:
    """The workflow, writing its side-effect log to *log_path*."""

    async def body(instance_id: str, key: str) -> str:
        nonce = uuid.uuid4().hex[:12]
        line = f"{instance_id} {key} {nonce} {os.getpid()}\n".encode()
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        await anyio.sleep(random.uniform(0.01, 0.08))
        return f"{key}:{nonce}"

    async def child(ctx: Context, n: int) -> str:
        result: str = await ctx.step("c", body, ctx.instance_id, "c")
        return result

    async def chaos(ctx: Context, n: int) -> list[str]:
        out = [await ctx.step("a", body, ctx.instance_id, "a")]
        parallel: dict[str, str] = {}

        async def part(key: str) -> None:
            parallel[key] = await ctx.step(key, body, ctx.instance_id, key)

        async with anyio.create_task_group() as tg:
            for key in ("p0", "p1", "p2"):
                tg.start_soon(part, key)
        out += [parallel[key] for key in ("p0", "p1", "p2")]
        if await ctx.suspend(GO) != 7:
            raise AssertionError("wrong payload")
        await ctx.sleep("nap", timedelta(milliseconds=random.choice([1, 30])))
        out += await ctx.fan_out("kids", child, list(range(CHILDREN)), limit=2)
        out.append(await ctx.step("z", body, ctx.instance_id, "z"))
        return out

    return memable.Workflow("chaos", chaos)


async def run(dsn: str, schema: str, log: str, instances: int, lease: float) -> None:
    wf = make_workflow(log)
    storage = PostgresStorage(dsn, schema=schema, lease=lease, pool_size=4)
    async with Engine(storage, workflows=[wf], shutdown_timeout=1) as engine:
        print("READY", flush=True)
        while not await anyio.Path(log + ".go").exists():  # every worker starts at once
            await anyio.sleep(0.01)
        ids = [f"i{i}" for i in range(instances)]
        random.shuffle(ids)
        for instance_id in ids:
            while True:
                try:
                    await engine.invoke(wf, int(instance_id[1:]), instance_id=instance_id)
                    break
                except memable.StorageError:  # the server restarts: the caller retries
                    await anyio.sleep(0.2)
        while True:
            try:
                infos = await engine.instances(wf, limit=None)
            except memable.StorageError:
                await anyio.sleep(0.2)
                continue
            if len(infos) == instances and all(i.status == "completed" for i in infos):
                break
            bad = [info for info in infos if info.status in ("failed", "cancelled")]
            if bad:
                raise SystemExit(f"instances ended badly: {bad}")
            for info in infos:
                if info.status == "suspended" and random.random() < 0.3:
                    try:
                        await engine.signal(wf, info.instance_id, GO, 7)
                    except (memable.SignalSuperseded, memable.SignalRejected):
                        pass
                    except memable.StorageError:
                        break
            await anyio.sleep(0.05)
    print("DONE", flush=True)


if __name__ == "__main__":
    dsn, schema, log_path, count, lease, backend = sys.argv[1:7]
    anyio.run(run, dsn, schema, log_path, int(count), float(lease), backend=backend)
