"""The engine: owns storage, the task group, and every running instance."""

from __future__ import annotations

import functools
import json
import logging
import os
import types
import typing
import weakref
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Generic, Literal, TypeVar, final, overload

import anyio
import anyio.abc
import attrs
import cattrs
from typing_extensions import Self

from ._clock import Clock, SystemClock
from ._commit import GroupCommitter
from ._context import Context
from ._exceptions import (
    InstanceConflict,
    InstanceNotFound,
    NotStarted,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowSuspended,
)
from ._keys import check_key, new_instance_id
from ._outcome import Cancelled, Completed, ErrorInfo, Failed, InstanceInfo, Outcome, Suspended
from ._retry import RetryPolicy
from ._serde import Serde
from ._state import sources
from .storage._protocol import Storage
from .storage._records import InstanceRecord, InstanceState, InstanceUpdate
from .storage._sqlite import SQLiteStorage
from ._workflow import Workflow

__all__ = ["Engine", "Invocation"]

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741
R = TypeVar("R")

logger = logging.getLogger("memable")

_NOTHING: Final = object()


@attrs.define(eq=False)
class _Run:
    """One run of an instance in this engine (or a reservation for one)."""

    instance_id: str
    workflow: Workflow[Any, Any]
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    finished: anyio.Event = attrs.field(factory=anyio.Event)
    started: bool = False
    pending: int = 0  # invoke calls still deciding whether they start this run
    outcome: Outcome[Any] | None = None
    status_message: str | None = None
    status_dirty: bool = False


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
        retention: Not available yet; see the changelog.
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
            storage = SQLiteStorage(storage)
        if not isinstance(storage, Storage):
            raise TypeError(f"storage must be a path or a memable.storage.Storage, not {storage!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, not {retry!r}")
        if not shutdown_timeout >= 0:
            raise ValueError(f"shutdown_timeout must be >= 0 seconds, not {shutdown_timeout!r}")
        if retention is not None:
            raise NotImplementedError(
                "retention= is not implemented yet; purge finished instances yourself for now"
            )
        self._storage = storage
        self._retry = retry
        self._resume_on_start = resume_on_start
        self._shutdown_timeout = shutdown_timeout
        self._serde = Serde(converter)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._workflows: dict[str, Workflow[Any, Any]] = {}
        self._runs: dict[str, _Run] = {}
        self._phase: _Phase = "new"
        self._cancelling = False
        self._limiter = anyio.CapacityLimiter(1)
        self._committer = GroupCommitter(storage.commit, self._limiter)
        self._task_group: anyio.abc.TaskGroup | None = None
        self._result_types: weakref.WeakKeyDictionary[Callable[..., Any], Any] = (
            weakref.WeakKeyDictionary()
        )
        for wf in workflows:
            self.register(wf)

    def __repr__(self) -> str:
        return f"<memable.Engine storage={self._storage!r} phase={self._phase}>"

    # -- life cycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._phase != "new":
            raise RuntimeError("an Engine can be entered only once; make a new one")
        self._phase = "closing"  # until fully started
        await self._storage_call(self._storage.open)
        task_group = anyio.create_task_group()
        try:
            await task_group.__aenter__()
        except BaseException:
            await self._close_storage()
            raise
        self._task_group = task_group
        task_group.start_soon(self._committer.run, name="memable writer")
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
                    await self._wait_idle()
            self._cancelling = True
            for run in list(self._runs.values()):
                run.scope.cancel()
            with anyio.CancelScope(shield=True):
                await self._wait_idle()
        finally:
            self._committer.close()
            try:
                # The engine's own tasks never raise; the body's exception is not handed to
                # the task group, so it propagates as itself, not inside an ExceptionGroup.
                await self._task_group.__aexit__(None, None, None)
            finally:
                self._phase = "closed"
                await self._close_storage()

    async def _wait_idle(self) -> None:
        while self._runs:
            await next(iter(self._runs.values())).finished.wait()

    async def _close_storage(self) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._storage.close, limiter=self._limiter)

    async def _recover(self) -> None:
        records = await self._storage_call(self._storage.list_instances, status="running")
        for record in records:
            if record.parent_id is not None:
                continue  # children are driven by their parent
            wf = self._workflows.get(record.workflow)
            if wf is None:
                logger.warning(
                    "instance %r of unregistered workflow %r is left running; register the"
                    " workflow to recover it",
                    record.instance_id,
                    record.workflow,
                    extra={"instance_id": record.instance_id, "workflow": record.workflow},
                )
                continue
            self._start(self._reserve(record.instance_id, wf), record)
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
        known = self._workflows.get(wf.name) if isinstance(typing.cast(object, wf), Workflow) else None
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
        if instance_id is None:
            instance_id = new_instance_id()
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
        run = self._reserve(instance_id, wf)
        run.pending += 1
        try:
            stored, created = await self._storage_call(self._storage.create_instance, record)
        finally:
            run.pending -= 1
        if created:
            self._start(run, stored)
        else:
            self._release(run)
            if stored.workflow != wf.name:
                raise InstanceConflict(
                    f"instance id {instance_id!r} belongs to workflow {stored.workflow!r},"
                    f" not {wf.name!r}"
                )
            if _input_value(stored.input) != _input_value(envelope):
                raise InstanceConflict(
                    f"instance {instance_id!r} of {wf.name!r} exists with a different input;"
                    " use another instance_id, or the same input to attach to it"
                )
        return Invocation(self, wf, instance_id)

    @overload
    async def run(self, wf: Workflow[None, O], /, *, instance_id: str | None = None) -> O: ...

    @overload
    async def run(self, wf: Workflow[I, O], input: I, /, *, instance_id: str | None = None) -> O:
        ...

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
        check_key(instance_id, "instance id", reserved_ok=True)
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
        check_key(instance_id, "instance id", reserved_ok=True)
        invocation = Invocation(self, wf, instance_id)
        run = self._runs.get(instance_id)
        if run is not None and run.started:
            return invocation
        record = await self._record(wf, instance_id)
        if record.status not in ("running", "failed", "suspended"):
            return invocation
        restarted = await self._storage_call(
            self._storage.restart,
            instance_id,
            only_if=sources("running"),
            updated_at=self._now(),
        )
        if restarted is not None:
            run = self._reserve(instance_id, wf)
            if not run.started:
                self._start(run, restarted)
        return invocation

    def _reserve(self, instance_id: str, wf: Workflow[Any, Any]) -> _Run:
        run = self._runs.get(instance_id)
        if run is None:
            run = self._runs[instance_id] = _Run(instance_id, wf)
        return run

    def _release(self, run: _Run) -> None:
        if not run.started and run.pending == 0 and self._runs.get(run.instance_id) is run:
            del self._runs[run.instance_id]
            run.finished.set()

    def _start(self, run: _Run, record: InstanceRecord) -> None:
        if self._cancelling or self._task_group is None:
            self._release(run)  # shutting down: the next engine recovers it
            return
        run.started = True
        self._task_group.start_soon(self._drive, run, record, name=f"memable {run.instance_id}")

    async def _drive(self, run: _Run, record: InstanceRecord) -> None:
        """Run one instance to its end (or to shutdown), recording how it ended."""
        wf = run.workflow
        try:
            with run.scope:
                run.status_message = record.status_message
                steps = await self._storage_call(self._storage.load_steps, run.instance_id)
                context = Context(self, run, {step.key: step for step in steps})
                input_type, output_type = wf.types()
                try:
                    if wf.takes_input:
                        value = self._serde.decode(
                            record.input, input_type, "input", f"the input of {run.instance_id!r}"
                        )
                        output = await wf.fn(context, value)
                    else:
                        output = await wf.fn(context)
                    envelope = self._serde.encode(
                        output, output_type, "output", f"the output of {run.instance_id!r}"
                    )
                except Exception as exc:
                    await self._finish(run, Failed(error=ErrorInfo.from_exception(exc), exception=exc))
                else:
                    await self._finish(run, Completed(output=output), output=envelope)
        except Exception as exc:
            # Storage failed while starting or finishing: the instance stays as stored
            # (``running``), the next engine recovers it; waiters here learn what happened.
            logger.exception(
                "instance %r stopped: its state could not be read or written",
                run.instance_id,
                extra={"instance_id": run.instance_id},
            )
            run.outcome = Failed(error=ErrorInfo.from_exception(exc), exception=exc)
        finally:
            if self._runs.get(run.instance_id) is run:
                del self._runs[run.instance_id]
            run.finished.set()

    async def _finish(self, run: _Run, outcome: Completed[Any] | Failed, output: str | None = None) -> None:
        now = self._now()
        status: InstanceState = "completed" if isinstance(outcome, Completed) else "failed"
        error = None
        if isinstance(outcome, Failed):
            error = _error_json(outcome.error)
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    "instance %r failed: %s",
                    run.instance_id,
                    outcome.error,
                    extra={"instance_id": run.instance_id},
                )
        update = InstanceUpdate(
            instance_id=run.instance_id,
            updated_at=now,
            status=status,
            only_if=("running",),
            status_message=run.status_message,
            output=output,
            error=error,
            finished_at=now,
        )
        await self._committer.write([update])
        run.outcome = outcome

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
        run = self._runs.get(instance_id)
        info = _info(record)
        if run is not None and run.started and run.status_message != info.status_message:
            info = attrs.evolve(info, status_message=run.status_message)
        return info

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
        return [_info(record) for record in records]

    async def _record(self, wf: Workflow[Any, Any], instance_id: str) -> InstanceRecord:
        record = await self._storage_call(self._storage.get_instance, instance_id)
        if record is None:
            raise InstanceNotFound(f"no instance {instance_id!r} in {self._storage!r}")
        if record.workflow != wf.name:
            raise InstanceConflict(
                f"instance {instance_id!r} belongs to workflow {record.workflow!r},"
                f" not {wf.name!r}"
            )
        return record

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
                return Failed(error=_error_info(record.error))
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
        return await anyio.to_thread.run_sync(call, *(() if kwargs else args), limiter=self._limiter)

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def _result_type(self, key: str, fn: Callable[..., Any], returns: object) -> Any:
        if returns is not None:
            return returns
        target = getattr(fn, "__func__", fn)
        try:
            return self._result_types[target]
        except (KeyError, TypeError):
            pass
        tp = _return_annotation(key, fn)
        try:
            self._result_types[target] = tp
        except TypeError:
            pass  # not weakly referenceable; resolve again next time
        return tp


