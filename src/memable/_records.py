"""The records a :class:`~memable.storage.Storage` keeps, and the writes it applies."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, TypeAlias, final, overload

import attrs

from ._state import InstanceState

__all__ = [
    "EngineRecord",
    "Fence",
    "History",
    "InboxItem",
    "InstanceRecord",
    "InstanceState",
    "InstanceUpdate",
    "QueueRecord",
    "Recorded",
    "ScheduleRecord",
    "SignalOutcome",
    "SignalRecord",
    "StepRecord",
    "StepRows",
    "Suspension",
    "TimerRecord",
    "Write",
]


@final
@attrs.frozen(kw_only=True)
class InstanceRecord:
    """One workflow instance as stored.

    ``input`` and ``output`` are envelopes (JSON text); ``error`` is the JSON text of an
    :class:`~memable.ErrorInfo`. Times are seconds since the epoch, UTC. An instance
    started through a queue (top-level only) names it in ``queue``, with its
    ``priority``; its place in the queue is (``priority`` highest first, ``created_at``,
    ``instance_id``), which it keeps for life.

    Example:
        >>> from memable.storage import InstanceRecord
        >>> record = InstanceRecord(instance_id="o-1", workflow="order", status="running",
        ...                         input='{"type":"str","value":"x"}', created_at=0, updated_at=0)
        >>> record.status
        'running'
    """

    instance_id: str
    workflow: str
    status: InstanceState
    input: str
    created_at: float
    updated_at: float
    parent_id: str | None = None
    output: str | None = None
    error: str | None = None
    status_message: str | None = None
    waiting_on: tuple[str, ...] = ()
    finished_at: float | None = None
    #: On a database shared by several engines: the engine that holds the instance
    #: (``None``: nobody; a ``running`` one is then claimable), and how many times it was
    #: claimed (the fencing token). Single-process backends leave both alone.
    owner: str | None = None
    epoch: int = 0
    #: The W3C ``traceparent`` of the span that started the instance (OpenTelemetry).
    trace: str | None = None
    queue: str | None = None
    priority: int = 0


@final
@attrs.frozen(kw_only=True)
class QueueRecord:
    """A queue's row: its limits, whether it is paused, and its rate-limit window.

    ``starts`` holds the times of the queue's latest starts, at most ``rate_count`` of
    them, oldest first: a sliding-window log, so that no window of ``rate_period``
    seconds ever holds more than ``rate_count`` starts. ``None`` limits are no limit.

    Example:
        >>> from memable.storage import QueueRecord
        >>> QueueRecord(name="emails", concurrency=10).paused
        False
    """

    name: str
    concurrency: int | None = None
    rate_count: int | None = None
    rate_period: float | None = None
    paused: bool = False
    starts: tuple[float, ...] = ()


@final
@attrs.frozen(kw_only=True)
class ScheduleRecord:
    """A schedule's row: every tick up to ``last_tick`` (seconds since the epoch, UTC)
    has been handled, and ``last_run`` is the id of the latest instance it started.

    Example:
        >>> from memable.storage import ScheduleRecord
        >>> ScheduleRecord(name="report", last_tick=0.0).last_run is None
        True
    """

    name: str
    last_tick: float
    last_run: str | None = None


@final
@attrs.frozen(kw_only=True)
class EngineRecord:
    """An engine registered on a shared database (``PostgresStorage.list_engines()``).

    ``name`` is what the engine is called in ``application_name`` (by default
    ``memable@{host}:{pid}``, from which ``host`` and ``pid`` are read; ``None`` for a
    name of another form). Times are seconds since the epoch, UTC; ``heartbeat_age`` is
    how long ago it last renewed its lease, by the database clock (the clock reaping
    uses), and ``expired`` says it is older than the lease of the storage that read it:
    any engine's next claim reaps it. ``instances`` is how many it holds (runs).

    Example:
        >>> from memable.storage import EngineRecord
        >>> EngineRecord(engine_id="e1", name="memable@web-1:4242", host="web-1", pid=4242,
        ...              started_at=0.0, heartbeat=10.0, heartbeat_age=2.5,
        ...              expired=False, instances=3).pid
        4242
    """

    engine_id: str
    name: str
    host: str | None
    pid: int | None
    started_at: float
    heartbeat: float
    heartbeat_age: float
    expired: bool
    instances: int


@final
@attrs.frozen(kw_only=True)
class Admission:
    """What one admission transaction of a queue did.

    ``started`` are the instances it moved from ``enqueued`` to ``running`` (to run now);
    ``full`` says it stopped at its *limit* argument (more may be waiting: admit again);
    ``retry_at`` is when the rate limit lets the next one start, if it held one back.

    Example:
        >>> from memable.storage import Admission
        >>> Admission().started
        ()
    """

    started: tuple[InstanceRecord, ...] = ()
    full: bool = False
    retry_at: float | None = None


@final
@attrs.frozen(kw_only=True)
class StepRecord:
    """The outcome of one step: its result (``completed``) or its dead letter (``dead``).

    Example:
        >>> from memable.storage import StepRecord
        >>> StepRecord(instance_id="o-1", key="price:v1", state="completed",
        ...            value='{"type":"int","value":3}', attempts=1,
        ...            started_at=0.0, finished_at=0.1).state
        'completed'
    """

    instance_id: str
    key: str
    state: Literal["completed", "dead"]
    attempts: int
    started_at: float
    finished_at: float
    value: str | None = None
    error: str | None = None


@final
@attrs.frozen(kw_only=True)
class InstanceUpdate:
    """A change to an instance; fields left ``None`` are left as they are.

    The update applies only while the instance's status is one of ``only_if`` (any status
    when empty), so a late write never overwrites a newer terminal state.

    Example:
        >>> from memable.storage import InstanceUpdate
        >>> InstanceUpdate(instance_id="o-1", updated_at=1.0, status_message="charging").status
    """

    instance_id: str
    updated_at: float
    status: InstanceState | None = None
    only_if: tuple[InstanceState, ...] = ()
    status_message: str | None = None
    output: str | None = None
    error: str | None = None
    waiting_on: tuple[str, ...] | None = None
    finished_at: float | None = None


@final
@attrs.frozen(kw_only=True)
class SignalRecord:
    """A payload delivered to a suspend point; ``payload`` is ``None`` if it timed out.

    Example:
        >>> from memable.storage import SignalRecord
        >>> SignalRecord(instance_id="o-1", key="approval:v1",
        ...              payload='{"type":"bool","value":true}', created_at=0.0).timed_out
        False
    """

    instance_id: str
    key: str
    payload: str | None
    created_at: float
    #: Whether it came before the instance waited on its key (set by the storage).
    early: bool = False
    #: The W3C ``traceparent`` of the span that delivered it (OpenTelemetry): the run it
    #: resumes links to it, in whichever engine or process that run happens.
    trace: str | None = None

    @property
    def timed_out(self) -> bool:
        """Whether the suspend point's deadline passed before a payload came."""
        return self.payload is None


