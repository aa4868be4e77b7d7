"""Holes (b): faithful replayed failures, timer edges, misuse errors, messages, shutdown."""

from __future__ import annotations

import logging
import threading
import traceback
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import cattrs
import pytest

import memable
from memable import (
    ChildFailed,
    Context,
    Engine,
    RetriesExhausted,
    RetryPolicy,
    StepFailed,
    StepTimeout,
    SuspendPoint,
)
from memable.storage import SQLiteStorage
from memable.testing import ManualClock, crash_at

from .helpers import StorageFactory

PRIVATE = "memable._"


def describe(exc: BaseException) -> str:
    """One line with everything a workflow could branch on."""
    cause = exc.__cause__
    return "|".join(
        str(x)
        for x in (
            type(exc).__name__,
            getattr(exc, "key", None),
            getattr(exc, "instance_id", None),
            getattr(exc, "attempts", None),
            getattr(exc, "timeout", None),
            str(exc),
            type(cause).__name__,
            str(cause),
        )
    )


async def test_replayed_failures_are_faithful(make_storage: StorageFactory) -> None:
    """Every failure a workflow caught is raised again, identically, on replay after a crash,
    without running the step bodies again; no private module path is shown or stored."""
    runs: dict[str, int] = {"slow": 0, "flaky": 0, "perm": 0, "child": 0}
    seen: list[list[str]] = []

    async def slow() -> None:
        runs["slow"] += 1
        await anyio.sleep_forever()

    async def flaky() -> int:
        runs["flaky"] += 1
        raise ValueError("flaky broke")

    async def perm() -> int:
        runs["perm"] += 1
        raise memable.Permanent("no")

    @memable.workflow("kid")
    async def failing_child(ctx: Context, n: int) -> int:
        runs["child"] += 1
        if n == 1:
            raise ValueError(f"child {n} broke")
        return n

    async def after() -> int:
        return 1

    @memable.workflow("faithful")
    async def wf(ctx: Context) -> list[str]:
        record: list[str] = []
        try:
            await ctx.step("slow", slow, timeout=0.05)
        except StepTimeout as exc:
            record.append(describe(exc))
        try:
            await ctx.step("flaky", flaky, retry=RetryPolicy.fixed(2, 0))
        except RetriesExhausted as exc:
            record.append(describe(exc))
        try:
            await ctx.step("perm", perm)
        except StepFailed as exc:
            assert type(exc) is StepFailed
            record.append(describe(exc))
        try:
            await ctx.fan_out("kids", failing_child, [1, 2])
        except ChildFailed as exc:
            record.append(describe(exc))
        seen.append(record)
        await ctx.step("after-all:v1", after)
        return record

    workflows: list[memable.Workflow[Any, Any]] = [wf, failing_child]
    async with Engine(make_storage(), workflows=workflows) as engine:
        with crash_at(engine, "after-all:v1", when="before"):
            await engine.invoke(wf, instance_id="f")
            with pytest.raises(memable.NotStarted):
                await engine.handle(wf, "f").wait()
        assert (await engine.state(wf, "f")).status == "running"
    first = seen[0]
    assert [line.split("|")[0] for line in first] == [
        "StepTimeout",
        "RetriesExhausted",
        "StepFailed",
        "ChildFailed",
    ]
    counts = dict(runs)
    assert counts["flaky"] == 2
    assert counts["slow"] == 1
    assert counts["perm"] == 1

    async with Engine(make_storage(), workflows=workflows) as engine:
        with anyio.fail_after(10):
            result = await engine.handle(wf, "f").result()
        info = await engine.state(wf, "f")
        kid_infos = [await engine.state(failing_child, f"f/kids-{i}") for i in (0, 1)]
    assert len(seen) == 2
    replayed = seen[1]
    assert result == replayed
    assert replayed == first
    assert runs == counts, "step bodies ran again on replay"
    assert info.status == "completed"
    texts = [*first, *(str(i.error) for i in [info, *kid_infos] if i.error is not None)]
    for text in texts:
        assert PRIVATE not in text, text
    for kid in kid_infos:
        if kid.error is not None:
            assert PRIVATE not in kid.error.type
            assert PRIVATE not in kid.error.message
            assert PRIVATE not in kid.error.traceback


