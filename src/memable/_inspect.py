"""What an instance did, for people and tools: the history and listing types, and how
they are read from a storage (by an engine, or by the ``memable`` command line without
the application's code)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, TypeVar, final, overload

import attrs

from ._exceptions import SerializationError, TypeMismatch
from ._info import InstanceInfo, info_of, json_value
from ._outcome import ErrorInfo
from ._records import InstanceRecord, InstanceState, SignalRecord, StepRecord, TimerRecord

if TYPE_CHECKING:
    from ._kernel import Kernel, Registry
    from ._serde import Serde
    from ._workflow import Workflow
    from .storage._protocol import Storage

__all__ = [
    "History",
    "Page",
    "SignalInfo",
    "StepInfo",
    "TimerInfo",
    "decode_cursor",
    "describe",
    "describe_known",
    "load_history",
    "load_page",
    "preview",
    "read_history",
    "read_page",
]

T_co = TypeVar("T_co", covariant=True)

#: How many characters of a value a preview shows.
PREVIEW: Final = 120


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def preview(envelope: str | None) -> tuple[str | None, str | None]:
    """The type name and a short JSON text of a stored envelope (``None`` for none).

    Example:
        >>> preview('{"type": "int", "value": 3}')
        ('int', '3')
    """
    if envelope is None:
        return None, None
    try:
        data = json.loads(envelope)
        tp, value = data["type"], data["value"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None, envelope[:PREVIEW]
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(text) > PREVIEW:
        text = text[: PREVIEW - 1] + "…"
    return (tp if isinstance(tp, str) else None), text


@final
@attrs.frozen(kw_only=True)
class StepInfo:
    """One step of an instance's history.

    ``state`` is ``"completed"`` (its result is recorded), ``"dead"`` (its dead letter:
    every attempt failed) or ``"retried"`` (a dead letter that ``resume`` ran again; kept
    as an earlier attempt). ``value`` is a short JSON preview of the result, as stored.

    Example:
        >>> from datetime import UTC, datetime
        >>> at = datetime(2026, 1, 1, tzinfo=UTC)
        >>> StepInfo(key="price:v1", state="completed", attempts=1, started_at=at,
        ...          finished_at=at, error=None, value_type="int", value="3").duration
        datetime.timedelta(0)
    """

    key: str
    state: Literal["completed", "dead", "retried"]
    attempts: int
    started_at: datetime
    finished_at: datetime
    error: ErrorInfo | None
    value_type: str | None
    value: str | None

    @property
    def duration(self) -> timedelta:
        """How long its attempts took, from the first start to the last end."""
        return self.finished_at - self.started_at

    @classmethod
    def from_record(cls, record: StepRecord, *, retired: bool = False) -> StepInfo:
        """Describe a stored step record (or a retired dead letter)."""
        tp, value = preview(record.value)
        return cls(
            key=record.key,
            state="retried" if retired else record.state,
            attempts=record.attempts,
            started_at=_utc(record.started_at),
            finished_at=_utc(record.finished_at),
            error=None if record.error is None else ErrorInfo.from_json(record.error),
            value_type=tp,
            value=value,
        )


@final
@attrs.frozen(kw_only=True)
class SignalInfo:
    """A payload delivered to a suspend point, or the mark of its deadline.

    ``state`` is ``"delivered"`` (the instance waited on the point), ``"early"`` (kept
    until the instance reaches the point) or ``"timed_out"`` (the deadline came first).

    Example:
        >>> from datetime import UTC, datetime
        >>> SignalInfo(key="approval:v1", state="early", received_at=datetime(2026, 1, 1,
        ...            tzinfo=UTC), payload_type="bool", payload="true").state
        'early'
    """

    key: str
    state: Literal["delivered", "early", "timed_out"]
    received_at: datetime
    payload_type: str | None
    payload: str | None

    @classmethod
    def from_record(cls, record: SignalRecord) -> SignalInfo:
        """Describe a stored signal."""
        tp, payload = preview(record.payload)
        state: Literal["delivered", "early", "timed_out"] = (
            "timed_out" if record.timed_out else "early" if record.early else "delivered"
        )
        return cls(key=record.key, state=state, received_at=_utc(record.created_at),
                   payload_type=tp, payload=payload)  # fmt: skip


@final
@attrs.frozen(kw_only=True)
class TimerInfo:
    """A durable timer: a ``sleep``, or the deadline of a suspend point (``timeout``).

    Example:
        >>> from datetime import UTC, datetime
        >>> TimerInfo(key="cool-off:v1", kind="sleep", fired=False,
        ...           deadline=datetime(2026, 1, 1, tzinfo=UTC)).fired
        False
    """

    key: str
    kind: Literal["sleep", "timeout"]
    deadline: datetime
    fired: bool

    @classmethod
    def from_record(cls, record: TimerRecord) -> TimerInfo:
        """Describe a stored timer."""
        return cls(key=record.key, kind=record.kind, deadline=_utc(record.deadline),
                   fired=record.fired)  # fmt: skip


@final
@attrs.frozen(kw_only=True)
class History:
    """What an instance did (``Engine.history``), read from storage.

    ``steps`` are in the order they started, earlier failed attempts (``"retried"``)
    included; ``children`` are its direct child instances. ``payload_types`` maps the
    keys of the suspend points it waits on to the payload type their workflow expects,
    where this engine has seen it (it is not stored).

    Not to be confused with :class:`memable.storage.History`, the rows a storage
    returns to replay an instance.

    Example:
        >>> import anyio, memable
        >>> @memable.workflow("order")
        ... async def order(ctx: memable.Context, order_id: str) -> int:
        ...     async def price() -> int:
        ...         return 1250
        ...     return await ctx.step("price:v1", price)
        >>> async def main() -> None:
        ...     async with memable.Engine(workflows=[order]) as engine:
        ...         await engine.run(order, "o-17", instance_id="order-o-17")
        ...         history = await engine.history(order, "order-o-17")
        ...         for step in history.steps:
        ...             print(step.key, step.state, step.attempts, step.value, step.error)
        >>> anyio.run(main)
        price:v1 completed 1 1250 None
    """

    instance: InstanceInfo
    steps: tuple[StepInfo, ...]
    signals: tuple[SignalInfo, ...]
    timers: tuple[TimerInfo, ...]
    children: tuple[InstanceInfo, ...]
    payload_types: Mapping[str, str] = attrs.field(factory=dict, hash=False)


@final
@attrs.frozen
class Page(Sequence[T_co], Generic[T_co]):
    """One page of a listing, newest first; ``next`` is the cursor of the next page.

    Pass ``next`` as ``after=`` to get the page that follows; it is ``None`` on the last
    page.

    Example:
        >>> import anyio, memable
        >>> @memable.workflow("noop")
        ... async def noop(ctx: memable.Context, n: int) -> int:
        ...     return n
        >>> async def every_instance(engine: memable.Engine) -> list[str]:
        ...     ids: list[str] = []
        ...     after = None
        ...     while True:
        ...         page = await engine.instances(limit=2, after=after)
        ...         ids += [info.instance_id for info in page]
        ...         if page.next is None:
        ...             return ids
        ...         after = page.next
        >>> async def main() -> None:
        ...     async with memable.Engine(workflows=[noop]) as engine:
        ...         for n in range(5):
        ...             await engine.run(noop, n, instance_id=f"n-{n}")
        ...         print(await every_instance(engine))
        >>> anyio.run(main)
        ['n-4', 'n-3', 'n-2', 'n-1', 'n-0']
    """

    items: tuple[T_co, ...]
    next: str | None = None

    @overload
    def __getitem__(self, index: int) -> T_co: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[T_co, ...]: ...

    def __getitem__(self, index: int | slice) -> T_co | tuple[T_co, ...]:
        return self.items[index]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[T_co]:
        return iter(self.items)


def encode_cursor(record: InstanceRecord) -> str:
    """The cursor of the page after *record* (opaque to users)."""
    import base64  # loaded when a page is first listed

    text = f"{record.created_at!r} {record.instance_id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The position a cursor stands for, or :class:`ValueError`."""
    import base64
    import binascii

    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, instance_id = base64.urlsafe_b64decode(padded).decode().split(" ", 1)
        return float(created), instance_id
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise ValueError(f"{cursor!r} is not a cursor of instances() (use page.next)") from None


