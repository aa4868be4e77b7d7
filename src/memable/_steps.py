"""The recorded-step path of a run: replay a recorded key, or run the body's attempts
and record its result or dead letter (:meth:`memable.Context.step` and ``step_sync``)."""

from __future__ import annotations

import time
import typing
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio

from . import _log, _telemetry
from ._exceptions import SerializationError, StepFailed, StorageError, TypeMismatch
from ._failures import dead_letter_error, replayed_failure, step_failure
from ._records import InstanceUpdate, StepRecord, Write
from ._retry import AttemptsFailed, RetryPolicy, run_attempts
from ._run import unwind
from ._serde import NOT_QUICK

if TYPE_CHECKING:
    from ._journal import Journal
    from ._kernel import Kernel
    from ._run import Driver, Run

__all__ = ["NOT_RECORDED", "Steps"]

T = TypeVar("T")

_NO_RETRY = RetryPolicy.none()

#: What :meth:`Steps.replay` returns for a key that has nothing recorded.
NOT_RECORDED: Final = object()

#: Seconds of replay (recorded steps served without awaiting) between two checkpoints.
_REPLAY_SLICE = 0.002


class Steps:
    """Takes the steps of one run: replayed from its journal, or run and recorded."""

    __slots__ = (
        "_debug", "_journal", "_kernel", "_run", "_runner", "_traced", "_yield_at"
    )  # fmt: skip

    def __init__(
        self,
        kernel: Kernel,
        runner: Driver,
        run: Run,
        journal: Journal,
    ) -> None:
        self._kernel = kernel
        self._runner = runner
        self._run = run
        self._journal = journal
        self._yield_at = time.perf_counter() + _REPLAY_SLICE
        # Looked up once a pass, not once a step: a tracer provider set meanwhile traces
        # the steps of the instance's next pass (and every later run).
        self._traced = _telemetry.enabled()
        self._debug = _log.logger.isEnabledFor(_log.DEBUG)  # asked again at each checkpoint

    async def write(self, writes: list[Write], doing: str) -> None:
        """Commit the run's writes (and its changed status); on a storage error the run
        ends as if the process died here, and runs again once storage answers."""
        run = self._run
        message = run.take_status()
        if message is not None:
            writes = [*writes, InstanceUpdate(instance_id=run.instance_id,
                                              updated_at=self._kernel.now(),
                                              status_message=message,
                                              only_if=("running",))]  # fmt: skip
        try:
            await self._kernel.write(writes, suspending=run.phase == "suspending")
        except StorageError:
            self._runner.storage_failed(run, doing)
            await unwind()

    def what(self, key: str) -> str:
        """How messages name step *key* of this run."""
        return f"step {key!r} of instance {self._run.instance_id!r}"

    def replay(self, key: str, tp: object) -> Any:
        """The recorded result of step *key* (its recorded failure raised), or
        :data:`NOT_RECORDED`. Synchronous: a replayed step awaits nothing (see
        :meth:`pause`)."""
        journal = self._journal
        stored = journal.values.get(key)
        if stored is None and not journal.recorded(key):
            return NOT_RECORDED
        self._run.replayed += 1
        if self._debug:
            _log.event(
                _log.DEBUG,
                "step %r of %r replayed",
                key,
                self._run.instance_id,
                instance_id=self._run.instance_id,
                workflow=self._run.workflow.name,
                step=key,
            )
        serde = self._kernel.serde
        if stored is not None:
            value = serde.quick_decode(stored, tp)
            if value is NOT_QUICK:
                value = serde.decode(stored, tp, key, self.what(key))
            return value
        if key in journal.values:  # completed, without a value (a storage's bug)
            return serde.decode(typing.cast(str, None), tp, key, self.what(key))
        attempts, error = journal.dead[key]
        raise replayed_failure(key, attempts, error)

    @property
    def due(self) -> bool:
        """Whether replay has gone on long enough without a checkpoint (see :meth:`pause`)."""
        return time.perf_counter() >= self._yield_at

    async def pause(self) -> None:
        """A checkpoint: a long replay awaits nothing else, so it lets the engine's other
        tasks run once every :data:`_REPLAY_SLICE` seconds."""
        await anyio.lowlevel.checkpoint()
        self._yield_at = time.perf_counter() + _REPLAY_SLICE
        self._debug = _log.logger.isEnabledFor(_log.DEBUG)

    async def take(
        self,
        key: str,
        tp: object,
        call: Callable[[], Awaitable[T]],
        timeout: float | None,
        retry: RetryPolicy | None,
    ) -> T:
        """The result of step *key*, which has nothing recorded (:meth:`replay` said so):
        run by *call* and recorded."""
        self._run.enter()
        try:
            return await self._attempts(key, tp, call, timeout, retry)
        finally:
            self._run.leave()

    async def _attempts(
        self,
        key: str,
        tp: object,
        call: Callable[[], Awaitable[T]],
        timeout: float | None,
        retry: RetryPolicy | None,
    ) -> T:
        kernel = self._kernel
        if kernel.crash_points:  # crash injection (memable.testing) only
            await self._runner.maybe_crash(self._run, key, "before")
        policy = retry or kernel.retry or _NO_RETRY
        started = kernel.now()
        scope = (
            _telemetry.span(
                f"memable.step {key}",
                {
                    "memable.step.key": key,
                    "memable.instance_id": self._run.instance_id,
                    "memable.workflow": self._run.workflow.name,
                },
            )
            if self._traced
            else _telemetry.NULL
        )
        with scope as span:

            def retrying(attempt: int, exc: Exception) -> None:
                _log.event(
                    _log.WARNING,
                    "step %r of %r failed (attempt %d of %d), retrying: %r",
                    key,
                    self._run.instance_id,
                    attempt,
                    policy.attempts,
                    exc,
                    instance_id=self._run.instance_id,
                    workflow=self._run.workflow.name,
                    step=key,
                )
                if span is not None:
                    span.add_event("memable.step.retry", {"memable.step.attempt": attempt,
                                   "memable.error.type": type(exc).__name__})  # fmt: skip

            try:
                result, attempts = await run_attempts(policy, call, timeout, retrying)
            except AttemptsFailed as failed:
                failure = step_failure(key, failed)
                _telemetry.failed(span, failure)
                await self._dead_letter(key, failed.attempts, started, failed.error, failure)
                raise failure from failed.error
            try:
                envelope = kernel.serde.encode(result, tp, key, self.what(key))
            except (TypeMismatch, SerializationError) as exc:
                # The body returned what cannot be recorded faithfully: a permanent failure.
                failure = StepFailed(key, attempts, f"{type(exc).__name__}: {exc}")
                _telemetry.failed(span, failure)
                await self._dead_letter(key, attempts, started, exc, failure)
                raise failure from exc
            if span is not None:
                span.set_attributes({"memable.step.attempts": attempts,
                                     "memable.step.outcome": "completed"})  # fmt: skip
        if kernel.crash_points:
            await self._runner.maybe_crash(self._run, key, "after")
        record = StepRecord(
            instance_id=self._run.instance_id,
            key=key,
            state="completed",
            value=envelope,
            attempts=attempts,
            started_at=started,
            finished_at=kernel.now(),
        )
        await self.write([record], "recording a step")
        self._journal.record_step(record)
        return result

    async def _dead_letter(
        self, key: str, attempts: int, started: float, error: BaseException, failure: Exception
    ) -> None:
        _log.event(_log.ERROR, "step %r of %r dead-lettered after %d attempts: %s", key,
                   self._run.instance_id, attempts, failure, instance_id=self._run.instance_id,
                   workflow=self._run.workflow.name, step=key)  # fmt: skip
        record = StepRecord(
            instance_id=self._run.instance_id,
            key=key,
            state="dead",
            error=dead_letter_error(error, failure),
            attempts=attempts,
            started_at=started,
            finished_at=self._kernel.now(),
        )  # fmt: skip
        await self.write([record], "recording a dead letter")
        self._journal.record_step(record)
