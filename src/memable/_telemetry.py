"""OpenTelemetry spans for runs, executed steps, suspensions, signals, timers and
fan-outs — when ``opentelemetry-api`` is installed (``memable[otel]``) and a tracer
provider (an SDK) is set; otherwise this module imports nothing (or, with the API alone,
makes no span) and every call here returns at once.

Replay never multiplies telemetry: a step span exists only when its body runs; a run
counts its replayed steps in ``memable.steps.replayed``. The W3C ``traceparent`` of the
span that started an instance is stored with it: its first run is that span's child, and
a later run (after a signal, a timer, a crash, on another engine) starts a trace of its
own linked to it. The ``traceparent`` of a signal's span is stored with its payload, and
the runs that the instance makes while it stays woken by that signal (the run the signal
claimed, a run recovered after a crash, in this engine or another) link to it.
Attributes are named ``memable.*``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from typing import Any, Final

__all__ = [
    "NULL",
    "enabled",
    "installed",
    "current_traceparent",
    "failed",
    "link",
    "link_of",
    "signal_span",
    "span",
    "tracer",
]


@functools.cache
def installed() -> bool:
    """Whether OpenTelemetry is installed (looked up once, without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec("opentelemetry") is not None
    except (ImportError, ValueError):  # blocked (None in sys.modules) or broken
        return False


def enabled() -> bool:
    """Whether spans are made: OpenTelemetry is installed and a tracer provider (an SDK)
    is set. With the API alone every span would be a no-op: none is made at all."""
    if not installed():
        return False
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


#: What :func:`span` gives without OpenTelemetry: a reusable context that yields None.
NULL: Final = contextlib.nullcontext(None)


def tracer() -> Any:
    """memable's tracer from the current tracer provider, or ``None`` when OpenTelemetry
    is not installed (found out once, without importing it)."""
    if not installed():
        return None
    from opentelemetry import trace

    return trace.get_tracer("memable")


def span(
    name: str,
    attributes: Mapping[str, Any],
    *,
    parent: str | None = None,
    links: tuple[Any, ...] = (),
    root: bool = False,
    kind: str = "INTERNAL",
) -> contextlib.AbstractContextManager[Any]:
    """A span made current for the block (``None`` without OpenTelemetry).

    *parent* is a stored ``traceparent`` to start under; *root* starts a trace of its
    own (with *links*); otherwise the current span is the parent. Exceptions leaving the
    block are not recorded here (a suspension unwinds by cancellation): see
    :func:`failed`.
    """
    if not enabled():
        return NULL
    return _span(name, attributes, parent=parent, links=links, root=root, kind=kind)


@contextlib.contextmanager
def _span(
    name: str,
    attributes: Mapping[str, Any],
    *,
    parent: str | None,
    links: tuple[Any, ...],
    root: bool,
    kind: str,
) -> Iterator[Any]:
    from opentelemetry import context, trace

    otel = tracer()

    ctx: Any = None
    if parent is not None:
        ctx = _extract(parent)
    elif root:
        ctx = context.Context()
    with otel.start_as_current_span(
        name,
        context=ctx,
        kind=getattr(trace.SpanKind, kind),
        attributes=dict(attributes),
        links=[trace.Link(c) for c in links if c is not None],
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        yield current


def signal_span(instance_id: str, key: str) -> contextlib.AbstractContextManager[Any]:
    """The span of a signal's delivery, by an engine or by a client (the command line,
    the dashboard): store :func:`current_traceparent` with the payload inside it."""
    attributes = {"memable.instance_id": instance_id, "memable.signal.key": key}
    return span(f"memable.signal {key}", attributes, kind="PRODUCER")


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, to store with an instance."""
    if tracer() is None:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def link_of(traceparent: str | None) -> Any:
    """The span context a stored ``traceparent`` names (to link to), or ``None``."""
    if traceparent is None or tracer() is None:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span(_extract(traceparent)).get_span_context()
    return ctx if ctx.is_valid else None


def link(current: Any, traceparent: str) -> None:
    """Link *current* (a span) to the span a stored ``traceparent`` names, if valid."""
    ctx = link_of(traceparent)
    if ctx is not None:
        current.add_link(ctx)


def _extract(traceparent: str) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


def failed(current: Any, error: BaseException) -> None:
    """Mark *current* (a span or ``None``) as failed with *error*."""
    if current is None:
        return
    from opentelemetry.trace import Status, StatusCode

    current.record_exception(error)
    current.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