async def test_replayed_permanent_cause_is_faithful(make_storage: StorageFactory) -> None:
    """A workflow that inspects the cause of a Permanent step failure sees the same cause
    (class and message) on replay as in the first run."""
    seen: list[str] = []

    async def perm() -> int:
        raise memable.Permanent("no")

    async def after() -> int:
        return 1

    @memable.workflow("kid2")
    async def kid(ctx: Context, n: int) -> int:
        raise ValueError(f"child {n} broke")

    @memable.workflow("perm-cause")
    async def wf(ctx: Context) -> str:
        try:
            await ctx.step("perm", perm)
        except StepFailed as exc:
            seen.append(f"{type(exc.__cause__).__name__}|{exc.__cause__}")
        try:
            await ctx.fan_out("kids", kid, [1])
        except ChildFailed as exc:
            seen.append(str(exc))
        await ctx.step("after", after)
        return seen[-1]

    async with Engine(make_storage(), workflows=[wf, kid]) as engine:
        with crash_at(engine, "after"):
            await engine.invoke(wf, instance_id="p")
            with pytest.raises(memable.NotStarted):
                await engine.handle(wf, "p").wait()
    async with Engine(make_storage(), workflows=[wf, kid]) as engine:
        with anyio.fail_after(10):
            await engine.handle(wf, "p").result()
    assert seen[2:] == seen[:2]
    assert seen[0] == "Permanent|no"


async def test_uncaught_failure_has_no_private_paths(make_storage: StorageFactory) -> None:
    """When a step failure fails the workflow, its stored error (type, message, traceback)
    names public exception types only."""

    async def perm() -> int:
        raise memable.Permanent("no")

    @memable.workflow("uncaught")
    async def wf(ctx: Context) -> int:
        return await ctx.step("perm", perm)

    async with Engine(make_storage(), workflows=[wf]) as engine:
        with pytest.raises(memable.WorkflowFailed) as caught:
            await engine.run(wf, instance_id="u")
        info = await engine.state(wf, "u")
    assert info.error is not None
    for text in (info.error.type, info.error.message, str(caught.value)):
        assert PRIVATE not in text, text
    assert caught.value.error.type.endswith("StepFailed")
    shown = "".join(traceback.format_exception(caught.value))
    stored = info.error.traceback
    for line in (shown + stored).splitlines():
        # frames may name memable's files; exception type lines must be public names
        if line and not line.startswith(" ") and ":" in line and "Error" in line.split(":")[0]:
            assert PRIVATE not in line.split(":")[0], line


