"""A process the crash tests kill with SIGKILL at random moments.

``python worker.py DB LOG INSTANCES BACKEND`` runs (or recovers) INSTANCES instances of a
workflow with sequential and concurrent steps, a suspend point it signals itself, a durable
timer and a fan-out, until all are completed; then prints ``DONE``. Every step body appends
``instance key nonce`` to LOG (fsynced) before returning ``key:nonce``, so the test can tell
which execution of a body produced the recorded result.
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

GO = SuspendPoint("go:v1", int)
STEP_KEYS = ("a", "p0", "p1", "p2", "z")
CHILDREN = 2


def make_body(log_path: str) -> memable.Workflow[int, list[str]]:
    """The workflow, writing its side-effect log to *log_path*."""

    async def body(instance_id: str, key: str) -> str:
        nonce = uuid.uuid4().hex[:12]
        line = f"{instance_id} {key} {nonce}\n".encode()
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        await anyio.sleep(random.uniform(0.005, 0.06))
        return f"{key}:{nonce}"

    async def child(ctx: Context, n: int) -> str:
        return await ctx.step("c", body, ctx.instance_id, "c")

    async def crashy(ctx: Context, n: int) -> list[str]:
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
        await ctx.sleep("nap", timedelta(milliseconds=random.choice([1, 20])))
        out += await ctx.fan_out("kids", child, list(range(CHILDREN)), limit=2)
        out.append(await ctx.step("z", body, ctx.instance_id, "z"))
        return out

    return memable.Workflow("crashy", crashy)


async def run(db: str, log: str, instances: int) -> None:
    wf = make_body(log)
    async with Engine(db, workflows=[wf]) as engine:
        for i in range(instances):
            await engine.invoke(wf, i, instance_id=f"i{i}")
        while True:
            infos = await engine.instances(wf, limit=None)
            if all(info.status == "completed" for info in infos):
                break
            bad = [info for info in infos if info.status in ("failed", "cancelled")]
            if bad:
                raise SystemExit(f"instances ended badly: {bad}")
            for info in infos:
                if info.status != "completed" and random.random() < 0.5:
                    try:
                        await engine.signal(wf, info.instance_id, GO, 7)
                    except (memable.SignalSuperseded, memable.SignalRejected):
                        pass
            await anyio.sleep(0.002)
    print("DONE", flush=True)


if __name__ == "__main__":
    db_path, log_path, count, backend = sys.argv[1:5]
    anyio.run(run, db_path, log_path, int(count), backend=backend)
