"""Storage faults: an engine meeting a storage error fails cleanly, and a new engine recovers.

``FaultyStorage`` wraps a real storage (a SQLite file here, so the recovering engine reads
exactly what was committed) and raises on a chosen call, before the wrapped call runs
(nothing written) or after it committed (written, but reported as failed).
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path
from typing import Literal

import anyio
import pytest

import memable
from memable import Context, Engine, SuspendPoint
from memable.storage import SQLiteStorage
from memable.testing import FaultyStorage, ManualClock

from .helpers import StorageFactory

GO = SuspendPoint("go:v1", int)


def make_workflow(runs: list[str]) -> memable.Workflow[int, int]:
    async def body(name: str) -> int:
        runs.append(name)
        return len(name)

    async def wf(ctx: Context, n: int) -> int:
        total = await ctx.step("a", body, "a")
        total += await ctx.step("b", body, "bb")
        total += await ctx.suspend(GO)
        return total + n + await ctx.step("c", body, "ccc")

    return memable.Workflow("faulty", wf)


async def drive(engine: Engine, wf: memable.Workflow[int, int]) -> str:
    """Invoke, signal, and report how far it got; never hangs."""
    with anyio.fail_after(20):
        try:
            invocation = await engine.invoke(wf, 100, instance_id="f")
        except memable.StorageError:
            return "invoke failed"
        outcome = await invocation.wait()
        if isinstance(outcome, memable.Suspended):
            try:
                await engine.signal(wf, "f", GO, 4)
            except memable.StorageError:
                return "signal failed"
            outcome = await invocation.wait()
        return type(outcome).__name__


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("fail_on", range(1, 12))
async def test_any_failing_call_is_survivable(
    tmp_path: Path, fail_on: int, when: Literal["before", "after"]
) -> None:
    """Whichever storage call fails, wait() returns, and a new engine finishes the work."""
    runs: list[str] = []
    wf = make_workflow(runs)
    path = tmp_path / "f.db"
    faulty = FaultyStorage(SQLiteStorage(path), fail_on={fail_on}, when=when)
    try:
        async with Engine(faulty, workflows=[wf]) as engine:
            reached = await drive(engine, wf)
    except memable.StorageError:
        reached = "engine failed"  # open, recovery, or close met the fault
    assert reached in {"invoke failed", "signal failed", "Failed", "Completed", "engine failed"}

    async with Engine(path, workflows=[wf]) as engine:
        with anyio.fail_after(20):
            try:
                state = await engine.state(wf, "f")
            except memable.InstanceNotFound:
                assert reached in {"invoke failed", "engine failed"}
                invocation = await engine.invoke(wf, 100, instance_id="f")
            else:
                invocation = (
                    await engine.resume(wf, "f")
                    if state.status == "failed"
                    else engine.handle(wf, "f")
                )
            outcome = await invocation.wait()
            if isinstance(outcome, memable.Suspended):
                try:
                    await engine.signal(wf, "f", GO, 4)
                except memable.SignalSuperseded:
                    await engine.resume(wf, "f")  # the payload was stored before the fault
            assert await engine.handle(wf, "f").result() == 1 + 2 + 4 + 100 + 3
    # A step body may run again only if its result was not committed.
    counts = {name: runs.count(name) for name in ("a", "bb", "ccc")}
    assert all(1 <= count <= 2 for count in counts.values()), counts
    assert faulty.failures, "the fault was injected"


async def test_a_failed_commit_never_marks_the_step_done(tmp_path: Path) -> None:
    """A step whose commit failed is not recorded: the run ends as if the process died
    there and runs again after a backoff (the engine heals), recording the step once."""
    runs: list[str] = []
    path = tmp_path / "f.db"

    async def body() -> int:
        runs.append("body")
        return 1

    @memable.workflow("commit-fails")
    async def wf(ctx: Context) -> int:
        return await ctx.step("only", body)

    faulty = FaultyStorage(SQLiteStorage(path), fail_on={1}, methods={"commit"})
    async with Engine(faulty, workflows=[wf]) as engine:
        with anyio.fail_after(10):
            assert await (await engine.invoke(wf, instance_id="c")).result() == 1
    assert faulty.failures == ["commit"]
    assert runs == ["body", "body"]  # at least once: the first result was never recorded
    check = SQLiteStorage(path)
    check.open()
    try:
        assert [step.key for step in check.load_steps("c")] == ["only"]
    finally:
        check.close()


async def test_storage_errors_of_every_kind_are_storage_errors(tmp_path: Path) -> None:
    """Disk full, busy and I/O errors all reach callers as StorageError with their text."""
    messages = ("database or disk is full", "database is locked", "disk I/O error")
    # A generated id is created in the group commit; a caller's id by create_instance.
    for (n, message), (method, instance_id) in itertools.product(
        enumerate(messages), [("commit", None), ("create_instance", "mine")]
    ):
        faulty = FaultyStorage(
            SQLiteStorage(tmp_path / f"{n}-{method}.db"),
            fail_on={1},
            methods={method},
            error=message,
        )
        wf = make_workflow([])
        async with Engine(faulty, workflows=[wf]) as engine:
            with pytest.raises(memable.StorageError, match=message):
                await engine.invoke(wf, 1, instance_id=instance_id)
            assert list(await engine.instances()) == []
            retried = await engine.invoke(wf, 1, instance_id=instance_id)  # storage is back
            assert isinstance(await retried.wait(), memable.Suspended)
            assert len(await engine.instances()) == 1


def test_faulty_storage_counts_only_chosen_methods() -> None:
    """fail_on counts calls of the chosen methods; unknown method names are refused."""
    faulty = FaultyStorage(memable.testing.MemoryStorage(), fail_on={2}, methods={"get_instance"})
    faulty.open()
    for n in itertools.count(1):
        if n == 2:
            with pytest.raises(memable.StorageError, match="injected into call 2"):
                faulty.get_instance("x")
            break
        assert faulty.get_instance("x") is None
        faulty.list_instances()  # not counted
    with pytest.raises(ValueError, match="not storage methods"):
        FaultyStorage(memable.testing.MemoryStorage(), fail_on={1}, methods={"nope"})


async def test_the_timer_scheduler_survives_storage_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Reading deadlines and firing timers fail once each: the scheduler logs, waits a
    second, tries again, and the sleeping workflow still wakes and finishes."""
    woke: list[str] = []

    async def note() -> str:
        woke.append("woke")
        return "done"

    async def nap(ctx: Context) -> str:
        await ctx.sleep("nap:v1", timedelta(milliseconds=100))
        return await ctx.step("after:v1", note)

    wf = memable.Workflow("nap", nap)
    faulty = FaultyStorage(
        SQLiteStorage(tmp_path / "t.db"), fail_on={2, 4}, methods={"next_deadline", "fire_timers"}
    )
    async with Engine(faulty, workflows=[wf]) as engine:
        invocation = await engine.invoke(wf, instance_id="n")
        with anyio.fail_after(15):
            statuses = [status.status async for status in invocation.status()]
        assert statuses[-1] == "completed"
        assert await invocation.result() == "done"
    assert woke == ["woke"]
    assert len(faulty.failures) == 2
    assert "storage failed while" in caplog.text


