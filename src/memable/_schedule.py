"""Schedules: one instance per due tick, exactly once across restarts and engines.

A :class:`Schedule` names a workflow, its input and when it ticks (a cron expression in a
time zone, parsed by ``cronsim``, or a fixed interval). The engine's :class:`Ticker` waits
on the engine's clock for the next tick, then handles the due ticks in one transaction
that compare-and-sets the schedule's stored last tick and creates the tick's instance,
whose id holds the tick time (``memable._ids.tick_id``): there is no leader, and no tick
runs twice, whichever engine (or clock) gets there first.
"""

from __future__ import annotations

import collections
import math
import typing
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, TypeVar, final

from ._background import storage_trouble
from ._durations import seconds
from ._ids import tick_id
from ._keys import check_key
from ._log import logger
from ._workflow import Workflow

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._kernel import Kernel
    from ._records import InstanceRecord, ScheduleRecord

__all__ = ["CATCH_UP_LIMIT", "Schedule", "Ticker"]

I = TypeVar("I")  # noqa: E741


#: With ``catch_up=True``, at most this many missed ticks (the latest) run at once.
CATCH_UP_LIMIT: Final = 100

_NOTHING: Final[Any] = object()


@final
class Schedule(Generic[I]):
    """Start an instance of *wf* at every tick of a cron expression or an interval.

    Give it to ``Engine(schedules=[...])`` (which registers *wf*). Each due tick starts one
    instance with the tick in its id (``"{name}@2026-01-01T00:05:00Z"``), recorded by a
    compare-and-set on the schedule's last tick in the database: no tick runs twice,
    across restarts and across engines sharing the database, with no leader.

    A new schedule's first tick is the first one after it is first stored. Ticks missed
    while no engine ran: only the latest runs, or with *catch_up* each of them (at most
    the latest :data:`CATCH_UP_LIMIT`). With ``overlap="skip"`` a tick is skipped while
    the schedule's previous instance has not finished (suspended counts as unfinished);
    ``"allow"`` starts it anyway.

    Args:
        wf: The workflow to start.
        cron: A cron expression (``"*/5 * * * *"``), read in *tz*; needs ``cronsim``
            (``pip install memable[cron]``).
        every: A fixed interval (float seconds or timedelta); ticks fall on multiples of
            it since the Unix epoch, so every engine agrees on them.
        input: The input of each instance (omitted for a workflow without input).
        tz: The IANA time zone of *cron* (default UTC).
        catch_up: Run every missed tick, not only the latest.
        overlap: ``"skip"`` or ``"allow"``.
        name: The schedule's name in the database and in instance ids (default: the
            workflow's name; two schedules of one workflow need their own names).

    Example:
        >>> from datetime import timedelta
        >>> import memable
        >>> @memable.workflow("report")
        ... async def report(ctx: memable.Context) -> None:
        ...     pass
        >>> Schedule(report, every=timedelta(minutes=5))
        Schedule('report', every=300.0)
    """

    __slots__ = ("_cron", "catch_up", "cron", "every", "input", "name", "overlap", "tz", "workflow")

    def __init__(
        self,
        wf: Workflow[I, Any],
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        input: I = _NOTHING,
        tz: str = "UTC",
        catch_up: bool = False,
        overlap: Literal["skip", "allow"] = "skip",
        name: str | None = None,
    ) -> None:
        if not isinstance(typing.cast(object, wf), Workflow):
            raise TypeError(f"Schedule() takes a memable.Workflow, not {wf!r}")
        self.workflow: Workflow[I, Any] = wf
        self.name = check_key(wf.name if name is None else name, "schedule name")
        check_key(tick_id(self.name, 0.0), f"the instance ids of schedule {self.name!r}")
        if (cron is None) == (every is None):
            raise ValueError(f"schedule {self.name!r} needs one of cron= and every=")
        if overlap not in ("skip", "allow"):
            raise ValueError(f"overlap must be 'skip' or 'allow', not {overlap!r}")
        if not isinstance(typing.cast(object, catch_up), bool):
            raise TypeError(f"catch_up must be a bool, not {catch_up!r}")
        self.every = None if every is None else seconds(every, "every")
        if self.every is not None and self.every <= 0:
            raise ValueError(f"every must be positive, not {every!r}")
        self.tz = tz
        self.cron = cron
        self._cron = None if cron is None else _Cron(cron, tz, self.name)
        self.input = input
        self.catch_up = catch_up
        self.overlap = overlap

    def __repr__(self) -> str:
        when = f"cron={self.cron!r}, tz={self.tz!r}" if self.cron else f"every={self.every!r}"
        return f"Schedule({self.name!r}, {when})"

    def next_after(self, t: float) -> float:
        """The first tick strictly after *t* (seconds, UTC)."""
        if self._cron is not None:
            return self._cron.next_after(t)
        assert self.every is not None
        return (math.floor(t / self.every) + 1) * self.every

    def due(self, last: float, now: float) -> list[float]:
        """The ticks in (*last*, *now*] to run: the latest, or with catch-up each (capped)."""
        if self._cron is not None:
            ticks: collections.deque[float] = collections.deque()
            for tick in self._cron.back_from(now):
                if tick <= last or len(ticks) == (CATCH_UP_LIMIT if self.catch_up else 1):
                    break
                ticks.appendleft(tick)
            return list(ticks)
        assert self.every is not None
        latest = math.floor(now / self.every)
        first = math.floor(last / self.every) + 1
        if latest < first:
            return []
        if not self.catch_up:
            first = latest
        first = max(first, latest - CATCH_UP_LIMIT + 1)
        return [n * self.every for n in range(first, latest + 1)]


