"""memable: durable execution for async Python, on anyio.

A workflow is a plain ``async def``; every side effect in it is a *step* named by a key.
A step's result is stored before the workflow goes on; after a crash the workflow runs
again from the top and recorded steps return their stored result instead of running again.

Example:
    >>> import anyio, memable
    >>> async def fetch_price(order_id: str) -> int:
    ...     return 1250
    >>> @memable.workflow("order")
    ... async def order(ctx: memable.Context, order_id: str) -> int:
    ...     return await ctx.step("price:v1", fetch_price, order_id)
    >>> async def main() -> int:
    ...     async with memable.Engine(workflows=[order]) as engine:
    ...         return await engine.run(order, "o-17", instance_id="order-o-17")
    >>> anyio.run(main)
    1250
"""

from typing import TYPE_CHECKING, Any

from ._clock import Clock as Clock
from ._engine import Engine as Engine
from ._exceptions import ChildFailed as ChildFailed
from ._exceptions import DuplicateStepKey as DuplicateStepKey
from ._exceptions import InstanceConflict as InstanceConflict
from ._exceptions import InstanceNotFound as InstanceNotFound
from ._exceptions import InvalidKey as InvalidKey
from ._exceptions import MemableError as MemableError
from ._exceptions import NotStarted as NotStarted
from ._exceptions import Permanent as Permanent
from ._exceptions import RetriesExhausted as RetriesExhausted
from ._exceptions import SerializationError as SerializationError
from ._exceptions import SignalRejected as SignalRejected
from ._exceptions import SignalSuperseded as SignalSuperseded
from ._exceptions import StepFailed as StepFailed
from ._exceptions import StepTimeout as StepTimeout
from ._exceptions import StorageError as StorageError
from ._exceptions import SuspendedStepConflict as SuspendedStepConflict
from ._exceptions import SuspendTimeout as SuspendTimeout
from ._exceptions import TypeMismatch as TypeMismatch
from ._exceptions import WorkflowCancelled as WorkflowCancelled
from ._exceptions import WorkflowFailed as WorkflowFailed
from ._exceptions import WorkflowNotFound as WorkflowNotFound
from ._exceptions import WorkflowSuspended as WorkflowSuspended
from ._invocation import Invocation as Invocation
from ._outcome import Cancelled as Cancelled
from ._outcome import Completed as Completed
from ._outcome import ErrorInfo as ErrorInfo
from ._outcome import Failed as Failed
from ._outcome import Outcome as Outcome
from ._outcome import Suspended as Suspended
from ._queues import Queue as Queue
from ._schedule import Schedule as Schedule
from ._serde import configure_converter as configure_converter
from ._suspend import Status as Status
from ._suspend import SuspendPoint as SuspendPoint
from ._workflow import Workflow as Workflow
from ._workflow import workflow as workflow

if TYPE_CHECKING:
    from ._context import Context as Context
    from ._info import InstanceInfo as InstanceInfo
    from ._inspect import History as History
    from ._inspect import Page as Page
    from ._inspect import SignalInfo as SignalInfo
    from ._inspect import StepInfo as StepInfo
    from ._inspect import TimerInfo as TimerInfo
    from ._retry import RetryPolicy as RetryPolicy
    from ._settled import Err as Err
    from ._settled import Ok as Ok
    from ._settled import Settled as Settled

__all__ = [
    "Cancelled",
    "ChildFailed",
    "Clock",
    "Completed",
    "Context",
    "DuplicateStepKey",
    "Engine",
    "Err",
    "ErrorInfo",
    "Failed",
    "History",
    "InstanceConflict",
    "InstanceInfo",
    "InstanceNotFound",
    "InvalidKey",
    "Invocation",
    "MemableError",
    "NotStarted",
    "Ok",
    "Outcome",
    "Page",
    "Permanent",
    "Queue",
    "RetriesExhausted",
    "RetryPolicy",
    "Schedule",
    "SerializationError",
    "Settled",
    "SignalInfo",
    "SignalRejected",
    "SignalSuperseded",
    "Status",
    "StepFailed",
    "StepInfo",
    "StepTimeout",
    "StorageError",
    "SuspendPoint",
    "SuspendTimeout",
    "Suspended",
    "SuspendedStepConflict",
    "TimerInfo",
    "TypeMismatch",
    "Workflow",
    "WorkflowCancelled",
    "WorkflowFailed",
    "WorkflowNotFound",
    "WorkflowSuspended",
    "configure_converter",
    "workflow",
]


# Public objects say "memable.X" in reprs and tracebacks; stored error type names use it
# too, so they never carry a private module path.
def _publish(obj: Any) -> None:
    if isinstance(obj, type) or callable(obj):
        obj.__module__ = __name__


#: Names loaded on first use (PEP 562), so that ``import memable`` and a first ``Engine()``
#: do not pay for what only a running workflow or an inspection needs.
_LAZY = {
    "Context": "_context",
    "Err": "_settled",
    "History": "_inspect",
    "InstanceInfo": "_info",
    "Ok": "_settled",
    "Page": "_inspect",
    "RetryPolicy": "_retry",
    "Settled": "_settled",
    "SignalInfo": "_inspect",
    "StepInfo": "_inspect",
    "TimerInfo": "_inspect",
}

for _name in __all__:
    if _name not in _LAZY:
        _publish(globals()[_name])
del _name


if not TYPE_CHECKING:  # type checkers see the imports above, and no other name

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'memable' has no attribute {name!r}")
        from importlib import import_module

        value: object = getattr(import_module(f"{__name__}.{module}"), name)
        _publish(value)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
