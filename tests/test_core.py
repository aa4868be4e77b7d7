"""Steps and instances: memoisation, retries, timeouts, dead letters, recovery, shutdown.

Every test runs on asyncio and trio, over a SQLite file and over MemoryStorage; "a crash"
is an engine abandoned mid-run (``shutdown_timeout=0``) and a new engine on the same data.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import attrs
import pytest

import memable
from memable import Context, Engine, RetryPolicy, Suspended, SuspendPoint

from .helpers import StorageFactory, peek


@attrs.define
class Calls:
    """Counts how often each step body ran."""

    counts: collections.Counter[str] = attrs.field(factory=collections.Counter)

    def body(self, name: str, result: int = 0) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            self.counts[name] += 1
            return result

        return run


def make_blocking_workflow(
    calls: Calls, reached: anyio.Event, release: anyio.Event, name: str = "blocking"
) -> memable.Workflow[int, int]:
    """a → (b, c concurrently) → d, where d blocks until *release* is set."""

    async def d() -> int:
        calls.counts["d"] += 1
        reached.set()
        await release.wait()
        return 4

    async def wf(ctx: Context, n: int) -> int:
        a = await ctx.step("a:v1", calls.body("a", 1))
        results: dict[str, int] = {}

        async def part(key: str, value: int) -> None:
            results[key] = await ctx.step(key, calls.body(key, value))

        async with anyio.create_task_group() as tg:
            tg.start_soon(part, "b:v1", 2)
            tg.start_soon(part, "c:v1", 3)
        return n + a + results["b:v1"] + results["c:v1"] + await ctx.step("d:v1", d)

    return memable.Workflow(name, wf)


async def test_recorded_steps_never_run_again_after_a_crash(make_storage: StorageFactory) -> None:
    """After a crash, recorded steps (also concurrent ones) replay; only d runs again."""
    calls = Calls()
    reached, never = anyio.Event(), anyio.Event()
    wf = make_blocking_workflow(calls, reached, never)
    async with Engine(make_storage(), workflows=[wf], shutdown_timeout=0) as engine:
        await engine.invoke(wf, 10, instance_id="job-1")
        await reached.wait()
        assert (await engine.state(wf, "job-1")).status == "running"
    assert calls.counts == {"a": 1, "b:v1": 1, "c:v1": 1, "d": 1}

    released = anyio.Event()
    released.set()
    wf2 = make_blocking_workflow(calls, anyio.Event(), released)
    async with Engine(make_storage(), workflows=[wf2]) as engine:  # recovers job-1
        assert await engine.handle(wf2, "job-1").result() == 10 + 1 + 2 + 3 + 4
    assert calls.counts == {"a": 1, "b:v1": 1, "c:v1": 1, "d": 2}


async def test_bumping_a_key_runs_the_new_version(make_storage: StorageFactory) -> None:
    """A step whose key changed runs again; the unchanged steps replay."""
    runs: list[str] = []

    def version(tag: str) -> memable.Workflow[None, str]:
        async def price() -> str:
            runs.append("price")
            return "p"

        async def charge() -> str:
            runs.append(tag)
            return tag

        async def wf(ctx: Context) -> str:
            return await ctx.step("price:v1", price) + await ctx.step(f"charge:{tag}", charge)

        return memable.Workflow("versioned", wf)

    v1 = version("v1")
    async with Engine(make_storage(), workflows=[v1]) as engine:
        assert await engine.run(v1, instance_id="o") == "pv1"
        await engine.cancel(v1, "o")  # finished: a no-op
    v2 = version("v2")
    async with Engine(make_storage(), workflows=[v2]) as engine:
        assert await engine.run(v2, instance_id="o-2") == "pv2"
    assert runs == ["price", "v1", "price", "v2"]


async def test_reusing_a_key_in_one_run_fails_the_instance(make_storage: StorageFactory) -> None:
    """The classic memoisation bug is caught: a key used twice raises DuplicateStepKey."""
    calls = Calls()

    @memable.workflow("sequential-dup")
    async def sequential(ctx: Context) -> int:
        await ctx.step("same", calls.body("one", 1))
        return await ctx.step("same", calls.body("two", 2))

    @memable.workflow("concurrent-dup")
    async def concurrent(ctx: Context) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ctx.step, "same", calls.body("x"))
            tg.start_soon(ctx.step, "same", calls.body("y"))

    async with Engine(make_storage(), workflows=[sequential, concurrent]) as engine:
        outcome = await (await engine.invoke(sequential)).wait()
        assert isinstance(outcome, memable.Failed)
        assert outcome.error.type == "memable.DuplicateStepKey"
        assert isinstance(outcome.exception, memable.DuplicateStepKey)
        assert "'same'" in outcome.error.message
        second = await (await engine.invoke(concurrent)).wait()
        assert isinstance(second, memable.Failed)
        assert "DuplicateStepKey" in second.error.traceback
    assert calls.counts["two"] == 0
    assert calls.counts["x"] + calls.counts["y"] == 1


@pytest.mark.parametrize("key", ["", "a/b", "_x", "bad\x00key", "k" * 256, 123])
async def test_invalid_step_keys_fail_before_anything_runs(
    make_storage: StorageFactory, key: object
) -> None:
    """A bad key raises InvalidKey into the workflow; the body never runs."""
    calls = Calls()

    @memable.workflow("bad-key")
    async def wf(ctx: Context) -> str:
        try:
            await ctx.step(key, calls.body("body"))  # type: ignore[arg-type]
        except memable.InvalidKey as exc:
            assert isinstance(exc, ValueError)
            return str(exc)
        return "no error"

    async with Engine(make_storage(), workflows=[wf]) as engine:
        message = await engine.run(wf, instance_id="i")
    assert "step key" in message
    assert calls.counts["body"] == 0
    assert peek(make_storage(), lambda s: s.load_steps("i")) == []


async def test_a_timeout_cancels_the_step_body(make_storage: StorageFactory) -> None:
    """The body runs in a cancel scope: it sees cancellation; StepTimeout names the step."""
    seen: list[str] = []

    async def slow() -> int:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            seen.append("cancelled")
            raise
        return 0  # pragma: no cover

    @memable.workflow("timeout")
    async def wf(ctx: Context) -> str:
        try:
            await ctx.step("slow:v1", slow, timeout=0.05)
        except memable.StepTimeout as exc:
            assert isinstance(exc.__cause__, TimeoutError)
            return f"{exc.key} {exc.timeout} {exc.attempts}"
        return "no timeout"

    async with Engine(make_storage(), workflows=[wf]) as engine:
        assert await engine.run(wf) == "slow:v1 0.05 1"
    assert seen == ["cancelled"]


async def test_retries_count_attempts_exactly(make_storage: StorageFactory) -> None:
    """attempts counts every try; success on the third of three returns the result."""
    tries: collections.Counter[str] = collections.Counter()

    def flaky(name: str, failures: int, exc: Exception) -> Callable[[], Awaitable[str]]:
        async def body() -> str:
            tries[name] += 1
            if tries[name] <= failures:
                raise exc
            return name

        return body

    @memable.workflow("retries")
    async def wf(ctx: Context) -> list[str]:
        out = [await ctx.step("ok", flaky("ok", 2, OSError("x")), retry=RetryPolicy.fixed(3, 0))]
        try:
            await ctx.step(
                "never", flaky("never", 99, OSError("boom")), retry=RetryPolicy.fixed(3, 0)
            )
        except memable.RetriesExhausted as exc:
            assert isinstance(exc.__cause__, OSError)
            out.append(f"exhausted after {exc.attempts}")
        try:
            policy = RetryPolicy.fixed(5, 0, on=KeyError)
            await ctx.step("other", flaky("other", 99, ValueError("v")), retry=policy)
        except memable.StepFailed as exc:
            assert not isinstance(exc, memable.RetriesExhausted)
            out.append(f"not retried {exc.attempts}")
        try:
            await ctx.step(
                "perm",
                flaky("perm", 99, memable.Permanent(KeyError("k"))),
                retry=RetryPolicy.fixed(5, 0),
            )
        except memable.StepFailed as exc:
            assert isinstance(exc.__cause__, memable.Permanent)
            assert isinstance(exc.__cause__.__cause__, KeyError)
            out.append(f"permanent {exc.attempts}")
        backoff = RetryPolicy.exponential(attempts=3, base=0.001, jitter=False)
        out.append(await ctx.step("exp", flaky("exp", 2, OSError("x")), retry=backoff))
        return out

    async with Engine(make_storage(), workflows=[wf]) as engine:
        assert await engine.run(wf) == [
            "ok",
            "exhausted after 3",
            "not retried 1",
            "permanent 1",
            "exp",
        ]
    assert tries == {"ok": 3, "never": 3, "other": 1, "perm": 1, "exp": 3}


async def test_engine_default_policy_and_step_override(make_storage: StorageFactory) -> None:
    """Engine(retry=...) applies to steps without their own policy; a step's own wins."""
    tries: collections.Counter[str] = collections.Counter()

    def failing(name: str) -> Callable[[], Awaitable[int]]:
        async def body() -> int:
            tries[name] += 1
            raise OSError(name)

        return body

    @memable.workflow("defaults")
    async def wf(ctx: Context) -> None:
        for key, policy in (("default", None), ("own", RetryPolicy.fixed(2, 0))):
            try:
                await ctx.step(key, failing(key), retry=policy)
            except memable.StepFailed:
                pass

    async with Engine(make_storage(), workflows=[wf], retry=RetryPolicy.fixed(4, 0)) as engine:
        await engine.run(wf)
    assert tries == {"default": 4, "own": 2}


