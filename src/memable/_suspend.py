"""Suspend points: typed places where a workflow waits for a signal."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, final, overload

import attrs

from ._keys import check_key
from ._serde import type_name

if TYPE_CHECKING:
    from ._records import InstanceState

__all__ = ["Readable", "Status", "SuspendPoint"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


@final
class SuspendPoint(Generic[T]):
    """A typed point a workflow waits at, and a signal resumes: ``SuspendPoint[T]``.

    The same object is used by the waiter (``await ctx.suspend(point)``) and the
    signaller (``await engine.signal(wf, instance_id, point, payload)``), so mypy checks
    both sides, and the engine checks the payload's type before storing it.

    For a payload type that is a class, the type parameter is inferred:
    ``SuspendPoint("approval:v1", bool)`` is a ``SuspendPoint[bool]``. For type
    expressions that are not classes (``int | None``, ``list[Item]``), write the
    parameter too, since a type checker cannot infer it from such a value::

        maybe_count = SuspendPoint[int | None]("count:v1", int | None)
        items = SuspendPoint[list[Item]]("items:v1", list[Item])

    Example:
        >>> from memable import SuspendPoint
        >>> approval = SuspendPoint("approval:v1", bool)
        >>> approval
        SuspendPoint('approval:v1', bool)
    """

    __slots__ = ("key", "payload_type")

    key: str
    payload_type: Any

    @overload
    def __init__(self, key: str, payload_type: type[T], /) -> None: ...

    @overload
    def __init__(self, key: str, payload_type: object, /) -> None: ...

    def __init__(self, key: str, payload_type: object, /) -> None:
        self.key = check_key(key, "suspend point key")
        type_name(payload_type)  # a TypeError now, for a string or a TypeVar
        self.payload_type = payload_type

    def __repr__(self) -> str:
        return f"SuspendPoint({self.key!r}, {type_name(self.payload_type)})"

    if TYPE_CHECKING:

        def _payload(self) -> T:
            """Never called: ties the payload type to T for the type checker."""
            ...


class Readable(Protocol[T_co]):
    """What a waiter needs of a :class:`SuspendPoint`, read-only so that mypy's type
    context (``str(await ctx.suspend(point))``) cannot upset inference. Signalling takes
    the invariant :class:`SuspendPoint` itself, so a payload must be exactly of its type.
    """

    @property
    def key(self) -> str: ...

    @property
    def payload_type(self) -> Any: ...

    def _payload(self) -> T_co: ...


@final
@attrs.frozen(kw_only=True)
class Status:
    """A change of an instance's status, as ``engine.subscribe()`` reports it.

    Example:
        >>> from memable import Status
        >>> Status(instance_id="o-1", status="suspended", message="waiting for approval",
        ...        waiting_on=("approval:v1",)).status
        'suspended'
    """

    instance_id: str
    status: InstanceState
    message: str | None = None
    waiting_on: tuple[str, ...] = ()

    @property
    def finished(self) -> bool:
        """Whether this is a terminal status (``completed``, ``failed``, ``cancelled``)."""
        return self.status in ("completed", "failed", "cancelled")