def load_page(
    storage: Storage,
    *,
    workflow: str | None,
    status: InstanceState | None,
    waiting_on: str | None,
    parent_id: str | None,
    created_after: float | None,
    limit: int | None,
    after: str | None,
) -> tuple[list[InstanceRecord], str | None]:
    """One page of instances, newest first, and the cursor of the next (synchronous)."""
    records = storage.list_instances(
        workflow=workflow,
        status=status,
        waiting_on=waiting_on,
        parent_id=parent_id,
        created_after=created_after,
        before=None if after is None else decode_cursor(after),
        newest_first=True,
        limit=None if limit is None else limit + 1,  # one more: is there a next page?
    )
    if limit is not None and len(records) > limit:
        records = records[:limit]
        return records, encode_cursor(records[-1]) if records else None
    return records, None


def load_history(
    storage: Storage, record: InstanceRecord, *, payload_types: Mapping[str, str] | None = None
) -> Callable[[Callable[[InstanceRecord], InstanceInfo]], History]:
    """Read what *record*'s instance did (synchronous: storage reads only).

    Returns a function that builds the :class:`History`, given how to describe an
    instance (the engine decodes inputs and outputs there, on its event loop).
    """
    instance_id = record.instance_id
    rows = storage.load_history(instance_id)
    load_retired: Any = getattr(storage, "load_retired", None)
    retired: list[StepRecord] = [] if load_retired is None else load_retired(instance_id)
    children = storage.list_instances(parent_id=instance_id)

    def build(describe: Callable[[InstanceRecord], InstanceInfo]) -> History:
        steps = [StepInfo.from_record(step) for step in rows.steps]
        steps += [StepInfo.from_record(step, retired=True) for step in retired]
        steps.sort(key=lambda step: (step.started_at, step.state != "retried"))
        waiting = set(record.waiting_on)
        return History(
            instance=describe(record),
            steps=tuple(steps),
            signals=tuple(
                SignalInfo.from_record(s) for s in sorted(rows.signals, key=lambda s: s.created_at)
            ),
            timers=tuple(
                TimerInfo.from_record(t) for t in sorted(rows.timers, key=lambda t: t.deadline)
            ),
            children=tuple(describe(child) for child in children),
            payload_types={k: v for k, v in (payload_types or {}).items() if k in waiting},
        )

    return build