async def test_timeouts_are_retried(make_storage: StorageFactory) -> None:
    """An attempt that times out is retried under the policy; the next one succeeds."""
    attempts: list[int] = []

    async def sometimes_slow() -> int:
        attempts.append(1)
        if len(attempts) == 1:
            await anyio.sleep_forever()
        return len(attempts)

    @memable.workflow("retry-timeout")
    async def wf(ctx: Context) -> int:
        return await ctx.step("s", sometimes_slow, timeout=0.05, retry=RetryPolicy.fixed(2, 0))

    async with Engine(make_storage(), workflows=[wf]) as engine:
        assert await engine.run(wf) == 2


async def test_dead_letter_then_resume_with_a_fresh_budget(make_storage: StorageFactory) -> None:
    """A failed step is dead-lettered and fails the instance; resume runs it again."""
    broken = True
    tries: collections.Counter[str] = collections.Counter()

    async def first() -> int:
        tries["first"] += 1
        return 1

    async def charge() -> int:
        tries["charge"] += 1
        if broken:
            raise OSError("card service down")
        return 41

    @memable.workflow("dead-letter")
    async def wf(ctx: Context) -> int:
        one = await ctx.step("first", first)
        return one + await ctx.step("charge", charge, retry=RetryPolicy.fixed(2, 0))

    async with Engine(make_storage(), workflows=[wf]) as engine:
        invocation = await engine.invoke(wf, instance_id="o")
        outcome = await invocation.wait()
        assert isinstance(outcome, memable.Failed)
        assert outcome.error.type == "memable.RetriesExhausted"
        with pytest.raises(memable.WorkflowFailed) as caught:
            await invocation.result()
        assert caught.value.instance_id == "o"
        assert isinstance(caught.value.__cause__, memable.RetriesExhausted)
        info = await engine.state(wf, "o")
        assert info.status == "failed"
        assert info.finished_at is not None
        assert info.error is not None
        assert "card service down" in info.error.traceback
    dead = {step.key: step for step in peek(make_storage(), lambda s: s.load_steps("o"))}
    assert dead["charge"].state == "dead"
    assert dead["charge"].attempts == 2
    assert tries == {"first": 1, "charge": 2}

    broken = False
    async with Engine(make_storage(), workflows=[wf]) as engine:
        assert isinstance(await engine.handle(wf, "o").wait(), memable.Failed)  # from storage
        assert await (await engine.resume(wf, "o")).result() == 42
    assert tries == {"first": 1, "charge": 3}


