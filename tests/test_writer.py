"""The engine's writer thread: commits run on one thread of the engine's own;
a commit handed over is always waited for; the thread ends with the engine."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import anyio
import pytest

import memable
from memable import Context, Engine
from memable._commit import WriterThread

pytestmark = pytest.mark.anyio


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "memable writer"]


async def test_the_writer_thread_ends_with_the_engine(tmp_path: Path) -> None:
    async def double(n: int) -> int:
        return 2 * n

    @memable.workflow("doubler")
    async def doubler(ctx: Context, n: int) -> int:
        return await ctx.step("double:v1", double, n)

    before = set(_writer_threads())
    async with Engine(tmp_path / "m.db", workflows=[doubler]) as engine:
        assert await engine.run(doubler, 21) == 42
        assert len(set(_writer_threads()) - before) == 1
    for thread in set(_writer_threads()) - before:
        thread.join(timeout=10)
        assert not thread.is_alive()


async def test_work_runs_on_one_thread_and_errors_come_back_as_raised() -> None:
    writer = WriterThread(anyio.CapacityLimiter(1))
    seen: list[int] = []
    threads: set[int] = set()

    def record(n: int) -> int:
        threads.add(threading.get_ident())
        if n == 3:
            raise KeyError(n)
        seen.append(n)
        return n * 10

    try:
        async with anyio.create_task_group() as tg:
            for n in (0, 1, 2):
                tg.start_soon(writer.run, record, n)
        assert sorted(seen) == [0, 1, 2]
        assert await writer.run(record, 4) == 40
        with pytest.raises(KeyError) as info:
            await writer.run(record, 3)
        assert info.value.args == (3,)
        assert len(threads) == 1
        assert threading.get_ident() not in threads
    finally:
        writer.stop()


async def test_a_cancelled_caller_still_waits_for_its_commit() -> None:
    writer = WriterThread(anyio.CapacityLimiter(1))
    release = threading.Event()
    finished: list[float] = []
    returned: list[float] = []
    scope = anyio.CancelScope()

    def slow(n: int) -> int:
        release.wait(10)
        finished.append(time.monotonic())
        return n

    async def caller() -> None:
        with scope:
            await writer.run(slow, 1)
        returned.append(time.monotonic())

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            await anyio.sleep(0.05)
            scope.cancel()
            await anyio.sleep(0.05)
            assert finished == []  # the commit is still running...
            assert returned == []  # ...and its cancelled caller still waits for it
            release.set()
        assert finished[0] <= returned[0]
    finally:
        writer.stop()


async def test_a_caller_cancelled_before_the_hand_over_commits_nothing() -> None:
    """Cancelled before it hands its work over (the limiter free, or taken): nothing runs,
    and the limiter is free again for the next caller."""
    limiter = anyio.CapacityLimiter(1)
    writer = WriterThread(limiter)
    ran: list[int] = []
    try:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await writer.run(ran.append, 1)
        assert scope.cancelled_caught
        taken, give_back = anyio.Event(), anyio.Event()

        async def hold() -> None:
            async with limiter:
                taken.set()
                await give_back.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold)
            await taken.wait()  # taken: the next caller waits for it, and is cancelled
            with anyio.move_on_after(0.05) as waited:
                await writer.run(ran.append, 2)
            assert waited.cancelled_caught
            give_back.set()
        await writer.run(ran.append, 3)
        assert ran == [3]
        assert limiter.borrowed_tokens == 0
    finally:
        writer.stop()
