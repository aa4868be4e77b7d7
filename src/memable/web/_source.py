"""What the dashboard reads, and how it hands actions to the engine that owns a database.

Reads go through a :class:`~memable.storage.Storage` in worker threads (never on the event
loop). Actions (signal, cancel, resume) are rows of the database's inbox, which the owning
engine applies; the dashboard never changes an instance itself, so it can run beside a live
engine in another process.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal, Protocol, TypeVar, cast, get_args

import anyio
import attrs

from .._exceptions import StorageError
from .._ids import public_keys
from .._info import InstanceInfo
from .._inspect import History, StepInfo, decode_cursor, load_history, load_page, preview
from .._records import History as Rows
from .._records import InstanceRecord, InstanceState

__all__ = [
    "AGES",
    "STATES",
    "Detail",
    "Filters",
    "ListPage",
    "Readable",
    "Source",
    "open_storage",
    "preview",
]

T = TypeVar("T")

STATES: Final[tuple[InstanceState, ...]] = get_args(InstanceState)
#: The "created within" choices of the instance list: label -> seconds.
AGES: Final = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0}
#: Counts per status stop at this many (a capped index range scan each).
COUNT_CAP: Final = 10_000
#: ... or at this many where the storage cannot count (it lists rows instead).
SLOW_COUNT_CAP: Final = 1_000
#: How long an action waits for the owning engine's answer (seconds).
ANSWER_TIMEOUT: Final = 5.0
#: How many children an instance page draws (with their steps).
CHILDREN_SHOWN: Final = 50


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

    def load_history(self, instance_id: str) -> Rows: ...


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
    #: Counts stop at this many (more is shown as "10,000+").
    cap: int
    now: float

    def fingerprint(self) -> int:
        """Changes when what the page shows changes (not when time passes)."""
        return hash(repr((self.items, self.next, sorted(self.counts.items()))))


@attrs.frozen(kw_only=True)
class Detail:
    """Everything an instance page shows about one instance: its history (as
    ``Engine.history`` reads it) and its children's, nested."""

    record: InstanceRecord
    history: History
    children: list[Detail]
    more_children: bool
    now: float

    @property
    def steps(self) -> tuple[StepInfo, ...]:
        return self.history.steps

    @property
    def waiting_on(self) -> tuple[str, ...]:
        return public_keys(self.record.waiting_on) if self.record.status == "suspended" else ()

    def fingerprint(self) -> int:
        """Changes when what the page shows changes (not when time passes)."""
        return hash(repr((self.record, self.history))) ^ hash(
            tuple(child.fingerprint() for child in self.children)
        )


# -- the source -------------------------------------------------------------------------------