def make_napping_workflow(runs: list[str]) -> memable.Workflow[int, int]:
    """Steps, a durable sleep, steps, a suspension, a step: every kind of write."""

    async def body(name: str) -> int:
        runs.append(name)
        return len(name)

    async def wf(ctx: Context, n: int) -> int:
        total = await ctx.step("a", body, "a")
        await ctx.sleep("nap:v1", 0.05)
        total += await ctx.step("b", body, "bb")
        total += await ctx.suspend(GO)
        return total + n + await ctx.step("c", body, "ccc")

    return memable.Workflow("healing", wf)


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize(
    ("method", "fail_on"),
    [
        *itertools.product(["load_history", "commit", "suspend", "next_deadline"], [1, 2]),
        ("fire_timers", 1),
        ("deliver_signal", 1),
    ],
)
async def test_a_transient_error_heals_in_the_same_engine(
    make_storage: StorageFactory,
    method: str,
    when: Literal["before", "after"],
    fail_on: int,
) -> None:
    """One storage call fails once (before it ran, or after it committed); the same engine
    retries with backoff and the instance finishes — never left ``running`` without a
    task, never stuck, and an error while suspending leaves the run able to suspend."""
    runs: list[str] = []
    wf = make_napping_workflow(runs)
    faulty = FaultyStorage(make_storage(), fail_on={fail_on}, methods={method}, when=when)
    # The clock stands still until the instance sleeps: on a real clock, a timer write
    # slower than the nap (a loaded machine) would skip the nap's suspension, and with
    # it the storage call counted to fail.
    clock = ManualClock()
    async with Engine(faulty, workflows=[wf], clock=clock) as engine:
        with anyio.fail_after(20):
            invocation = await engine.invoke(wf, 100, instance_id="h")
            while (await engine.state(wf, "h")).waiting_on != ("nap:v1",):
                await anyio.sleep(0.01)  # to the nap
            await clock.advance(timedelta(seconds=1))
            while (await engine.state(wf, "h")).waiting_on != ("go:v1",):
                await anyio.sleep(0.01)  # through the nap, to the suspension
            failed_once = False
            while True:
                try:
                    await engine.signal(wf, "h", GO, 4)
                    break
                except memable.StorageError:  # the caller is told; it may try again
                    failed_once = True
                except memable.SignalSuperseded:
                    assert failed_once
                    assert when == "after"
                    break
            assert await invocation.result() == 1 + 2 + 4 + 100 + 3
    counts = {name: runs.count(name) for name in ("a", "bb", "ccc")}
    assert all(1 <= count <= 2 for count in counts.values()), counts
    assert faulty.failures, "the fault was injected"
