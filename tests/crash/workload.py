"""The workflow the crash workers run (``worker.py`` on SQLite, ``pg_worker.py`` on
Postgres): sequential and concurrent steps, a suspend point the workers signal, a durable
timer and a fan-out.

Every step body appends ``instance key nonce pid`` to a log (fsynced) before returning
``key:nonce``, so a test can tell which execution of a body produced the recorded result,
and in which process.
"""

from __future__ import annotations

import os
import random
import uuid
from datetime import timedelta

import anyio

import memable
from memable import Context, SuspendPoint

__all__ = ["CHILDREN", "GO", "STEP_KEYS", "make_workflow"]

GO = SuspendPoint("go:v1", int)
#: The keys of the top-level instance's step bodies; each child runs one body, ``c``.
STEP_KEYS = ("a", "p0", "p1", "p2", "z")
CHILDREN = 2


def make_workflow(
    name: str, log_path: str, *, pause: tuple[float, float], naps_ms: tuple[int, ...]
) -> memable.Workflow[int, list[str]]:
    """The workflow *name*, writing its side-effect log to *log_path*; a body takes a
    random time within *pause* (seconds), the timer one of *naps_ms*."""

    async def body(instance_id: str, key: str) -> str:
        nonce = uuid.uuid4().hex[:12]
        line = f"{instance_id} {key} {nonce} {os.getpid()}\n".encode()
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        await anyio.sleep(random.uniform(*pause))
        return f"{key}:{nonce}"

    async def child(ctx: Context, n: int) -> str:
        return await ctx.step("c", body, ctx.instance_id, "c")

    async def workflow(ctx: Context, n: int) -> list[str]:
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
        await ctx.sleep("nap", timedelta(milliseconds=random.choice(naps_ms)))
        out += await ctx.fan_out("kids", child, list(range(CHILDREN)), limit=2)
        out.append(await ctx.step("z", body, ctx.instance_id, "z"))
        return out

    return memable.Workflow(name, workflow)
