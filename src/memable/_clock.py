"""Durable time: UTC wall-clock time from an injectable clock, never the loop clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol, final, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Where an engine reads the time it stores (timestamps, timer deadlines).

    Example:
        >>> from datetime import UTC, datetime
        >>> class Frozen:
        ...     def now(self) -> datetime:
        ...         return datetime(2026, 1, 1, tzinfo=UTC)
        >>> isinstance(Frozen(), Clock)
        True
    """

    def now(self) -> datetime:
        """Return the current time as a timezone-aware UTC datetime."""
        ...


@final
class SystemClock:
    """The real clock: :func:`datetime.now` in UTC.

    Example:
        >>> SystemClock().now().tzinfo
        datetime.timezone.utc
    """

    def now(self) -> datetime:
        return datetime.now(UTC)

    def __repr__(self) -> str:
        return "SystemClock()"