@final
@attrs.frozen(kw_only=True)
class TimerRecord:
    """A durable timer: a ``sleep``, or the deadline of a suspend point (``timeout``).

    ``deadline`` is seconds since the epoch, UTC.

    Example:
        >>> from memable.storage import TimerRecord
        >>> TimerRecord(instance_id="o-1", key="cool-off:v1", deadline=60.0, kind="sleep").fired
        False
    """

    instance_id: str
    key: str
    deadline: float
    kind: Literal["sleep", "timeout"]
    fired: bool = False


#: A step as its storage read it: ``(key, state, value, error, attempts, started_at,
#: finished_at)``, checked, perhaps with more columns after these (ignored).
StepRow: TypeAlias = tuple[Any, ...]


@final
class StepRows(Sequence[StepRecord]):
    """An instance's steps as rows (plain tuples), made into :class:`StepRecord` when read.

    A storage returns it from ``load_history`` so that a long history costs one tuple per
    step: tuples of strings and numbers are not tracked by the garbage collector, so a
    50,000-step history sets off no full collection (a pause of the whole event loop),
    and replay reads the rows without building a record per step.

    Example:
        >>> from memable.storage import StepRows
        >>> rows = StepRows("o-1", [("price:v1", "completed", '{"type":"int","value":3}',
        ...                          None, 1, 0.0, 0.1)])
        >>> rows[0].key, len(rows), rows == [rows[0]]
        ('price:v1', 1, True)
    """

    __slots__ = ("_instance_id", "_rows")

    def __init__(self, instance_id: str, rows: list[StepRow]) -> None:
        self._instance_id = instance_id
        self._rows = rows

    def _record(self, row: StepRow) -> StepRecord:
        key, state, value, error, attempts, started_at, finished_at = row[:7]
        return StepRecord(instance_id=self._instance_id, key=key, state=state, value=value,
                          error=error, attempts=attempts, started_at=started_at,
                          finished_at=finished_at)  # fmt: skip

    def rows(self) -> list[StepRow]:
        """The rows themselves, in the order read: ``(key, state, value, error, attempts,
        started_at, finished_at)``, perhaps with more columns after these."""
        return self._rows

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> StepRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[StepRecord]: ...
    def __getitem__(self, index: int | slice) -> StepRecord | list[StepRecord]:
        if isinstance(index, slice):
            return [self._record(row) for row in self._rows[index]]
        return self._record(self._rows[index])

    def __iter__(self) -> Iterator[StepRecord]:
        return map(self._record, self._rows)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # like a list

    def __repr__(self) -> str:
        return repr(list(self))


