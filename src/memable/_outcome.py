"""What an instance ended with, and what is known about it."""

import json
from datetime import UTC, datetime
from typing import Any, Generic, TypeAlias, TypeVar, final

import attrs

from ._ids import public_keys
from ._records import InstanceRecord, InstanceState

__all__ = [
    "Cancelled",
    "Completed",
    "Err",
    "ErrorInfo",
    "Failed",
    "InstanceInfo",
    "Ok",
    "Outcome",
    "Settled",
    "Suspended",
]

O_co = TypeVar("O_co", covariant=True)
T_co = TypeVar("T_co", covariant=True)


@final
@attrs.frozen(kw_only=True)
class ErrorInfo:
    """An error as stored: the exception's type name, message and formatted traceback.

    Example:
        >>> from memable import ErrorInfo
        >>> ErrorInfo.from_exception(ValueError("bad input")).type
        'ValueError'
    """

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> "ErrorInfo":
        """Describe *exc* (with its traceback and chained causes).

        Example:
            >>> ErrorInfo.from_exception(KeyError("sku")).message
            "'sku'"
        """
        tp = type(exc)
        name = (
            tp.__qualname__ if tp.__module__ == "builtins" else f"{tp.__module__}.{tp.__qualname__}"
        )
        import traceback  # only needed when something fails

        return cls(type=name, message=str(exc), traceback="".join(traceback.format_exception(exc)))

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"

    def to_json(self) -> str:
        """The stored form: a JSON object of type, message and traceback."""
        return json.dumps({"type": self.type, "message": self.message, "traceback": self.traceback})

    @classmethod
    def from_json(cls, text: str | None) -> "ErrorInfo":
        """Read a stored error back; an unreadable record becomes an ``unknown`` error.

        Example:
            >>> ErrorInfo.from_json(ErrorInfo(type="KeyError", message="x").to_json()).type
            'KeyError'
        """
        if text is None:
            return cls(type="unknown", message="no error was recorded")
        try:
            data = json.loads(text)
            return cls(type=data["type"], message=data["message"], traceback=data["traceback"])
        except (ValueError, KeyError, TypeError):
            return cls(type="unknown", message=f"unreadable error record: {text[:200]!r}")


@final
@attrs.frozen(kw_only=True)
class Completed(Generic[O_co]):
    """The instance returned ``output``.

    Example:
        >>> from memable import Completed
        >>> match Completed(output=3):
        ...     case Completed(output=n):
        ...         print(n)
        3
    """

    output: O_co


@final
@attrs.frozen(kw_only=True)
class Failed:
    """The instance raised; ``error`` describes what.

    ``exception`` is the exception itself when the instance failed in this process (it is
    not stored, and does not take part in equality).

    Example:
        >>> from memable import ErrorInfo, Failed
        >>> Failed(error=ErrorInfo(type="ValueError", message="bad")).error.type
        'ValueError'
    """

    error: ErrorInfo
    exception: BaseException | None = attrs.field(default=None, eq=False, repr=False)


@final
@attrs.frozen(kw_only=True)
class Suspended:
    """The instance is suspended, waiting on the keys in ``waiting_on``.

    ``children`` is how many child instances (of fan-outs) it waits for; waiting on them
    is reported here, never as a key.

    Example:
        >>> from memable import Suspended
        >>> Suspended(waiting_on=("approval:v1",), status="waiting").waiting_on
        ('approval:v1',)
    """

    waiting_on: tuple[str, ...]
    status: str | None = None
    children: int = 0


@final
@attrs.frozen(kw_only=True)
class Cancelled:
    """The instance was cancelled, with the given reason.

    Example:
        >>> from memable import Cancelled
        >>> Cancelled(reason="customer left").reason
        'customer left'
    """

    reason: str = ""


#: What ``Invocation.wait()`` returns.
Outcome: TypeAlias = Completed[O_co] | Suspended | Failed | Cancelled


@final
@attrs.frozen(kw_only=True)
class InstanceInfo:
    """What storage knows about an instance (``Engine.state``, ``Engine.instances``).

    Times are timezone-aware UTC datetimes. ``input`` and ``output`` (``None`` until it
    completes) are decoded where the engine has the workflow registered; otherwise (and
    in the ``memable`` command line) they are the stored JSON values. An instance
    enqueued in a queue names it in ``queue``, with its ``priority``.

    Example:
        >>> import anyio, memable
        >>> @memable.workflow("greet")
        ... async def greet(ctx: memable.Context, name: str) -> str:
        ...     ctx.set_status("greeting")
        ...     return f"hello {name}"
        >>> async def show() -> None:
        ...     async with memable.Engine(workflows=[greet]) as engine:
        ...         await engine.run(greet, "ada", instance_id="g-1")
        ...         info = await engine.state(greet, "g-1")
        ...         print(info.status, info.status_message, info.finished_at is not None)
        >>> anyio.run(show)
        completed greeting True
    """

    instance_id: str
    workflow: str
    status: InstanceState
    status_message: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    error: ErrorInfo | None
    waiting_on: tuple[str, ...]
    parent_id: str | None
    input: Any = None
    output: Any = None
    queue: str | None = None
    priority: int = 0

    @classmethod
    def from_record(cls, record: InstanceRecord) -> "InstanceInfo":
        """Describe a stored instance (times as UTC datetimes; input and output as JSON)."""
        return cls._of(record, json_value(record.input), json_value(record.output))

    @classmethod
    def _of(cls, record: InstanceRecord, input: Any, output: Any) -> "InstanceInfo":
        """Describe a stored instance whose input and output are already decoded."""
        return cls(
            instance_id=record.instance_id,
            workflow=record.workflow,
            status=record.status,
            status_message=record.status_message,
            created_at=datetime.fromtimestamp(record.created_at, UTC),
            updated_at=datetime.fromtimestamp(record.updated_at, UTC),
            finished_at=None
            if record.finished_at is None
            else datetime.fromtimestamp(record.finished_at, UTC),
            error=None if record.error is None else ErrorInfo.from_json(record.error),
            waiting_on=public_keys(record.waiting_on) if record.status == "suspended" else (),
            parent_id=record.parent_id,
            input=input,
            output=output,
            queue=record.queue,
            priority=record.priority,
        )


def json_value(envelope: str | None) -> Any:
    """The JSON value inside a stored envelope (``None`` if absent or unreadable)."""
    if envelope is None:
        return None
    try:
        return json.loads(envelope)["value"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None


@final
@attrs.frozen(kw_only=True)
class Ok(Generic[T_co]):
    """A child of ``fan_out(..., settle=True)`` that completed with ``value``.

    Example:
        >>> from memable import Ok
        >>> match Ok(value=3):
        ...     case Ok(value=n):
        ...         print(n)
        3
    """

    value: T_co


@final
@attrs.frozen(kw_only=True)
class Err:
    """A child of ``fan_out(..., settle=True)`` that failed or was cancelled.

    Example:
        >>> from memable import Err, ErrorInfo
        >>> error = ErrorInfo(type="KeyError", message="'sku'")
        >>> Err(instance_id="o-1/label:v1-2", error=error).error.type
        'KeyError'
    """

    instance_id: str
    error: ErrorInfo


#: The outcome of one child of ``fan_out(..., settle=True)``.
Settled: TypeAlias = Ok[T_co] | Err
