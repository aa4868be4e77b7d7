"""Logging and OpenTelemetry: lifecycle log records with instance fields, and spans that
replay never multiplies (asserted with the SDK's in-memory exporter)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import memable
from memable import Context, Engine, RetryPolicy, SuspendPoint, _telemetry
from memable._inbox import apply_directly
from memable.storage import MemoryStorage, PostgresStorage
from memable.testing import ManualClock

from . import pg
from .helpers import StorageFactory, peek

APPROVAL = SuspendPoint("approval:v1", bool)
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> TracerProvider:
    """An SDK tracer provider for memable's spans in this test only (the global provider
    can be set once per process, and would then trace every later test)."""
    sdk = TracerProvider()
    monkeypatch.setattr(_telemetry, "enabled", lambda: True)
    monkeypatch.setattr(_telemetry, "tracer", lambda: sdk.get_tracer("memable"))
    return sdk


@pytest.fixture
def spans(provider: TracerProvider) -> InMemorySpanExporter:
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


def named(finished: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name.startswith(prefix)]


def make_order(flaky: list[bool]) -> memable.Workflow[int, str]:
    async def price(n: int) -> int:
        return 7 * n

    async def charge(cents: int) -> str:
        if flaky and flaky.pop(0):
            raise ConnectionError("card service down")
        return f"ch-{cents}"

    @memable.workflow("order")
    async def order(ctx: Context, n: int) -> str:
        cents = await ctx.step("price:v1", price, n)
        receipt = await ctx.step("charge:v1", charge, cents, retry=RetryPolicy.fixed(3, 0))
        return receipt if await ctx.suspend(APPROVAL) else "rejected"

    return order


async def test_spans_of_a_run_and_of_its_resumption(
    make_storage: StorageFactory, spans: InMemorySpanExporter, provider: TracerProvider
) -> None:
    """The first run is the invoke span's child; the run a signal resumes is a trace of
    its own, linked to the invoke and the signal spans; executed steps have spans (with
    their attempts), replayed steps are only counted."""
    order = make_order([True])  # charge fails once, then succeeds
    tracer = provider.get_tracer("test")
    async with Engine(make_storage(), workflows=[order]) as engine:
        with tracer.start_as_current_span("request"):
            invocation = await engine.invoke(order, 3, instance_id="o1")
        assert isinstance(await invocation.wait(), memable.Suspended)
        with tracer.start_as_current_span("webhook"):
            await engine.signal(order, "o1", APPROVAL, True)
        assert await invocation.result() == "ch-21"
    finished = spans.get_finished_spans()
    (request,) = named(finished, "request")
    (invoke,) = named(finished, "memable.invoke order")
    (signal,) = named(finished, "memable.signal approval:v1")
    first, second = sorted(named(finished, "memable.run order"), key=lambda s: s.start_time or 0)
    assert invoke.parent is not None
    assert invoke.parent.span_id == request.context.span_id
    assert first.parent is not None
    assert first.parent.span_id == invoke.context.span_id
    assert first.context.trace_id == request.context.trace_id
    assert dict(first.attributes or {})["memable.run.outcome"] == "suspended"
    assert dict(first.attributes or {})["memable.steps.replayed"] == 0

    assert second.parent is None
    linked = {link.context.span_id for link in second.links}
    assert linked == {invoke.context.span_id, signal.context.span_id}
    attributes = dict(second.attributes or {})
    assert attributes["memable.steps.replayed"] == 2
    assert attributes["memable.run.outcome"] == "completed"
    assert attributes["memable.instance_id"] == "o1"

    steps = named(finished, "memable.step")
    assert [s.name for s in steps] == ["memable.step price:v1", "memable.step charge:v1"]
    assert all(s.parent is not None and s.parent.span_id == first.context.span_id for s in steps)
    charge = dict(steps[1].attributes or {})
    assert charge["memable.step.attempts"] == 2
    assert charge["memable.step.outcome"] == "completed"
    assert [e.name for e in steps[1].events] == ["memable.step.retry"]
    (suspend,) = named(finished, "memable.suspend")
    assert dict(suspend.attributes or {})["memable.waiting_on"] == ("approval:v1",)
    assert dict(signal.attributes or {})["memable.signal.outcome"] == "claimed"


async def test_dead_letters_timers_and_fan_outs_have_spans(spans: InMemorySpanExporter) -> None:
    async def boom() -> int:
        raise ValueError("no stock")

    async def label(ctx: Context, item: str) -> str:
        return item.upper()

    @memable.workflow("busy")
    async def busy(ctx: Context) -> list[str]:
        await ctx.sleep("nap:v1", 0)
        labels = await ctx.fan_out("label:v1", label, ["a", "b"])
        try:
            await ctx.step("stock:v1", boom)
        except memable.StepFailed:
            pass
        return labels

    async with Engine(MemoryStorage(), workflows=[busy]) as engine:
        assert await engine.run(busy, instance_id="b") == ["A", "B"]
    finished = spans.get_finished_spans()
    (stock,) = named(finished, "memable.step stock:v1")
    assert stock.status.status_code == trace.StatusCode.ERROR
    assert [e.name for e in stock.events] == ["exception"]
    (timer,) = named(finished, "memable.timer nap:v1")
    assert dict(timer.attributes or {})["memable.timer.kind"] == "sleep"
    (fan,) = named(finished, "memable.fan_out label:v1")
    assert dict(fan.attributes or {})["memable.fan_out.children"] == 2
    children = named(finished, "memable.run _busy.label:v1")
    assert len(children) == 2
    assert all(c.parent is not None and c.parent.span_id == fan.context.span_id for c in children)


async def test_a_replayed_thousand_step_instance_emits_no_step_spans(
    spans: InMemorySpanExporter,
) -> None:
    async def one(n: int) -> int:
        return n

    @memable.workflow("long")
    async def long(ctx: Context) -> int:
        total = 0
        for n in range(1000):
            total += await ctx.step(f"s{n}", one, n)
        if not await ctx.suspend(APPROVAL):
            return -1
        return total

    async with Engine(MemoryStorage(), workflows=[long]) as engine:
        invocation = await engine.invoke(long, instance_id="l")
        assert isinstance(await invocation.wait(), memable.Suspended)
        assert len(named(spans.get_finished_spans(), "memable.step")) == 1000
        spans.clear()
        await engine.signal(long, "l", APPROVAL, True)
        assert await invocation.result() == sum(range(1000))
    finished = spans.get_finished_spans()
    assert named(finished, "memable.step") == []
    (run,) = named(finished, "memable.run long")
    assert dict(run.attributes or {})["memable.steps.replayed"] == 1000


def make_hold(gate: list[bool], entered: anyio.Event | None = None) -> memable.Workflow[None, str]:
    """Waits for APPROVAL, then ships: a step that hangs (setting *entered*) if *gate*
    holds a value when it starts."""

    async def ship() -> str:
        if gate:
            if entered is not None:
                entered.set()
            await anyio.sleep_forever()
        return "shipped"

    @memable.workflow("hold")
    async def hold(ctx: Context) -> str:
        if not await ctx.suspend(APPROVAL):
            return "rejected"
        return await ctx.step("ship:v1", ship)

    return hold


def run_spans(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return sorted(named(finished, f"memable.run {name}"), key=lambda s: s.start_time or 0)


def linked(span: ReadableSpan) -> set[int]:
    return {link.context.span_id for link in span.links}


async def test_a_run_in_another_engine_links_to_the_signal_span(
    make_storage: StorageFactory, spans: InMemorySpanExporter
) -> None:
    """Engine A delivers a signal, and stops while the run it started hangs; engine B, a
    new engine on the same database (the process after a restart), runs the instance
    again: its run links to A's signal span (stored with the payload) and invoke span."""
    gate = [True]
    hold = make_hold(gate)
    async with Engine(make_storage(), workflows=[hold], shutdown_timeout=0) as a:
        invocation = await a.invoke(hold, instance_id="h")
        assert isinstance(await invocation.wait(), memable.Suspended)
        await a.signal(hold, "h", APPROVAL, True)
    finished = spans.get_finished_spans()
    (invoke,) = named(finished, "memable.invoke hold")
    (signal,) = named(finished, "memable.signal approval:v1")
    spans.clear()
    gate.clear()
    async with Engine(make_storage(), workflows=[hold]) as b:
        assert await b.handle(hold, "h").result() == "shipped"
    (run,) = run_spans(spans.get_finished_spans(), "hold")
    assert run.parent is None
    assert linked(run) == {invoke.context.span_id, signal.context.span_id}
    assert dict(run.attributes or {})["memable.run.outcome"] == "completed"