def _return_annotation(key: str, fn: Callable[..., Any]) -> Any:
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    if not (isinstance(target, types.FunctionType | types.MethodType | types.BuiltinFunctionType)):
        target = getattr(type(target), "__call__", target)
    try:
        hints = typing.get_type_hints(target)
    except Exception as exc:
        raise TypeError(
            f"step {key!r}: cannot resolve the return annotation of {fn!r}: {exc};"
            " pass returns= to name the result type"
        ) from exc
    if "return" not in hints:
        raise TypeError(
            f"step {key!r}: {fn!r} has no return annotation, so memable cannot tell how to"
            " store its result; annotate it or pass returns="
        )
    return hints["return"]


def _input_value(envelope: str) -> Any:
    return json.loads(envelope)["value"]


def _error_json(error: ErrorInfo) -> str:
    return json.dumps({"type": error.type, "message": error.message, "traceback": error.traceback})


def _error_info(text: str | None) -> ErrorInfo:
    if text is None:
        return ErrorInfo(type="unknown", message="no error was recorded")
    try:
        data = json.loads(text)
        return ErrorInfo(type=data["type"], message=data["message"], traceback=data["traceback"])
    except (ValueError, KeyError, TypeError):
        return ErrorInfo(type="unknown", message=f"unreadable error record: {text[:200]!r}")


