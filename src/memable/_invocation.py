"""Invocations: handles on instances, and the status streams they offer."""

from __future__ import annotations

import typing
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, final

import anyio

from ._exceptions import NotStarted, WorkflowCancelled, WorkflowFailed, WorkflowSuspended
from ._outcome import Cancelled, Completed, Failed, Outcome, Suspended
from ._status import StatusStream
from ._suspend import Status
from ._workflow import Workflow

if TYPE_CHECKING:
    from ._status import Instances

__all__ = ["Invocation"]

#: Real seconds between reads of an enqueued instance that ``wait()`` waits for.
_ENQUEUED_POLL: Final = 1.0

O = TypeVar("O", covariant=True)  # noqa: E741 - an Invocation[bool] is an Invocation[object]


@final
class Invocation(Generic[O]):
    """A handle on one instance: wait for it, or get its result.

    Example:
        >>> import anyio, memable
        >>> @memable.workflow("double")
        ... async def double(ctx: memable.Context, n: int) -> int:
        ...     return 2 * n
        >>> async def outcome() -> None:
        ...     async with memable.Engine(workflows=[double]) as engine:
        ...         invocation = await engine.invoke(double, 21)
        ...         match await invocation.wait():
        ...             case memable.Completed(output=n):
        ...                 print("done", n)
        ...             case memable.Failed(error=error):
        ...                 print("failed", error)
        ...             case _:
        ...                 print("suspended or cancelled")
        >>> anyio.run(outcome)
        done 42
    """

    __slots__ = ("_failure", "_instances", "instance_id", "workflow")

    def __init__(self, instances: Instances, workflow: Workflow[Any, O], instance_id: str) -> None:
        self._instances = instances
        self.workflow = workflow
        self.instance_id = instance_id
        self._failure: Failed | None = None  # seen live, with its exception

    def __repr__(self) -> str:
        return f"<memable.Invocation {self.workflow.name}/{self.instance_id}>"

    async def wait(self, *, finished: bool = False) -> Outcome[O]:
        """Wait until the instance completes, fails, is cancelled or suspends.

        With *finished*, wait through suspensions (a durable sleep, a signal to come)
        until it completes, fails or is cancelled. An ``enqueued`` instance is waited
        for through its queue until it runs.

        Raises:
            InstanceNotFound: no instance has this id.
            NotStarted: the engine is not running, or the instance is recorded as running
                but no task runs it here (``resume_on_start=False``, or the engine shut
                down first); ``engine.resume()`` starts it. On a database shared by
                several engines it waits instead: another engine may run it.

        Example:
            >>> import anyio, memable
            >>> point = memable.SuspendPoint("go:v1", bool)
            >>> @memable.workflow("wait")
            ... async def wait(ctx: memable.Context) -> bool:
            ...     return await ctx.suspend(point, status="say go")
            >>> async def show() -> None:
            ...     async with memable.Engine(workflows=[wait]) as engine:
            ...         invocation = await engine.invoke(wait, instance_id="w-1")
            ...         print(await invocation.wait())
            ...         await engine.signal(wait, "w-1", point, True)
            ...         print(await invocation.wait())
            >>> anyio.run(show)
            Suspended(waiting_on=('go:v1',), status='say go', children=0)
            Completed(output=True)
        """
        while True:
            outcome = await self._wait()
            if not finished or not isinstance(outcome, Suspended):
                return outcome
            # Suspended: wait for it to run again (a signal, a timer, resume), then go on.
            async for status in StatusStream(self._instances, self.workflow, self.instance_id):
                if status.status != "suspended":
                    break

    async def _wait(self) -> Outcome[O]:
        instances = self._instances
        while True:
            instances.check_running()
            run = instances.runs.get(self.instance_id)
            if run is not None:
                await run.finished.wait()
                if run.outcome is not None:
                    if isinstance(run.outcome, Failed):
                        self._failure = run.outcome
                    return run.outcome
            record = await instances.record(self.workflow, self.instance_id)
            if record.status == "enqueued":
                await self._until_started()
                continue
            outcome = instances.outcome(self.workflow, record)
            failure = self._failure
            if isinstance(outcome, Failed) and failure and outcome.error == failure.error:
                return failure  # the failure seen live: with its exception
            if outcome is not None:
                return outcome
            if self.instance_id in instances.runs:
                continue  # started again meanwhile
            if await instances.settle():
                continue  # storage failed somewhere: the healer may start it
            if instances.remote is not None and await instances.remote(record):
                continue  # another engine runs it (or will): look again
            raise NotStarted(
                f"instance {self.instance_id!r} is recorded as running but this engine does"
                " not run it (resume_on_start=False, or the engine is shutting down);"
                " engine.resume() starts it"
            )

    async def _until_started(self) -> None:
        """Wait while the instance is ``enqueued``: until a status change here, or a short
        poll (another engine sharing the database may start it)."""
        instances = self._instances
        subscriber = instances.status.follow(self.instance_id)
        try:
            record = await instances.record(self.workflow, self.instance_id)
            if record.status == "enqueued":
                with anyio.move_on_after(_ENQUEUED_POLL):
                    await subscriber.get()
        finally:
            instances.status.drop(self.instance_id, subscriber)

    def status(self) -> AsyncIterator[Status]:
        """Iterate over the instance's status changes (see :meth:`Engine.subscribe`).

        Example:
            >>> import anyio, memable
            >>> @memable.workflow("double")
            ... async def double(ctx: memable.Context, n: int) -> int:
            ...     return 2 * n
            >>> async def watch() -> None:
            ...     async with memable.Engine(workflows=[double]) as engine:
            ...         invocation = await engine.invoke(double, 21)
            ...         async for status in invocation.status():  # ends when it finishes
            ...             last = status.status
            ...         print(last)
            >>> anyio.run(watch)
            completed
        """
        self._instances.check_running()
        return StatusStream(self._instances, self.workflow, self.instance_id)

    async def result(self, *, finished: bool = False) -> O:
        """Wait for the instance and return its output.

        With *finished*, wait through suspensions (see :meth:`wait`).

        Raises:
            WorkflowFailed: it failed (the exception chained where it ran in this process).
            WorkflowSuspended: it is suspended (never with *finished*).
            WorkflowCancelled: it was cancelled.

        Example:
            >>> import anyio, memable
            >>> @memable.workflow("double")
            ... async def double(ctx: memable.Context, n: int) -> int:
            ...     return 2 * n
            >>> async def total() -> int:
            ...     async with memable.Engine(workflows=[double]) as engine:
            ...         return await (await engine.invoke(double, 21)).result()
            >>> anyio.run(total)
            42
        """
        outcome = await self.wait(finished=finished)
        match outcome:
            case Completed(output=output):
                return output
            case Failed(error=error, exception=exception):
                raise WorkflowFailed(self.instance_id, error) from exception
            case Suspended(waiting_on=keys, status=status, children=children):
                raise WorkflowSuspended(
                    keys[0] if keys else "", status, instance_id=self.instance_id, children=children
                )
            case Cancelled(reason=reason):
                raise WorkflowCancelled(reason)
        typing.assert_never(outcome)