async def test_only_the_signals_that_woke_a_run_are_linked(spans: InMemorySpanExporter) -> None:
    """The run a signal wakes links to it; the run a timer wakes later links to the invoke
    only; an early signal (kept until the run got to its point) woke no run."""
    first, second = SuspendPoint("first:v1", int), SuspendPoint("second:v1", int)

    @memable.workflow("steps")
    async def steps(ctx: Context) -> int:
        a = await ctx.suspend(first)
        await ctx.sleep("nap:v1", timedelta(minutes=5))
        return a + await ctx.suspend(second)

    clock = ManualClock()
    async with Engine(MemoryStorage(), workflows=[steps], clock=clock) as engine:
        invocation = await engine.invoke(steps, instance_id="s")
        assert isinstance(await invocation.wait(), memable.Suspended)
        await engine.signal(steps, "s", second, 2)  # early: kept until the run gets there
        await engine.signal(steps, "s", first, 1)
        assert isinstance(await invocation.wait(), memable.Suspended)  # on the timer
        await clock.advance(timedelta(minutes=5))
        assert await invocation.result() == 3
    finished = spans.get_finished_spans()
    (invoke,) = named(finished, "memable.invoke steps")
    (early,) = named(finished, "memable.signal second:v1")
    (woke,) = named(finished, "memable.signal first:v1")
    runs = run_spans(finished, "steps")
    assert [dict(r.attributes or {})["memable.run.outcome"] for r in runs] == [
        "suspended", "suspended", "completed"
    ]  # fmt: skip
    assert [linked(r) for r in runs] == [
        set(),  # the first run is the invoke span's child
        {invoke.context.span_id, woke.context.span_id},
        {invoke.context.span_id},
    ]
    assert runs[1].links[1].context.span_id == woke.context.span_id  # linked once
    assert len(runs[1].links) == 2
    assert early.context.span_id not in linked(runs[2])