Schedule.__module__ = "memable"


class _Cron:
    """A parsed cron expression in a time zone (cronsim, imported on first use)."""

    __slots__ = ("_cronsim", "_expr", "_zone")

    def __init__(self, expr: str, tz: str, name: str) -> None:
        try:
            import cronsim
        except ImportError:  # pragma: no cover - the extra is installed for the tests
            raise ImportError(
                f"schedule {name!r} uses cron=, which needs cronsim: pip install memable[cron]"
            ) from None
        import zoneinfo

        try:
            self._zone = zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"schedule {name!r}: unknown time zone {tz!r}") from exc
        self._cronsim = cronsim.CronSim
        try:
            cronsim.CronSim(expr, datetime.now(self._zone))
        except cronsim.CronSimError as exc:
            raise ValueError(f"schedule {name!r}: bad cron expression {expr!r}: {exc}") from exc
        self._expr = expr

    def next_after(self, t: float) -> float:
        start = datetime.fromtimestamp(t, self._zone)
        return next(self._cronsim(self._expr, start)).timestamp()

    def back_from(self, t: float) -> typing.Iterator[float]:
        """Ticks at or before *t*, latest first."""
        # cronsim's reverse iteration starts strictly before its start: nudge past *t*.
        start = datetime.fromtimestamp(t, self._zone) + timedelta(seconds=1)
        for when in self._cronsim(self._expr, start.replace(microsecond=0), reverse=True):
            yield when.timestamp()