async def test_a_caught_failure_replays_without_running_the_body(
    make_storage: StorageFactory,
) -> None:
    """A workflow that caught StepFailed takes the same path after a crash."""
    tries: collections.Counter[str] = collections.Counter()
    reached, release = anyio.Event(), anyio.Event()

    async def bad() -> int:
        tries["bad"] += 1
        raise ValueError("nope")

    async def block() -> int:
        tries["block"] += 1
        reached.set()
        await release.wait()
        return 1

    @memable.workflow("caught")
    async def wf(ctx: Context) -> str:
        try:
            await ctx.step("bad", bad)
        except memable.StepFailed as exc:
            path = f"caught {exc.attempts}"
        await ctx.step("block", block)
        return path

    async with Engine(make_storage(), workflows=[wf], shutdown_timeout=0) as engine:
        await engine.invoke(wf, instance_id="c")
        await reached.wait()
    release.set()
    async with Engine(make_storage(), workflows=[wf]) as engine:
        assert await engine.handle(wf, "c").result() == "caught 1"
    assert tries == {"bad": 1, "block": 2}


async def test_step_sync_runs_blocking_code_in_a_thread(make_storage: StorageFactory) -> None:
    """step_sync memoises a blocking function; its timeout raises StepTimeout."""
    import threading
    import time

    threads: list[str] = []

    def blocking(n: int) -> int:
        threads.append(threading.current_thread().name)
        return n * 2

    def too_slow() -> int:
        time.sleep(0.3)
        return 0

    @memable.workflow("sync")
    async def wf(ctx: Context) -> int:
        value = await ctx.step_sync("double", blocking, 21)
        try:
            await ctx.step_sync("slow", too_slow, timeout=0.01)
        except memable.StepTimeout:
            return value
        return -1

    async with Engine(make_storage(), workflows=[wf]) as engine:
        assert await engine.run(wf, instance_id="s") == 42
        assert await engine.run(wf, instance_id="s") == 42
    assert len(threads) == 1
    assert threads[0] != threading.current_thread().name