async def test_a_signal_a_client_writes_directly_is_linked(
    make_storage: StorageFactory, spans: InMemorySpanExporter
) -> None:
    """A client that writes a signal without an engine (the command line or the dashboard
    on Postgres, or on a SQLite file no engine holds) makes its span too: the run an engine
    makes of the instance later links to it."""
    hold = make_hold([])
    async with Engine(make_storage(), workflows=[hold]) as engine:
        invocation = await engine.invoke(hold, instance_id="h")
        assert isinstance(await invocation.wait(), memable.Suspended)
    client = make_storage()
    if isinstance(client, PostgresStorage):
        client = client.client()  # as the command line opens it: no engine row
    answer = peek(client, lambda storage: apply_directly(
        storage, "signal", "h", now=time.time(), key="approval:v1", payload="true"
    ))  # fmt: skip
    assert json.loads(answer)["outcome"] == "claimed"
    (signal,) = named(spans.get_finished_spans(), "memable.signal approval:v1")
    async with Engine(make_storage(), workflows=[hold]) as engine:
        assert await engine.handle(hold, "h").result() == "shipped"
    last = run_spans(spans.get_finished_spans(), "hold")[-1]
    assert signal.context.span_id in linked(last)
    assert dict(signal.attributes or {})["memable.signal.outcome"] == "claimed"