def describe(record: InstanceRecord, serde: Serde, wf: Workflow[Any, Any] | None) -> InstanceInfo:
    """Describe *record*, its input and output decoded if its workflow *wf* is known
    (values that no longer decode, after a change of types, stay JSON)."""
    if wf is None:
        return InstanceInfo.from_record(record)
    input_type, output_type = wf.types()
    return info_of(
        record,
        _decoded(serde, record.input, input_type, "input"),
        _decoded(serde, record.output, output_type, "output"),
    )


def describe_known(kernel: Kernel, registry: Registry, record: InstanceRecord) -> InstanceInfo:
    """Describe *record* for an engine: decoded if the engine registered its workflow."""
    return describe(record, kernel.serde, registry.get(record.workflow))


async def read_page(
    kernel: Kernel, registry: Registry, query: dict[str, Any]
) -> Page[InstanceInfo]:
    """``Engine.instances``: one page read on the storage thread, described on the loop."""
    records, cursor = await kernel.store.call(load_page, kernel.store.storage, **query)
    return Page(tuple(describe_known(kernel, registry, record) for record in records), cursor)


async def read_history(kernel: Kernel, registry: Registry, record: InstanceRecord) -> History:
    """``Engine.history``: the reads on the storage thread, the decoding on the loop."""
    name = record.workflow
    types = {key: tp for (wf, key), tp in kernel.points.items() if wf == name}
    build = await kernel.store.call(load_history, kernel.store.storage, record, payload_types=types)
    return build(lambda child: describe_known(kernel, registry, child))


def _decoded(serde: Serde, envelope: str | None, tp: object, name: str) -> Any:
    """The value of *envelope* as *tp*; its JSON value if it no longer decodes as *tp*."""
    if envelope is None:
        return None
    try:
        return serde.decode(envelope, tp, name)
    except (TypeMismatch, SerializationError):
        return json_value(envelope)


def query(
    wf: Workflow[Any, Any] | None,
    status: InstanceState | None,
    waiting_on: str | None,
    parent_id: str | None,
    created_after: datetime | None,
    limit: int | None,
    after: str | None,
) -> dict[str, Any]:
    """The checked arguments of :func:`load_page` for ``Engine.instances``."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be an int >= 0 or None, not {limit!r}")
    if created_after is not None and created_after.tzinfo is None:
        raise ValueError(f"created_after must be a timezone-aware datetime, not {created_after!r}")
    if after is not None:
        decode_cursor(after)
    return {
        "workflow": None if wf is None else wf.name,
        "status": status,
        "waiting_on": waiting_on,
        "parent_id": parent_id,
        "created_after": None if created_after is None else created_after.timestamp(),
        "limit": limit,
        "after": after,
    }


# Public as memable.X, which loads this module on first use (see memable/__init__.py).
for _cls in (History, Page, SignalInfo, StepInfo, TimerInfo):
    _cls.__module__ = "memable"
del _cls