async def test_step_sync_replays_its_result_and_its_failure(
    make_storage: StorageFactory,
) -> None:
    """A recorded step_sync is replayed on the next pass (its result, or its recorded
    failure), its function not called again."""
    go = SuspendPoint("go:v1", int)
    calls: list[str] = []

    def double(n: int) -> int:
        calls.append("double")
        return n * 2

    def broken() -> int:
        calls.append("broken")
        raise ValueError("no")

    @memable.workflow("sync-replay")
    async def wf(ctx: Context) -> str:
        value = await ctx.step_sync("double", double, 21)
        try:
            await ctx.step_sync("broken", broken)
        except memable.StepFailed as exc:
            failed = type(exc).__name__
        return f"{value} {failed} {await ctx.suspend(go)}"

    async with Engine(make_storage(), workflows=[wf]) as engine:
        invocation = await engine.invoke(wf, instance_id="s")
        assert isinstance(await invocation.wait(), Suspended)
        await engine.signal(wf, "s", go, 5)
        assert await invocation.result() == "42 StepFailed 5"
    assert calls == ["double", "broken"]


async def test_result_types(make_storage: StorageFactory) -> None:
    """Types come from annotations or returns=; mismatches and unstorable values fail clearly."""
    calls = Calls()

    async def wrong() -> int:
        return "not an int"  # type: ignore[return-value]

    async def unstorable() -> object:
        return object()

    @memable.workflow("types")
    async def wf(ctx: Context) -> list[str]:
        out = [str(await ctx.step("lambda", lambda: calls.body("l", 5)(), returns=int))]
        try:
            await ctx.step("untyped", lambda: calls.body("u")())
        except TypeError as exc:
            out.append("returns=" in str(exc))  # type: ignore[arg-type]
        try:
            await ctx.step("wrong", wrong)
        except memable.StepFailed as exc:  # a permanent step failure, with a dead letter
            mismatch = exc.__cause__
            assert isinstance(mismatch, memable.TypeMismatch)
            out.append(f"{mismatch.key} {mismatch.expected} {mismatch.found}")
        try:
            await ctx.step("unstorable", unstorable)
        except memable.StepFailed as exc:
            assert isinstance(exc.__cause__, memable.SerializationError)
            out.append(exc.__cause__.key)
        return [str(x) for x in out]

    async with Engine(make_storage(), workflows=[wf]) as engine:
        assert await engine.run(wf, instance_id="t") == ["5", "True", "wrong int str", "unstorable"]
    assert calls.counts == {"l": 1}
    steps = {step.key: step.state for step in peek(make_storage(), lambda s: s.load_steps("t"))}
    assert steps == {"lambda": "completed", "wrong": "dead", "unstorable": "dead"}


