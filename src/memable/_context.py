"""The context a workflow receives: its steps, its status, its identity."""

from __future__ import annotations

import functools
import logging
import typing
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal, TypeVar, TypeVarTuple, final, overload

import anyio
import anyio.lowlevel

from ._exceptions import (
    DuplicateStepKey,
    Permanent,
    RetriesExhausted,
    StepFailed,
    StepTimeout,
    SuspendedStepConflict,
    SuspendTimeout,
)
from ._fanout import run_fan_out
from ._keys import check_key
from ._outcome import ErrorInfo, Settled
from ._retry import RetryPolicy
from ._suspend import Readable
from ._workflow import Workflow
from .storage._records import (
    History,
    InstanceUpdate,
    SignalRecord,
    StepRecord,
    TimerRecord,
    Write,
)

if TYPE_CHECKING:
    from ._engine import Engine
    from ._runner import Run

__all__ = ["Context"]

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741
PosArgsT = TypeVarTuple("PosArgsT")

logger = logging.getLogger("memable")

_NO_RETRY = RetryPolicy.none()


@final
class Context:
    """What a running workflow instance uses to take durable steps.

    One context exists per run of an instance and is passed to the workflow function as
    its first argument. Its methods are the only way a workflow touches durable state.

    Example:
        >>> import memable
        >>> async def fetch_price(order_id: str) -> int:
        ...     return 42
        >>> @memable.workflow("order")
        ... async def order(ctx: memable.Context, order_id: str) -> int:
        ...     ctx.set_status("pricing")
        ...     return await ctx.step("price:v1", fetch_price, order_id)
    """

    __slots__ = ("_engine", "_records", "_run", "_signals", "_timers", "_used")

    def __init__(self, engine: Engine, run: Run, history: History) -> None:
        self._engine = engine
        self._run = run
        self._records: dict[str, StepRecord] = {step.key: step for step in history.steps}
        self._signals: dict[str, SignalRecord] = {s.key: s for s in history.signals}
        self._timers: dict[str, TimerRecord] = {t.key: t for t in history.timers}
        self._used: set[str] = set()

    def __repr__(self) -> str:
        return f"<memable.Context of {self.workflow_name}/{self.instance_id}>"

    @property
    def workflow_name(self) -> str:
        """The name of the running workflow."""
        return self._run.workflow.name

    @property
    def instance_id(self) -> str:
        """The id of the running instance."""
        return self._run.instance_id

    def set_status(self, message: str) -> None:
        """Set the instance's status message.

        It is live at once (``engine.state`` in this process) and persisted with the next
        write of this instance (its next step result, or its end).

        Example:
            >>> async def body(ctx: Context) -> None:
            ...     ctx.set_status("waiting for the warehouse")
        """
        if not isinstance(message, str):
            raise TypeError(f"a status message is a str, not {type(message).__name__}")
        self._run.status_message = message
        self._run.status_dirty = True
        self._engine._status.publish(self.instance_id, "running", message)

    async def step(
        self,
        key: str,
        fn: Callable[[*PosArgsT], Awaitable[T]],
        /,
        *args: *PosArgsT,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        returns: object = None,
    ) -> T:
        """Run ``await fn(*args)`` once, durably, under *key*; return its result.

        If *key* already has a recorded result in this instance, that result is returned
        and *fn* is not called. Otherwise *fn* runs (each attempt under *timeout* seconds,
        retried as *retry* says, else as the engine's default policy, else not at all), its
        result is written to storage, and only then returned.

        The stored type is *fn*'s return annotation, or *returns* where it has none.

        Args:
            key: The step's name within this instance, e.g. ``"charge:v1"``. Change it
                (``"charge:v2"``) when what the step does changes.
            fn: An async function.
            args: Positional arguments for *fn*.
            timeout: Seconds each attempt may take before it is cancelled.
            retry: The retry policy for this step.
            returns: The result type, for callables without a return annotation.

        Raises:
            InvalidKey: *key* breaks the key rules.
            DuplicateStepKey: *key* was already used in this run.
            TypeError: the result type cannot be determined.
            StepFailed: the step failed (``StepTimeout``, ``RetriesExhausted`` are kinds).
            TypeMismatch: the recorded result has another type than *fn* returns.

        Example:
            >>> async def charge(order_id: str, cents: int) -> str:
            ...     return "receipt-1"
            >>> async def body(ctx: Context) -> str:
            ...     return await ctx.step("charge:v1", charge, "o-17", 1250, timeout=5)
        """
        self._claim(key)
        tp = self._engine._serde.result_type(key, fn, returns)
        return await self._step(key, tp, functools.partial(fn, *args), timeout, retry)

    async def step_sync(
        self,
        key: str,
        fn: Callable[[*PosArgsT], T],
        /,
        *args: *PosArgsT,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        returns: object = None,
    ) -> T:
        """Like :meth:`step`, for a blocking function run in a worker thread.

        A thread cannot be cancelled: when an attempt times out, memable stops waiting for
        it and moves on (retrying or failing the step), but the thread runs to its end.

        Example:
            >>> import hashlib
            >>> def digest(data: bytes) -> str:
            ...     return hashlib.sha256(data).hexdigest()
            >>> async def body(ctx: Context) -> str:
            ...     return await ctx.step_sync("digest:v1", digest, b"report")
        """
        self._claim(key)
        tp = self._engine._serde.result_type(key, fn, returns)
        call = functools.partial(fn, *args)

        async def in_thread() -> T:
            return await anyio.to_thread.run_sync(call, abandon_on_cancel=timeout is not None)

        return await self._step(key, tp, in_thread, timeout, retry)

    def _claim(self, key: str, what: str = "step key") -> None:
        check_key(key, what)
        if key in self._used:
            raise DuplicateStepKey(
                f"key {key!r} is already used in this run of {self.instance_id!r};"
                " each step, suspend point and timer needs its own key"
            )
        self._used.add(key)

    def _what(self, key: str) -> str:
        return f"step {key!r} of instance {self.instance_id!r}"

    async def _step(
        self,
        key: str,
        tp: object,
        call: Callable[[], Awaitable[T]],
        timeout: float | None,
        retry: RetryPolicy | None,
    ) -> T:
        engine = self._engine
        record = self._records.get(key)
        if record is not None:
            if record.state == "completed":
                assert record.value is not None
                return typing.cast(T, engine._serde.decode(record.value, tp, key, self._what(key)))
            raise _replayed_failure(key, record)
        if key in self._signals or key in self._timers:
            raise SuspendedStepConflict(
                f"key {key!r} of instance {self.instance_id!r} was recorded as a suspend point"
                " or timer and is now used as a step; give the step a new key"
            )
        self._run.in_flight += 1
        try:
            return await self._attempts(key, tp, call, timeout, retry)
        finally:
            self._run.in_flight -= 1
            if not self._run.in_flight:
                self._run.idle.set()

    async def _attempts(
        self,
        key: str,
        tp: object,
        call: Callable[[], Awaitable[T]],
        timeout: float | None,
        retry: RetryPolicy | None,
    ) -> T:
        engine = self._engine
        await engine._runner.maybe_crash(self._run, key, "before")
        policy = retry or engine._retry or _NO_RETRY
        started = engine._now()
        attempt = 0
        while True:
            attempt += 1
            try:
                if timeout is None:
                    result = await call()
                else:
                    with anyio.move_on_after(timeout) as scope:
                        result = await call()
                    if scope.cancelled_caught:
                        raise _AttemptTimedOut(timeout)
            except Exception as exc:
                if attempt >= policy.attempts or not _retryable(policy, exc):
                    failure = _failure(key, attempt, policy, exc)
                    await self._dead_letter(key, attempt, started, exc)
                    raise failure from (exc.__cause__ if isinstance(exc, _AttemptTimedOut) else exc)
                if logger.isEnabledFor(logging.INFO):
                    logger.info(
                        "step %r of %r failed (attempt %d of %d), retrying: %r",
                        key, self.instance_id, attempt, policy.attempts, exc,
                        extra={"instance_id": self.instance_id, "step": key},
                    )  # fmt: skip
                await anyio.sleep(policy.delay_before(attempt + 1))
                continue
            envelope = engine._serde.encode(result, tp, key, self._what(key))
            await engine._runner.maybe_crash(self._run, key, "after")
            record = StepRecord(
                instance_id=self.instance_id,
                key=key,
                state="completed",
                value=envelope,
                attempts=attempt,
                started_at=started,
                finished_at=engine._now(),
            )
            await engine._committer.write(self._with_status(record))
            self._records[key] = record
            return result

    async def _dead_letter(
        self, key: str, attempts: int, started: float, exc: BaseException
    ) -> None:
        record = StepRecord(
            instance_id=self.instance_id,
            key=key,
            state="dead",
            error=ErrorInfo.from_exception(exc).to_json(),
            attempts=attempts,
            started_at=started,
            finished_at=self._engine._now(),
        )  # fmt: skip
        await self._engine._committer.write(self._with_status(record))
        self._records[key] = record

    def _with_status(self, write: Write) -> list[Write]:
        run = self._run
        if not run.status_dirty:
            return [write]
        run.status_dirty = False
        update = InstanceUpdate(
            instance_id=run.instance_id,
            updated_at=self._engine._now(),
            status_message=run.status_message,
            only_if=("running",),
        )
        return [write, update]

    # -- children -----------------------------------------------------------------------------

    async def child(self, key: str, wf: Workflow[I, T], input: I, /) -> T:
        """Run the registered workflow *wf* as a child instance and return its output.

        The child is a real instance with the id ``"{parent_id}/{key}-0"``, its own steps
        and status; it runs in this instance's task. Its result is recorded under *key*.

        Raises:
            ChildFailed: the child failed or was cancelled (its error chained).

        Example:
            >>> import memable
            >>> async def parent(ctx: Context, wf: memable.Workflow[str, int]) -> int:
            ...     return await ctx.child("invoice:v1", wf, "o-17")
        """
        results = await self.fan_out(key, wf, [input])
        return results[0]

    @overload
    async def fan_out(
        self,
        key: str,
        fn: Workflow[I, T] | Callable[[Context, I], Awaitable[T]],
        items: Iterable[I],
        /,
        *,
        limit: int | None = None,
        settle: Literal[False] = False,
    ) -> list[T]: ...

    @overload
    async def fan_out(
        self,
        key: str,
        fn: Workflow[I, T] | Callable[[Context, I], Awaitable[T]],
        items: Iterable[I],
        /,
        *,
        limit: int | None = None,
        settle: Literal[True],
    ) -> list[Settled[T]]: ...

    async def fan_out(
        self,
        key: str,
        fn: Workflow[I, T] | Callable[[Context, I], Awaitable[T]],
        items: Iterable[I],
        /,
        *,
        limit: int | None = None,
        settle: bool = False,
    ) -> list[T] | list[Settled[T]]:
        """Run one child instance per item; return their results in item order.

        *fn* is a registered :class:`~memable.Workflow` or an async function
        ``(ctx, item) -> T`` (children that live under this workflow). Children have the
        ids ``"{parent_id}/{key}-{i}"`` and run in this instance's task, at most *limit* at
        a time. The collected results are recorded under *key*: a re-run parent starts no
        child, and one that crashed half-way runs only the children not yet finished.

        By default the first failure cancels the running siblings, starts no new ones and
        raises :class:`~memable.ChildFailed` (the child's error chained). With
        ``settle=True`` every child runs to its end and each result is an
        :class:`~memable.Ok` or an :class:`~memable.Err`.

        Children may suspend and sleep; the parent then suspends too ("waiting for N
        children") and runs on once the last of them has finished.

        Raises:
            ValueError: *limit* is less than 1.
            ChildFailed: a child failed or was cancelled (unless ``settle=True``).

        Example:
            >>> async def label(ctx: Context, sku: str) -> str:
            ...     return f"label for {sku}"
            >>> async def body(ctx: Context) -> list[str]:
            ...     return await ctx.fan_out("label:v1", label, ["a", "b", "c"], limit=2)
        """
        self._claim(key, "fan-out key")
        if limit is not None and (not isinstance(typing.cast(object, limit), int) or limit < 1):
            raise ValueError(f"fan_out limit must be an int of at least 1, not {limit!r}")
        return await run_fan_out(self, key, fn, list(items), limit, settle)

    # -- suspension ---------------------------------------------------------------------------

    async def suspend(
        self,
        point: Readable[T],
        /,
        *,
        status: str | None = None,
        timeout: timedelta | None = None,
    ) -> T:
        """Wait at *point* for a signal and return its payload.

        If a payload was delivered for ``point.key`` (before or after the workflow got
        here), it is returned at once. Otherwise the instance is recorded as suspended on
        that key (with *status* as its status message) and this run ends: no task and no
        memory stay behind. The signal runs the instance again from the top; recorded steps
        replay and this call then returns the payload.

        With *timeout*, a durable deadline is recorded the first time; if it passes before
        a signal, :class:`~memable.SuspendTimeout` is raised here. Exactly one of the
        signal and the deadline wins; a signal that loses gets
        :class:`~memable.SignalSuperseded`.

        Suspending is not an exception: ``except Exception`` cannot catch it.

        Example:
            >>> from datetime import timedelta
            >>> from memable import SuspendPoint
            >>> approval = SuspendPoint("approval:v1", bool)
            >>> async def body(ctx: Context) -> bool:
            ...     return await ctx.suspend(approval, status="waiting for a manager",
            ...                              timeout=timedelta(days=2))
        """
        key = point.key
        self._claim(key, "suspend point key")
        self._check_not_step(key)
        signal = self._signals.get(key)
        if signal is not None:
            if signal.timed_out:
                raise SuspendTimeout(key)
            assert signal.payload is not None
            return typing.cast(
                T,
                self._engine._serde.decode(
                    signal.payload,
                    point.payload_type,
                    key,
                    f"the signal {key!r} of instance {self.instance_id!r}",
                ),
            )
        if status is not None:
            self.set_status(status)
        if timeout is not None and key not in self._timers:
            await self._add_timer(key, self._engine._clock.now() + timeout, "timeout")
        await self._wait(key)
        raise AssertionError("unreachable: a suspended run is cancelled")  # pragma: no cover

    async def sleep(self, key: str, delay: timedelta, /) -> None:
        """Sleep durably for *delay*: a timer that survives restarts.

        The deadline (now + *delay*, UTC, from the engine's clock) is recorded the first
        time this key is reached; until it passes the instance is suspended and holds no
        task. Later runs see the deadline has passed and return at once.

        Example:
            >>> from datetime import timedelta
            >>> async def body(ctx: Context) -> None:
            ...     await ctx.sleep("cool-off:v1", timedelta(hours=1))
        """
        if not isinstance(delay, timedelta):
            raise TypeError(f"sleep() takes a datetime.timedelta, not {delay!r}")
        await self._sleep(key, lambda: self._engine._clock.now() + delay)

    async def sleep_until(self, key: str, when: datetime, /) -> None:
        """Sleep durably until *when* (a timezone-aware datetime).

        Example:
            >>> from datetime import UTC, datetime
            >>> async def body(ctx: Context) -> None:
            ...     await ctx.sleep_until("new-year:v1", datetime(2027, 1, 1, tzinfo=UTC))
        """
        if not isinstance(typing.cast(object, when), datetime) or when.tzinfo is None:
            raise TypeError(f"sleep_until() takes a timezone-aware datetime, not {when!r}")
        await self._sleep(key, lambda: when)

    async def _sleep(self, key: str, deadline: Callable[[], datetime]) -> None:
        self._claim(key, "timer key")
        self._check_not_step(key)
        timer = self._timers.get(key)
        if timer is None:
            timer = await self._add_timer(key, deadline(), "sleep")
        if timer.fired or timer.deadline <= self._engine._now():
            return
        await self._wait(key)

    def _check_not_step(self, key: str) -> None:
        if key in self._records:
            raise SuspendedStepConflict(
                f"key {key!r} of instance {self.instance_id!r} was recorded as a step and is"
                " now used as a suspend point or timer; give it a new key"
            )

    async def _add_timer(self, key: str, deadline: datetime, kind: str) -> TimerRecord:
        timer = TimerRecord(
            instance_id=self.instance_id,
            key=key,
            deadline=deadline.timestamp(),
            kind="sleep" if kind == "sleep" else "timeout",
        )
        await self._engine._committer.write(self._with_status(timer))
        self._timers[key] = timer
        self._engine._timers.added(timer.deadline)
        return timer

    async def _wait(self, key: str) -> None:
        """Wait on *key* until the instance suspends (and this run is cancelled)."""
        run = self._run
        run.waiting.add(key)
        if run.suspending:
            await anyio.sleep_forever()
        run.suspending = True
        # Let sibling tasks reach their own suspend points, and let steps in flight
        # finish and record, before the instance suspends on every key waited on.
        while True:
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            if not run.in_flight:
                break
            run.idle = anyio.Event()
            await run.idle.wait()
        await self._engine._runner.suspend(run)
        await anyio.sleep_forever()


class _AttemptTimedOut(Exception):
    def __init__(self, timeout: float) -> None:
        super().__init__(f"attempt timed out after {timeout} s")
        self.timeout = timeout
        self.__cause__ = TimeoutError(f"the step's attempt took longer than {timeout} s")


def _retryable(policy: RetryPolicy, exc: Exception) -> bool:
    if isinstance(exc, Permanent):
        return False
    if isinstance(exc, _AttemptTimedOut):
        return policy.retries(TimeoutError())
    return policy.retries(exc)


def _failure(key: str, attempts: int, policy: RetryPolicy, exc: Exception) -> StepFailed:
    if isinstance(exc, _AttemptTimedOut):
        return StepTimeout(key, exc.timeout, attempts)
    if attempts >= policy.attempts > 1 and _retryable(policy, exc):
        return RetriesExhausted(key, attempts, f"{type(exc).__name__}: {exc}")
    return StepFailed(key, attempts, f"{type(exc).__name__}: {exc}")


def _replayed_failure(key: str, record: StepRecord) -> StepFailed:
    """The failure of a dead-lettered step, raised again when a run replays it."""
    error = ErrorInfo.from_json(record.error)
    return StepFailed(key, record.attempts, f"{error} (dead letter; engine.resume() runs it again)")
