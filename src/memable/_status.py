"""Live status: who follows which instance, and the changes sent to them."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator

import anyio

from ._suspend import Status
from .storage._records import InstanceState

__all__ = ["StatusHub"]


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

    @contextlib.contextmanager
    def follow(self, instance_id: str) -> Iterator[_Subscriber]:
        """A queue that receives the status changes of *instance_id* while in the block."""
        subscriber = _Subscriber()
        subscribers = self._subscribers.setdefault(instance_id, set())
        subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            subscribers.discard(subscriber)
            if not subscribers and self._subscribers.get(instance_id) is subscribers:
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