async def test_a_changed_result_type_is_a_type_mismatch_on_replay(
    make_storage: StorageFactory,
) -> None:
    """A key recorded as int but now declared str raises TypeMismatch naming both."""

    async def as_int() -> int:
        return 3

    async def as_str() -> str:
        return "3"

    go = SuspendPoint("go:v1", int)

    def version(fn: Callable[[], Awaitable[object]]) -> memable.Workflow[None, str]:
        async def wf(ctx: Context) -> str:
            try:
                value = repr(await ctx.step("value:v1", fn))
            except memable.TypeMismatch as exc:
                return f"{exc.key}|{exc.expected}|{exc.found}|{exc}"
            await ctx.suspend(go)
            return value

        return memable.Workflow("retyped", wf)

    old = version(as_int)
    async with Engine(make_storage(), workflows=[old]) as engine:
        assert isinstance(await (await engine.invoke(old, instance_id="r")).wait(), Suspended)
    new = version(as_str)
    async with Engine(make_storage(), workflows=[new]) as engine:
        fresh = await engine.invoke(new, instance_id="fresh")
        await fresh.wait()
        await engine.signal(new, "fresh", go, 1)
        assert await fresh.result() == "'3'"
        # The signal runs r again: the new code replays the step recorded as int.
        replayed = await (await engine.signal(new, "r", go, 1)).result()
    key, expected, found, message = replayed.split("|")
    assert (key, expected, found) == ("value:v1", "str", "int")
    assert "bump the key" in message


async def test_concurrent_steps_replay_by_key(make_storage: StorageFactory) -> None:
    """Steps taken by concurrent tasks of one run, finishing in any order, replay each its
    own recorded result (by key, whatever the order the tasks reach them in), and none
    of them runs again; a dead letter among them raises its recorded failure again."""
    go = SuspendPoint("go:v1", int)
    calls: collections.Counter[str] = collections.Counter()

    async def body(i: int) -> str:
        calls[f"c{i}"] += 1
        for _ in range(i % 3):
            await anyio.lowlevel.checkpoint()
        if i == 7:
            raise ValueError("seven")
        return f"r{i}"

    passes: list[int] = []

    @memable.workflow("concurrent-steps")
    async def wf(ctx: Context) -> list[str]:
        passes.append(len(passes))
        results = [""] * 40

        async def take(i: int) -> None:
            try:
                results[i] = await ctx.step(f"c{i}", body, i)
            except memable.StepFailed as exc:
                results[i] = f"failed {exc.key}"

        async with anyio.create_task_group() as tg:  # the second pass in the other order
            for i in reversed(range(40)) if passes[-1] else range(40):
                tg.start_soon(take, i)
        await ctx.suspend(go)
        return results

    expected = [f"r{i}" if i != 7 else "failed c7" for i in range(40)]
    async with Engine(make_storage(), workflows=[wf]) as engine:
        invocation = await engine.invoke(wf, instance_id="c")
        assert isinstance(await invocation.wait(), Suspended)
        await engine.signal(wf, "c", go, 1)
        assert await invocation.result() == expected
    assert passes == [0, 1]
    assert calls == {f"c{i}": 1 for i in range(40)}