class Source:
    """A storage read in worker threads, and the inbox of the engine that owns it."""

    def __init__(self, storage: Readable, *, owned: bool) -> None:
        self.storage = storage
        self.owned = owned  # opened (and to be closed) by the dashboard
        self._limiter = anyio.CapacityLimiter(2)

    async def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a storage read in a worker thread."""
        return await anyio.to_thread.run_sync(
            lambda: fn(*args, **kwargs), limiter=self._limiter, abandon_on_cancel=True
        )

    async def page(self, filters: Filters) -> ListPage:
        return await self.call(self._page, filters)

    def _page(self, filters: Filters) -> ListPage:
        now = time.time()
        common: dict[str, Any] = {
            "workflow": filters.workflow,
            "waiting_on": filters.waiting_on,
            "created_after": None if filters.age is None else now - AGES[filters.age],
        }
        records, cursor = load_page(
            cast(Any, self.storage),
            **common,
            status=filters.status,
            parent_id=None,
            limit=filters.limit,
            after=filters.after,
        )
        counts: dict[str, int] = {state: self._count(state, common) for state in STATES}
        cap = COUNT_CAP if hasattr(self.storage, "count_instances") else SLOW_COUNT_CAP
        return ListPage(items=list(records), next=cursor, counts=counts, cap=cap, now=now)

    def _count(self, state: InstanceState, common: dict[str, Any]) -> int:
        if common["waiting_on"] is not None and state != "suspended":
            return 0
        count: Any = getattr(self.storage, "count_instances", None)
        if count is not None:
            return int(count(status=state, limit=COUNT_CAP + 1, **common))
        # A storage that cannot count lists (and decodes) rows: fewer of them.
        listed = self.storage.list_instances(status=state, limit=SLOW_COUNT_CAP + 1, **common)
        return len(listed)

    async def detail(self, instance_id: str) -> Detail | None:
        return await self.call(self._detail, instance_id, depth=2)

    def _detail(self, instance_id: str, *, depth: int) -> Detail | None:
        record = self.storage.get_instance(instance_id)
        if record is None:
            return None
        return self._describe(record, depth=depth, budget=[CHILDREN_SHOWN])

    def _describe(self, record: InstanceRecord, *, depth: int, budget: list[int]) -> Detail:
        """*record*'s history and, *depth* levels down, its children's: at most
        ``CHILDREN_SHOWN`` descendants in all (*budget*), so a page of a large fan-out
        costs a bounded number of reads, every time it is polled."""
        history = load_history(cast(Any, _Capped(self.storage)), record)(InstanceInfo.from_record)
        children: list[Detail] = []
        more = False
        if depth > 0:
            found = self.storage.list_instances(parent_id=record.instance_id, limit=budget[0] + 1)
            more = len(found) > budget[0]
            found = found[: budget[0]]
            budget[0] -= len(found)
            children = [self._describe(c, depth=depth - 1, budget=budget) for c in found]
        return Detail(
            record=record, history=history, children=children, more_children=more, now=time.time()
        )

    async def steer(
        self,
        verb: Literal["signal", "cancel", "resume"],
        instance_id: str,
        *,
        key: str | None = None,
        payload: str | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Hand an action to the engine that owns the database, through its inbox (a
        SQLite file), or write it directly (Postgres: the engines pick it up), and return
        the answer (``ok``, ``outcome``, ``message``)."""
        if callable(getattr(self.storage, "client", None)):  # a shared database
            return await self._steer_shared(
                verb, instance_id, key=key, payload=payload, reason=reason
            )
        path = getattr(self.storage, "path", None)
        if not isinstance(path, str) or path == ":memory:":
            return _refusal("actions need the engine's SQLite file (this storage has no inbox)")
        from ..storage._sqlite import InboxClient, owner_of

        owner = await self.call(owner_of, path)
        if owner is None:
            return _refusal(
                "no engine runs on this database to apply it (start one, or use the"
                " 'memable' command line, which applies actions to a stopped database)"
            )
        client = await self.call(InboxClient, path)
        try:
            item = await self.call(
                client.post, verb, instance_id, now=time.time(), key=key, payload=payload,
                reason=reason,
            )  # fmt: skip
            with anyio.move_on_after(ANSWER_TIMEOUT):
                while (answer := await self.call(client.answer, item)) is None:
                    await anyio.sleep(0.02)
                return cast(dict[str, Any], json.loads(answer))
            if await self.call(client.withdraw, item):
                return _refusal(
                    f"the engine that owns the database (process {owner}) did not apply it"
                    f" within {ANSWER_TIMEOUT:g} s; nothing was done"
                )
            answer = await self.call(client.answer, item)  # applied just now
            return cast(dict[str, Any], json.loads(answer or '{"ok": true, "outcome": "applied",'
                                                   ' "message": "applied"}'))  # fmt: skip
        finally:
            await self.call(client.close)

    async def _steer_shared(
        self, verb: str, instance_id: str, *, key: str | None, payload: str | None,
        reason: str | None,
    ) -> dict[str, Any]:  # fmt: skip
        """On Postgres, through a client storage (this one, or for an engine's own a
        client twin of it, opened for the action: an engine's transaction would take a
        claim its runner does not know about): what it starts running is claimed by an
        engine of its workflow."""
        from .._inbox import apply_directly

        def act(storage: Any) -> str:
            # The payload goes untyped: the waiter reads it as its point's type (the
            # dashboard checked it against that type already when it knows the point).
            return apply_directly(
                storage, verb, instance_id, now=time.time(), key=key, payload=payload,
                reason=reason,
            )  # fmt: skip

        def twin() -> str:
            client = cast(Any, self.storage).client()
            client.open()
            try:
                return act(client)
            finally:
                client.close()

        if getattr(self.storage, "engine_id", None) is not None:  # an engine's own storage
            answer = await self.call(twin)
        else:
            answer = await self.call(act, self.storage)
        return cast(dict[str, Any], json.loads(answer))

    def close(self) -> None:
        if self.owned:
            self.storage.close()


class _Capped:
    """A storage whose listings of children stop at ``CHILDREN_SHOWN`` (what
    ``load_history`` reads of them: the page lists its children itself)."""

    def __init__(self, storage: Readable) -> None:
        self._storage = storage

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def list_instances(self, **filters: Any) -> Sequence[InstanceRecord]:
        if filters.get("limit") is None:
            filters["limit"] = CHILDREN_SHOWN
        return self._storage.list_instances(**filters)


def _refusal(message: str) -> dict[str, Any]:
    return {"ok": False, "outcome": "refused", "message": message}


# -- opening a database by name ---------------------------------------------------------------


def open_storage(db: str | os.PathLike[str], *, schema: str = "memable") -> Readable:
    """Open the database *db* (a SQLite path or a Postgres URL) for the dashboard to read.

    A SQLite file is opened read-only, without taking the one-engine ownership, so the
    dashboard runs beside the engine that owns it. A Postgres database (its *schema*) is
    opened as a client: it registers no engine and never creates the schema.
    """
    if isinstance(db, str) and db.startswith(("postgresql://", "postgres://")):
        try:
            from ..storage._postgres import PostgresStorage
        except ImportError:
            raise StorageError(
                "a postgresql:// database needs psycopg: pip install 'memable[postgres]'"
            ) from None
        opened: Readable = PostgresStorage(db, schema=schema, pool_size=4, register=False)
        opened.open()
        return opened
    from ..storage._sqlite import SQLiteStorage

    reader = SQLiteStorage(db, read_only=True)
    reader.open()
    return reader
