"""A stateful model of the engine (Hypothesis): random sequences of public calls, restarts
included, checked after every step against a simple model of what storage must hold."""

from __future__ import annotations

import collections
import contextlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

import memable
from memable import Context, Engine, SuspendPoint
from memable.testing import ManualClock

POINT = SuspendPoint("value:v1", int)


@attrs.define
class Expected:
    """What the model says about one instance."""

    n: int
    phase: str = "waiting"  # waiting → sleeping → completed; or cancelled
    payload: int | None = None
    deadline: float | None = None
    finished_at: float | None = None


class EngineModel(RuleBasedStateMachine):
    """Drive one engine (restarted at random) over a SQLite file, and a model beside it."""

    ids = Bundle("ids")

    def __init__(self, backend: str, path: Path) -> None:
        super().__init__()
        self.stack = contextlib.ExitStack()
        self.portal: BlockingPortal = self.stack.enter_context(start_blocking_portal(backend))
        self.path = path
        path.unlink(missing_ok=True)
        self.clock = ManualClock()
        self.bodies: collections.Counter[str] = collections.Counter()
        self.model: dict[str, Expected] = {}
        self.purged: set[str] = set()
        self.counter = 0

        async def double(instance_id: str, n: int) -> int:
            self.bodies[instance_id] += 1
            return 2 * n

        async def flow(ctx: Context, n: int) -> int:
            doubled = await ctx.step("double:v1", double, ctx.instance_id, n)
            value = await ctx.suspend(POINT)
            await ctx.sleep("rest:v1", timedelta(hours=1))
            return doubled + value

        self.wf = memable.Workflow("model", flow)
        self.engine_cm: contextlib.ExitStack | None = None
        self.engine = self._start()

    def _start(self) -> Engine:
        self.engine_cm = contextlib.ExitStack()
        engine = Engine(self.path, workflows=[self.wf], clock=self.clock, shutdown_timeout=0)
        return self.engine_cm.enter_context(self.portal.wrap_async_context_manager(engine))

    def now(self) -> float:
        return self.clock.now().timestamp()

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self.portal.call(lambda: fn(*args, **kwargs))

    def teardown(self) -> None:
        if self.engine_cm is not None:
            self.engine_cm.close()
        self.stack.close()

    # -- rules ------------------------------------------------------------------------------

    @rule(target=ids, n=st.integers(-1000, 1000))
    def invoke(self, n: int) -> str:
        self.counter += 1
        instance_id = f"i{self.counter}"
        invocation = self.call(self.engine.invoke, self.wf, n, instance_id=instance_id)
        outcome = self.call(invocation.wait)
        assert outcome == memable.Suspended(waiting_on=("value:v1",))
        self.model[instance_id] = Expected(n=n)
        return instance_id

    @rule(instance_id=ids, value=st.integers(-5, 5))
    def signal(self, instance_id: str, value: int) -> None:
        expected = self.model.get(instance_id)
        if instance_id in self.purged:
            with pytest.raises(memable.InstanceNotFound):
                self.call(self.engine.signal, self.wf, instance_id, POINT, value)
        elif expected is None:  # pragma: no cover - every id in the bundle is modelled
            raise AssertionError(instance_id)
        elif expected.phase == "waiting":
            invocation = self.call(self.engine.signal, self.wf, instance_id, POINT, value)
            assert self.call(invocation.wait) == memable.Suspended(waiting_on=("rest:v1",))
            expected.phase, expected.payload = "sleeping", value
            expected.deadline = self.now() + 3600
        elif expected.phase == "sleeping":
            with pytest.raises(memable.SignalSuperseded):
                self.call(self.engine.signal, self.wf, instance_id, POINT, value)
        else:
            with pytest.raises(memable.SignalRejected):
                self.call(self.engine.signal, self.wf, instance_id, POINT, value)

    @rule(minutes=st.integers(1, 120))
    def advance(self, minutes: int) -> None:
        self.call(self.clock.advance, timedelta(minutes=minutes))
        now = self.now()
        for instance_id, expected in self.model.items():
            due = expected.deadline is not None and expected.deadline <= now
            if expected.phase == "sleeping" and due:
                result = self.call(self.engine.handle(self.wf, instance_id).result)
                assert expected.payload is not None
                assert result == 2 * expected.n + expected.payload
                expected.phase, expected.finished_at = "completed", now

    @rule()
    def restart(self) -> None:
        assert self.engine_cm is not None
        self.engine_cm.close()
        self.engine = self._start()

    @rule(instance_id=consumes(ids))
    def cancel(self, instance_id: str) -> None:
        expected = self.model[instance_id]
        if instance_id in self.purged:
            with pytest.raises(memable.InstanceNotFound):
                self.call(self.engine.cancel, self.wf, instance_id)
            return
        self.call(self.engine.cancel, self.wf, instance_id, "model")
        if expected.phase in ("waiting", "sleeping"):
            expected.phase, expected.finished_at = "cancelled", self.now()

    @rule(instance_id=ids)
    def resume(self, instance_id: str) -> None:
        if instance_id in self.purged:
            with pytest.raises(memable.InstanceNotFound):
                self.call(self.engine.resume, self.wf, instance_id)
            return
        invocation = self.call(self.engine.resume, self.wf, instance_id)
        outcome = self.call(invocation.wait)
        expected = self.model[instance_id]
        if expected.phase in ("waiting", "sleeping"):
            assert isinstance(outcome, memable.Suspended)

    @rule()
    def purge(self) -> None:
        now = self.now()
        gone = {
            i
            for i, e in self.model.items()
            if i not in self.purged and e.finished_at is not None and e.finished_at < now
        }
        assert self.call(self.engine.purge, timedelta(0)) == len(gone)
        self.purged |= gone

    # -- what must hold ---------------------------------------------------------------------

    @invariant()
    def storage_matches_the_model(self) -> None:
        infos = {i.instance_id: i for i in self.call(self.engine.instances, limit=None)}
        assert set(infos) == set(self.model) - self.purged
        for instance_id, info in infos.items():
            expected = self.model[instance_id]
            status = {"waiting": "suspended", "sleeping": "suspended"}.get(
                expected.phase, expected.phase
            )
            assert info.status == status, (instance_id, info, expected)
        assert all(count == 1 for count in self.bodies.values()), self.bodies


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_engine_matches_its_model(backend: str, tmp_path: Path) -> None:
    """Random sequences of invoke/signal/advance/restart/cancel/resume/purge keep the
    engine and the model in step: statuses, results, and every step body run once."""
    machine: Any = lambda: EngineModel(backend, tmp_path / "model.db")  # noqa: E731
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=40,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