async def test_set_status_is_live_and_persisted(make_storage: StorageFactory) -> None:
    """set_status shows at once in state() and is stored with the next write."""
    checked, release = anyio.Event(), anyio.Event()

    async def wait_for_release() -> int:
        checked.set()
        await release.wait()
        return 1

    @memable.workflow("status")
    async def wf(ctx: Context) -> int:
        ctx.set_status("warming up")
        return await ctx.step("wait", wait_for_release)

    async with Engine(make_storage(), workflows=[wf]) as engine:
        await engine.invoke(wf, instance_id="s")
        await checked.wait()
        assert (await engine.state(wf, "s")).status_message == "warming up"
        release.set()
        await engine.handle(wf, "s").result()
    async with Engine(make_storage(), workflows=[wf]) as engine:
        assert (await engine.state(wf, "s")).status_message == "warming up"


# -- instances ---------------------------------------------------------------------------------


@memable.workflow("echo")
async def echo(ctx: Context, text: str) -> str:
    return text.upper()


async def test_invoke_is_idempotent_with_caller_ids(make_storage: StorageFactory) -> None:
    """Same id and input: the same instance, nothing re-runs; another input: a conflict."""
    runs: list[str] = []

    @memable.workflow("idem")
    async def wf(ctx: Context, text: str) -> str:
        runs.append(text)
        return text

    async with Engine(make_storage(), workflows=[wf, echo]) as engine:
        first = await engine.invoke(wf, "x", instance_id="id-1")
        second = await engine.invoke(wf, "x", instance_id="id-1")
        assert await first.result() == await second.result() == "x"
        assert await engine.run(wf, "x", instance_id="id-1") == "x"
        with pytest.raises(memable.InstanceConflict, match="different input"):
            await engine.invoke(wf, "y", instance_id="id-1")
        with pytest.raises(memable.InstanceConflict, match="belongs to workflow 'idem'"):
            await engine.invoke(echo, "x", instance_id="id-1")
    async with Engine(make_storage(), workflows=[wf]) as engine:
        assert await engine.run(wf, "x", instance_id="id-1") == "x"
    assert runs == ["x"]


async def test_concurrent_invokes_of_one_id_run_once(make_storage: StorageFactory) -> None:
    """At most one task per instance: 20 racing invokes share one run."""
    runs: list[int] = []
    results: list[int] = []

    @memable.workflow("racy")
    async def wf(ctx: Context, n: int) -> int:
        runs.append(n)
        await anyio.sleep(0.01)
        return n

    async with Engine(make_storage(), workflows=[wf]) as engine:

        async def start() -> None:
            results.append(await engine.run(wf, 5, instance_id="same"))

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(start)
    assert runs == [5]
    assert results == [5] * 20


@pytest.mark.parametrize("bad_id", ["", "a/b", "_x", "k" * 300, "line\nbreak", 12])
async def test_invalid_instance_ids_store_nothing(
    make_storage: StorageFactory, bad_id: object
) -> None:
    """A bad instance id raises InvalidKey before anything is written."""
    async with Engine(make_storage(), workflows=[echo]) as engine:
        with pytest.raises(memable.InvalidKey):
            await engine.invoke(echo, "x", instance_id=bad_id)  # type: ignore[call-overload]
        assert list(await engine.instances()) == []


async def test_generated_ids_are_unique_and_time_ordered(make_storage: StorageFactory) -> None:
    """Without an id, each invoke makes a new one; they sort by creation (listed newest
    first)."""
    async with Engine(make_storage(), workflows=[echo]) as engine:
        ids = [(await engine.invoke(echo, "a")).instance_id for _ in range(5)]
        listed = [info.instance_id for info in await engine.instances(echo)]
    assert len(set(ids)) == 5
    assert sorted(ids) == ids == listed[::-1]


