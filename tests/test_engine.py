"""The engine: invoking, idempotency, failures, recovery, shutdown, reading and registration.

Every async test runs on asyncio and trio, over a SQLite file and over MemoryStorage
(``make_storage``). A new engine on ``make_storage()`` is "the process after a restart";
"a crash" is an engine left with ``shutdown_timeout=0`` while a step is blocked.
Coordination is by ``anyio.Event``; nothing asserts on durations.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import memable
from memable import Context, Engine
from memable.storage import StepRecord, Storage, Write
from memable.testing import ManualClock

from .helpers import StorageFactory, peek

# -- shared workflows (a Workflow registers nothing globally, so module level is fine) ----


async def double(n: int) -> int:
    return 2 * n


@memable.workflow("double")
async def double_wf(ctx: Context, n: int) -> int:
    return await ctx.step("double:v1", double, n)


@memable.workflow("hello")
async def hello_wf(ctx: Context) -> str:
    return "hello"


@memable.workflow("upper")
async def upper_wf(ctx: Context, text: str) -> str:
    return text.upper()


class Blocker:
    """A workflow ``a → b`` whose step b blocks until *release* is set; counts body runs."""

    def __init__(self, name: str = "blocker") -> None:
        self.a_runs = 0
        self.b_runs = 0
        self.b_cancelled = 0
        self.reached = anyio.Event()
        self.release = anyio.Event()
        self.wf = memable.Workflow(name, self._body)

    async def _a(self, n: int) -> int:
        self.a_runs += 1
        return n + 1

    async def _b(self, n: int) -> int:
        self.b_runs += 1
        self.reached.set()
        try:
            await self.release.wait()
        except anyio.get_cancelled_exc_class():
            self.b_cancelled += 1
            raise
        return n * 10

    async def _body(self, ctx: Context, n: int) -> int:
        a = await ctx.step("a:v1", self._a, n)
        return await ctx.step("b:v1", self._b, a)


async def when_closing(engine: Engine, wf: memable.Workflow[int, int], then: anyio.Event) -> None:
    """Set *then* once *engine* has begun leaving its block (its API raises NotStarted)."""
    while True:
        try:
            await engine.state(wf, "probe-nothing")
        except memable.NotStarted:
            then.set()
            return
        except memable.InstanceNotFound:
            pass
        await anyio.sleep(0.001)


# -- 1. invoke, wait, run, generated ids -----------------------------------------------------


async def test_invoke_then_wait_completes_and_run_returns_the_output(
    make_storage: StorageFactory,
) -> None:
    """invoke() gives a handle whose wait() is Completed; run() returns the output; it lasts."""
    async with Engine(make_storage(), workflows=[double_wf, hello_wf]) as engine:
        invocation = await engine.invoke(double_wf, 21, instance_id="d-1")
        assert invocation.instance_id == "d-1"
        assert invocation.workflow.name == "double"
        assert await invocation.wait() == memable.Completed(output=42)
        assert await invocation.result() == 42
        assert await engine.run(double_wf, 5) == 10
        info = await engine.state(double_wf, "d-1")
        assert info.status == "completed"
        assert info.error is None
        assert info.finished_at is not None
        assert info.created_at <= info.finished_at
        # A workflow without input: the input is simply left out.
        greeting = await engine.invoke(hello_wf, instance_id="h-1")
        assert await greeting.result() == "hello"
        assert await engine.run(hello_wf) == "hello"
    async with Engine(make_storage(), workflows=[double_wf, hello_wf]) as engine:
        assert await engine.handle(double_wf, "d-1").result() == 42
        assert await engine.handle(hello_wf, "h-1").wait() == memable.Completed(output="hello")


async def test_input_is_required_exactly_when_the_workflow_takes_one(
    make_storage: StorageFactory,
) -> None:
    """Leaving out a needed input, or passing one to a no-input workflow, is a TypeError."""
    async with Engine(make_storage(), workflows=[double_wf, hello_wf]) as engine:
        with pytest.raises(TypeError, match="takes an input"):
            await engine.invoke(double_wf)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="takes no input"):
            await engine.invoke(hello_wf, "surprise")  # type: ignore[misc]
        assert list(await engine.instances()) == []


async def test_generated_ids_are_unique_time_ordered_valid_keys(
    make_storage: StorageFactory,
) -> None:
    """Generated ids never repeat, sort in creation order (also after a restart) and are keys."""
    async with Engine(make_storage(), workflows=[hello_wf]) as engine:
        ids = [(await engine.invoke(hello_wf)).instance_id for _ in range(20)]
        assert len(set(ids)) == 20
        assert sorted(ids) == ids
        listed = [info.instance_id for info in await engine.instances(hello_wf, limit=None)]
        assert listed == ids[::-1]  # newest first
        for instance_id in ids:
            assert 0 < len(instance_id) <= 255
            # A generated id is a valid caller id: passing it back attaches to the instance.
            again = await engine.invoke(hello_wf, instance_id=instance_id)
            assert await again.result() == "hello"
        assert len(await engine.instances(limit=None)) == 20
    async with Engine(make_storage(), workflows=[hello_wf]) as engine:
        later = (await engine.invoke(hello_wf)).instance_id
    assert later not in ids
    assert later > ids[-1]


# -- 2. idempotent invoke ---------------------------------------------------------------------


async def test_same_id_and_input_attaches_while_running_and_after_a_restart(
    make_storage: StorageFactory,
) -> None:
    """Re-invoking an id with the same input runs nothing again: during, after, across restarts."""
    runs: list[str] = []
    reached, release = anyio.Event(), anyio.Event()

    async def body(ctx: Context, text: str) -> str:
        runs.append(text)
        reached.set()
        await release.wait()
        return text.upper()

    wf = memable.Workflow("idem", body)
    outcomes: list[memable.Outcome[str]] = []
    async with Engine(make_storage(), workflows=[wf]) as engine:
        first = await engine.invoke(wf, "x", instance_id="i-1")
        await reached.wait()
        second = await engine.invoke(wf, "x", instance_id="i-1")  # still in progress
        assert second.instance_id == first.instance_id == "i-1"
        assert (await engine.state(wf, "i-1")).status == "running"

        async def wait_for(invocation: memable.Invocation[str]) -> None:
            outcomes.append(await invocation.wait())

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for, first)
            tg.start_soon(wait_for, second)
            await anyio.lowlevel.checkpoint()
            release.set()
        assert outcomes == [memable.Completed(output="X")] * 2
        third = await engine.invoke(wf, "x", instance_id="i-1")  # after it completed
        assert await third.result() == "X"
    async with Engine(make_storage(), workflows=[wf]) as engine:
        assert await engine.run(wf, "x", instance_id="i-1") == "X"
        assert len(await engine.instances()) == 1
    assert runs == ["x"]


async def test_same_id_with_other_input_or_workflow_is_a_conflict(
    make_storage: StorageFactory,
) -> None:
    """Another input, or another workflow, under an existing id is InstanceConflict."""
    blocker = Blocker()
    async with Engine(make_storage(), workflows=[blocker.wf, double_wf, upper_wf]) as engine:
        running = await engine.invoke(blocker.wf, 1, instance_id="c-1")
        await blocker.reached.wait()
        with pytest.raises(memable.InstanceConflict, match="different input"):
            await engine.invoke(blocker.wf, 2, instance_id="c-1")
        with pytest.raises(memable.InstanceConflict, match="'blocker'"):
            await engine.invoke(double_wf, 1, instance_id="c-1")
        blocker.release.set()
        assert await running.result() == 20  # the conflicts did not disturb it
        await engine.run(upper_wf, "a", instance_id="c-2")
        with pytest.raises(memable.InstanceConflict, match="different input"):
            await engine.invoke(upper_wf, "b", instance_id="c-2")
        with pytest.raises(memable.InstanceConflict, match="belongs to workflow 'upper'"):
            await engine.invoke(blocker.wf, 1, instance_id="c-2")
    async with Engine(make_storage(), workflows=[upper_wf, blocker.wf]) as engine:
        with pytest.raises(memable.InstanceConflict):
            await engine.invoke(upper_wf, "b", instance_id="c-2")
        with pytest.raises(memable.InstanceConflict):
            await engine.invoke(upper_wf, "a", instance_id="c-1")
        assert {i.instance_id: i.workflow for i in await engine.instances()} == {
            "c-1": "blocker",
            "c-2": "upper",
        }
    assert (blocker.a_runs, blocker.b_runs) == (1, 1)


@pytest.mark.parametrize(
    "bad_id", ["", "a/b", "_x", "k" * 300, "k" * 256, "line\nbreak", "\n", "del\x7f", 12]
)
async def test_invalid_instance_ids_raise_and_store_nothing(
    make_storage: StorageFactory, bad_id: object
) -> None:
    """A bad instance id is InvalidKey (a ValueError) at invoke, and nothing is stored."""
    async with Engine(make_storage(), workflows=[upper_wf, hello_wf]) as engine:
        with pytest.raises(memable.InvalidKey) as caught:
            await engine.invoke(upper_wf, "x", instance_id=bad_id)  # type: ignore[call-overload]
        assert isinstance(caught.value, ValueError)
        with pytest.raises(memable.InvalidKey):
            await engine.run(hello_wf, instance_id=bad_id)  # type: ignore[call-overload]
        assert list(await engine.instances()) == []


async def test_any_valid_key_is_an_instance_id(make_storage: StorageFactory) -> None:
    """Ids up to 255 characters, with spaces, colons and non-ASCII letters, work and last."""
    good = ["k" * 255, "order 17:v1", "zählung-ü", "a.b-c_d", "x"]
    async with Engine(make_storage(), workflows=[upper_wf]) as engine:
        for instance_id in good:
            assert await engine.run(upper_wf, "y", instance_id=instance_id) == "Y"
    async with Engine(make_storage(), workflows=[upper_wf]) as engine:
        assert sorted(i.instance_id for i in await engine.instances()) == sorted(good)
        for instance_id in good:
            assert await engine.handle(upper_wf, instance_id).result() == "Y"


# -- 3. at most one task per instance ---------------------------------------------------------


@pytest.mark.parametrize("blocked", [True, False], ids=["while-running", "racing-completion"])
async def test_concurrent_invokes_of_one_new_id_run_the_body_once(
    make_storage: StorageFactory, blocked: bool
) -> None:
    """20 racing invokes of one new id: the body runs exactly once and all see its result."""
    runs: list[int] = []
    returned = 0
    all_returned = anyio.Event()

    async def body(ctx: Context, n: int) -> int:
        runs.append(n)
        if blocked:
            await all_returned.wait()
        return await ctx.step("double:v1", double, n)

    wf = memable.Workflow("racy", body)
    results: list[int] = []
    async with Engine(make_storage(), workflows=[wf]) as engine:

        async def start() -> None:
            nonlocal returned
            invocation = await engine.invoke(wf, 7, instance_id="same")
            returned += 1
            if returned == 20:
                all_returned.set()
            results.append(await invocation.result())

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(start)
        assert [i.instance_id for i in await engine.instances()] == ["same"]
    assert runs == [7]
    assert results == [14] * 20


async def test_racing_invokes_of_one_id_under_two_workflows_run_only_the_winner(
    make_storage: StorageFactory,
) -> None:
    """Two workflows racing for one new id: one owns it and runs once; the other conflicts."""
    ran: list[str] = []

    async def first(ctx: Context, text: str) -> str:
        ran.append("first")
        return "first"

    async def second(ctx: Context, text: str) -> str:
        ran.append("second")
        return "second"

    workflows = [memable.Workflow("first", first), memable.Workflow("second", second)]
    results: list[tuple[str, str]] = []
    async with Engine(make_storage(), workflows=workflows) as engine:

        async def start(wf: memable.Workflow[str, str]) -> None:
            try:
                invocation = await engine.invoke(wf, "x", instance_id="contested")
            except memable.InstanceConflict:
                results.append((wf.name, "conflict"))
            else:
                results.append((wf.name, await invocation.result()))

        async with anyio.create_task_group() as tg:
            for n in range(10):
                tg.start_soon(start, workflows[n % 2])
        [info] = await engine.instances()
    winner = info.workflow
    assert ran == [winner]
    assert sorted(results) == sorted(
        (wf.name, winner if wf.name == winner else "conflict") for wf in workflows * 5
    )


# -- 4. failures ------------------------------------------------------------------------------


@memable.workflow("fails")
async def failing_wf(ctx: Context, order: str) -> int:
    raise ValueError(f"bad order {order}")


@memable.workflow("bad-output")
async def bad_output_wf(ctx: Context) -> int:
    return "not an int"  # type: ignore[return-value]


async def test_a_workflow_that_raises_ends_failed_live_and_after_a_restart(
    make_storage: StorageFactory,
) -> None:
    """A raising workflow is failed: Failed outcome, WorkflowFailed chaining it, error stored."""
    async with Engine(make_storage(), workflows=[failing_wf]) as engine:
        invocation = await engine.invoke(failing_wf, "o-1", instance_id="f-1")
        outcome = await invocation.wait()
        assert isinstance(outcome, memable.Failed)
        assert (outcome.error.type, outcome.error.message) == ("ValueError", "bad order o-1")
        assert isinstance(outcome.exception, ValueError)
        with pytest.raises(memable.WorkflowFailed, match="bad order o-1") as caught:
            await invocation.result()
        assert caught.value.instance_id == "f-1"
        assert caught.value.error == outcome.error
        assert caught.value.__cause__ is outcome.exception
        info = await engine.state(failing_wf, "f-1")
        assert info.status == "failed"
        assert info.finished_at is not None
        assert info.error is not None
        assert (info.error.type, info.error.message) == ("ValueError", "bad order o-1")
        assert "ValueError: bad order o-1" in info.error.traceback
        # The same id and input attaches to the failed instance; it does not run again.
        again = await engine.invoke(failing_wf, "o-1", instance_id="f-1")
        assert await again.wait() == outcome
        assert [i.instance_id for i in await engine.instances(status="failed")] == ["f-1"]
        with pytest.raises(memable.WorkflowFailed) as caught:
            await engine.run(failing_wf, "o-2")
        assert isinstance(caught.value.__cause__, ValueError)
    async with Engine(make_storage(), workflows=[failing_wf]) as engine:
        stored = await engine.handle(failing_wf, "f-1").wait()
        assert isinstance(stored, memable.Failed)
        assert stored.error == outcome.error
        with pytest.raises(memable.WorkflowFailed) as caught:
            await engine.handle(failing_wf, "f-1").result()
        assert caught.value.instance_id == "f-1"
        assert caught.value.error.type == "ValueError"
        assert (await engine.state(failing_wf, "f-1")).status == "failed"


async def test_an_output_of_the_wrong_type_fails_with_type_mismatch(
    make_storage: StorageFactory,
) -> None:
    """Returning a value that is not the annotated type fails the instance with TypeMismatch."""
    async with Engine(make_storage(), workflows=[bad_output_wf]) as engine:
        invocation = await engine.invoke(bad_output_wf, instance_id="b-1")
        outcome = await invocation.wait()
        assert isinstance(outcome, memable.Failed)
        assert outcome.error.type == "memable.TypeMismatch"
        with pytest.raises(memable.WorkflowFailed) as caught:
            await invocation.result()
        assert isinstance(caught.value.__cause__, memable.TypeMismatch)
    async with Engine(make_storage(), workflows=[bad_output_wf]) as engine:
        info = await engine.state(bad_output_wf, "b-1")
        assert info.status == "failed"
        assert info.error is not None
        assert info.error.type == "memable.TypeMismatch"
        assert "int" in info.error.message


# -- 5. recovery ------------------------------------------------------------------------------


async def crash_mid_step(storage: Storage, blocker: Blocker, instance_id: str) -> None:
    """Leave *instance_id* ``running`` in *storage*, as if the process died inside step b."""
    async with Engine(storage, workflows=[blocker.wf], shutdown_timeout=0) as engine:
        await engine.invoke(blocker.wf, 1, instance_id=instance_id)
        await blocker.reached.wait()
    assert blocker.b_cancelled == 1
    blocker.reached = anyio.Event()


async def test_a_crashed_instance_is_rerun_on_entering_a_new_engine(
    make_storage: StorageFactory,
) -> None:
    """An instance left running is re-run automatically; its recorded steps do not run again."""
    blocker = Blocker()
    await crash_mid_step(make_storage(), blocker, "r-1")
    blocker.release.set()
    async with Engine(make_storage(), workflows=[blocker.wf]) as engine:
        assert await engine.handle(blocker.wf, "r-1").result() == 20
        assert (await engine.state(blocker.wf, "r-1")).status == "completed"
    assert (blocker.a_runs, blocker.b_runs) == (1, 2)


async def test_without_resume_on_start_a_crashed_instance_waits_for_resume(
    make_storage: StorageFactory,
) -> None:
    """resume_on_start=False leaves it running (wait() says NotStarted) until resume()."""
    blocker = Blocker()
    await crash_mid_step(make_storage(), blocker, "r-2")
    blocker.release.set()
    async with Engine(make_storage(), workflows=[blocker.wf], resume_on_start=False) as engine:
        assert (await engine.state(blocker.wf, "r-2")).status == "running"
        with pytest.raises(memable.NotStarted, match="resume"):
            await engine.handle(blocker.wf, "r-2").wait()
        with pytest.raises(memable.NotStarted):
            await engine.handle(blocker.wf, "r-2").result()
        assert blocker.b_runs == 1  # nothing ran
        attached = await engine.invoke(blocker.wf, 1, instance_id="r-2")  # does not start it
        with pytest.raises(memable.NotStarted):
            await attached.wait()
        assert blocker.b_runs == 1
        invocation = await engine.resume(blocker.wf, "r-2")
        assert await invocation.result() == 20
        assert (await engine.state(blocker.wf, "r-2")).status == "completed"
    assert (blocker.a_runs, blocker.b_runs) == (1, 2)


async def test_instances_of_unregistered_workflows_are_left_running_and_logged(
    make_storage: StorageFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A new engine without the workflow leaves its instance alone and logs a warning."""
    blocker = Blocker("orphan")
    await crash_mid_step(make_storage(), blocker, "o-1")
    blocker.release.set()
    caplog.set_level(logging.WARNING, logger="memable")
    async with Engine(make_storage(), workflows=[hello_wf]) as engine:
        [info] = await engine.instances()
        assert (info.instance_id, info.workflow, info.status) == ("o-1", "orphan", "running")
        assert await engine.run(hello_wf) == "hello"  # the engine works meanwhile
    warnings = [r for r in caplog.records if r.name == "memable" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'o-1'" in warnings[0].getMessage()
    assert "unregistered workflow 'orphan'" in warnings[0].getMessage()
    assert getattr(warnings[0], "instance_id", None) == "o-1"
    assert blocker.b_runs == 1
    async with Engine(make_storage(), workflows=[blocker.wf]) as engine:  # registered now
        assert await engine.handle(blocker.wf, "o-1").result() == 20
    assert (blocker.a_runs, blocker.b_runs) == (1, 2)


# -- 6. shutdown ------------------------------------------------------------------------------


async def test_leaving_waits_for_an_instance_that_finishes_in_time(
    make_storage: StorageFactory,
) -> None:
    """An instance that finishes within shutdown_timeout completes before the block is left."""
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        async with Engine(make_storage(), workflows=[blocker.wf], shutdown_timeout=60) as engine:
            await engine.invoke(blocker.wf, 1, instance_id="g-1")
            await blocker.reached.wait()
            tg.start_soon(when_closing, engine, blocker.wf, blocker.release)
        # Left: the instance finished during the grace period and was not cancelled.
        assert blocker.release.is_set()
        assert blocker.b_cancelled == 0
    async with Engine(make_storage(), workflows=[blocker.wf], resume_on_start=False) as later:
        assert (await later.state(blocker.wf, "g-1")).status == "completed"
        assert await later.handle(blocker.wf, "g-1").result() == 20
    assert blocker.b_runs == 1


async def test_leaving_cancels_an_instance_that_does_not_finish(
    make_storage: StorageFactory,
) -> None:
    """Past shutdown_timeout the body is cancelled; it stays running, with no dead letter."""
    blocker = Blocker()
    told: list[BaseException] = []

    async def wait_outside(invocation: memable.Invocation[int]) -> None:
        try:
            await invocation.wait()
        except memable.NotStarted as exc:
            told.append(exc)

    async with anyio.create_task_group() as outside:
        async with Engine(make_storage(), workflows=[blocker.wf], shutdown_timeout=0.01) as engine:
            invocation = await engine.invoke(blocker.wf, 1, instance_id="s-1")
            await blocker.reached.wait()
            outside.start_soon(wait_outside, invocation)
        assert blocker.b_cancelled == 1  # already, when the block is left: nothing outlives it
    assert len(told) == 1  # a waiter is told, not left hanging
    async with Engine(make_storage(), workflows=[blocker.wf], resume_on_start=False) as later:
        info = await later.state(blocker.wf, "s-1")
        assert (info.status, info.error, info.finished_at) == ("running", None, None)
    steps = peek(make_storage(), lambda s: {r.key: r.state for r in s.load_steps("s-1")})
    assert steps == {"a:v1": "completed"}


async def test_an_error_in_the_block_cancels_at_once_and_propagates_as_itself(
    make_storage: StorageFactory,
) -> None:
    """An exception leaving the block is re-raised unwrapped; running instances stop at once."""
    blocker = Blocker()

    async def fail_inside_the_block() -> None:
        async with Engine(make_storage(), workflows=[blocker.wf], shutdown_timeout=3600) as engine:
            await engine.invoke(blocker.wf, 1, instance_id="e-1")
            await blocker.reached.wait()
            raise KeyError("boom")

    with anyio.fail_after(60):  # not the hour of grace: that would be waited here
        with pytest.raises(KeyError, match="boom"):
            await fail_inside_the_block()
    assert blocker.b_cancelled == 1
    async with Engine(make_storage(), workflows=[blocker.wf], resume_on_start=False) as later:
        assert (await later.state(blocker.wf, "e-1")).status == "running"


async def test_the_engine_is_usable_only_inside_its_block_and_only_once(
    make_storage: StorageFactory,
) -> None:
    """Outside the block every call raises NotStarted; an engine cannot be entered twice."""
    engine = Engine(make_storage(), workflows=[double_wf])
    with pytest.raises(memable.NotStarted, match="not started"):
        await engine.invoke(double_wf, 1)
    with pytest.raises(memable.NotStarted):
        await engine.state(double_wf, "x")
    with pytest.raises(memable.NotStarted):
        await engine.instances()
    async with engine:
        with pytest.raises(RuntimeError, match="only once"):
            async with engine:
                pass  # pragma: no cover
        assert await engine.run(double_wf, 1, instance_id="u-1") == 2  # still fine
    with pytest.raises(memable.NotStarted):
        await engine.invoke(double_wf, 1)
    with pytest.raises(memable.NotStarted):
        await engine.run(double_wf, 1)
    with pytest.raises(memable.NotStarted):
        await engine.state(double_wf, "u-1")
    with pytest.raises(memable.NotStarted):
        await engine.instances()
    with pytest.raises(memable.NotStarted):
        await engine.resume(double_wf, "u-1")
    with pytest.raises(memable.NotStarted):
        await engine.handle(double_wf, "u-1").wait()
    with pytest.raises(RuntimeError, match="only once"):
        async with engine:
            pass  # pragma: no cover
    async with Engine(make_storage(), workflows=[double_wf]) as later:  # storage was released
        assert await later.handle(double_wf, "u-1").result() == 2


# -- 7. resume --------------------------------------------------------------------------------


async def test_resume_of_an_unknown_id_creates_nothing(make_storage: StorageFactory) -> None:
    """resume() of an id that does not exist is InstanceNotFound and stores nothing."""
    async with Engine(make_storage(), workflows=[upper_wf]) as engine:
        with pytest.raises(memable.InstanceNotFound):
            await engine.resume(upper_wf, "never-made")
        assert list(await engine.instances()) == []


async def test_resume_of_a_completed_instance_runs_nothing(make_storage: StorageFactory) -> None:
    """resume() of a completed instance returns its handle and runs nothing."""
    runs: list[str] = []

    async def body(ctx: Context, text: str) -> str:
        runs.append(text)
        return text * 2

    wf = memable.Workflow("once", body)
    async with Engine(make_storage(), workflows=[wf]) as engine:
        await engine.run(wf, "ab", instance_id="done")
        resumed = await engine.resume(wf, "done")
        assert resumed.instance_id == "done"
        assert await resumed.result() == "abab"
    async with Engine(make_storage(), workflows=[wf]) as engine:
        assert await (await engine.resume(wf, "done")).result() == "abab"
    assert runs == ["ab"]


async def test_resume_of_an_instance_running_here_starts_no_second_task(
    make_storage: StorageFactory,
) -> None:
    """resume() of an instance this engine runs returns its handle; the body runs once."""
    blocker = Blocker()
    async with Engine(make_storage(), workflows=[blocker.wf]) as engine:
        first = await engine.invoke(blocker.wf, 1, instance_id="busy")
        await blocker.reached.wait()
        resumed = [await engine.resume(blocker.wf, "busy") for _ in range(3)]
        assert {r.instance_id for r in resumed} == {"busy"}
        assert blocker.b_runs == 1
        blocker.release.set()
        assert await first.result() == 20
        assert [await r.result() for r in resumed] == [20] * 3
    assert (blocker.a_runs, blocker.b_runs) == (1, 1)


async def test_concurrent_resumes_of_a_stuck_instance_run_it_once(
    make_storage: StorageFactory,
) -> None:
    """Racing resume() calls of a crashed instance start one run, not several."""
    blocker = Blocker()
    await crash_mid_step(make_storage(), blocker, "stuck")
    results: list[int] = []
    async with Engine(make_storage(), workflows=[blocker.wf], resume_on_start=False) as engine:

        async def resume() -> None:
            results.append(await (await engine.resume(blocker.wf, "stuck")).result())

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(resume)
            await blocker.reached.wait()
            blocker.release.set()
    assert results == [20] * 5
    assert (blocker.a_runs, blocker.b_runs) == (1, 2)


async def test_resume_reruns_a_failed_instance(make_storage: StorageFactory) -> None:
    """resume() runs a failed instance again, and it can then complete."""
    attempts: list[int] = []

    async def body(ctx: Context, n: int) -> int:
        attempts.append(n)
        if len(attempts) == 1:
            raise RuntimeError("flaky")
        return n

    wf = memable.Workflow("flaky", body)
    async with Engine(make_storage(), workflows=[wf]) as engine:
        assert isinstance(
            await (await engine.invoke(wf, 3, instance_id="fl")).wait(), memable.Failed
        )
    async with Engine(make_storage(), workflows=[wf]) as engine:  # failed is not recovered
        assert (await engine.state(wf, "fl")).status == "failed"
        assert await (await engine.resume(wf, "fl")).result() == 3
        info = await engine.state(wf, "fl")
        assert (info.status, info.error) == ("completed", None)
    assert attempts == [3, 3]


# -- 8. handle, state, instances --------------------------------------------------------------


async def test_handles_and_state_name_unknown_ids_and_wrong_workflows(
    make_storage: StorageFactory,
) -> None:
    """Unknown ids are InstanceNotFound; an instance read as another workflow is a conflict."""
    async with Engine(make_storage(), workflows=[upper_wf, hello_wf]) as engine:
        unknown = engine.handle(upper_wf, "nope")  # checked when used
        with pytest.raises(memable.InstanceNotFound):
            await unknown.wait()
        with pytest.raises(memable.InstanceNotFound):
            await unknown.result()
        with pytest.raises(memable.InstanceNotFound):
            await engine.state(upper_wf, "nope")
        with pytest.raises(memable.InvalidKey):
            engine.handle(upper_wf, "")
        with pytest.raises(memable.InvalidKey):
            await engine.state(upper_wf, "a\nb")
        with pytest.raises(memable.InvalidKey):
            await engine.resume(upper_wf, "")
        await engine.run(upper_wf, "a", instance_id="u")
        with pytest.raises(memable.InstanceConflict, match="'upper'"):
            await engine.state(hello_wf, "u")
        with pytest.raises(memable.InstanceConflict):
            await engine.handle(hello_wf, "u").wait()
        with pytest.raises(memable.InstanceConflict):
            await engine.resume(hello_wf, "u")
        assert list(await engine.instances()) != []


async def test_instances_filter_by_workflow_and_status_newest_first(
    make_storage: StorageFactory,
) -> None:
    """instances() lists newest first, filtered by workflow and status, up to limit."""
    clock = ManualClock()
    start = clock.now()
    async with Engine(
        make_storage(), workflows=[upper_wf, failing_wf, hello_wf], clock=clock
    ) as engine:
        # Created in an order that is not the ids' alphabetical order.
        workflows: list[memable.Workflow[str, Any]] = [upper_wf, failing_wf, upper_wf]
        for instance_id, wf in zip(["c", "a", "d"], workflows, strict=True):
            await (await engine.invoke(wf, instance_id, instance_id=instance_id)).wait()
            await clock.advance(timedelta(seconds=1))
        await engine.run(hello_wf, instance_id="b")

        def ids(infos: Sequence[memable.InstanceInfo]) -> list[str]:
            return [info.instance_id for info in infos]

        assert ids(await engine.instances()) == ["b", "d", "a", "c"]
        assert ids(await engine.instances(limit=None)) == ["b", "d", "a", "c"]
        assert ids(await engine.instances(limit=2)) == ["b", "d"]
        assert list(await engine.instances(limit=0)) == []
        assert ids(await engine.instances(upper_wf)) == ["d", "c"]
        assert ids(await engine.instances(status="failed")) == ["a"]
        assert ids(await engine.instances(status="completed")) == ["b", "d", "c"]
        assert ids(await engine.instances(upper_wf, status="failed")) == []
        assert ids(await engine.instances(failing_wf, status="failed", limit=5)) == ["a"]
        assert list(await engine.instances(status="running")) == []
        with pytest.raises(ValueError, match="limit"):
            await engine.instances(limit=-1)
        *_, first = await engine.instances()
        assert first.workflow == "upper"
        assert first.created_at == start
        assert first.created_at.tzinfo is UTC
        assert (
            datetime(2026, 1, 1, 0, 0, 3, tzinfo=UTC)
            == (await engine.state(hello_wf, "b")).created_at
        )


# -- 9. registration --------------------------------------------------------------------------


async def test_registering_the_same_workflow_twice_is_fine(make_storage: StorageFactory) -> None:
    """register() is idempotent for one function; a second Workflow over it is accepted too."""
    engine = Engine(make_storage(), workflows=[double_wf, double_wf])
    engine.register(double_wf)
    twin = memable.Workflow("double", double_wf.fn)
    engine.register(twin)
    async with engine:
        assert await engine.run(twin, 4) == 8
        assert await engine.run(double_wf, 5) == 10


def test_engine_options_are_checked() -> None:
    """Nonsense engine options are refused when the engine is made, not later."""
    with pytest.raises(ValueError, match="shutdown_timeout"):
        Engine(shutdown_timeout=-1)
    with pytest.raises(ValueError, match="shutdown_timeout"):
        Engine(shutdown_timeout=float("nan"))
    with pytest.raises(ValueError, match="retention"):
        Engine(retention=timedelta(0))
    with pytest.raises(TypeError, match="RetryPolicy"):
        Engine(retry=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="storage"):
        Engine(object())  # type: ignore[arg-type]


def test_two_functions_under_one_name_are_refused() -> None:
    """Registering another function under a taken name is a ValueError naming the name."""

    async def first(ctx: Context) -> None:
        pass

    async def second(ctx: Context) -> None:
        pass

    engine = Engine(workflows=[memable.Workflow("dup", first)])
    with pytest.raises(ValueError, match="'dup' is already registered"):
        engine.register(memable.Workflow("dup", second))
    with pytest.raises(ValueError, match="already registered"):
        Engine(workflows=[memable.Workflow("dup", first), memable.Workflow("dup", second)])


def test_missing_annotations_fail_at_registration_naming_the_function() -> None:
    """A workflow without a return or input annotation is a TypeError when it is registered."""

    async def no_return(ctx: Context, n: int):  # type: ignore[no-untyped-def]
        return n

    async def no_input_annotation(ctx: Context, n) -> int:  # type: ignore[no-untyped-def]
        return 1

    async def unresolvable(ctx: Context) -> NoSuchType:  # type: ignore[name-defined]  # noqa: F821
        raise AssertionError

    without_return = memable.Workflow("r", no_return)  # defining it is fine
    with pytest.raises(TypeError, match=r"no_return.*return annotation"):
        Engine(workflows=[without_return])
    with pytest.raises(TypeError, match="no_return"):
        Engine().register(without_return)
    with pytest.raises(TypeError, match=r"no_input_annotation.*input parameter 'n'"):
        Engine().register(memable.Workflow("i", no_input_annotation))
    with pytest.raises(TypeError, match="unresolvable"):
        Engine(workflows=[memable.Workflow("u", unresolvable)])


def test_workflow_definitions_are_checked() -> None:
    """Invalid names are InvalidKey; a non-async function or wrong arity is a TypeError."""

    def not_async(ctx: Context) -> int:
        return 1

    async def three(ctx: Context, a: int, b: int) -> int:
        return a + b

    async def fine(ctx: Context) -> int:
        return 1

    for bad_name in ["", "a/b", "_reserved", "x" * 256, "tab\there"]:
        with pytest.raises(memable.InvalidKey):
            memable.workflow(bad_name)
        with pytest.raises(memable.InvalidKey):
            memable.Workflow(bad_name, fine)
    with pytest.raises(TypeError, match="async def"):
        memable.Workflow("sync", not_async)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async def"):
        memable.workflow("sync")(not_async)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ctx"):
        memable.Workflow("three", three)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Engine().register(fine)  # type: ignore[arg-type]


async def test_unregistered_workflows_and_wrong_inputs_are_refused(
    make_storage: StorageFactory,
) -> None:
    """Invoking an unregistered workflow or with a wrong input raises and stores nothing."""

    async def other_double(ctx: Context, n: int) -> int:
        return n

    async with Engine(make_storage(), workflows=[double_wf]) as engine:
        with pytest.raises(memable.WorkflowNotFound) as not_found:
            await engine.invoke(upper_wf, "x")
        assert isinstance(not_found.value, LookupError)
        impostor = memable.Workflow("double", other_double)  # same name, other function
        with pytest.raises(memable.WorkflowNotFound):
            await engine.invoke(impostor, 1)
        with pytest.raises(memable.TypeMismatch) as mismatch:
            await engine.invoke(double_wf, "21")  # type: ignore[misc]
        assert isinstance(mismatch.value, TypeError)
        assert mismatch.value.expected == "int"
        with pytest.raises(memable.TypeMismatch):
            await engine.invoke(double_wf, "21", instance_id="typed")  # type: ignore[misc]
        assert list(await engine.instances()) == []
        engine.register(upper_wf)  # allowed while running
        assert await engine.run(upper_wf, "late") == "LATE"


# -- 10. group commit -------------------------------------------------------------------------


async def test_many_concurrent_instances_all_record_every_step(
    make_storage: StorageFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 instances x 5 steps at once: right results, every step stored, commits shared."""
    instances, steps = 50, 5
    arrived = 0
    everyone_here = anyio.Event()

    async def square(n: int) -> int:
        nonlocal arrived
        if n < instances:  # the first step of each instance: wait until all are in flight
            arrived += 1
            if arrived == instances:
                everyone_here.set()
            await everyone_here.wait()
        await anyio.lowlevel.checkpoint()
        return n * n

    async def body(ctx: Context, n: int) -> int:
        return sum([await ctx.step(f"s{i}", square, n + instances * i) for i in range(steps)])

    wf = memable.Workflow("squares", body)
    storage = make_storage()
    batches: list[list[Write]] = []
    commit = storage.commit

    def recording_commit(writes: Sequence[Write]) -> None:
        batches.append(list(writes))
        commit(writes)

    monkeypatch.setattr(storage, "commit", recording_commit)
    results: dict[int, int] = {}
    async with Engine(storage, workflows=[wf]) as engine:

        async def one(n: int) -> None:
            results[n] = await engine.run(wf, n, instance_id=f"n{n}")

        async with anyio.create_task_group() as tg:
            for n in range(instances):
                tg.start_soon(one, n)
    expected = {n: sum((n + instances * i) ** 2 for i in range(steps)) for n in range(instances)}
    assert results == expected

    def stored_steps(s: Storage) -> dict[str, dict[str, int]]:
        return {
            f"n{n}": {
                r.key: json.loads(r.value or "null")["value"]
                for r in s.load_steps(f"n{n}")
                if r.state == "completed"
            }
            for n in range(instances)
        }

    assert peek(make_storage(), stored_steps) == {
        f"n{n}": {f"s{i}": (n + instances * i) ** 2 for i in range(steps)} for n in range(instances)
    }
    step_writes = [w for batch in batches for w in batch if isinstance(w, StepRecord)]
    assert len(step_writes) == instances * steps  # each result written exactly once
    assert max(len({w.instance_id for w in batch}) for batch in batches) > 1


async def test_a_failing_write_in_a_shared_commit_holds_back_only_its_own_instance(
    make_storage: StorageFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When one instance's write cannot be stored, the others sharing the commit complete;
    the one whose write failed runs again (healing) and completes once storage takes it."""
    arrived = 0
    everyone_here = anyio.Event()
    runs: collections.Counter[int] = collections.Counter()

    async def value(n: int) -> int:
        nonlocal arrived
        arrived += 1
        runs[n] += 1
        if arrived == 10:
            everyone_here.set()
        await everyone_here.wait()
        return n

    async def body(ctx: Context, n: int) -> int:
        return await ctx.step("v", value, n)

    wf = memable.Workflow("shared", body)
    storage = make_storage()
    commit = storage.commit
    disk_full = True

    def poisoned_commit(writes: Sequence[Write]) -> list[bool]:
        if disk_full and any(isinstance(w, StepRecord) and w.instance_id == "bad" for w in writes):
            raise memable.StorageError("disk full (injected)")
        return commit(writes)

    monkeypatch.setattr(storage, "commit", poisoned_commit)
    outcomes: dict[str, memable.Outcome[int]] = {}
    async with Engine(storage, workflows=[wf]) as engine:

        async def one(instance_id: str, n: int) -> None:
            outcomes[instance_id] = await (
                await engine.invoke(wf, n, instance_id=instance_id)
            ).wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "bad", 0)
            for n in range(1, 10):
                tg.start_soon(one, f"ok{n}", n)
            with anyio.fail_after(10):
                while len(outcomes) < 9 or runs[0] < 2:  # the bad one is tried again
                    await anyio.sleep(0.01)
            assert "bad" not in outcomes
            assert (await engine.state(wf, "bad")).status == "running"
            disk_full = False
        assert outcomes["bad"] == memable.Completed(output=0)
    assert {k: v for k, v in outcomes.items() if k != "bad"} == {
        f"ok{n}": memable.Completed(output=n) for n in range(1, 10)
    }
    ids = ["bad", *(f"ok{n}" for n in range(1, 10))]
    recorded = peek(make_storage(), lambda s: [len(s.load_steps(i)) for i in ids])
    assert recorded == [1] * 10
    assert all(runs[n] == 1 for n in range(1, 10))
