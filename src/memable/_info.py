"""What is known about an instance (``Engine.state``, ``Engine.instances``): loaded on
first use, not by ``import memable``."""

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, final

import attrs

from ._ids import public_keys
from ._outcome import ErrorInfo
from ._state import InstanceState

if TYPE_CHECKING:
    from ._records import InstanceRecord

__all__ = ["InstanceInfo", "info_of", "json_value"]


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
    def from_record(cls, record: "InstanceRecord") -> "InstanceInfo":
        """Describe a stored instance (times as UTC datetimes; input and output as JSON)."""
        return info_of(record, json_value(record.input), json_value(record.output))


def info_of(record: "InstanceRecord", input: Any, output: Any) -> InstanceInfo:
    """Describe a stored instance whose input and output are already decoded."""
    return InstanceInfo(
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


# Public as memable.InstanceInfo, which loads this module on first use.
InstanceInfo.__module__ = "memable"
