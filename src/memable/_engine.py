"""The engine: owns storage, the task group, and every running instance."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import types
import typing
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, Self, TypeVar, final, overload

import anyio
import anyio.lowlevel
import attrs

from ._background import TimerScheduler, retain
from ._clock import Clock, SystemClock
from ._commit import GroupCommitter
from ._exceptions import (
    InstanceConflict,
    InstanceNotFound,
    NotStarted,
    SignalRejected,
    SignalSuperseded,
    WorkflowNotFound,
)
from ._invocation import Invocation
from ._keys import check_instance_ref, check_key, new_instance_id
from ._outcome import (
    Cancelled,
    Completed,
    ErrorInfo,
    Failed,
    InstanceInfo,
    Outcome,
    Suspended,
)
from ._retry import RetryPolicy
from ._runner import Runner
from ._serde import Serde
from ._state import sources
from ._status import StatusHub, StatusStream
from ._suspend import Status, SuspendPoint
from ._workflow import Workflow
from .storage._protocol import Storage
from .storage._records import (
    InstanceRecord,
    InstanceState,
    SignalRecord,
)

if TYPE_CHECKING:
    import anyio.abc
    import cattrs

__all__ = ["Engine"]

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741
R = TypeVar("R")
T = TypeVar("T")

logger = logging.getLogger("memable")

_NOTHING: Final = object()


_Phase = Literal["new", "running", "closing", "closed"]


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

    # Made on entering, on the event loop that runs the engine.
    _limiter: anyio.CapacityLimiter
    _committer: GroupCommitter
    _system_scopes: list[anyio.CancelScope]  # of the engine's own background tasks

    def __init__(
        self,
        storage: str | os.PathLike[str] | Storage = ":memory:",
        *,
        workflows: Iterable[Workflow[Any, Any]] = (),
        retry: RetryPolicy | None = None,
        resume_on_start: bool = True,
        shutdown_timeout: float = 30.0,
        retention: timedelta | None = None,
        converter: cattrs.Converter | None = None,
        clock: Clock | None = None,
    ) -> None:
        if isinstance(storage, str | os.PathLike):
            from .storage._sqlite import SQLiteStorage  # loaded on first use

            storage = SQLiteStorage(storage)
        if not isinstance(storage, Storage):
            raise TypeError(f"storage must be a path or a memable.storage.Storage, not {storage!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, not {retry!r}")
        if not shutdown_timeout >= 0:
            raise ValueError(f"shutdown_timeout must be >= 0 seconds, not {shutdown_timeout!r}")
        if retention is not None and retention <= timedelta(0):
            raise ValueError(f"retention must be a positive timedelta, not {retention!r}")
        self._retention = retention
        self._last_id = 0  # the timestamp of the last generated instance id
        self._child_workflows: dict[tuple[str, str], Workflow[Any, Any]] = {}
        self._storage = storage
        self._retry = retry
        self._resume_on_start = resume_on_start
        self._shutdown_timeout = shutdown_timeout
        self._serde = Serde(converter)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._workflows: dict[str, Workflow[Any, Any]] = {}
        self._runner = Runner(self)
        self._phase: _Phase = "new"
        self._cancelling = False
        self._task_group: anyio.abc.TaskGroup | None = None
        self._status = StatusHub()
        self._timers = TimerScheduler(self)
        for wf in workflows:
            self.register(wf)

    def __repr__(self) -> str:
        return f"<memable.Engine storage={self._storage!r} phase={self._phase}>"

    # -- life cycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._phase != "new":
            raise RuntimeError("an Engine can be entered only once; make a new one")
        self._phase = "closing"  # until fully started
        # anyio objects are made here, on the event loop that runs the engine.
        self._limiter = anyio.CapacityLimiter(1)
        self._system_scopes = []
        try:
            await self._storage_call(self._storage.open)
        except BaseException:
            await self._close_storage()  # whatever it took before failing
            raise
        self._committer = GroupCommitter(self._storage.commit, self._limiter)
        task_group = anyio.create_task_group()
        try:
            await task_group.__aenter__()
        except BaseException:
            await self._close_storage()
            raise
        self._task_group = task_group
        task_group.start_soon(self._committer.run, name="memable writer")
        task_group.start_soon(self._timers.run, name="memable timers")
        if self._retention is not None or any(wf.retention for wf in self._workflows.values()):
            task_group.start_soon(retain, self, name="memable retention")
        attach = getattr(self._clock, "_attach", None)
        if attach is not None:  # memable.testing.ManualClock waits for our timers
            attach(self)
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
        assert self._task_group is not None
        self._phase = "closing"
        try:
            if exc_type is None:
                with anyio.move_on_after(self._shutdown_timeout):
                    await self._runner.wait_idle()
            self._cancelling = True
            self._stop_system_tasks()
            for run in list(self._runner.runs.values()):
                run.scope.cancel()
            with anyio.CancelScope(shield=True):
                await self._runner.wait_idle()
        finally:
            self._stop_system_tasks()
            self._status.close()
            self._committer.close()
            try:
                # The engine's own tasks never raise; the body's exception is not handed to
                # the task group, so it propagates as itself, not inside an ExceptionGroup.
                await self._task_group.__aexit__(None, None, None)
            finally:
                self._phase = "closed"
                await self._close_storage()

    @contextlib.contextmanager
    def _system_task(self) -> Iterator[None]:
        """Run a background task of the engine under a scope that shutdown cancels."""
        with anyio.CancelScope() as scope:
            self._system_scopes.append(scope)
            if self._cancelling:
                scope.cancel()
            yield

    def _stop_system_tasks(self) -> None:
        for scope in self._system_scopes:
            scope.cancel()

    def _timers_settled(self) -> bool:
        """Whether no timer is due that the scheduler has not fired (for ManualClock)."""
        return self._phase != "running" or self._timers.settled()

    async def _close_storage(self) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._storage.close, limiter=self._limiter)

    async def _recover(self) -> None:
        records = await self._storage_call(self._storage.list_instances, status="running")
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
        if not isinstance(wf, Workflow):
            raise TypeError(f"register() takes a memable.Workflow, not {wf!r}")
        known = self._workflows.get(wf.name)
        if known is not None:
            if known.fn is wf.fn:
                return
            raise ValueError(
                f"workflow name {wf.name!r} is already registered to {known.fn!r};"
                f" cannot register {wf.fn!r} under it too"
            )
        wf.types()
        self._workflows[wf.name] = wf

    def _registered(self, wf: Workflow[Any, Any]) -> Workflow[Any, Any]:
        known = (
            self._workflows.get(wf.name) if isinstance(typing.cast(object, wf), Workflow) else None
        )
        if known is None or known.fn is not wf.fn:
            raise WorkflowNotFound(
                f"workflow {getattr(wf, 'name', wf)!r} is not registered with this engine;"
                " pass it to Engine(workflows=[...]) or call engine.register()"
            )
        return known

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
        wf = self._registered(wf)
        if wf.takes_input and input is _NOTHING:
            raise TypeError(f"workflow {wf.name!r} takes an input; pass it to invoke()")
        if not wf.takes_input:
            if input is not _NOTHING and input is not None:
                raise TypeError(f"workflow {wf.name!r} takes no input, got {input!r}")
            input = None
        generated = instance_id is None
        if instance_id is None:
            now_ns = int(self._clock.now().timestamp() * 1_000_000) * 1000
            instance_id, self._last_id = new_instance_id(now_ns, self._last_id)
        else:
            check_key(instance_id, "instance id")
        input_type, _ = wf.types()
        envelope = self._serde.encode(
            input, input_type, "input", f"the input of workflow {wf.name!r}"
        )
        now = self._now()
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
                    await self._committer.write([record])
                    stored, created = record, True
                else:
                    stored, created = await self._storage_call(
                        self._storage.create_instance, record
                    )
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
        return Invocation(self, wf, instance_id)

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
        return Invocation(self, self._registered(wf), instance_id)

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
        wf = self._registered(wf)
        check_instance_ref(instance_id)
        invocation = Invocation(self, wf, instance_id)
        run = self._runner.runs.get(instance_id)
        if run is not None and run.started:
            return invocation
        record = await self._record(wf, instance_id)
        if record.parent_id is not None:
            # A child runs inside its parent: resuming it resumes its top-level instance.
            root_id = instance_id.split("/", 1)[0]
            root = await self._storage_call(self._storage.get_instance, root_id)
            if root is not None and root.workflow in self._workflows:
                await self.resume(self._workflows[root.workflow], root_id)
            return invocation
        if record.status not in ("running", "failed", "suspended"):
            return invocation
        restarted = await self._storage_call(
            self._storage.restart,
            instance_id,
            only_if=sources("running"),
            updated_at=self._now(),
        )
        if restarted is not None:
            self._runner.claimed(restarted)
        return invocation

    def _child_workflow(
        self,
        parent: Workflow[Any, Any],
        key: str,
        target: Workflow[Any, Any] | Callable[..., Any],
    ) -> Workflow[Any, Any]:
        """The workflow the children of a fan-out run: a registered one, or a function's."""
        if isinstance(target, Workflow):
            return self._registered(target)
        cache_key = (parent.name, key)
        wf = self._child_workflows.get(cache_key)
        if wf is None or wf.fn is not target:
            wf = Workflow._child(f"_{parent.name}.{key}", target)
            wf.types()
            self._child_workflows[cache_key] = wf
        return wf

    # -- signals, cancellation, status -------------------------------------------------------

    async def signal(
        self, wf: Workflow[Any, O], instance_id: str, point: SuspendPoint[T], payload: T, /
    ) -> Invocation[O]:
        """Deliver *payload* to *point* of an instance; return the instance's handle.

        The payload is checked against the point's type before anything is written. If
        the instance is suspended on ``point.key`` it is claimed and runs again; if it has
        not reached the point yet, the payload is kept for when it does.

        Raises:
            TypeMismatch: *payload* is not of the point's type (nothing is stored).
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
        wf = self._registered(wf)
        check_instance_ref(instance_id)
        if not isinstance(typing.cast(object, point), SuspendPoint):
            raise TypeError(f"signal() takes a memable.SuspendPoint, not {point!r}")
        envelope = self._serde.encode(
            payload, point.payload_type, point.key, f"the payload of signal {point.key!r}"
        )
        signal = SignalRecord(
            instance_id=instance_id, key=point.key, payload=envelope, created_at=self._now()
        )
        await self._record(wf, instance_id)  # unknown id or another workflow: nothing stored
        outcome, record = await self._storage_call(self._storage.deliver_signal, signal)
        match outcome:
            case "not_found":
                raise InstanceNotFound(f"no instance {instance_id!r} in {self._storage!r}")
            case "finished":
                assert record is not None
                raise SignalRejected(point.key, f"instance {instance_id!r} is {record.status}")
            case "superseded":
                raise SignalSuperseded(point.key)
            case "claimed":
                assert record is not None
                self._runner.claimed(record)
        return Invocation(self, wf, instance_id)

    async def cancel(self, wf: Workflow[Any, Any], instance_id: str, reason: str = "") -> None:
        """End a running or suspended instance as ``cancelled``.

        A task running it is cancelled through its cancel scope (its ``finally`` blocks
        run; no further result is recorded). Cancelling a finished instance does nothing.

        Raises:
            InstanceNotFound: no instance has this id.

        Example:
            >>> import memable
            >>> async def stop(engine: memable.Engine, wf: memable.Workflow[str, int]) -> None:
            ...     await engine.cancel(wf, "order-o-17", reason="customer left")
        """
        self._check_running()
        wf = self._registered(wf)
        record = await self._record(wf, instance_id)
        before = await self._storage_call(
            self._storage.cancel, instance_id, reason=reason, now=self._now()
        )
        if before is None:
            return  # already finished
        run = self._runner.runs.get(instance_id)
        if run is not None and run.started:
            run.end = "cancelled"
            run.outcome = Cancelled(reason=reason)
            run.scope.cancel()
        self._status.publish(record.instance_id, "cancelled", reason)

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
        wf = self._registered(wf)
        check_instance_ref(instance_id)
        return StatusStream(self, wf, instance_id)

    def _live_message(self, record: InstanceRecord) -> str | None:
        run = self._runner.runs.get(record.instance_id)
        if run is not None and run.started:
            return run.status_message
        return record.status_message

    # -- retention --------------------------------------------------------------------------

    async def purge(self, older_than: timedelta) -> int:
        """Delete instances that finished more than *older_than* ago; return how many.

        Completed, failed and cancelled top-level instances go with all their steps,
        signals, timers and children, in one transaction per instance. Running and
        suspended instances are never purged.

        Example:
            >>> from datetime import timedelta
            >>> import memable
            >>> async def clean(engine: memable.Engine) -> int:
            ...     return await engine.purge(older_than=timedelta(days=30))
        """
        self._check_running()
        if not isinstance(typing.cast(object, older_than), timedelta) or older_than < timedelta(0):
            raise ValueError(f"older_than must be a non-negative timedelta, not {older_than!r}")
        return await self._storage_call(
            self._storage.purge, finished_before=self._now() - older_than.total_seconds()
        )

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
        records = await self._storage_call(
            self._storage.list_instances,
            workflow=None if wf is None else wf.name,
            status=status,
            limit=limit,
        )
        return [InstanceInfo.from_record(record) for record in records]

    async def _record(self, wf: Workflow[Any, Any], instance_id: str) -> InstanceRecord:
        check_instance_ref(instance_id)
        record = await self._storage_call(self._storage.get_instance, instance_id)
        if record is None:
            raise InstanceNotFound(f"no instance {instance_id!r} in {self._storage!r}")
        if record.workflow != wf.name and not (
            record.parent_id is not None and await self._root_is(instance_id, wf)
        ):
            raise InstanceConflict(
                f"instance {instance_id!r} belongs to workflow {record.workflow!r}, not {wf.name!r}"
            )
        return record

    async def _root_is(self, instance_id: str, wf: Workflow[Any, Any]) -> bool:
        """Whether the top-level ancestor of a child instance is an instance of *wf*."""
        root = await self._storage_call(self._storage.get_instance, instance_id.split("/")[0])
        return root is not None and root.workflow == wf.name

    def _outcome(self, wf: Workflow[Any, O], record: InstanceRecord) -> Outcome[O] | None:
        match record.status:
            case "completed":
                assert record.output is not None
                _, output_type = wf.types()
                output = self._serde.decode(
                    record.output, output_type, "output", f"the output of {record.instance_id!r}"
                )
                return Completed(output=output)
            case "failed":
                return Failed(error=ErrorInfo.from_json(record.error))
            case "suspended":
                return Suspended(waiting_on=record.waiting_on, status=record.status_message)
            case "cancelled":
                return Cancelled(reason=record.status_message or "")
            case _:
                return None

    # -- plumbing ---------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._phase != "running":
            raise NotStarted(
                f"the engine is {self._phase}; use it inside 'async with engine:'"
                if self._phase != "new"
                else "the engine has not started; use it inside 'async with engine:'"
            )

    async def _storage_call(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        call = functools.partial(fn, *args, **kwargs) if kwargs else fn
        return await anyio.to_thread.run_sync(
            call, *(() if kwargs else args), limiter=self._limiter
        )

    def _now(self) -> float:
        return self._clock.now().timestamp()