@final
@attrs.frozen(kw_only=True)
class History:
    """Everything recorded for one instance, loaded in one read when it starts running.

    Example:
        >>> from memable.storage import History
        >>> History(steps=[], signals=[], timers=[]).steps
        []
    """

    steps: Sequence[StepRecord]  # a list, or StepRows (rows decoded when read)
    signals: list[SignalRecord]
    timers: list[TimerRecord]


@final
@attrs.frozen(kw_only=True)
class Recorded:
    """What replaying an instance needs of its history, loaded in one read when it starts
    running: each step's recorded result or dead letter by key, its signals and timers.

    A storage may build it itself (an optional ``load_replay(instance_id)`` method, which
    the engine calls instead of ``load_history``), reading only what replay needs: a
    50,000-step history is then one string per step, its values decoded when replayed.
    :meth:`of` builds it from a :class:`History`, for storages without the method.

    Example:
        >>> from memable.storage import History, Recorded, StepRecord
        >>> step = StepRecord(instance_id="o-1", key="price:v1", state="completed",
        ...                   value='{"type":"int","value":3}', attempts=1,
        ...                   started_at=0.0, finished_at=0.1)
        >>> Recorded.of(History(steps=[step], signals=[], timers=[])).values
        {'price:v1': '{"type":"int","value":3}'}
    """

    #: The envelope of each ``completed`` step, by key.
    values: Mapping[str, str | None]
    #: The ``(attempts, error)`` of each dead letter (a ``dead`` step), by key.
    dead: Mapping[str, tuple[int, str | None]]
    signals: Sequence[SignalRecord]
    timers: Sequence[TimerRecord]

    @classmethod
    def of(cls, history: History) -> Recorded:
        """What replay needs of *history* (as ``load_history`` returns it)."""
        steps = history.steps
        rows = steps.rows() if isinstance(steps, StepRows) else (
            (s.key, s.state, s.value, s.error, s.attempts) for s in steps
        )  # fmt: skip
        values: dict[str, str | None] = {}
        dead: dict[str, tuple[int, str | None]] = {}
        for key, state, value, error, attempts, *_ in rows:
            if state == "completed":
                values[key] = value
            else:
                dead[key] = (attempts, error)
        return cls(values=values, dead=dead, signals=history.signals, timers=history.timers)


