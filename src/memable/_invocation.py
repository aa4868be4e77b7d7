"""Invocations: handles on instances, and the status streams they offer."""

from __future__ import annotations

import typing
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

from ._exceptions import NotStarted, WorkflowCancelled, WorkflowFailed, WorkflowSuspended
from ._outcome import Cancelled, Completed, Failed, Outcome, Suspended
from ._status import StatusStream
from ._suspend import Status
from ._workflow import Workflow

if TYPE_CHECKING:
    from ._status import Instances

__all__ = ["Invocation"]

O = TypeVar("O", covariant=True)  # noqa: E741 - an Invocation[bool] is an Invocation[object]


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

    __slots__ = ("_failure", "_instances", "instance_id", "workflow")

    def __init__(self, instances: Instances, workflow: Workflow[Any, O], instance_id: str) -> None:
        self._instances = instances
        self.workflow = workflow
        self.instance_id = instance_id
        self._failure: Failed | None = None  # seen live, with its exception

    def __repr__(self) -> str:
        return f"<memable.Invocation {self.workflow.name}/{self.instance_id}>"

    async def wait(self) -> Outcome[O]:
        """Wait until the instance completes, fails, is cancelled or suspends.

        Raises:
            InstanceNotFound: no instance has this id.
            NotStarted: the engine is not running, or the instance is recorded as running
                but no task runs it here (``resume_on_start=False``, or the engine shut
                down first); ``engine.resume()`` starts it. On a database shared by
                several engines it waits instead: another engine may run it.

        Example:
            >>> async def show(invocation: Invocation[int]) -> None:
            ...     print(await invocation.wait())
        """
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

    def status(self) -> AsyncIterator[Status]:
        """Iterate over the instance's status changes (see :meth:`Engine.subscribe`).

        Example:
            >>> async def watch(invocation: Invocation[int]) -> None:
            ...     async for status in invocation.status():
            ...         print(status.status)
        """
        self._instances.check_running()
        return StatusStream(self._instances, self.workflow, self.instance_id)

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
            case Suspended(waiting_on=keys, status=status, children=children):
                raise WorkflowSuspended(
                    keys[0] if keys else "", status, instance_id=self.instance_id, children=children
                )
            case Cancelled(reason=reason):
                raise WorkflowCancelled(reason)
        typing.assert_never(outcome)
