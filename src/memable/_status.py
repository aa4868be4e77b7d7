"""Live status: who follows which instance, and the changes sent to them."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

import anyio

from ._ids import public_keys
from ._suspend import Status

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._outcome import Outcome
    from ._records import InstanceRecord, InstanceState
    from ._run import Run
    from ._workflow import Workflow

__all__ = ["Instances", "StatusHub", "StatusStream"]


class _Subscriber:
    """The queue of status changes of one ``subscribe()`` iteration."""

    __slots__ = ("_changed", "_closed", "_items")

    def __init__(self) -> None:
        self._items: collections.deque[Status] = collections.deque()
        self._changed = anyio.Event()
        self._closed = False

    def put(self, status: Status) -> None:
        self._items.append(status)
        self._changed.set()

    def close(self) -> None:
        """The engine is leaving its block: end the iteration once the queue is drained."""
        self._closed = True
        self._changed.set()

    async def get(self) -> Status | None:
        """The next change, or ``None`` once the engine has stopped."""
        while not self._items:
            if self._closed:
                return None
            self._changed = anyio.Event()
            await self._changed.wait()
        return self._items.popleft()


class StatusHub:
    """The subscribers of each instance's status changes, in one engine."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[_Subscriber]] = {}

    def __len__(self) -> int:
        """How many instances are followed."""
        return len(self._subscribers)

    def followed(self) -> list[str]:
        """The ids of the instances someone follows."""
        return list(self._subscribers)

    def follow(self, instance_id: str) -> _Subscriber:
        """A queue that receives the status changes of *instance_id* until :meth:`drop`."""
        subscriber = _Subscriber()
        self._subscribers.setdefault(instance_id, set()).add(subscriber)
        return subscriber

    def drop(self, instance_id: str, subscriber: _Subscriber) -> None:
        """Stop sending changes to *subscriber*."""
        subscribers = self._subscribers.get(instance_id)
        if subscribers is not None:
            subscribers.discard(subscriber)
            if not subscribers:
                del self._subscribers[instance_id]

    def publish(
        self,
        instance_id: str,
        status: InstanceState,
        message: str | None,
        waiting_on: tuple[str, ...] = (),
    ) -> None:
        """Send a change to everyone following *instance_id*."""
        subscribers = self._subscribers.get(instance_id)
        if subscribers:
            change = Status(
                instance_id=instance_id, status=status, message=message, waiting_on=waiting_on
            )
            for subscriber in subscribers:
                subscriber.put(change)

    def close(self) -> None:
        """The engine is stopping: end every iteration once its queue is drained."""
        for subscribers in self._subscribers.values():
            for subscriber in subscribers:
                subscriber.close()


class Instances:
    """What invocations and status streams need of their engine, and nothing more."""

    __slots__ = (
        "check_running",
        "live_message",
        "outcome",
        "record",
        "remote",
        "runs",
        "settle",
        "status",
    )

    def __init__(
        self,
        *,
        status: StatusHub,
        runs: dict[str, Run],
        check_running: Callable[[], None],
        record: Callable[[Workflow[Any, Any], str], Awaitable[InstanceRecord]],
        outcome: Callable[[Workflow[Any, Any], InstanceRecord], Outcome[Any] | None],
        live_message: Callable[[InstanceRecord], str | None],
        settle: Callable[[], Awaitable[bool]],
        remote: Callable[[InstanceRecord], Awaitable[bool]] | None = None,
    ) -> None:
        self.status = status
        self.runs = runs  # the runs (and reservations) of the engine, by instance id
        self.check_running = check_running
        self.record = record
        self.outcome = outcome
        self.live_message = live_message
        self.settle = settle  # waits out a re-scan after storage trouble; whether there was one
        # On a shared database: waits for a change of a running instance another engine
        # may run; False if none will.
        self.remote = remote


class StatusStream:
    """The iterator ``engine.subscribe()`` returns: the current status, then the changes.

    A plain async iterator rather than an async generator, so leaving an ``async for``
    early needs no ``aclosing()`` and draws no warning on trio: the subscription is dropped
    when the stream ends, or when the iterator is garbage collected.
    """

    def __init__(self, instances: Instances, wf: Workflow[Any, Any], instance_id: str) -> None:
        self._instances = instances
        self._wf = wf
        self._instance_id = instance_id
        self._subscriber: _Subscriber | None = None
        self._last: Status | None = None
        self._done = False

    def __aiter__(self) -> StatusStream:
        return self

    async def __anext__(self) -> Status:
        if self._done:
            raise StopAsyncIteration
        instances = self._instances
        if self._last is None:
            # Follow before reading, so that no change between the read and now is missed.
            self._subscriber = instances.status.follow(self._instance_id)
            try:
                record = await instances.record(self._wf, self._instance_id)
            except BaseException:
                self._close()
                raise
            self._last = Status(
                instance_id=self._instance_id,
                status=record.status,
                message=instances.live_message(record),
                waiting_on=public_keys(record.waiting_on) if record.status == "suspended" else (),
            )
            return self._last
        assert self._subscriber is not None
        while not self._last.finished:
            status = await self._subscriber.get()
            if status is None:
                break  # the engine stopped: nothing more will be seen here
            if status != self._last:
                self._last = status
                return status
        self._close()
        raise StopAsyncIteration

    def _close(self) -> None:
        self._done = True
        if self._subscriber is not None:
            self._instances.status.drop(self._instance_id, self._subscriber)
            self._subscriber = None

    def __del__(self) -> None:
        self._close()