async def test_sleep_beyond_datetime_range_is_a_value_error(make_storage: StorageFactory) -> None:
    """sleep(timedelta.max) and sleep_until(datetime max) are ValueErrors the workflow can
    catch; the engine keeps running and a later engine starts on the same storage."""
    clock = ManualClock()

    @memable.workflow("far")
    async def wf(ctx: Context) -> list[str]:
        caught: list[str] = []
        try:
            await ctx.sleep("t", timedelta.max)
        except ValueError as exc:
            caught.append(type(exc).__name__)
        try:
            await ctx.sleep_until("t2", datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
        except ValueError as exc:
            caught.append(type(exc).__name__)
        return caught

    async with Engine(make_storage(), workflows=[wf], clock=clock) as engine:
        assert await engine.run(wf, instance_id="a") == ["ValueError", "ValueError"]
        assert await engine.run(wf, instance_id="b") == ["ValueError", "ValueError"]
    async with Engine(make_storage(), workflows=[wf], clock=clock) as engine:
        assert (await engine.state(wf, "a")).status == "completed"
        assert await engine.run(wf, instance_id="c") == ["ValueError", "ValueError"]


async def test_fired_timer_survives_clock_stepping_back(make_storage: StorageFactory) -> None:
    """A timer that fired stays fired: if the next engine's clock is earlier than its
    deadline, a signal still completes the instance instead of waiting on the timer again."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    clock = ManualClock(start)
    point = SuspendPoint("p:v1", str)

    @memable.workflow("stepback")
    async def wf(ctx: Context) -> str:
        await ctx.sleep("t", timedelta(hours=1))
        return await ctx.suspend(point)

    async with Engine(make_storage(), workflows=[wf], clock=clock) as engine:
        invocation = await engine.invoke(wf, instance_id="s")
        assert await invocation.wait() == memable.Suspended(waiting_on=("t",))
        await clock.advance(timedelta(hours=1))
        with anyio.fail_after(10):
            while (await engine.state(wf, "s")).waiting_on != ("p:v1",):
                await anyio.sleep(0.01)
    earlier = ManualClock(start - timedelta(hours=1))
    async with Engine(make_storage(), workflows=[wf], clock=earlier) as engine:
        await engine.signal(wf, "s", point, "go")
        with anyio.fail_after(10):
            assert await engine.handle(wf, "s").result() == "go"


async def test_context_used_after_return_names_the_instance(make_storage: StorageFactory) -> None:
    """A Context kept past its run refuses set_status and step with a RuntimeError that
    names the instance."""
    kept: list[Context] = []

    async def one() -> int:
        return 1

    @memable.workflow("keeper")
    async def wf(ctx: Context) -> int:
        kept.append(ctx)
        return 0

    async with Engine(make_storage(), workflows=[wf]) as engine:
        assert await engine.run(wf, instance_id="kept-1") == 0
        ctx = kept[0]
        with pytest.raises(RuntimeError, match="kept-1"):
            ctx.set_status("x")
        with pytest.raises(RuntimeError, match="kept-1"):
            await ctx.step("late", one)


async def test_engine_used_from_another_thread_is_refused(make_storage: StorageFactory) -> None:
    """Calling an engine from another thread's event loop is a RuntimeError that says so."""

    @memable.workflow("threaded")
    async def wf(ctx: Context) -> int:
        return 0

    async with Engine(make_storage(), workflows=[wf]) as engine:
        await engine.run(wf, instance_id="t")

        def elsewhere() -> BaseException | None:
            try:
                anyio.run(engine.state, wf, "t")
            except BaseException as exc:
                return exc
            return None

        error = await anyio.to_thread.run_sync(elsewhere)
    assert isinstance(error, RuntimeError), error
    assert any(w in str(error) for w in ("thread", "event loop")), str(error)


async def test_impossible_durations_are_value_errors(make_storage: StorageFactory) -> None:
    """NaN, negative and infinite durations are ValueErrors at the call."""
    with pytest.raises(ValueError):  # noqa: PT011 - the contract names only the class
        RetryPolicy.fixed(2, float("nan"))
    with pytest.raises(ValueError):  # noqa: PT011
        RetryPolicy.exponential(3, base=-1)
    point = SuspendPoint("p:v1", int)

    async def one() -> int:
        return 1

    @memable.workflow("durs")
    async def wf(ctx: Context) -> list[str]:
        out: list[str] = []
        try:
            await ctx.step("inf", one, timeout=float("inf"))
        except ValueError:
            out.append("step")
        try:
            await ctx.suspend(point, timeout=-1)
        except ValueError:
            out.append("suspend")
        return out

    async with Engine(make_storage(), workflows=[wf]) as engine:
        assert await engine.run(wf, instance_id="d") == ["step", "suspend"]


async def test_signal_superseded_messages(make_storage: StorageFactory) -> None:
    """SignalSuperseded says whether a payload or the deadline came first, and names the
    instance; WorkflowSuspended names the instance too."""
    clock = ManualClock()
    point = SuspendPoint("p:v1", str)

    @memable.workflow("sup")
    async def wf(ctx: Context, timed: bool) -> str:
        try:
            got = await ctx.suspend(point, timeout=timedelta(hours=1) if timed else None)
        except memable.SuspendTimeout:
            return await ctx.suspend(SuspendPoint("after:v1", str))
        # Still alive when a second payload comes (storage that commits in parallel could
        # otherwise finish it first, and the second signal would be rejected as finished).
        await ctx.suspend(SuspendPoint("then:v1", str))
        return got

    @memable.workflow("waiter")
    async def waiter(ctx: Context) -> str:
        await ctx.suspend(SuspendPoint("q:v1", str))
        return "x"

    async with Engine(make_storage(), workflows=[wf, waiter], clock=clock) as engine:
        await (await engine.invoke(wf, False, instance_id="twice-1")).wait()
        await engine.signal(wf, "twice-1", point, "a")
        with pytest.raises(memable.SignalSuperseded) as caught:
            await engine.signal(wf, "twice-1", point, "b")
        message = str(caught.value)
        assert "twice-1" in message
        assert "another signal came first" in message or "already has a payload" in message

        await (await engine.invoke(wf, True, instance_id="late-1")).wait()
        await clock.advance(timedelta(hours=2))
        with anyio.fail_after(10):
            while (await engine.state(wf, "late-1")).waiting_on != ("after:v1",):
                await anyio.sleep(0.01)
        with pytest.raises(memable.SignalSuperseded) as caught:
            await engine.signal(wf, "late-1", point, "b")
        assert "deadline" in str(caught.value)
        assert "late-1" in str(caught.value)

        await (await engine.invoke(waiter, instance_id="waiting-1")).wait()
        with pytest.raises(memable.WorkflowSuspended, match="waiting-1"):
            await engine.handle(waiter, "waiting-1").result()


COUNT = SuspendPoint("count:v1", int)
COUNT_AS_TEXT = SuspendPoint("count:v1", str)  # the same key, another type


@memable.workflow("counting")
async def counting(ctx: Context) -> int:
    return 2 * await ctx.suspend(COUNT)


async def test_a_signal_of_another_type_is_refused_when_the_point_is_known(
    make_storage: StorageFactory,
) -> None:
    """Once the workflow was seen waiting at the key for an int, a signal whose point has
    the same key but carries a str is a TypeMismatch naming both, and stores nothing."""
    async with Engine(make_storage(), workflows=[counting]) as engine:
        invocation = await engine.invoke(counting, instance_id="c")
        await invocation.wait()
        with pytest.raises(memable.TypeMismatch) as caught:
            await engine.signal(counting, "c", COUNT_AS_TEXT, "three")
        assert (caught.value.key, caught.value.expected, caught.value.found) == (
            "count:v1",
            "int",
            "str",
        )
        assert "'counting'" in str(caught.value)
        assert PRIVATE not in str(caught.value)
        await engine.signal(counting, "c", COUNT, 3)  # not superseded: nothing was stored
        assert await invocation.result() == 6


async def test_a_stored_payload_of_another_type_is_set_aside(
    make_storage: StorageFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """An engine that has not seen the point yet (a restart) stores the wrong payload; the
    run that reads it logs why, sets it aside and waits again — the instance is never
    stuck: a right signal resumes it, on this engine and after another restart."""
    async with Engine(make_storage(), workflows=[counting]) as engine:
        await (await engine.invoke(counting, instance_id="c")).wait()
    caplog.set_level(logging.ERROR, logger="memable")
    async with Engine(make_storage(), workflows=[counting]) as engine:
        await engine.signal(counting, "c", COUNT_AS_TEXT, "three")  # unknown here: stored
        with anyio.fail_after(10):
            while "set aside" not in caplog.text:
                await anyio.sleep(0.01)
            while (await engine.state(counting, "c")).status != "suspended":
                await anyio.sleep(0.01)
        assert (await engine.state(counting, "c")).waiting_on == ("count:v1",)
        assert "instance 'c'" in caplog.text
        assert "count:v1" in caplog.text
        assert PRIVATE not in caplog.text
        with pytest.raises(memable.TypeMismatch):  # now the point is known here
            await engine.signal(counting, "c", COUNT_AS_TEXT, "four")
    async with Engine(make_storage(), workflows=[counting]) as engine:
        await engine.signal(counting, "c", COUNT, 4)
        with anyio.fail_after(10):
            assert await engine.handle(counting, "c").result() == 8


async def test_instance_not_found_hides_the_file_path(tmp_path: Path) -> None:
    """InstanceNotFound on a SQLite file does not show the file's path."""

    @memable.workflow("nf")
    async def wf(ctx: Context) -> int:
        return 0

    path = tmp_path / "secret-dir" / "memable.db"
    path.parent.mkdir()
    async with Engine(SQLiteStorage(path), workflows=[wf]) as engine:
        with pytest.raises(memable.InstanceNotFound) as caught:
            await engine.state(wf, "nope")
    assert str(tmp_path) not in str(caught.value)
    assert "secret-dir" not in str(caught.value)
    assert "nope" in str(caught.value)


async def test_configured_converter_keeps_decimals(make_storage: StorageFactory) -> None:
    """A converter made with configure_converter replays a Decimal step result equal and
    of the same type."""
    converter = memable.configure_converter(cattrs.Converter())
    runs: list[int] = []
    seen: list[Decimal] = []

    async def price() -> Decimal:
        runs.append(1)
        return Decimal("1.10")

    async def after() -> int:
        return 1

    @memable.workflow("dec")
    async def wf(ctx: Context) -> str:
        value = await ctx.step("price", price)
        seen.append(value)
        await ctx.step("after", after)
        return str(value)

    async with Engine(make_storage(), workflows=[wf], converter=converter) as engine:
        with crash_at(engine, "after"):
            await engine.invoke(wf, instance_id="d")
            with pytest.raises(memable.NotStarted):
                await engine.handle(wf, "d").wait()
    async with Engine(make_storage(), workflows=[wf], converter=converter) as engine:
        with anyio.fail_after(10):
            assert await engine.handle(wf, "d").result() == "1.10"
    assert runs == [1]
    assert seen == [Decimal("1.10"), Decimal("1.10")]
    assert all(type(v) is Decimal and str(v) == "1.10" for v in seen)


@pytest.mark.parametrize("shutdown", [timedelta(seconds=0.2), 0.2])
async def test_shutdown_does_not_wait_for_a_blocked_thread(
    make_storage: StorageFactory, shutdown: float | timedelta
) -> None:
    """Leaving the engine returns even while a step_sync body blocks forever in a thread
    (timedelta or float shutdown_timeout); the next engine recovers and completes it."""
    release = threading.Event()
    entered = anyio.Event()
    calls: list[int] = []

    def block() -> int:
        calls.append(1)
        if len(calls) == 1:
            release.wait()
        return len(calls)

    @memable.workflow("blocked")
    async def wf(ctx: Context) -> int:
        entered.set()
        return await ctx.step_sync("block", block)

    try:
        with anyio.fail_after(10):
            async with Engine(make_storage(), workflows=[wf], shutdown_timeout=shutdown) as engine:
                await engine.invoke(wf, instance_id="b")
                await entered.wait()
                while not calls:
                    await anyio.sleep(0.01)
    finally:
        release.set()
    async with Engine(make_storage(), workflows=[wf]) as engine:
        with anyio.fail_after(10):
            assert await engine.handle(wf, "b").result() in (1, 2)
            assert (await engine.state(wf, "b")).status == "completed"
