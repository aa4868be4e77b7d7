"""What the dashboard reads, and how it hands actions to the engine that owns a database.

Reads go through a :class:`~memable.storage.Storage` in worker threads (never on the event
loop). Actions (signal, cancel, resume) are rows of the database's inbox, which the owning
engine applies; the dashboard never changes an instance itself, so it can run beside a live
engine in another process.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, Literal, Protocol, TypeVar, cast, get_args

import anyio
import attrs

from .._exceptions import StorageError
from .._ids import public_keys
from .._outcome import ErrorInfo
from .._records import (
    History,
    InstanceRecord,
    InstanceState,
    SignalRecord,
    StepRecord,
    TimerRecord,
)

__all__ = [
    "AGES",
    "STATES",
    "Detail",
    "Filters",
    "ListPage",
    "Readable",
    "Source",
    "Step",
    "open_storage",
    "preview",
]

T = TypeVar("T")

STATES: Final[tuple[InstanceState, ...]] = get_args(InstanceState)
#: The "created within" choices of the instance list: label -> seconds.
AGES: Final = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0}
#: How many characters of a value a preview shows.
PREVIEW: Final = 160
#: Counts per status stop at this many (a capped index range scan each).
COUNT_CAP: Final = 10_000
#: How many children an instance page draws (with their steps).
CHILDREN_SHOWN: Final = 50


def preview(envelope: str | None) -> tuple[str | None, str | None]:
    """The type name and a short JSON text of a stored envelope (``(None, None)`` for none)."""
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


class Readable(Protocol):
    """The reads of :class:`~memable.storage.Storage` the dashboard uses."""

    def open(self) -> None: ...

    def close(self) -> None: ...

    def get_instance(self, instance_id: str) -> InstanceRecord | None: ...

    def list_instances(
        self,
        *,
        workflow: str | None = None,
        status: InstanceState | None = None,
        limit: int | None = None,
        parent_id: str | None = None,
        waiting_on: str | None = None,
        created_after: float | None = None,
        before: tuple[float, str] | None = None,
        newest_first: bool = False,
    ) -> Sequence[InstanceRecord]: ...

    def load_history(self, instance_id: str) -> History: ...


# -- what the pages show ----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Filters:
    """The filters of the instance list, as they appear in its query string."""

    workflow: str | None = None
    status: InstanceState | None = None
    waiting_on: str | None = None
    age: str | None = None
    after: str | None = None
    limit: int = 50

    @classmethod
    def parse(cls, params: Any) -> Filters:
        """Read filters from a query string mapping; :class:`ValueError` says what is wrong."""

        def text(name: str) -> str | None:
            value = params.get(name)
            return value.strip() or None if isinstance(value, str) else None

        status: Any = text("status")
        if status is not None and status not in STATES:
            raise ValueError(f"status must be one of {', '.join(STATES)}, not {status!r}")
        age = text("age")
        if age is not None and age not in AGES:
            raise ValueError(f"age must be one of {', '.join(AGES)}, not {age!r}")
        after = text("after")
        if after is not None:
            decode_cursor(after)
        limit_text = text("limit") or "50"
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 500:
            raise ValueError(f"limit must be a number from 1 to 500, not {limit_text!r}")
        return cls(
            workflow=text("workflow"),
            status=status,
            waiting_on=text("waiting_on"),
            age=age,
            after=after,
            limit=int(limit_text),
        )

    def query(self, **changes: object) -> dict[str, str]:
        """The query string parameters of these filters (with *changes*), empty ones left out."""
        values = attrs.asdict(self) | changes
        if values["limit"] == 50:
            del values["limit"]
        return {k: str(v) for k, v in values.items() if v is not None}


@attrs.frozen(kw_only=True)
class ListPage:
    """One page of the instance list."""

    items: list[InstanceRecord]
    next: str | None
    counts: dict[str, int]
    now: float

    def fingerprint(self) -> int:
        """Changes when what the page shows changes (not when time passes)."""
        return hash(repr((self.items, self.next, sorted(self.counts.items()))))


@attrs.frozen(kw_only=True)
class Step:
    """One step as the timeline shows it (``retried``: a dead letter that ``resume`` retried)."""

    key: str
    state: Literal["completed", "dead", "retried"]
    attempts: int
    started_at: float
    finished_at: float
    error: ErrorInfo | None
    value_type: str | None
    value: str | None

    @classmethod
    def of(cls, record: StepRecord, *, retired: bool = False) -> Step:
        tp, value = preview(record.value)
        return cls(
            key=record.key,
            state="retried" if retired else record.state,
            attempts=record.attempts,
            started_at=record.started_at,
            finished_at=record.finished_at,
            error=None if record.error is None else ErrorInfo.from_json(record.error),
            value_type=tp,
            value=value,
        )


@attrs.frozen(kw_only=True)
class Detail:
    """Everything an instance page shows about one instance."""

    record: InstanceRecord
    steps: list[Step]
    signals: list[SignalRecord]
    timers: list[TimerRecord]
    children: list[Detail]
    more_children: bool
    now: float

    @property
    def waiting_on(self) -> tuple[str, ...]:
        return public_keys(self.record.waiting_on) if self.record.status == "suspended" else ()

    def fingerprint(self) -> int:
        """Changes when what the page shows changes (not when time passes)."""
        return hash(repr(attrs.evolve(self, now=0.0, children=[]))) ^ hash(
            tuple(child.fingerprint() for child in self.children)
        )


# -- cursors ----------------------------------------------------------------------------------


def encode_cursor(record: InstanceRecord) -> str:
    text = f"{record.created_at!r} {record.instance_id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, instance_id = base64.urlsafe_b64decode(padded).decode().split(" ", 1)
        return float(created), instance_id
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise ValueError(f"{cursor!r} is not a cursor of the instance list") from None


# -- the source -------------------------------------------------------------------------------


class Source:
    """A storage read in worker threads, and the inbox of the engine that owns it."""

    def __init__(self, storage: Readable, *, owned: bool) -> None:
        self.storage = storage
        self.owned = owned  # opened (and to be closed) by the dashboard
        self._limiter = anyio.CapacityLimiter(2)

    async def _call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return await anyio.to_thread.run_sync(
            lambda: fn(*args, **kwargs), limiter=self._limiter, abandon_on_cancel=True
        )

    async def page(self, filters: Filters) -> ListPage:
        return await self._call(self._page, filters)

    def _page(self, filters: Filters) -> ListPage:
        now = time.time()
        common: dict[str, Any] = {
            "workflow": filters.workflow,
            "waiting_on": filters.waiting_on,
            "created_after": None if filters.age is None else now - AGES[filters.age],
        }
        records = self.storage.list_instances(
            **common,
            status=filters.status,
            before=None if filters.after is None else decode_cursor(filters.after),
            newest_first=True,
            limit=filters.limit + 1,
        )
        cursor = None
        if len(records) > filters.limit:
            records = records[: filters.limit]
            cursor = encode_cursor(records[-1])
        counts: dict[str, int] = {state: self._count(state, common) for state in STATES}
        return ListPage(items=list(records), next=cursor, counts=dict(counts), now=now)

    def _count(self, state: InstanceState, common: dict[str, Any]) -> int:
        if common["waiting_on"] is not None and state != "suspended":
            return 0
        count: Any = getattr(self.storage, "count_instances", None)
        if count is not None:
            return int(count(status=state, limit=COUNT_CAP + 1, **common))
        return len(self.storage.list_instances(status=state, limit=COUNT_CAP + 1, **common))

    async def detail(self, instance_id: str) -> Detail | None:
        return await self._call(self._detail, instance_id, depth=2)

    def _detail(self, instance_id: str, *, depth: int) -> Detail | None:
        record = self.storage.get_instance(instance_id)
        if record is None:
            return None
        return self._describe(record, depth=depth)

    def _describe(self, record: InstanceRecord, *, depth: int) -> Detail:
        instance_id = record.instance_id
        rows = self.storage.load_history(instance_id)
        load_retired: Any = getattr(self.storage, "load_retired", None)
        retired: list[StepRecord] = [] if load_retired is None else load_retired(instance_id)
        steps = [Step.of(s) for s in rows.steps] + [Step.of(s, retired=True) for s in retired]
        steps.sort(key=lambda s: (s.started_at, s.state != "retried", s.key))
        children: list[Detail] = []
        more = False
        if depth > 0:
            found = self.storage.list_instances(parent_id=instance_id, limit=CHILDREN_SHOWN + 1)
            more = len(found) > CHILDREN_SHOWN
            children = [self._describe(c, depth=depth - 1) for c in found[:CHILDREN_SHOWN]]
        return Detail(
            record=record,
            steps=steps,
            signals=sorted(rows.signals, key=lambda s: s.created_at),
            timers=sorted(rows.timers, key=lambda t: t.deadline),
            children=children,
            more_children=more,
            now=time.time(),
        )

    async def post(
        self,
        verb: Literal["signal", "cancel", "resume"],
        instance_id: str,
        *,
        key: str | None = None,
        payload: str | None = None,
        reason: str | None = None,
    ) -> int:
        """Hand an action to the owning engine through the inbox; return the inbox row id."""
        return await self._call(
            post_to_inbox, self.storage, verb, instance_id, key, payload, reason
        )

    async def outcome(self, row: int) -> str | None:
        """What the engine made of an inbox row (``None`` while it has not applied it)."""
        return await self._call(inbox_result, self.storage, row)

    def close(self) -> None:
        if self.owned:
            self.storage.close()


# -- the inbox (stand-in until the storage protocol has its own) -----------------------------


def _inbox_path(storage: Readable) -> str:
    path = getattr(storage, "path", None)
    if not isinstance(path, str) or path == ":memory:":
        raise StorageError("this storage has no inbox: actions need a SQLite file")
    return path


@contextlib.contextmanager
def _writer(path: str) -> Iterator[sqlite3.Connection]:
    try:
        db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open the inbox of the database: {exc}") from exc
    try:
        yield db
    except sqlite3.Error as exc:
        raise StorageError(f"SQLite error while using the inbox of the database: {exc}") from exc
    finally:
        db.close()


def post_to_inbox(
    storage: Readable,
    verb: str,
    instance_id: str,
    key: str | None,
    payload: str | None,
    reason: str | None,
) -> int:
    """Append an action for the owning engine to the inbox; return its row id."""
    poster: Any = getattr(storage, "post_to_inbox", None)
    if poster is not None:
        return int(poster(verb, instance_id, key=key, payload=payload, reason=reason))
    with _writer(_inbox_path(storage)) as db:
        cursor = db.execute(
            "INSERT INTO inbox (verb, instance_id, key, payload, reason, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (verb, instance_id, key, payload, reason, time.time()),
        )
        return int(cursor.lastrowid or 0)


def inbox_result(storage: Readable, row: int) -> str | None:
    """The result the engine wrote for an inbox row, or ``None`` while it is pending."""
    reader: Any = getattr(storage, "inbox_result", None)
    if reader is not None:
        return cast(str | None, reader(row))
    with _writer(_inbox_path(storage)) as db:
        found = db.execute("SELECT done_at, result FROM inbox WHERE id = ?", (row,)).fetchone()
    if found is None or found[0] is None:
        return None
    return str(found[1] or "done")


# -- opening a database by name ---------------------------------------------------------------


def open_storage(db: str | os.PathLike[str]) -> Readable:
    """Open the database *db* (a SQLite path or a Postgres URL) for the dashboard to read.

    A SQLite file is opened read-only, without taking the one-engine ownership, so the
    dashboard runs beside the engine that owns it.
    """
    if isinstance(db, str) and db.startswith(("postgresql://", "postgres://")):
        from .. import storage

        postgres: Any = getattr(storage, "PostgresStorage", None)
        if postgres is None:
            raise StorageError("this memable has no Postgres storage")
        opened: Readable = postgres(db)
        opened.open()
        return opened
    from ._readonly import ReadOnlySQLite

    reader = ReadOnlySQLite(db)
    reader.open()
    return reader
