"""The engine: owns storage, the task group, and every running instance."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import types
import typing
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, Self, TypeVar, final, overload

import anyio
import anyio.lowlevel
import attrs

from ._background import TimerScheduler, heal, retain
from ._clock import Clock, SystemClock
from ._commit import GroupCommitter
from ._durations import seconds
from ._exceptions import (
    InstanceConflict,
    InstanceNotFound,
    NotStarted,
    SignalRejected,
    SignalSuperseded,
)
from ._ids import root_of
from ._invocation import Invocation
from ._kernel import Kernel, Registry, Store, outcome_of
from ._keys import check_instance_ref, check_key, check_text, new_instance_id
from ._log import logger
from ._outcome import InstanceInfo, Outcome
from ._records import (
    InstanceRecord,
    InstanceState,
    SignalRecord,
)
from ._retry import RetryPolicy
from ._runner import Runner
from ._serde import Serde
from ._status import Instances, StatusHub, StatusStream
from ._suspend import Status, SuspendPoint
from ._workflow import Workflow
from .storage._protocol import Storage

if TYPE_CHECKING:
    import anyio.abc
    import cattrs

__all__ = ["Engine"]

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741
R = TypeVar("R")
T = TypeVar("T")


_NOTHING: Final = object()

#: How many top-level instances an engine runs at once unless told otherwise.
DEFAULT_MAX_RUNNING: Final = 1000


_Phase = Literal["new", "running", "closing", "closed"]

#: What ``resume`` restarts: a failed instance, and one stuck running or suspended.
_RESUMABLE: Final[tuple[InstanceState, ...]] = ("failed", "running", "suspended")


@final
class Engine:
    """Runs workflows durably and keeps their state in a storage.

    ``async with engine:`` opens storage, starts the engine's task group and re-runs
    instances a crash left ``running``. Leaving the block stops new work, waits up to
    *shutdown_timeout* seconds for running instances, then cancels them; an instance
    cancelled by shutdown stays ``running`` in storage and the next engine recovers it.
    Nothing the engine starts outlives the block. An engine can be entered once.

    Args:
        storage: A SQLite file path (created if missing), ``":memory:"`` (the default: a
            private in-memory database), or a :class:`~memable.storage.Storage`.
        workflows: Workflows to register (see :meth:`register`).
        retry: The retry policy of steps that have none of their own.
        resume_on_start: Re-run ``running`` instances on entering.
        shutdown_timeout: Seconds to wait for running instances on leaving.
        retention: Delete finished instances this long after they finished (checked
            periodically; a workflow's own ``retention`` overrides it). ``None`` keeps
            them until :meth:`purge`.
        converter: The cattrs Converter for stored values (by default the engine makes its
            own; the global converter is never used).
        clock: The source of stored time (UTC); :class:`memable.testing` has a controllable
            one.
        max_running: At most this many top-level instances run at once (children run
            inside their parent); the others wait their turn, admitted in order, and due
            timers are claimed as slots free up (``None``: no bound; see docs/scaling.md).

    Example:
        >>> import anyio, memable
        >>> @memable.workflow("double")
        ... async def double(ctx: memable.Context, n: int) -> int:
        ...     async def times_two(n: int) -> int:
        ...         return 2 * n
        ...     return await ctx.step("double:v1", times_two, n)
        >>> async def main() -> int:
        ...     async with memable.Engine(workflows=[double]) as engine:
        ...         return await engine.run(double, 21)
        >>> anyio.run(main)
        42
    """

    def __init__(
        self,
        storage: str | os.PathLike[str] | Storage = ":memory:",
        *,
        workflows: Iterable[Workflow[Any, Any]] = (),
        retry: RetryPolicy | None = None,
        resume_on_start: bool = True,
        shutdown_timeout: float | timedelta = 30.0,
        retention: timedelta | None = None,
        converter: cattrs.Converter | None = None,
        clock: Clock | None = None,
        max_running: int | None = DEFAULT_MAX_RUNNING,
    ) -> None:
        if isinstance(storage, os.PathLike):
            storage = os.fspath(storage)
        if not isinstance(storage, str | Storage):
            raise TypeError(f"storage must be a path or a memable.storage.Storage, not {storage!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, not {retry!r}")
        self._shutdown_timeout = seconds(shutdown_timeout, "shutdown_timeout")
        if retention is not None and seconds(retention, "retention") <= 0:
            raise ValueError(f"retention must be a positive timedelta, not {retention!r}")
        self._retention = retention
        self._last_id = 0  # the timestamp of the last generated instance id
        self._spec = storage  # a path becomes a SQLiteStorage on entering (sqlite3 loads then)
        self._resume_on_start = resume_on_start
        self._registry = Registry()
        self._kernel = Kernel(
            registry=self._registry,
            serde=Serde(converter),
            clock=clock if clock is not None else SystemClock(),
            retry=retry,
            status=StatusHub(),
        )
        self._runner = Runner(self._kernel, max_running)
        self._timers = TimerScheduler(self._kernel, self._runner.claimed, self._runner.room)
        self._phase: _Phase = "new"
        self._stack = contextlib.AsyncExitStack()
        self._abort = False  # leaving the block by an exception: no grace period
        self._owner: tuple[int, object] | None = None  # (thread, event loop) it runs on
        self._instances = Instances(
            status=self._kernel.status,
            runs=self._runner.runs,
            check_running=self._check_running,
            record=self._record,
            outcome=self._outcome,
            live_message=self._live_message,
            settle=self._kernel.settle,
        )
        for wf in workflows:
            self.register(wf)

    def __repr__(self) -> str:
        return f"<memable.Engine storage={self._spec!r} phase={self._phase}>"

    # -- life cycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._phase != "new":
            raise RuntimeError("an Engine can be entered only once; make a new one")
        self._phase = "closing"  # until fully started
        self._owner = (threading.get_ident(), anyio.lowlevel.current_token())
        self._storage = _storage_of(self._spec)
        kernel = self._kernel
        # anyio objects are made here, on the event loop that runs the engine.
        limiter = anyio.CapacityLimiter(max(1, int(getattr(self._storage, "threads", 1))))
        kernel.store = Store(self._storage, limiter, kernel.trouble)
        stack = self._stack
        try:
            # The life cycle, innermost last: storage ⊃ writer ⊃ system tasks ⊃ instances.
            # Leaving unwinds it in reverse: instances stop (after the grace period), then
            # system tasks, then the writer commits what is queued, then storage closes.
            stack.push_async_callback(self._close_storage)
            await kernel.store.call(self._storage.open)
            kernel.committer = GroupCommitter(self._storage.commit, limiter)
            writer = await stack.enter_async_context(anyio.create_task_group())
            writer.start_soon(kernel.committer.run, name="memable writer")
            stack.callback(kernel.committer.close)
            system = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(system.cancel_scope.cancel)
            stack.callback(kernel.status.close)
            system.start_soon(self._timers.run, name="memable timers")
            system.start_soon(heal, kernel, self._runner, name="memable healer")
            if self._retention is not None or any(wf.retention for wf in self._registry):
                system.start_soon(retain, kernel, self._retention, name="memable retention")
            instances = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(self._stop_instances, instances)
            kernel.open_spawning(instances)
        except BaseException:
            self._abort = True
            with anyio.CancelScope(shield=True):
                await stack.aclose()
            self._phase = "closed"
            raise
        attach = getattr(kernel.clock, "attach", None)
        if callable(attach):  # memable.testing.ManualClock waits for our timers
            attach(self._timers_settled)
        self._phase = "running"
        if self._resume_on_start:
            try:
                await self._recover()
            except BaseException as exc:
                await self.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self._phase = "closing"
        self._abort = exc_type is not None
        try:
            # The engine's own tasks never raise; the body's exception is not handed to
            # the task groups, so it propagates as itself, not inside an ExceptionGroup.
            await self._stack.aclose()
        finally:
            self._phase = "closed"

    async def _stop_instances(self, instances: anyio.abc.TaskGroup) -> None:
        if not self._abort:
            with anyio.move_on_after(self._shutdown_timeout):
                await self._runner.wait_idle()
        self._kernel.close_spawning()
        self._runner.stop_all()
        instances.cancel_scope.cancel()

    def _timers_settled(self) -> bool:
        """Whether no timer is due that the scheduler has not fired (for ManualClock)."""
        return self._phase != "running" or self._timers.settled()

    async def _close_storage(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._kernel.store.call(self._storage.close)

    async def _recover(self) -> None:
        records = await self._kernel.store.running()
        for record in records:
            if record.parent_id is None:  # children are driven by their parent
                self._runner.claimed(record)
        if records:
            logger.info("recovering %d running instances", len(records))

    # -- registration -----------------------------------------------------------------------

    def register(self, wf: Workflow[Any, Any]) -> None:
        """Add a workflow to this engine (also allowed while it runs).

        Its annotations are resolved now, so a missing one fails here, not on first use.

        Raises:
            TypeError: *wf* is not a Workflow or lacks annotations.
            ValueError: another function is registered under the same name.

        Example:
            >>> import memable
            >>> @memable.workflow("noop")
            ... async def noop(ctx: memable.Context) -> None:
            ...     pass
            >>> memable.Engine().register(noop)
        """
        self._registry.add(wf)

    # -- starting instances -----------------------------------------------------------------

    @overload
    async def invoke(
        self, wf: Workflow[None, O], /, *, instance_id: str | None = None
    ) -> Invocation[O]: ...

    @overload
    async def invoke(
        self, wf: Workflow[I, O], input: I, /, *, instance_id: str | None = None
    ) -> Invocation[O]: ...

    async def invoke(
        self, wf: Workflow[Any, O], input: Any = _NOTHING, /, *, instance_id: str | None = None
    ) -> Invocation[O]:
        """Start an instance of *wf* with *input*; return its :class:`Invocation`.

        Without *instance_id* a new, time-ordered id is made. With an id that exists, the
        call is idempotent: the same input gives the existing instance's handle and runs
        nothing; a different input (or workflow) raises :class:`~memable.InstanceConflict`.

        Raises:
            NotStarted: the engine is not running.
            WorkflowNotFound: *wf* is not registered.
            InvalidKey: *instance_id* breaks the key rules.
            TypeMismatch: *input* is not of the workflow's input type.
            InstanceConflict: *instance_id* exists with another input or workflow.

        Example:
            >>> import memable
            >>> async def start(engine: memable.Engine, wf: memable.Workflow[str, int]) -> int:
            ...     invocation = await engine.invoke(wf, "o-17", instance_id="order-o-17")
            ...     return await invocation.result()
        """
        self._check_running()
        wf = self._registry.known(wf)
        if wf.takes_input and input is _NOTHING:
            raise TypeError(f"workflow {wf.name!r} takes an input; pass it to invoke()")
        if not wf.takes_input:
            if input is not _NOTHING and input is not None:
                raise TypeError(f"workflow {wf.name!r} takes no input, got {input!r}")
            input = None
        generated = instance_id is None
        if instance_id is None:
            now_ns = int(self._kernel.now() * 1_000_000) * 1000
            instance_id, self._last_id = new_instance_id(now_ns, self._last_id)
        else:
            check_key(instance_id, "instance id")
        input_type, _ = wf.types()
        envelope = self._kernel.serde.encode(
            input, input_type, "input", f"the input of workflow {wf.name!r}"
        )
        now = self._kernel.now()
        record = InstanceRecord(
            instance_id=instance_id,
            workflow=wf.name,
            status="running",
            input=envelope,
            created_at=now,
            updated_at=now,
        )
        run = self._runner.reserve(instance_id, wf)
        run.pending += 1
        try:
            with anyio.CancelScope(shield=True):  # what storage answers must be acted on
                if generated:
                    # A generated id is new (a timestamp and 48 random bits), so its row joins
                    # the group commit instead of taking a transaction of its own.
                    await self._kernel.write([record])
                    stored, created = record, True
                else:
                    stored, created = await self._kernel.store.create(record)
        except BaseException:
            run.pending -= 1
            self._runner.release(run)  # nothing was created: drop the reservation
            raise
        run.pending -= 1
        if created:
            run.fresh = True
            self._runner.start(run, stored)
        else:
            self._runner.release(run)
            if stored.workflow != wf.name:
                raise InstanceConflict(
                    f"instance id {instance_id!r} belongs to workflow {stored.workflow!r},"
                    f" not {wf.name!r}"
                )
            if json.loads(stored.input)["value"] != json.loads(envelope)["value"]:
                raise InstanceConflict(
                    f"instance {instance_id!r} of {wf.name!r} exists with a different input;"
                    " use another instance_id, or the same input to attach to it"
                )
        return self._invocation(wf, instance_id)

    def _invocation(self, wf: Workflow[Any, O], instance_id: str) -> Invocation[O]:
        return Invocation(self._instances, wf, instance_id)

    @overload
    async def run(self, wf: Workflow[None, O], /, *, instance_id: str | None = None) -> O: ...

    @overload
    async def run(
        self, wf: Workflow[I, O], input: I, /, *, instance_id: str | None = None
    ) -> O: ...

    async def run(
        self, wf: Workflow[Any, O], input: Any = _NOTHING, /, *, instance_id: str | None = None
    ) -> O:
        """:meth:`invoke`, then :meth:`Invocation.result`.

        Example:
            >>> import memable
            >>> async def start(engine: memable.Engine, wf: memable.Workflow[str, int]) -> int:
            ...     return await engine.run(wf, "o-17")
        """
        invocation = await self.invoke(wf, input, instance_id=instance_id)
        return await invocation.result()

    def handle(self, wf: Workflow[Any, O], instance_id: str) -> Invocation[O]:
        """Return an :class:`Invocation` for an existing instance (checked when used).

        Example:
            >>> import memable
            >>> async def receipt(engine: memable.Engine, wf: memable.Workflow[str, int]) -> int:
            ...     return await engine.handle(wf, "order-o-17").result()
        """
        check_instance_ref(instance_id)
        return self._invocation(self._registry.known(wf), instance_id)

    async def resume(self, wf: Workflow[Any, O], instance_id: str) -> Invocation[O]:
        """Run a failed or stuck instance again.

        Its dead-lettered steps run again with a fresh retry budget; its completed steps
        are served from storage. An instance running in this engine is left alone, and a
        completed or cancelled one is not re-run; either way its handle is returned.

        Raises:
            InstanceNotFound: no instance has this id (none is created).

        Example:
            >>> import memable
            >>> async def retry(engine: memable.Engine, wf: memable.Workflow[str, int]) -> int:
            ...     invocation = await engine.resume(wf, "order-o-17")
            ...     return await invocation.result()
        """
        self._check_running()
        wf = self._registry.known(wf)
        check_instance_ref(instance_id)
        invocation = self._invocation(wf, instance_id)
        if self._runner.live(instance_id) is not None:
            return invocation
        record = await self._record(wf, instance_id)
        if record.parent_id is not None:
            # A child runs inside its parent: resuming it resumes its top-level instance.
            root = await self._kernel.store.get(root_of(instance_id))
            root_wf = None if root is None else self._registry.get(root.workflow)
            if root is not None and root_wf is not None:
                await self.resume(root_wf, root.instance_id)
            return invocation
        if record.status not in _RESUMABLE:
            return invocation
        restarted = await self._kernel.store.restart(instance_id, _RESUMABLE, self._kernel.now())
        if restarted is not None:
            self._runner.claimed(restarted)
        return invocation

    # -- signals, cancellation, status -------------------------------------------------------

    async def signal(
        self, wf: Workflow[Any, O], instance_id: str, point: SuspendPoint[T], payload: T, /
    ) -> Invocation[O]:
        """Deliver *payload* to *point* of an instance; return the instance's handle.

        The payload is checked against the point's type before anything is written. If
        the instance is suspended on ``point.key`` it is claimed and runs again; if it has
        not reached the point yet, the payload is kept for when it does.

        Raises:
            TypeMismatch: *payload* is not of the point's type, or of the one the wf waits for.
            InstanceNotFound: no instance has this id.
            SignalRejected: the instance has finished.
            SignalSuperseded: the point already has a payload, or its deadline passed.

        Example:
            >>> import memable
            >>> approval = memable.SuspendPoint("approval:v1", bool)
            >>> async def approve(engine: memable.Engine, wf: memable.Workflow[str, int]) -> None:
            ...     await engine.signal(wf, "order-o-17", approval, True)
        """
        self._check_running()
        wf = self._registry.known(wf)
        check_instance_ref(instance_id)
        self._kernel.check_point(wf, point)
        envelope = self._kernel.serde.encode(
            payload, point.payload_type, point.key, f"the payload of signal {point.key!r}"
        )
        signal = SignalRecord(
            instance_id=instance_id, key=point.key, payload=envelope, created_at=self._kernel.now()
        )
        await self._record(wf, instance_id)  # unknown id or another workflow: nothing stored
        outcome, record = await self._kernel.store.signal(signal)
        match outcome:
            case "not_found":
                raise InstanceNotFound(f"no instance {instance_id!r}")
            case "finished":
                assert record is not None
                raise SignalRejected(point.key, f"instance {instance_id!r} is {record.status}")
            case "superseded":
                raise SignalSuperseded(
                    point.key,
                    f"suspend point {point.key!r} of instance {instance_id!r} already has a"
                    " payload (another signal came first); this one is not used",
                )
            case "timed_out":
                raise SignalSuperseded(
                    point.key,
                    f"the deadline of suspend point {point.key!r} of instance {instance_id!r}"
                    " passed before this signal; it is not used",
                )
            case "claimed":
                assert record is not None
                self._runner.claimed(record)
        return self._invocation(wf, instance_id)

    async def cancel(self, wf: Workflow[Any, Any], instance_id: str, reason: str = "") -> bool:
        """End a running or suspended instance (and its children) as ``cancelled``.

        A task running it is cancelled through its cancel scope (its ``finally`` blocks
        run; no further result is recorded). Returns whether this call cancelled it: a
        cancel that loses a race with the instance's end (or finds it finished) returns
        ``False`` and changes nothing, so what ``wait()`` reports and what storage holds
        always agree. Cancelling a child counts as its failure for the parent's fan-out.

        Raises:
            InstanceNotFound: no instance has this id.

        Example:
            >>> import memable
            >>> async def stop(engine: memable.Engine, wf: memable.Workflow[str, int]) -> None:
            ...     await engine.cancel(wf, "order-o-17", reason="customer left")
        """
        self._check_running()
        wf = self._registry.known(wf)
        check_text(reason, f"the cancel reason for {instance_id!r}")
        record = await self._record(wf, instance_id)
        before, to_run = await self._kernel.store.cancel(instance_id, reason, self._kernel.now())
        if before is None:
            return False  # already finished
        prefix = record.instance_id + "/"
        for run_id in [i for i in self._runner.runs if i == instance_id or i.startswith(prefix)]:
            self._runner.cancel_live(run_id, reason)
        self._kernel.status.publish(record.instance_id, "cancelled", reason)
        if to_run is not None:  # a parent waited for this child: it runs on
            self._runner.claimed(to_run)
        return True

    def subscribe(self, wf: Workflow[Any, Any], instance_id: str) -> AsyncIterator[Status]:
        """Iterate over the status changes of an instance.

        The first item is the current status. Changes follow live while the instance
        runs in this engine, across suspension, signal and completion; the iteration
        ends after a terminal status (``completed``, ``failed``, ``cancelled``), or when
        the engine leaves its ``async with`` block. A finished instance yields its final
        status once.

        Example:
            >>> import memable
            >>> async def watch(engine: memable.Engine, wf: memable.Workflow[str, int]) -> None:
            ...     async for status in engine.subscribe(wf, "order-o-17"):
            ...         print(status.status, status.message)
        """
        self._check_running()
        wf = self._registry.known(wf)
        check_instance_ref(instance_id)
        return StatusStream(self._instances, wf, instance_id)

    def _live_message(self, record: InstanceRecord) -> str | None:
        run = self._runner.live(record.instance_id)
        return record.status_message if run is None else run.status_message

    # -- retention --------------------------------------------------------------------------

    async def purge(self, older_than: timedelta) -> int:
        """Delete instances that finished more than *older_than* ago; return how many.

        Completed, failed and cancelled top-level instances go with all their steps,
        signals, timers and children, in short batches that let other writes go between
        them. Running and suspended instances are never purged.

        Example:
            >>> from datetime import timedelta
            >>> import memable
            >>> async def clean(engine: memable.Engine) -> int:
            ...     return await engine.purge(older_than=timedelta(days=30))
        """
        self._check_running()
        if not isinstance(typing.cast(object, older_than), timedelta) or older_than < timedelta(0):
            raise ValueError(f"older_than must be a non-negative timedelta, not {older_than!r}")
        return await self._kernel.store.purge(self._kernel.now() - older_than.total_seconds())

    # -- reading ----------------------------------------------------------------------------

    async def state(self, wf: Workflow[Any, Any], instance_id: str) -> InstanceInfo:
        """Return what storage knows about an instance.

        Raises:
            InstanceNotFound: no instance has this id.
            InstanceConflict: the instance belongs to another workflow.

        Example:
            >>> import memable
            >>> async def status(engine: memable.Engine, wf: memable.Workflow[str, int]) -> str:
            ...     return (await engine.state(wf, "order-o-17")).status
        """
        self._check_running()
        record = await self._record(wf, instance_id)
        info = InstanceInfo.from_record(record)
        message = self._live_message(record)
        return (
            info if message == info.status_message else attrs.evolve(info, status_message=message)
        )

    async def instances(
        self,
        wf: Workflow[Any, Any] | None = None,
        status: InstanceState | None = None,
        limit: int | None = 100,
    ) -> list[InstanceInfo]:
        """List instances, oldest first, optionally of one workflow and in one status.

        Example:
            >>> import memable
            >>> async def failures(engine: memable.Engine) -> list[str]:
            ...     return [i.instance_id for i in await engine.instances(status="failed")]
        """
        self._check_running()
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, not {limit!r}")
        records = await self._kernel.store.call(
            self._storage.list_instances,
            workflow=None if wf is None else wf.name,
            status=status,
            limit=limit,
        )
        return [InstanceInfo.from_record(record) for record in records]

    async def _record(self, wf: Workflow[Any, Any], instance_id: str) -> InstanceRecord:
        check_instance_ref(instance_id)
        record = await self._kernel.store.get(instance_id)
        if record is None:
            raise InstanceNotFound(f"no instance {instance_id!r}")
        if record.workflow != wf.name and not (
            record.parent_id is not None and await self._root_is(instance_id, wf)
        ):
            raise InstanceConflict(
                f"instance {instance_id!r} belongs to workflow {record.workflow!r}, not {wf.name!r}"
            )
        return record

    async def _root_is(self, instance_id: str, wf: Workflow[Any, Any]) -> bool:
        """Whether the top-level ancestor of a child instance is an instance of *wf*."""
        root = await self._kernel.store.get(root_of(instance_id))
        return root is not None and root.workflow == wf.name

    def _outcome(self, wf: Workflow[Any, O], record: InstanceRecord) -> Outcome[O] | None:
        return outcome_of(record, self._kernel.serde, wf)

    # -- plumbing ---------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._phase != "running":
            raise NotStarted(
                f"the engine is {self._phase}; use it inside 'async with engine:'"
                if self._phase != "new"
                else "the engine has not started; use it inside 'async with engine:'"
            )
        assert self._owner is not None
        thread, token = self._owner
        if threading.get_ident() != thread:
            raise RuntimeError(
                "this Engine runs in another thread; call it from the thread (and event loop)"
                " that entered 'async with engine:' (anyio.from_thread.run() gets you there)"
            )
        try:
            current = anyio.lowlevel.current_token()
        except RuntimeError:
            current = None
        if current != token:
            raise RuntimeError(
                "this Engine runs on another event loop; call it from the event loop that"
                " entered 'async with engine:'"
            )


def _storage_of(spec: str | Storage) -> Storage:
    """The storage an engine was given: a path is a SQLite file (or ``":memory:"``)."""
    if isinstance(spec, str):
        from .storage._sqlite import SQLiteStorage  # loaded on first use

        return SQLiteStorage(spec)
    return spec


def kernel_of(engine: Engine) -> Kernel:
    """The kernel of *engine*, for :mod:`memable.testing` (its test hooks) only."""
    return engine._kernel