#: What :meth:`~memable.storage.Storage.deliver_signal` did with a payload.
SignalOutcome: TypeAlias = Literal[
    "claimed", "stored", "superseded", "timed_out", "not_found", "finished"
]


@final
@attrs.frozen(kw_only=True)
class SignalDrop:
    """A write that sets aside a stored payload its workflow cannot read.

    The payload was delivered for a point of the same key but another type (sent by code
    that did not know the waiter's type); dropping it lets a right one be delivered.

    Example:
        >>> from memable.storage import SignalDrop
        >>> SignalDrop(instance_id="o-1", key="approval:v1").key
        'approval:v1'
    """

    instance_id: str
    key: str


@final
@attrs.frozen(kw_only=True)
class InboxItem:
    """A request another process left for the engine that owns a SQLite file.

    ``verb`` is ``"signal"`` (``payload`` is JSON text), ``"cancel"`` (with ``reason``),
    ``"resume"``, or ``"purge"`` (``payload`` is the age in seconds).

    Example:
        >>> from memable.storage import InboxItem
        >>> InboxItem(id=1, verb="cancel", instance_id="o-1", reason="stuck").verb
        'cancel'
    """

    id: int
    verb: Literal["signal", "cancel", "resume", "purge"]
    instance_id: str
    key: str | None = None
    payload: str | None = None
    reason: str | None = None


@final
@attrs.frozen(kw_only=True)
class Suspension:
    """A write that records a ``running`` instance as ``suspended`` on *waiting_on*.

    It applies (and :meth:`~memable.storage.Storage.commit` reports ``True``) only if
    nothing it waits for has come: no payload for a waited point, no fired or due timer
    (a due one is fired by it), no running child of a waited fan-out. With *extend*, the
    instance was suspended by the same run a moment ago and *waiting_on* adds keys
    registered since. Written through the group commit, so suspending many instances at
    once shares transactions as their steps do.

    Example:
        >>> from memable.storage import Suspension
        >>> Suspension(instance_id="o-1", waiting_on=("approval:v1",), status_message=None,
        ...            now=0.0).extend
        False
    """

    instance_id: str
    waiting_on: tuple[str, ...]
    status_message: str | None
    now: float
    extend: bool = False


@final
@attrs.frozen(kw_only=True)
class Fence:
    """The writes after it in a commit apply only while the engine *owner* still holds
    the top-level instance *instance_id* at *epoch* (shared databases only).

    A run's writes carry the claim it runs under; if another engine claimed the instance
    since (this engine was paused past its lease, or the instance was cancelled), the
    commit is refused with :class:`~memable.StorageError` and the run stops.

    Example:
        >>> from memable.storage import Fence
        >>> Fence(instance_id="o-1", owner="e-1", epoch=2).epoch
        2
    """

    instance_id: str
    owner: str
    epoch: int
    #: Written while the run is suspending: the run's own suspension may have let go of
    #: the instance (``owner`` ``None``), which still passes at the same epoch.
    suspended: bool = False


#: What :meth:`~memable.storage.Storage.commit` applies in one transaction.
Write: TypeAlias = (
    StepRecord | InstanceUpdate | TimerRecord | InstanceRecord | SignalDrop | Suspension | Fence
)


# Public as memable.storage.X (memable.storage loads this module on first use).
for _cls in (
    Admission,
    EngineRecord,
    Fence,
    History,
    InboxItem,
    InstanceRecord,
    InstanceUpdate,
    QueueRecord,
    Recorded,
    ScheduleRecord,
    SignalDrop,
    SignalRecord,
    StepRecord,
    StepRows,
    Suspension,
    TimerRecord,
):
    _cls.__module__ = "memable.storage"
del _cls
