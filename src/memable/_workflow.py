"""Workflows: named async functions whose steps are durable."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, final, overload

from ._keys import check_key

if TYPE_CHECKING:
    from ._context import Context

__all__ = ["Workflow", "function_workflow", "workflow"]

# Workflow[I, O] takes an I and gives an O: a Workflow[str, Receipt] is also a
# Workflow[str, object] (covariant output) and a Workflow[Literal["a"], Receipt]
# (contravariant input), so `x: object = await engine.run(wf, "a")` type-checks.
I_contra = TypeVar("I_contra", contravariant=True)  # the input type
O_co = TypeVar("O_co", covariant=True)  # the output type
I = TypeVar("I")  # noqa: E741 - for the decorator's overloads
O = TypeVar("O")  # noqa: E741


@final
class Workflow(Generic[I_contra, O_co]):
    """A named workflow: ``async def f(ctx: Context, input: I) -> O``.

    A function without an input parameter (``async def f(ctx: Context) -> O``) makes a
    ``Workflow[None, O]``. Nothing is registered globally: a workflow belongs to the
    engines it is given to. Input and output types are read from the annotations when an
    engine registers the workflow; a missing annotation is a :class:`TypeError` then.

    A workflow is contravariant in its input and covariant in its output: a
    ``Workflow[str, bool]`` is also a ``Workflow[str, object]``, so ``print(await
    engine.run(wf, x))`` and ``list[Invocation[object]]`` type-check.

    Example:
        >>> import memable
        >>> async def greet(ctx: memable.Context, name: str) -> str:
        ...     return f"hello {name}"
        >>> greeter = memable.Workflow("greet", greet)
        >>> greeter.name
        'greet'
    """

    __slots__ = ("_types", "fn", "name", "retention", "takes_input")

    @overload
    def __init__(
        self: Workflow[None, O_co],
        name: str,
        fn: Callable[[Context], Awaitable[O_co]],
        *,
        retention: timedelta | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self,
        name: str,
        fn: Callable[[Context, I_contra], Awaitable[O_co]],
        *,
        retention: timedelta | None = None,
    ) -> None: ...

    def __init__(
        self, name: str, fn: Callable[..., Awaitable[O_co]], *, retention: timedelta | None = None
    ) -> None:
        self._setup(check_key(name, "workflow name"), fn, retention)

    def _setup(
        self, name: str, fn: Callable[..., Awaitable[O_co]], retention: timedelta | None
    ) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"workflow {name!r} needs an async def function, not {fn!r}")
        if retention is not None and retention <= timedelta(0):
            raise ValueError(f"retention of workflow {name!r} must be positive, not {retention}")
        self.name = name
        self.fn = fn
        self.retention = retention
        self.takes_input = _count_parameters(name, fn) == 2
        self._types: tuple[Any, Any] | None = None

    def __repr__(self) -> str:
        return f"<memable.Workflow {self.name!r} ({_qualname(self.fn)})>"

    def types(self) -> tuple[Any, Any]:
        """Return the input and output types from the annotations (``None`` input if none).

        Raises:
            TypeError: an annotation is missing or cannot be resolved.
        """
        if self._types is None:
            try:
                hints = typing.get_type_hints(self.fn)
            except Exception as exc:
                raise TypeError(
                    f"cannot resolve the annotations of workflow {self.name!r}"
                    f" ({_qualname(self.fn)}): {exc}"
                ) from exc
            parameters = list(inspect.signature(self.fn).parameters)
            if "return" not in hints:
                raise TypeError(
                    f"workflow {self.name!r} ({_qualname(self.fn)}) needs a return annotation"
                    " (memable stores its output as that type)"
                )
            input_type: Any = None
            if self.takes_input:
                if parameters[1] not in hints:
                    raise TypeError(
                        f"workflow {self.name!r} ({_qualname(self.fn)}) needs an annotation on"
                        f" its input parameter {parameters[1]!r}"
                    )
                input_type = hints[parameters[1]]
            self._types = (input_type, hints["return"])
        return self._types


def function_workflow(name: str, fn: Callable[..., Awaitable[Any]]) -> Workflow[Any, Any]:
    """A workflow for the children of a fan-out over a plain function (reserved name)."""
    wf: Workflow[Any, Any] = Workflow.__new__(Workflow)
    Workflow._setup(wf, name, fn, None)
    if not wf.takes_input:
        raise TypeError(f"a fan-out function must take (ctx, item), not just (ctx): {fn!r}")
    return wf


def _qualname(fn: object) -> str:
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", repr(fn))
    return f"{module}.{name}" if module else name


def _count_parameters(name: str, fn: Callable[..., object]) -> int:
    parameters = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(parameters) not in (1, 2):
        raise TypeError(
            f"workflow {name!r} ({_qualname(fn)}) must take (ctx) or (ctx, input),"
            f" not {len(parameters)} required positional parameters"
        )
    return len(parameters)


class _WorkflowDecorator(Protocol):
    @overload
    def __call__(self, fn: Callable[[Context], Awaitable[O]], /) -> Workflow[None, O]: ...

    @overload
    def __call__(self, fn: Callable[[Context, I], Awaitable[O]], /) -> Workflow[I, O]: ...


def workflow(name: str, *, retention: timedelta | None = None) -> _WorkflowDecorator:
    """Make a :class:`Workflow` named *name* of the decorated ``async def``.

    *retention*, if given, is how long finished instances of this workflow are kept
    before an engine with retention purges them (overriding ``Engine(retention=...)``).

    Example:
        >>> import memable
        >>> @memable.workflow("order")
        ... async def order(ctx: memable.Context, order_id: str) -> int:
        ...     return len(order_id)
        >>> order
        <memable.Workflow 'order' (memable.order)>
    """
    check_key(name, "workflow name")

    def decorate(fn: Callable[..., Awaitable[Any]], /) -> Workflow[Any, Any]:
        return Workflow(name, fn, retention=retention)

    return typing.cast(_WorkflowDecorator, decorate)