class Ticker:
    """Runs an engine's schedules: sleeps until the next tick, then handles the due ones."""

    def __init__(self, kernel: Kernel, claimed: Callable[[InstanceRecord], None]) -> None:
        self._kernel = kernel
        self._claimed = claimed
        self._schedules: dict[str, Schedule[Any]] = {}
        self._rows: dict[str, ScheduleRecord] = {}
        self._inputs: dict[str, str] = {}
        self._next: float | None = None
        self._asleep = False

    def add(self, schedule: Schedule[Any]) -> None:
        """Run *schedule* (its workflow registered already); its input is checked here."""
        if not isinstance(typing.cast(object, schedule), Schedule):
            raise TypeError(f"schedules takes memable.Schedule objects, not {schedule!r}")
        name = schedule.name
        if name in self._schedules:
            raise ValueError(f"two schedules are named {name!r}; give one of them name=...")
        wf = schedule.workflow
        value = schedule.input
        if value is _NOTHING:
            if wf.takes_input:
                raise TypeError(f"schedule {name!r}: workflow {wf.name!r} takes an input=")
            value = None
        elif not wf.takes_input and value is not None:
            raise TypeError(f"schedule {name!r}: workflow {wf.name!r} takes no input")
        self._inputs[name] = self._kernel.serde.encode(
            value, wf.types()[0], "input", f"the input of schedule {name!r}"
        )
        self._schedules[name] = schedule

    def settled(self) -> bool:
        """Whether no tick is due that has not been handled (for ManualClock)."""
        if not self._schedules:
            return True
        return self._asleep and self._next is not None and self._next > self._kernel.now()

    async def store_rows(self) -> None:
        """Read (or create) the stored rows of the schedules."""
        for name in self._schedules:
            if name not in self._rows:
                self._rows[name] = await self._kernel.store.define_schedule(
                    name, self._kernel.now()
                )

    async def run(self) -> None:
        if not self._schedules:
            return
        kernel = self._kernel
        await kernel.recovered.wait()  # what it starts is never mistaken for a recovery
        while True:
            try:
                await self.store_rows()
                now = kernel.now()
                again = False
                for name, schedule in self._schedules.items():
                    last = self._rows[name].last_tick
                    due = schedule.due(last, now)
                    if due and schedule.catch_up and due[0] > schedule.next_after(last):
                        logger.warning(
                            "schedule %r missed more than %d ticks; the older ones are dropped",
                            name,
                            CATCH_UP_LIMIT,
                        )
                    if due and not await self._tick(schedule, due, now):
                        again = True  # lost the compare-and-set: look at the stored tick
                if again:
                    continue
            except Exception:
                await storage_trouble(kernel, "starting scheduled instances")
                self._rows.clear()
                continue
            self._next = min(
                schedule.next_after(max(self._rows[name].last_tick, now))
                for name, schedule in self._schedules.items()
            )
            self._asleep = True
            try:
                await kernel.clock.sleep_until(datetime.fromtimestamp(self._next, UTC))
            finally:
                self._asleep = False

    async def _tick(self, schedule: Schedule[Any], due: Sequence[float], now: float) -> bool:
        """Handle *due* ticks; False if the stored last tick was not the one expected."""
        from ._records import InstanceRecord  # loaded on first use, not by ``import memable``

        name = schedule.name
        owner = self._kernel.owner  # on a shared database, this engine holds what it starts
        records = [
            InstanceRecord(
                instance_id=tick_id(name, tick),
                workflow=schedule.workflow.name,
                status="running",
                input=self._inputs[name],
                created_at=now,
                updated_at=now,
                owner=owner,
                epoch=0 if owner is None else 1,
            )
            for tick in due
        ]
        with self._kernel.claims.claiming():  # what it creates is held here until it runs
            row, created = await self._kernel.store.tick_schedule(
                name,
                expected=self._rows[name].last_tick,
                last_tick=due[-1],
                records=records,
                overlap=schedule.overlap == "allow",
            )
            return self._started(name, records, row, created)

    def _started(
        self,
        name: str,
        records: Sequence[InstanceRecord],
        row: ScheduleRecord | None,
        created: Sequence[InstanceRecord] | None,
    ) -> bool:
        if row is None:
            del self._rows[name]  # deleted meanwhile: stored again on the next round
            return False
        self._rows[name] = row
        if created is None:
            return False  # another engine (or clock) handled some: recomputed at once
        if len(created) < len(records):
            logger.info(
                "schedule %r skipped %d ticks: its previous instance %r has not finished",
                name,
                len(records) - len(created),
                row.last_run,
            )
        for record in created:
            self._claimed(record)
        return True
