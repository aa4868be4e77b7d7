"""Queues: exact concurrency and rate limits across every engine sharing the database.

A :class:`Queue` is a name and its limits. ``engine.enqueue`` records an instance as
``enqueued``; the engine's :class:`Admitter` starts queued instances in one transaction
per queue that holds the queue's row, counts its running instances and starts at most the
free slots and the rate allowance (``memable._rules.admit``). It is woken the moment a
slot may have freed (a run of the queue ended here, something was enqueued or came back
to the queue) and polls slowly for what other engines did; a rate limit's window is
waited for on the engine's clock.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, final

import anyio
import attrs

from ._background import storage_trouble
from ._durations import seconds
from ._keys import check_key

if TYPE_CHECKING:
    from ._kernel import Kernel
    from ._records import InstanceRecord, QueueRecord, Recorded

__all__ = ["Admitter", "Queue"]


#: Real seconds between admissions of every known queue when nothing woke the admitter
#: (what other engines sharing the database freed or enqueued).
POLL_INTERVAL: Final = 1.0


def _check_concurrency(_: object, __: object, value: int | None) -> None:
    if value is None:
        return
    if type(value) is not int or value < 1:
        raise ValueError(f"a queue's concurrency must be an int >= 1 or None, not {value!r}")


def _rate(value: tuple[int, float | timedelta] | None) -> tuple[int, float] | None:
    if value is None:
        return None
    try:
        count, per = typing.cast("tuple[object, float | timedelta]", value)
    except (TypeError, ValueError):
        raise TypeError(
            f"rate_limit must be (count, per_seconds), e.g. (10, 60.0), not {value!r}"
        ) from None
    if type(count) is not int or count < 1:
        raise ValueError(f"rate_limit's count must be an int >= 1, not {count!r}")
    period = seconds(per, "rate_limit's period")
    if period <= 0:
        raise ValueError(f"rate_limit's period must be positive, not {per!r}")
    return count, period


def _check_name(_: object, __: object, value: str) -> None:
    check_key(value, "queue name")


@final
@attrs.frozen
class Queue:
    """A named queue of instances, started while its limits allow.

    Give it to ``Engine(queues=[...])`` (and to :meth:`Engine.enqueue`). The limits hold
    across every engine that shares the database: at most *concurrency* of its instances
    are ``running`` at once (suspended ones do not count), and at most ``count`` start in
    any window of ``per_seconds``.

    Args:
        name: The queue's name (the rules of keys apply).
        concurrency: How many of its instances may run at once; ``None``: no limit.
        rate_limit: ``(count, per_seconds)``: at most *count* starts in any window of
            *per_seconds* (a float of seconds or a :class:`~datetime.timedelta`).

    Example:
        >>> from datetime import timedelta
        >>> Queue("emails", concurrency=10, rate_limit=(100, timedelta(minutes=1)))
        Queue(name='emails', concurrency=10, rate_limit=(100, 60.0))
    """

    name: str = attrs.field(validator=_check_name)
    concurrency: int | None = attrs.field(default=None, kw_only=True, validator=_check_concurrency)
    rate_limit: tuple[int, float] | None = attrs.field(default=None, kw_only=True, converter=_rate)

    def record(self) -> QueueRecord:
        """The queue's limits as stored."""
        from ._records import QueueRecord  # loaded on first use, not by ``import memable``

        count, period = self.rate_limit if self.rate_limit is not None else (None, None)
        return QueueRecord(
            name=self.name, concurrency=self.concurrency, rate_count=count, rate_period=period
        )


Queue.__module__ = "memable"


