"""Durations and deadlines: checked once, at the call, before anything is stored.

Every duration memable takes (step and suspend timeouts, sleep delays, retry delays,
shutdown and lease settings) is a :class:`float` of seconds, as in anyio, or a
:class:`~datetime.timedelta`. NaN, infinities and negative values are a
:class:`ValueError` naming the argument; so is a deadline past what :mod:`datetime`
can represent. Deadlines are stored as POSIX timestamps (floats), so a deadline must
also survive ``datetime.fromtimestamp(when.timestamp(), UTC)``.
"""

from __future__ import annotations

import math
import typing
from datetime import UTC, datetime, timedelta

__all__ = ["check_deadline", "deadline", "seconds"]


def seconds(value: float | timedelta, what: str) -> float:
    """Return *value* as a finite, non-negative number of seconds.

    Args:
        value: seconds (an :class:`int` or :class:`float`, not a :class:`bool`) or a
            :class:`~datetime.timedelta`.
        what: the argument's name, for the error message (``"step timeout"``).

    Raises:
        TypeError: *value* is neither a number of seconds nor a timedelta.
        ValueError: *value* is NaN, infinite or negative.

    Example:
        >>> from datetime import timedelta
        >>> seconds(1.5, "timeout"), seconds(3, "timeout")
        (1.5, 3.0)
        >>> seconds(timedelta(minutes=2), "sleep delay")
        120.0
        >>> seconds(-1, "sleep delay")
        Traceback (most recent call last):
        ...
        ValueError: sleep delay must not be negative, not -1
        >>> seconds(float("nan"), "timeout")
        Traceback (most recent call last):
        ...
        ValueError: timeout must be a finite number of seconds, not nan
        >>> seconds("5", "timeout")
        Traceback (most recent call last):
        ...
        TypeError: timeout must be a number of seconds or a datetime.timedelta, not '5' (str)
    """
    checked = typing.cast(object, value)
    if isinstance(checked, timedelta):
        result = checked.total_seconds()
    elif isinstance(checked, float):
        result = float(checked)
    elif isinstance(checked, int) and not isinstance(checked, bool):
        if checked < 0:
            raise ValueError(f"{what} must not be negative, not {checked!r}")
        try:
            result = float(checked)
        except OverflowError:  # an int beyond the float range (and too long to show)
            raise ValueError(
                f"{what} must be a finite number of seconds, not an int of"
                f" {checked.bit_length()} bits"
            ) from None
    else:
        raise TypeError(
            f"{what} must be a number of seconds or a datetime.timedelta,"
            f" not {checked!r} ({type(checked).__name__})"
        )
    if not math.isfinite(result):
        raise ValueError(f"{what} must be a finite number of seconds, not {checked!r}")
    if result < 0:
        raise ValueError(f"{what} must not be negative, not {checked!r}")
    return result + 0.0  # -0.0 becomes 0.0


def deadline(now: datetime, delay: float | timedelta, what: str) -> datetime:
    """Return ``now + delay``, checked (:func:`seconds`) and representable.

    Args:
        now: the current time (from the engine's clock: aware, UTC).
        delay: seconds or a timedelta, as for :func:`seconds`.
        what: the argument's name, for the error message.

    Raises:
        TypeError: *delay* is neither a number of seconds nor a timedelta.
        ValueError: *delay* is NaN, infinite or negative, or the deadline is later than
            :mod:`datetime` (or a stored timestamp) can represent.

    Example:
        >>> from datetime import UTC, datetime, timedelta
        >>> now = datetime(2026, 1, 1, tzinfo=UTC)
        >>> deadline(now, 90, "sleep delay")
        datetime.datetime(2026, 1, 1, 0, 1, 30, tzinfo=datetime.timezone.utc)
        >>> deadline(now, timedelta(days=2), "suspend timeout").isoformat()
        '2026-01-03T00:00:00+00:00'
        >>> deadline(now, timedelta.max, "sleep delay")
        Traceback (most recent call last):
        ...
        ValueError: sleep delay of 999999999 days, 23:59:59.999999 from 2026-01-01T00:00:00+00:00 \
is past the latest representable time (year 9999); pass a shorter delay
    """
    duration = seconds(delay, what)
    shown = str(delay) if isinstance(delay, timedelta) else f"{delay!r} seconds"
    try:
        # A timedelta is added as it is: exact, with no round trip through float seconds.
        when = now + (delay if isinstance(delay, timedelta) else timedelta(seconds=duration))
    except OverflowError:
        raise ValueError(
            f"{what} of {shown} from {now.isoformat()} is past the latest representable"
            " time (year 9999); pass a shorter delay"
        ) from None
    if not _round_trips(when):
        raise ValueError(
            f"{what} of {shown} from {now.isoformat()} gives {when.isoformat()}, too close"
            " to the end of what datetime can represent to be stored; pass a shorter delay"
        )
    return when


def check_deadline(when: datetime, what: str) -> datetime:
    """Return *when* if it is an aware datetime that can be stored as a timestamp.

    Args:
        when: a timezone-aware :class:`~datetime.datetime`.
        what: the argument's name, for the error message (``"sleep_until() deadline"``).

    Raises:
        TypeError: *when* is not a datetime, or is naive (no ``tzinfo``).
        ValueError: *when* cannot be stored: its timestamp, read back, is outside what
            :mod:`datetime` can represent (the last microseconds of year 9999, or the
            first hours of year 1 in a timezone ahead of UTC).

    Example:
        >>> from datetime import UTC, datetime
        >>> check_deadline(datetime(2027, 1, 1, tzinfo=UTC), "deadline").year
        2027
        >>> check_deadline(datetime(2027, 1, 1), "when")
        Traceback (most recent call last):
        ...
        TypeError: when must be a timezone-aware datetime, not datetime.datetime(2027, 1, 1, 0, 0)
        >>> check_deadline(datetime.max.replace(tzinfo=UTC), "deadline")
        Traceback (most recent call last):
        ...
        ValueError: deadline 9999-12-31T23:59:59.999999+00:00 is too close to the limits of \
datetime (years 1 to 9999, in UTC) to be stored as a timestamp and read back
    """
    checked = typing.cast(object, when)
    if not isinstance(checked, datetime) or checked.utcoffset() is None:
        raise TypeError(f"{what} must be a timezone-aware datetime, not {checked!r}")
    if not _round_trips(checked):
        raise ValueError(
            f"{what} {checked.isoformat()} is too close to the limits of datetime"
            " (years 1 to 9999, in UTC) to be stored as a timestamp and read back"
        )
    return checked


def _round_trips(when: datetime) -> bool:
    """Whether *when* survives being stored as a timestamp and read back."""
    try:
        datetime.fromtimestamp(when.timestamp(), UTC)
    except (OverflowError, ValueError, OSError):
        return False
    return True