async def test_a_workflow_that_raises_ends_failed(make_storage: StorageFactory) -> None:
    """wait() returns Failed; result() raises WorkflowFailed chaining the error."""

    @memable.workflow("raises")
    async def wf(ctx: Context) -> int:
        raise ValueError("bad order")

    @memable.workflow("bad-output")
    async def bad_output(ctx: Context) -> int:
        return "nope"  # type: ignore[return-value]

    async with Engine(make_storage(), workflows=[wf, bad_output]) as engine:
        invocation = await engine.invoke(wf, instance_id="f")
        outcome = await invocation.wait()
        assert isinstance(outcome, memable.Failed)
        assert (outcome.error.type, outcome.error.message) == ("ValueError", "bad order")
        with pytest.raises(memable.WorkflowFailed) as caught:
            await invocation.result()
        assert isinstance(caught.value.__cause__, ValueError)
        outcome = await (await engine.invoke(bad_output, instance_id="b")).wait()
        assert isinstance(outcome, memable.Failed)
        assert outcome.error.type == "memable.TypeMismatch"
    async with Engine(make_storage(), workflows=[wf]) as engine:
        again = await engine.handle(wf, "f").wait()
        assert isinstance(again, memable.Failed)
        assert again.error.message == "bad order"


async def test_recovery_options(
    make_storage: StorageFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """resume_on_start=False leaves a crash alone; resume() runs it; orphans are logged."""
    calls = Calls()
    reached, never = anyio.Event(), anyio.Event()
    wf = make_blocking_workflow(calls, reached, never, name="recoverable")
    async with Engine(make_storage(), workflows=[wf], shutdown_timeout=0) as engine:
        await engine.invoke(wf, 1, instance_id="r")
        await reached.wait()

    released = anyio.Event()
    released.set()
    wf2 = make_blocking_workflow(calls, anyio.Event(), released, name="recoverable")
    async with Engine(make_storage(), workflows=[wf2], resume_on_start=False) as engine:
        assert (await engine.state(wf2, "r")).status == "running"
        with pytest.raises(memable.NotStarted, match="resume"):
            await engine.handle(wf2, "r").wait()
        assert await (await engine.resume(wf2, "r")).result() == 1 + 1 + 2 + 3 + 4

    reached3 = anyio.Event()
    wf3 = make_blocking_workflow(calls, reached3, never, name="orphan")
    async with Engine(make_storage(), workflows=[wf3], shutdown_timeout=0) as engine:
        await engine.invoke(wf3, 1, instance_id="o")
        await reached3.wait()
    with caplog.at_level(logging.WARNING, logger="memable"):
        async with Engine(make_storage(), workflows=[echo]) as engine:
            assert (await engine.instances(status="running"))[0].instance_id == "o"
    assert "unregistered workflow 'orphan'" in caplog.text


async def test_graceful_shutdown(make_storage: StorageFactory) -> None:
    """Leaving waits for instances that finish in time and cancels the rest."""
    started = anyio.Event()
    cancelled: list[str] = []

    async def quick() -> int:
        started.set()
        await anyio.sleep(0.05)
        return 1

    async def forever() -> int:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.append("forever")
        return 0  # pragma: no cover

    @memable.workflow("quick")
    async def quick_wf(ctx: Context) -> int:
        return await ctx.step("q", quick)

    @memable.workflow("forever")
    async def forever_wf(ctx: Context) -> int:
        return await ctx.step("f", forever)

    engine = Engine(make_storage(), workflows=[quick_wf, forever_wf], shutdown_timeout=0.5)
    with pytest.raises(memable.NotStarted):
        await engine.invoke(quick_wf)
    async with engine:
        await engine.invoke(quick_wf, instance_id="q")
        await engine.invoke(forever_wf, instance_id="f")
        await started.wait()
    assert cancelled == ["forever"]
    with pytest.raises(memable.NotStarted):
        await engine.instances()
    with pytest.raises(RuntimeError, match="only once"):
        async with engine:
            pass  # pragma: no cover
    async with Engine(make_storage(), workflows=[quick_wf], resume_on_start=False) as later:
        assert (await later.state(quick_wf, "q")).status == "completed"
        assert [i.status for i in await later.instances(forever_wf)] == ["running"]


async def test_resume_handle_state_and_instances(make_storage: StorageFactory) -> None:
    """Reading and resuming name unknown ids and wrong workflows clearly."""
    async with Engine(make_storage(), workflows=[echo]) as engine:
        with pytest.raises(memable.InstanceNotFound):
            await engine.resume(echo, "nope")
        with pytest.raises(memable.InstanceNotFound):
            await engine.handle(echo, "nope").wait()
        with pytest.raises(memable.InstanceNotFound):
            await engine.state(echo, "nope")
        assert list(await engine.instances()) == []
        await engine.run(echo, "a", instance_id="e1")
        await engine.run(echo, "b", instance_id="e2")
        resumed = await engine.resume(echo, "e1")  # completed: nothing runs
        assert await resumed.result() == "A"
        assert [i.instance_id for i in await engine.instances(echo, status="completed")] == [
            "e2",
            "e1",
        ]
        assert len(await engine.instances(limit=1)) == 1
        assert list(await engine.instances(status="failed")) == []

        @memable.workflow("other")
        async def other(ctx: Context) -> None:
            pass

        engine.register(other)
        with pytest.raises(memable.InstanceConflict):
            await engine.state(other, "e1")


async def test_registration_rules() -> None:
    """Registration resolves annotations at once and refuses ambiguity."""

    async def no_return(ctx: Context, n: int):  # type: ignore[no-untyped-def]
        return n

    async def no_input_annotation(ctx: Context, n) -> int:  # type: ignore[no-untyped-def]
        return 1

    async def first(ctx: Context) -> None:
        pass

    async def second(ctx: Context) -> None:
        pass

    with pytest.raises(TypeError, match="no_return"):
        Engine(workflows=[memable.Workflow("a", no_return)])
    with pytest.raises(TypeError, match="input parameter 'n'"):
        Engine().register(memable.Workflow("b", no_input_annotation))
    engine = Engine(workflows=[memable.Workflow("c", first)])
    with pytest.raises(ValueError, match="already registered"):
        engine.register(memable.Workflow("c", second))
    with pytest.raises(memable.InvalidKey):
        memable.workflow("bad/name")
    with pytest.raises(TypeError, match="async def"):
        memable.Workflow("sync", lambda ctx: None)  # type: ignore[arg-type,return-value]
    async with Engine(workflows=[echo]) as running:
        unregistered = memable.Workflow("d", first)
        with pytest.raises(memable.WorkflowNotFound):
            await running.invoke(unregistered)
        with pytest.raises(memable.TypeMismatch):
            await running.invoke(echo, 5)  # type: ignore[misc]
        assert list(await running.instances()) == []
        running.register(unregistered)  # while running
        await running.run(unregistered, instance_id="late")
        assert (await running.state(unregistered, "late")).status == "completed"


async def test_many_concurrent_instances_share_commits(make_storage: StorageFactory) -> None:
    """50 instances x 5 steps at once: every result right, every step recorded."""

    async def square(n: int) -> int:
        await anyio.lowlevel.checkpoint()
        return n * n

    @memable.workflow("fan")
    async def wf(ctx: Context, n: int) -> int:
        return sum([await ctx.step(f"s{i}", square, n + i) for i in range(5)])

    results: dict[int, int] = {}
    async with Engine(make_storage(), workflows=[wf]) as engine:

        async def one(n: int) -> None:
            results[n] = await engine.run(wf, n, instance_id=f"n{n}")

        async with anyio.create_task_group() as tg:
            for n in range(50):
                tg.start_soon(one, n)
    assert results == {n: sum((n + i) ** 2 for i in range(5)) for n in range(50)}
    counts = peek(make_storage(), lambda s: [len(s.load_steps(f"n{n}")) for n in range(50)])
    assert counts == [5] * 50
