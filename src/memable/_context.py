"""The context a workflow receives: its steps, its status, its identity.

``Context`` keeps only the user-facing verbs; what is recorded lives in the run's
:class:`~memable._journal.Journal`, the step path (replay, attempts, dead letters) in
:mod:`memable._steps`, the retry loop beside :class:`~memable.RetryPolicy`, fan-outs in
:mod:`memable._fanout`, and the run's phases in :mod:`memable._run`.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar, TypeVarTuple, final, overload

import anyio

from . import _telemetry
from ._durations import check_deadline, deadline, seconds
from ._exceptions import (
    SerializationError,
    SuspendTimeout,
    TypeMismatch,
)
from ._fanout import FanOut
from ._keys import check_text
from ._log import logger
from ._records import SignalDrop, TimerRecord
from ._retry import RetryPolicy
from ._run import unwind
from ._serde import type_name
from ._settled import Settled
from ._steps import NOT_RECORDED, Steps
from ._suspend import Readable
from ._workflow import Workflow

if TYPE_CHECKING:
    from ._journal import Journal
    from ._kernel import Kernel
    from ._run import Driver, Run

__all__ = ["Context"]

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741
PosArgsT = TypeVarTuple("PosArgsT")


@final
class Context:
    """What a running workflow instance uses to take durable steps.

    One context exists per run of an instance and is passed to the workflow function as
    its first argument. Its methods are the only way a workflow touches durable state.
    It belongs to that run: using it after the workflow function returned is an error.

    Example:
        >>> import anyio, memable
        >>> async def fetch_price(order_id: str) -> int:
        ...     return 42
        >>> @memable.workflow("order")
        ... async def order(ctx: memable.Context, order_id: str) -> int:
        ...     ctx.set_status("pricing")
        ...     return await ctx.step("price:v1", fetch_price, order_id)
        >>> async def main() -> int:
        ...     async with memable.Engine(workflows=[order]) as engine:
        ...         return await engine.run(order, "o-17")
        >>> anyio.run(main)
        42
    """

    __slots__ = (
        "_closed", "_journal", "_kernel", "_last_fn", "_last_type", "_run", "_runner", "_steps"
    )  # fmt: skip

    def __init__(self, kernel: Kernel, runner: Driver, run: Run, journal: Journal) -> None:
        self._kernel = kernel
        self._runner = runner
        self._run = run
        self._journal = journal
        self._closed = False
        self._last_fn: object = None
        self._last_type: Any = None
        self._steps = Steps(kernel, runner, run, journal)

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

    def close(self) -> None:
        """The workflow function returned: the context may not be used any more."""
        self._closed = True

    def _result_type(self, key: str, fn: Callable[..., Any], returns: object) -> Any:
        """The type step *key* stores; the last function's is kept (a replay loop calls
        the same function again and again)."""
        if returns is None and fn is self._last_fn:
            return self._last_type
        tp = self._kernel.serde.result_type(key, fn, returns)
        if returns is None:
            self._last_fn, self._last_type = fn, tp
        return tp

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(
                f"the Context of instance {self.instance_id!r} was used after its workflow"
                " function returned; a Context belongs to one run: do not keep it, or hand it"
                " to tasks that outlive the workflow"
            )

    def set_status(self, message: str) -> None:
        """Set the instance's status message.

        It is live at once (``engine.state`` in this process) and persisted with the next
        write of this instance (its next step result, or its end).

        Example:
            >>> import anyio, memable
            >>> @memable.workflow("pack")
            ... async def pack(ctx: memable.Context) -> None:
            ...     ctx.set_status("waiting for the warehouse")
            ...     await ctx.sleep("wait:v1", 3600)
            >>> async def main() -> None:
            ...     async with memable.Engine(workflows=[pack]) as engine:
            ...         await (await engine.invoke(pack, instance_id="p-1")).wait()
            ...         print((await engine.state(pack, "p-1")).status_message)
            >>> anyio.run(main)
            waiting for the warehouse
        """
        self._check_open()
        check_text(message, f"the status message of {self.instance_id!r}")
        self._run.set_status(message)
        self._kernel.status.publish(self.instance_id, "running", message)

    async def step(
        self,
        key: str,
        fn: Callable[[*PosArgsT], Awaitable[T]],
        /,
        *args: *PosArgsT,
        timeout: float | timedelta | None = None,
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
            >>> import anyio, memable
            >>> calls = []
            >>> async def charge(order_id: str, cents: int) -> str:
            ...     calls.append(order_id)
            ...     return f"ch-{order_id}-{cents}"
            >>> @memable.workflow("pay")
            ... async def pay(ctx: memable.Context, order_id: str) -> str:
            ...     return await ctx.step("charge:v1", charge, order_id, 1250, timeout=5)
            >>> async def main() -> None:
            ...     async with memable.Engine(workflows=[pay]) as engine:
            ...         print(await engine.run(pay, "o-17", instance_id="pay-1"))
            ...         print(await engine.run(pay, "o-17", instance_id="pay-1"))  # recorded
            >>> anyio.run(main)
            ch-o-17-1250
            ch-o-17-1250
            >>> calls
            ['o-17']
        """
        self._check_open()
        self._journal.claim(key, "step")
        limit = None if timeout is None else seconds(timeout, f"timeout of step {key!r}")
        tp = self._result_type(key, fn, returns)
        steps = self._steps
        value = steps.replay(key, tp)
        if value is not NOT_RECORDED:  # a recorded step: nothing awaited but a checkpoint
            if steps.due:
                await steps.pause()
            return typing.cast(T, value)
        return await steps.take(key, tp, functools.partial(fn, *args), limit, retry)

    async def step_sync(
        self,
        key: str,
        fn: Callable[[*PosArgsT], T],
        /,
        *args: *PosArgsT,
        timeout: float | timedelta | None = None,
        retry: RetryPolicy | None = None,
        returns: object = None,
    ) -> T:
        """Like :meth:`step`, for a blocking function run in a worker thread.

        A thread cannot be cancelled: when an attempt times out, memable stops waiting for
        it and moves on (retrying or failing the step), but the thread runs to its end.

        Example:
            >>> import anyio, memable
            >>> import hashlib
            >>> def digest(data: bytes) -> str:
            ...     return hashlib.sha256(data).hexdigest()[:12]
            >>> @memable.workflow("digest")
            ... async def body(ctx: memable.Context) -> str:
            ...     return await ctx.step_sync("digest:v1", digest, b"report")
            >>> async def main() -> None:
            ...     async with memable.Engine(workflows=[body]) as engine:
            ...         print(await engine.run(body))
            >>> anyio.run(main)
            845e91831319
        """
        self._check_open()
        self._journal.claim(key, "step")
        limit = None if timeout is None else seconds(timeout, f"timeout of step {key!r}")
        tp = self._result_type(key, fn, returns)
        steps = self._steps
        value = steps.replay(key, tp)
        if value is not NOT_RECORDED:
            if steps.due:
                await steps.pause()
            return typing.cast(T, value)
        call = functools.partial(fn, *args)

        async def in_thread() -> T:
            # Abandoned when cancelled (a timeout, a cancel, shutdown): it runs to its end.
            return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)

        return await steps.take(key, tp, in_thread, limit, retry)

    # -- children -----------------------------------------------------------------------------

    async def child(self, key: str, wf: Workflow[I, T], input: I, /) -> T:
        """Run the registered workflow *wf* as a child instance and return its output.

        The child is a real instance with the id ``"{parent_id}/{key}-0"``, its own steps
        and status; it runs in this instance's task. Its result is recorded under *key*.

        Raises:
            ChildFailed: the child failed or was cancelled (its error chained).

        Example:
            >>> import anyio, memable
            >>> @memable.workflow("invoice")
            ... async def invoice(ctx: memable.Context, order_id: str) -> str:
            ...     return f"INV-{order_id}"
            >>> @memable.workflow("order")
            ... async def order(ctx: memable.Context, order_id: str) -> str:
            ...     return await ctx.child("invoice:v1", invoice, order_id)
            >>> async def main() -> None:
            ...     async with memable.Engine(workflows=[order, invoice]) as engine:
            ...         print(await engine.run(order, "o-17", instance_id="o-17"))
            ...         print((await engine.state(invoice, "o-17/invoice:v1-0")).parent_id)
            >>> anyio.run(main)
            INV-o-17
            o-17
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
            >>> import anyio, memable
            >>> async def label(ctx: memable.Context, sku: str) -> str:
            ...     return f"label for {sku}"
            >>> @memable.workflow("labels")
            ... async def labels(ctx: memable.Context) -> list[str]:
            ...     return await ctx.fan_out("label:v1", label, ["a", "b", "c"], limit=2)
            >>> async def main() -> None:
            ...     async with memable.Engine(workflows=[labels]) as engine:
            ...         print(await engine.run(labels, instance_id="l"))  # ids l/label:v1-0 ...
            >>> anyio.run(main)
            ['label for a', 'label for b', 'label for c']
        """
        self._check_open()
        self._journal.claim(key, "fan-out")
        if limit is not None and (
            not isinstance(typing.cast(object, limit), int) or isinstance(limit, bool) or limit < 1
        ):
            raise ValueError(f"fan_out limit must be an int of at least 1, not {limit!r}")
        children = list(items)
        fan_out = FanOut(
            self._kernel, self._runner, self._run, self._journal, key, fn, children, settle
        )
        attributes = {"memable.fan_out.key": key, "memable.fan_out.children": len(children),
                      **self._attributes()}  # fmt: skip
        with _telemetry.span(f"memable.fan_out {key}", attributes):
            return await fan_out.run(limit, self._steps.write, self._wait)

    def _attributes(self) -> dict[str, str]:
        return {"memable.instance_id": self.instance_id, "memable.workflow": self.workflow_name}

    # -- suspension ---------------------------------------------------------------------------

    async def suspend(
        self,
        point: Readable[T],
        /,
        *,
        status: str | None = None,
        timeout: float | timedelta | None = None,
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
            >>> import anyio, memable
            >>> from datetime import timedelta
            >>> approval = memable.SuspendPoint("approval:v1", bool)
            >>> @memable.workflow("order")
            ... async def order(ctx: memable.Context) -> bool:
            ...     return await ctx.suspend(approval, status="waiting for a manager",
            ...                              timeout=timedelta(days=2))
            >>> async def main() -> None:
            ...     async with memable.Engine(workflows=[order]) as engine:
            ...         invocation = await engine.invoke(order, instance_id="o-1")
            ...         print(await invocation.wait())
            ...         await engine.signal(order, "o-1", approval, True)
            ...         print(await invocation.result())
            >>> anyio.run(main)
            Suspended(waiting_on=('approval:v1',), status='waiting for a manager', children=0)
            True
        """
        self._check_open()
        key = point.key
        self._journal.claim(key, "suspend point")
        signal = self._journal.signals.get(key)
        if signal is not None:
            if signal.timed_out:
                raise SuspendTimeout(key)
            assert signal.payload is not None
            what = f"the signal {key!r} of instance {self.instance_id!r}"
            try:
                return typing.cast(
                    T, self._kernel.serde.decode(signal.payload, point.payload_type, key, what)
                )
            except (TypeMismatch, SerializationError) as exc:
                await self._drop_signal(key, exc)
        self._kernel.points[(self.workflow_name, key)] = type_name(point.payload_type)
        if status is not None:
            self.set_status(status)
        if timeout is not None and key not in self._journal.timers:
            when = deadline(self._kernel.clock.now(), timeout, f"timeout of suspend point {key!r}")
            await self._add_timer(key, when, "timeout")
        await self._wait(key)

    async def _drop_signal(self, key: str, error: Exception) -> None:
        """A payload of another type was delivered for *key* (by code that did not know
        this point's type): set it aside, log why, and wait for one that reads."""
        logger.error(
            "instance %r: %s; the payload is set aside and the instance waits at %r for"
            " another signal",
            self.instance_id,
            error,
            key,
        )
        await self._kernel.write([SignalDrop(instance_id=self.instance_id, key=key)])
        del self._journal.signals[key]

    async def sleep(self, key: str, delay: float | timedelta, /) -> None:
        """Sleep durably for *delay*: a timer that survives restarts.

        The deadline (now + *delay*, UTC, from the engine's clock) is recorded the first
        time this key is reached; until it passes the instance is suspended and holds no
        task. Later runs see the deadline has passed and return at once.

        Example:
            >>> import anyio, memable
            >>> from datetime import timedelta
            >>> from memable.testing import ManualClock
            >>> @memable.workflow("cool")
            ... async def cool(ctx: memable.Context) -> str:
            ...     await ctx.sleep("cool-off:v1", timedelta(hours=1))
            ...     return "cooled"
            >>> async def main() -> None:
            ...     clock = ManualClock()
            ...     async with memable.Engine(workflows=[cool], clock=clock) as engine:
            ...         invocation = await engine.invoke(cool)
            ...         print(await invocation.wait())
            ...         await clock.advance(timedelta(hours=1))
            ...         print(await invocation.result())
            >>> anyio.run(main)
            Suspended(waiting_on=('cool-off:v1',), status=None, children=0)
            cooled
        """
        self._check_open()
        self._journal.claim(key, "timer")
        timer = self._journal.timers.get(key)
        if timer is None:
            when = deadline(self._kernel.clock.now(), delay, f"delay of timer {key!r}")
            timer = await self._add_timer(key, when, "sleep")
        await self._sleep(timer)

    async def sleep_until(self, key: str, when: datetime, /) -> None:
        """Sleep durably until *when* (a timezone-aware datetime).

        Example:
            >>> import anyio, memable
            >>> from datetime import UTC, datetime
            >>> from memable.testing import ManualClock
            >>> @memable.workflow("party")
            ... async def party(ctx: memable.Context) -> str:
            ...     await ctx.sleep_until("new-year:v1", datetime(2027, 1, 1, tzinfo=UTC))
            ...     return "happy new year"
            >>> async def main() -> None:
            ...     clock = ManualClock(datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
            ...     async with memable.Engine(workflows=[party], clock=clock) as engine:
            ...         invocation = await engine.invoke(party)
            ...         await invocation.wait()
            ...         await clock.set(datetime(2027, 1, 1, tzinfo=UTC))
            ...         print(await invocation.result())
            >>> anyio.run(main)
            happy new year
        """
        self._check_open()
        check_deadline(when, f"deadline of timer {key!r}")
        self._journal.claim(key, "timer")
        timer = self._journal.timers.get(key)
        if timer is None:
            timer = await self._add_timer(key, when, "sleep")
        await self._sleep(timer)

    async def _sleep(self, timer: TimerRecord) -> None:
        if timer.fired or timer.deadline <= self._kernel.now():
            await anyio.lowlevel.checkpoint()
            return
        await self._wait(timer.key)

    async def _add_timer(
        self, key: str, when: datetime, kind: Literal["sleep", "timeout"]
    ) -> TimerRecord:
        timer = TimerRecord(
            instance_id=self.instance_id, key=key, deadline=when.timestamp(), kind=kind
        )
        attributes = {"memable.timer.key": key, "memable.timer.kind": kind,
                      "memable.timer.deadline": when.isoformat(), **self._attributes()}  # fmt: skip
        with _telemetry.span(f"memable.timer {key}", attributes):
            return await self._write_timer(timer)

    async def _write_timer(self, timer: TimerRecord) -> TimerRecord:
        self._run.enter()  # registered before the run may suspend
        try:
            await self._steps.write([timer], "recording a timer")
        finally:
            self._run.leave()
        self._journal.record_timer(timer)
        self._kernel.wake_timers(timer.deadline)
        return timer

    async def _wait(self, key: str) -> NoReturn:
        """Wait on *key* until the instance suspends (and this run is cancelled).

        A task whose own scope is already cancelled (a sibling that the workflow cancelled
        because it no longer needs what it waits for) is cancelled here instead: it must
        not suspend the instance.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._run.wait_on(key):  # the first waiter writes the suspension
            await self._runner.suspend(self._run)
        await unwind()


# Public as memable.Context, which loads this module on first use (see memable/__init__.py).
Context.__module__ = "memable"