async def test_a_signal_to_a_child_is_linked_by_the_childs_run(
    make_storage: StorageFactory, spans: InMemorySpanExporter
) -> None:
    """A signal to a fan-out's child wakes its top-level instance: the child's run (under
    the fan-out span of the parent's new run) is the one linked to the signal's span."""
    ok = SuspendPoint("ok:v1", bool)

    async def item(ctx: Context, n: int) -> int:
        return n if await ctx.suspend(ok) else -n

    @memable.workflow("fan")
    async def fan(ctx: Context) -> list[int]:
        return await ctx.fan_out("item:v1", item, [1, 2])

    async with Engine(make_storage(), workflows=[fan]) as engine:
        invocation = await engine.invoke(fan, instance_id="f")
        assert isinstance(await invocation.wait(), memable.Suspended)
        await engine.signal(fan, "f/item:v1-0", ok, True)
        assert isinstance(await invocation.wait(), memable.Suspended)
        await engine.signal(fan, "f/item:v1-1", ok, False)
        assert await invocation.result() == [1, -2]
    finished = spans.get_finished_spans()
    signals = {dict(s.attributes or {})["memable.instance_id"]: s.context.span_id
               for s in named(finished, "memable.signal ok:v1")}  # fmt: skip
    woken = {
        dict(r.attributes or {})["memable.instance_id"]: linked(r)
        for r in run_spans(finished, "_fan.item:v1")
        if r.links
    }
    assert woken == {child: {span_id} for child, span_id in signals.items()}
    (invoke,) = named(finished, "memable.invoke fan")
    parents = run_spans(finished, "fan")[1:]
    assert [linked(r) for r in parents] == [{invoke.context.span_id}] * 2


async def test_a_signal_through_one_engine_links_the_run_of_another(
    postgres_server: pg.PostgresServer, spans: InMemorySpanExporter
) -> None:
    """Postgres, two engines at once: A delivers the signal and its run hangs until A
    stops; B, running meanwhile, claims the instance and its run links to A's signal."""
    gate, entered = [True], anyio.Event()
    hold = make_hold(gate, entered)
    schema = postgres_server.new_schema()

    def storage() -> PostgresStorage:
        return PostgresStorage(postgres_server.dsn, schema=schema, lease=1.0, pool_size=2)

    async with Engine(storage(), workflows=[hold]) as b:
        async with Engine(storage(), workflows=[hold], shutdown_timeout=0) as a:
            invocation = await a.invoke(hold, instance_id="h")
            assert isinstance(await invocation.wait(), memable.Suspended)
            await a.signal(hold, "h", APPROVAL, True)
            await entered.wait()  # A's run hangs in the step: A stops it, B runs it
            gate.clear()
        assert await b.handle(hold, "h").result(finished=True) == "shipped"
    finished = spans.get_finished_spans()
    (signal,) = named(finished, "memable.signal approval:v1")
    first, in_a, in_b = run_spans(finished, "hold")
    assert [dict(r.attributes or {})["memable.run.outcome"] for r in (first, in_a, in_b)] == [
        "suspended", "shutdown", "completed"
    ]  # fmt: skip
    assert signal.context.span_id in linked(in_a)
    assert signal.context.span_id in linked(in_b)


