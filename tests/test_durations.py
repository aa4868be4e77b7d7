"""Durations and deadlines: seconds or timedeltas, checked at the call (DESIGN §1)."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memable import RetryPolicy
from memable._durations import check_deadline, deadline, seconds

NOW = datetime(2026, 1, 1, tzinfo=UTC)

BAD_VALUES: list[object] = [math.nan, math.inf, -math.inf, -1, -0.001, timedelta(seconds=-1)]
BAD_TYPES: list[object] = [True, False, "5", None, b"1", [1], 1j, NOW]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0.0),
        (3, 3.0),
        (1.5, 1.5),
        (-0.0, 0.0),
        (timedelta(0), 0.0),
        (timedelta(minutes=2, microseconds=5), 120.000005),
        (timedelta.max, timedelta.max.total_seconds()),
    ],
)
def test_seconds_accepts_numbers_and_timedeltas(value: float | timedelta, expected: float) -> None:
    result = seconds(value, "step timeout")
    assert type(result) is float
    assert result == expected
    assert math.copysign(1.0, result) == 1.0


@given(st.floats(min_value=0, allow_infinity=False))
def test_seconds_keeps_any_finite_float(value: float) -> None:
    assert seconds(value, "delay") == value


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_seconds_rejects_nan_inf_and_negative(value: float | timedelta) -> None:
    with pytest.raises(ValueError, match=r"^sleep delay must") as info:
        seconds(value, "sleep delay")
    assert repr(value) in str(info.value)


def test_seconds_rejects_an_int_too_large_for_a_float() -> None:
    with pytest.raises(ValueError, match="timeout must be a finite number of seconds"):
        seconds(10**400, "timeout")
    with pytest.raises(ValueError, match="must not be negative"):
        seconds(-(10**400), "timeout")


@pytest.mark.parametrize("value", BAD_TYPES, ids=repr)
def test_seconds_rejects_other_types(value: object) -> None:
    with pytest.raises(TypeError, match=r"^timeout must be a number of seconds or a datetime"):
        seconds(value, "timeout")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("delay", "expected"),
    [
        (0, NOW),
        (90, NOW + timedelta(seconds=90)),
        (0.25, NOW + timedelta(milliseconds=250)),
        (timedelta(days=2, microseconds=1), NOW + timedelta(days=2, microseconds=1)),
    ],
)
def test_deadline_adds_the_delay(delay: float | timedelta, expected: datetime) -> None:
    assert deadline(NOW, delay, "sleep delay") == expected


@pytest.mark.parametrize(
    "delay",
    [
        timedelta.max,
        timedelta(days=3_000_000),
        1e300,
        8.6e13,
        3e11,
        datetime.max.replace(tzinfo=UTC) - NOW,  # its timestamp reads back as year 10000
    ],
    ids=repr,
)
def test_deadline_past_what_datetime_represents_is_a_value_error(
    delay: float | timedelta,
) -> None:
    with pytest.raises(ValueError, match=r"^suspend timeout of .* pass a shorter delay$"):
        deadline(NOW, delay, "suspend timeout")


@pytest.mark.parametrize("delay", BAD_VALUES, ids=repr)
def test_deadline_checks_the_delay(delay: float | timedelta) -> None:
    with pytest.raises(ValueError, match=r"^sleep delay must"):
        deadline(NOW, delay, "sleep delay")


def test_deadline_checks_the_type() -> None:
    with pytest.raises(TypeError, match="sleep delay"):
        deadline(NOW, "1", "sleep delay")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "when",
    [
        NOW,
        datetime(2026, 6, 1, 12, tzinfo=timezone(timedelta(hours=-5))),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
    ],
    ids=str,
)
def test_check_deadline_accepts_aware_storable_datetimes(when: datetime) -> None:
    assert check_deadline(when, "sleep_until() deadline") is when
    assert datetime.fromtimestamp(when.timestamp(), UTC) == when


@pytest.mark.parametrize("when", [datetime(2026, 1, 1), "2026-01-01", 1767225600.0, None], ids=str)
def test_check_deadline_wants_an_aware_datetime(when: object) -> None:
    with pytest.raises(TypeError, match=r"^sleep_until\(\) deadline must be a timezone-aware"):
        check_deadline(when, "sleep_until() deadline")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "when",
    [
        datetime.max.replace(tzinfo=UTC),  # its timestamp rounds up into year 10000
        datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))),  # year 10000 in UTC
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),  # year 0 in UTC
    ],
    ids=str,
)
def test_check_deadline_rejects_what_a_timestamp_cannot_bring_back(when: datetime) -> None:
    with pytest.raises(ValueError, match=r"^sleep_until\(\) deadline .* stored as a timestamp"):
        check_deadline(when, "sleep_until() deadline")


# RetryPolicy: delays in seconds or timedeltas, stored as float seconds.


def test_retry_policy_converts_timedeltas_to_seconds() -> None:
    fixed = RetryPolicy.fixed(3, timedelta(milliseconds=500))
    assert (fixed.delay, fixed.max_delay) == (0.5, 0.5)
    assert type(fixed.delay) is float
    exponential = RetryPolicy.exponential(
        4, timedelta(seconds=1), max_delay=timedelta(minutes=1), jitter=False
    )
    assert (exponential.delay, exponential.max_delay) == (1.0, 60.0)
    assert [exponential.delay_before(n) for n in (2, 3, 4)] == [1.0, 2.0, 4.0]
    direct = RetryPolicy(attempts=2, delay=timedelta(seconds=2), max_delay=5)
    assert (direct.delay, direct.max_delay) == (2.0, 5.0)
    assert type(direct.max_delay) is float
    assert RetryPolicy.fixed(2, 1) == RetryPolicy.fixed(2, timedelta(seconds=1))


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_retry_policy_rejects_bad_delays(value: float | timedelta) -> None:
    with pytest.raises(ValueError, match=r"^RetryPolicy\.fixed\(\) delay must"):
        RetryPolicy.fixed(2, value)
    with pytest.raises(ValueError, match=r"^RetryPolicy\.exponential\(\) base must"):
        RetryPolicy.exponential(2, value)
    with pytest.raises(ValueError, match=r"^RetryPolicy\.exponential\(\) max_delay must"):
        RetryPolicy.exponential(2, 1, max_delay=value)
    with pytest.raises(ValueError, match=r"^RetryPolicy delay must"):
        RetryPolicy(attempts=2, delay=value)
    with pytest.raises(ValueError, match=r"^RetryPolicy max_delay must"):
        RetryPolicy(attempts=2, max_delay=value)


@pytest.mark.parametrize("value", ["1", None, True], ids=repr)
def test_retry_policy_rejects_delays_of_other_types(value: object) -> None:
    with pytest.raises(TypeError, match="delay must be a number of seconds"):
        RetryPolicy.fixed(2, value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("attempts", "error"),
    [(0, ValueError), (-3, ValueError), (True, TypeError), (2.0, TypeError), ("3", TypeError)],
    ids=repr,
)
def test_retry_policy_attempts_is_an_int_of_at_least_one(
    attempts: object, error: type[Exception]
) -> None:
    makers: list[Callable[[], RetryPolicy]] = [
        lambda: RetryPolicy.fixed(attempts, 1),  # type: ignore[arg-type]
        lambda: RetryPolicy.exponential(attempts, 1),  # type: ignore[arg-type]
        lambda: RetryPolicy(attempts=attempts),  # type: ignore[arg-type]
    ]
    for make in makers:
        with pytest.raises(error, match=r"^RetryPolicy attempts must"):
            make()


def test_retry_policy_checks_jitter_and_backoff() -> None:
    with pytest.raises(TypeError, match="jitter must be True or False"):
        RetryPolicy.exponential(2, 1, jitter=0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backoff must be 'fixed' or 'exponential'"):
        RetryPolicy(attempts=2, backoff="linear")  # type: ignore[arg-type]


def test_a_long_exponential_budget_does_not_overflow() -> None:
    policy = RetryPolicy.exponential(10_000, 1.0, max_delay=60, jitter=False)
    assert policy.delay_before(5_000) == 60.0
    assert RetryPolicy.exponential(10_000, 0.0, jitter=False).delay_before(5_000) == 0.0