def _info(record: InstanceRecord) -> InstanceInfo:
    return InstanceInfo(
        instance_id=record.instance_id,
        workflow=record.workflow,
        status=record.status,
        status_message=record.status_message,
        created_at=_utc(record.created_at),
        updated_at=_utc(record.updated_at),
        finished_at=None if record.finished_at is None else _utc(record.finished_at),
        error=None if record.error is None else _error_info(record.error),
        waiting_on=record.waiting_on,
        parent_id=record.parent_id,
    )


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


@final
class Invocation(Generic[O]):
    """A handle on one instance: wait for it, or get its result.

    Example:
        >>> import memable
        >>> async def outcome(engine: memable.Engine, wf: memable.Workflow[str, int]) -> None:
        ...     invocation = await engine.invoke(wf, "o-17")
        ...     match await invocation.wait():
        ...         case memable.Completed(output=n):
        ...             print("done", n)
        ...         case memable.Failed(error=error):
        ...             print("failed", error)
        ...         case _:
        ...             print("suspended or cancelled")
    """

    __slots__ = ("_engine", "instance_id", "workflow")

    def __init__(self, engine: Engine, workflow: Workflow[Any, O], instance_id: str) -> None:
        self._engine = engine
        self.workflow = workflow
        self.instance_id = instance_id

    def __repr__(self) -> str:
        return f"<memable.Invocation {self.workflow.name}/{self.instance_id}>"

    async def wait(self) -> Outcome[O]:
        """Wait until the instance completes, fails, is cancelled or suspends.

        Raises:
            InstanceNotFound: no instance has this id.
            NotStarted: the engine is not running, or the instance is recorded as running
                but no task runs it here (``resume_on_start=False``, or the engine shut
                down first); ``engine.resume()`` starts it.

        Example:
            >>> async def show(invocation: Invocation[int]) -> None:
            ...     print(await invocation.wait())
        """
        engine = self._engine
        while True:
            engine._check_running()
            run = engine._runs.get(self.instance_id)
            if run is not None:
                await run.finished.wait()
                if run.outcome is not None:
                    return run.outcome
            record = await engine._record(self.workflow, self.instance_id)
            outcome = engine._outcome(self.workflow, record)
            if outcome is not None:
                return outcome
            if self.instance_id in engine._runs:
                continue  # started again meanwhile
            raise NotStarted(
                f"instance {self.instance_id!r} is recorded as running but this engine does"
                " not run it (resume_on_start=False, or the engine is shutting down);"
                " engine.resume() starts it"
            )

    async def result(self) -> O:
        """Wait for the instance and return its output.

        Raises:
            WorkflowFailed: it failed (the exception chained where it ran in this process).
            WorkflowSuspended: it is suspended.
            WorkflowCancelled: it was cancelled.

        Example:
            >>> async def total(invocation: Invocation[int]) -> int:
            ...     return await invocation.result()
        """
        outcome = await self.wait()
        match outcome:
            case Completed(output=output):
                return output
            case Failed(error=error, exception=exception):
                raise WorkflowFailed(self.instance_id, error) from exception
            case Suspended(waiting_on=keys, status=status):
                raise WorkflowSuspended(keys[0] if keys else "", status)
            case Cancelled(reason=reason):
                raise WorkflowCancelled(reason)
        typing.assert_never(outcome)