async def test_a_signal_from_the_command_line_is_linked(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    """``memable signal`` in another process, while an engine owns the SQLite file: the
    engine applies it from its inbox in a signal span, and the run it wakes links to it."""
    hold = make_hold([])
    path = tmp_path / "cli.db"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    async with Engine(path, workflows=[hold]) as engine:
        invocation = await engine.invoke(hold, instance_id="h")
        assert isinstance(await invocation.wait(), memable.Suspended)
        command = [sys.executable, "-m", "memable", "--db", str(path), "signal", "h",
                   "approval:v1", "true"]  # fmt: skip
        done = await anyio.run_process(command, env=env, check=False)
        assert done.returncode == 0, done.stderr.decode()
        assert await invocation.result() == "shipped"
    finished = spans.get_finished_spans()
    (signal,) = named(finished, "memable.signal approval:v1")
    assert dict(signal.attributes or {})["memable.signal.outcome"] == "claimed"
    second = run_spans(finished, "hold")[-1]
    assert signal.context.span_id in linked(second)


def records_of(caplog: pytest.LogCaptureFixture, instance_id: str) -> list[tuple[str, str]]:
    return [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if getattr(r, "instance_id", None) == instance_id
    ]


async def test_lifecycle_log_records(
    make_storage: StorageFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="memable")
    order = make_order([True])

    @memable.workflow("doomed")
    async def doomed(ctx: Context) -> None:
        async def boom() -> None:
            raise ValueError("no stock")

        await ctx.step("stock:v1", boom, retry=RetryPolicy.fixed(2, 0))

    async with Engine(make_storage(), workflows=[order, doomed]) as engine:
        invocation = await engine.invoke(order, 3, instance_id="o1")
        await invocation.wait()
        await engine.signal(order, "o1", APPROVAL, True)
        await invocation.result()
        await engine.invoke(order, 4, instance_id="o2")
        await engine.cancel(order, "o2", reason="customer left")
        await (await engine.invoke(doomed, instance_id="d")).wait()
    messages = records_of(caplog, "o1")
    assert ("INFO", "instance 'o1' of 'order' started") in messages
    assert ("WARNING", "step 'charge:v1' of 'o1' failed (attempt 1 of 3), retrying: "
            "ConnectionError('card service down')") in messages  # fmt: skip
    assert ("INFO", "instance 'o1' of 'order' suspended on approval:v1") in messages
    assert ("INFO", "instance 'o1' of 'order' resumed") in messages
    assert ("DEBUG", "step 'price:v1' of 'o1' replayed") in messages
    assert ("INFO", "instance 'o1' of 'order' completed") in messages
    assert ("INFO", "instance 'o2' of 'order' cancelled: customer left") in records_of(caplog, "o2")
    doomed_records = records_of(caplog, "d")
    assert any(
        level == "ERROR" and message.startswith("step 'stock:v1' of 'd' dead-lettered after 2")
        for level, message in doomed_records
    )
    assert any(
        level == "ERROR" and message.startswith("instance 'd' of 'doomed' failed: ")
        for level, message in doomed_records
    )
    step_record = next(r for r in caplog.records if r.getMessage().startswith("step 'charge:v1'"))
    fields: Any = step_record
    assert (fields.instance_id, fields.workflow, fields.step) == ("o1", "order", "charge:v1")


async def test_recovery_is_logged(
    make_storage: StorageFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="memable")
    gate = [True]

    async def wait() -> None:
        if gate:
            await anyio.sleep_forever()

    @memable.workflow("slow")
    async def slow(ctx: Context) -> None:
        await ctx.step("wait:v1", wait)

    async with Engine(make_storage(), workflows=[slow], shutdown_timeout=0) as engine:
        await engine.invoke(slow, instance_id="s")  # left running by the shutdown
    gate.clear()
    caplog.clear()
    async with Engine(make_storage(), workflows=[slow]) as engine:
        await engine.handle(slow, "s").result()
    messages = records_of(caplog, "s")
    assert messages[:2] == [
        ("INFO", "instance 's' of 'slow' recovered"),
        ("INFO", "instance 's' of 'slow' resumed"),
    ]
    assert ("INFO", "instance 's' of 'slow' completed") in messages


async def test_no_log_work_when_the_level_is_off(caplog: pytest.LogCaptureFixture) -> None:
    """With memable's logger at WARNING, no INFO or DEBUG record is even made."""
    caplog.set_level(logging.WARNING, logger="memable")
    order = make_order([])
    async with Engine(MemoryStorage(), workflows=[order]) as engine:
        invocation = await engine.invoke(order, 3, instance_id="o1")
        await invocation.wait()
        await engine.signal(order, "o1", APPROVAL, True)
        await invocation.result()
    assert [r for r in caplog.records if r.name == "memable"] == []


@pytest.mark.parametrize("otel", ["absent", "api only"])
def test_without_an_sdk_no_span_is_made(tmp_path: Path, otel: str) -> None:
    """OpenTelemetry absent (blocked): a workflow runs and none of it is loaded. The API
    without an SDK (no tracer provider set): memable makes no span at all."""
    block = 'sys.modules["opentelemetry"] = None' if otel == "absent" else ""
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            {block}
            import anyio, memable
            from memable import _telemetry

            async def one() -> int:
                return 1

            @memable.workflow("w")
            async def w(ctx: memable.Context) -> int:
                return await ctx.step("one:v1", one)

            async def main() -> int:
                async with memable.Engine(workflows=[w]) as engine:
                    return await engine.run(w)

            assert anyio.run(main) == 1
            assert not _telemetry.enabled()
            assert _telemetry.span("x", {{}}) is _telemetry.NULL
            print("loaded:", [m for m in sys.modules if m.startswith("opentelemetry.")])
            """
        )
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    if otel == "absent":
        assert done.stdout.strip() == "loaded: []"
    else:
        assert "opentelemetry.sdk" not in done.stdout
