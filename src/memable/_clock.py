"""Durable time: UTC wall-clock time from an injectable clock, never the loop clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol, final, runtime_checkable

import anyio

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Where an engine reads the time it stores, and waits for timer deadlines.

    The engine never uses the event loop's clock for durable time (trio offsets it at
    random); it asks its clock. :class:`memable.testing.ManualClock` is one you move by
    hand.

    Example:
        >>> from datetime import UTC, datetime
        >>> class Frozen:
        ...     def now(self) -> datetime:
        ...         return datetime(2026, 1, 1, tzinfo=UTC)
        ...     async def sleep_until(self, deadline: datetime) -> None:
        ...         raise NotImplementedError
        >>> isinstance(Frozen(), Clock)
        True
    """

    def now(self) -> datetime:
        """Return the current time as a timezone-aware UTC datetime."""
        ...

    async def sleep_until(self, deadline: datetime) -> None:
        """Return once :meth:`now` is at or past *deadline* (cancellable)."""


@final
class SystemClock:
    """The real clock: :func:`datetime.now` in UTC.

    Example:
        >>> SystemClock().now().tzinfo
        datetime.timezone.utc
    """

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, deadline: datetime) -> None:
        while (delay := (deadline - self.now()).total_seconds()) > 0:
            await anyio.sleep(delay)

    def __repr__(self) -> str:
        return "SystemClock()"