class Admitter:
    """Starts the queued instances of the queues an engine knows, as their limits allow."""

    def __init__(
        self,
        kernel: Kernel,
        claimed: Callable[[InstanceRecord, Recorded | None], None],
        queues: Iterable[Queue] = (),
    ) -> None:
        self._kernel = kernel
        self._claimed = claimed
        self._queues: dict[str, Queue] = {}
        self._stored: set[str] = set()  # queues whose limits this engine has stored
        self._dirty: set[str] = set()  # queues to admit for now
        self._freed: set[str] = set()  # of those, queues a run ended for here (a free slot)
        self._retry_at: dict[str, float] = {}  # rate-limited queues: when a start is allowed
        self._scope: anyio.CancelScope | None = None  # of its sleep
        self._asleep = False
        kernel.wake_queue = self.wake
        kernel.wake_queues = self.wake_all
        kernel.slot_freed = self.freed
        for queue in queues:
            self.add(queue)

    def __contains__(self, name: str) -> bool:
        return name in self._queues

    def add(self, queue: Queue) -> None:
        """Admit for *queue* from now on (a second, different definition is an error)."""
        if not isinstance(typing.cast(object, queue), Queue):
            raise TypeError(f"expected a memable.Queue, not {queue!r}")
        known = self._queues.get(queue.name)
        if known is None:
            self._queues[queue.name] = queue
            self.wake(queue.name)
        elif known != queue:
            raise ValueError(
                f"queue {queue.name!r} is already defined in this engine as {known!r};"
                f" cannot use {queue!r} too (one name, one set of limits)"
            )

    async def pause(self, queue: Queue | str, paused: bool) -> None:
        """Pause or resume *queue* (stored: for every engine on the database)."""
        name = queue.name if isinstance(queue, Queue) else check_key(queue, "queue name")
        if not await self._kernel.store.pause_queue(name, paused):
            raise ValueError(f"no queue {name!r} is known to this database")
        self.wake(name)

    def wake(self, name: str) -> None:
        """Admit for queue *name* at once (a slot may have freed, or work came)."""
        if name in self._queues:
            self._dirty.add(name)
            if self._scope is not None:
                self._scope.cancel()

    def freed(self, name: str) -> None:
        """A run of queue *name* ended here: its slot is free, admit at once (without
        first looking whether anything could start)."""
        if name in self._queues:
            self._freed.add(name)
        self.wake(name)

    def wake_all(self) -> None:
        """Admit for every queue at once (another engine may have freed slots)."""
        for name in self._queues:
            self.wake(name)

    def settled(self) -> bool:
        """Whether nothing is left to admit at the clock's time (for ManualClock)."""
        now = self._kernel.now()
        return (
            self._asleep
            and not self._dirty
            and len(self._stored) == len(self._queues)
            and all(when > now for when in self._retry_at.values())
        )

    async def run(self) -> None:
        kernel = self._kernel
        await kernel.recovered.wait()  # what it starts is never mistaken for a recovery
        while True:
            try:
                await self.store_limits()
                now = kernel.now()
                for name, when in list(self._retry_at.items()):
                    if when <= now:
                        del self._retry_at[name]
                        self._dirty.add(name)
                if self._dirty:
                    with kernel.claims.claiming():  # what it admits is held here until it runs
                        await self._admit(self._dirty.pop())
                    continue
            except Exception:
                await storage_trouble(kernel, "admitting queued instances")
                self.wake_all()
                continue
            await self._sleep()

    async def store_limits(self) -> None:
        """Store the limits of the queues not stored yet."""
        for name, queue in list(self._queues.items()):
            if name not in self._stored:
                await self._kernel.store.define_queue(queue.record())
                self._stored.add(name)

    async def _admit(self, name: str) -> None:
        kernel = self._kernel
        workflows = [wf.name for wf in kernel.registry]
        look = name not in self._freed
        self._freed.discard(name)
        admission, history = await kernel.store.admit(name, kernel.now(), workflows, look=look)
        for record in admission.started:
            self._claimed(record, history)
        if admission.full:
            self._dirty.add(name)
        if admission.retry_at is None:
            self._retry_at.pop(name, None)
        else:
            self._retry_at[name] = admission.retry_at

    async def _sleep(self) -> None:
        """Until woken, the earliest rate window opens (engine clock), or the poll is due."""
        retry = min(self._retry_at.values(), default=None)
        with anyio.CancelScope() as scope:
            self._scope = scope
            self._asleep = True
            try:
                with anyio.move_on_after(POLL_INTERVAL if self._queues else math.inf) as poll:
                    if retry is None:
                        await anyio.sleep_forever()
                    else:
                        await self._kernel.clock.sleep_until(datetime.fromtimestamp(retry, UTC))
            finally:
                self._asleep = False
                self._scope = None
        if poll.cancelled_caught and not scope.cancelled_caught:
            self.wake_all()  # the poll: what other engines did
