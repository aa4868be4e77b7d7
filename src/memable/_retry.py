"""Retry policies for steps."""

from __future__ import annotations

import typing
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Literal, TypeVar, final

import anyio
import attrs

from ._durations import seconds
from ._exceptions import Permanent

__all__ = ["AttemptsFailed", "RetryPolicy", "run_attempts"]

T = TypeVar("T")

_ExcTypes = type[BaseException] | tuple[type[BaseException], ...]


def _as_tuple(on: _ExcTypes) -> tuple[type[BaseException], ...]:
    types = on if isinstance(on, tuple) else (on,)
    for tp in types:
        if not (isinstance(typing.cast(object, tp), type) and issubclass(tp, BaseException)):
            raise TypeError(f"on= takes exception types, not {tp!r}")
    return types


def _check_attempts(_: object, __: attrs.Attribute[int], value: int) -> None:
    checked = typing.cast(object, value)
    if isinstance(checked, bool) or not isinstance(checked, int):
        raise TypeError(
            f"RetryPolicy attempts must be an int, not {checked!r} ({type(checked).__name__})"
        )
    if checked < 1:
        raise ValueError(
            f"RetryPolicy attempts must be at least 1, not {checked!r} (the first try counts)"
        )


def _check_backoff(_: object, __: attrs.Attribute[str], value: str) -> None:
    if value not in ("fixed", "exponential"):
        raise ValueError(f"RetryPolicy backoff must be 'fixed' or 'exponential', not {value!r}")


def _check_jitter(_: object, __: attrs.Attribute[bool], value: bool) -> None:
    if not isinstance(typing.cast(object, value), bool):
        raise TypeError(f"RetryPolicy jitter must be True or False, not {value!r}")


def _delay_seconds(value: float | timedelta) -> float:
    return seconds(value, "RetryPolicy delay")


def _max_delay_seconds(value: float | timedelta) -> float:
    return seconds(value, "RetryPolicy max_delay")


@final
@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How often a failing step is tried, and how long to wait in between.

    ``attempts`` counts every try, the first included: ``attempts=1`` means no retries.
    Delays are seconds (a :class:`float`) or a :class:`~datetime.timedelta`, stored as
    float seconds; NaN, infinite or negative delays are a :class:`ValueError`.
    Only exceptions that are instances of ``on`` are retried (a step timeout counts as
    :class:`TimeoutError`); :class:`~memable.Permanent` and cancellation never are.
    Build one with :meth:`fixed`, :meth:`exponential` or :meth:`none`.

    Example:
        >>> from memable import RetryPolicy
        >>> policy = RetryPolicy.exponential(attempts=4, base=1.0, jitter=False)
        >>> [policy.delay_before(n) for n in (2, 3, 4)]
        [1.0, 2.0, 4.0]
        >>> from datetime import timedelta
        >>> RetryPolicy.fixed(3, timedelta(minutes=1)).delay
        60.0
    """

    attempts: int = attrs.field(validator=_check_attempts)
    delay: float = attrs.field(default=0.0, converter=_delay_seconds)
    backoff: Literal["fixed", "exponential"] = attrs.field(
        default="fixed", validator=_check_backoff
    )
    max_delay: float = attrs.field(default=30.0, converter=_max_delay_seconds)
    jitter: bool = attrs.field(default=False, validator=_check_jitter)
    on: tuple[type[BaseException], ...] = attrs.field(default=(Exception,), converter=_as_tuple)

    @classmethod
    def fixed(
        cls, attempts: int, delay: float | timedelta, *, on: _ExcTypes = Exception
    ) -> RetryPolicy:
        """Try up to *attempts* times, *delay* (seconds or a timedelta) apart.

        Example:
            >>> RetryPolicy.fixed(3, 0.5).delay_before(3)
            0.5
        """
        wait = seconds(delay, "RetryPolicy.fixed() delay")
        return cls(attempts=attempts, delay=wait, backoff="fixed", max_delay=wait, on=on)

    @classmethod
    def exponential(
        cls,
        attempts: int,
        base: float | timedelta,
        max_delay: float | timedelta = 30.0,
        jitter: bool = True,
        *,
        on: _ExcTypes = Exception,
    ) -> RetryPolicy:
        """Try up to *attempts* times; wait *base*, then twice that, … at most *max_delay*.

        With *jitter* each wait is drawn uniformly between half and all of it, so that
        many failing instances do not retry in lockstep.

        Example:
            >>> RetryPolicy.exponential(5, base=2.0, max_delay=5.0, jitter=False).delay_before(5)
            5.0
        """
        return cls(
            attempts=attempts,
            delay=seconds(base, "RetryPolicy.exponential() base"),
            backoff="exponential",
            max_delay=seconds(max_delay, "RetryPolicy.exponential() max_delay"),
            jitter=jitter,
            on=on,
        )

    @classmethod
    def none(cls) -> RetryPolicy:
        """Try once, never retry.

        Example:
            >>> RetryPolicy.none().attempts
            1
        """
        return cls(attempts=1)

    def retries(self, exc: BaseException) -> bool:
        """Whether this policy retries *exc* (attempts left aside).

        Example:
            >>> RetryPolicy.fixed(2, 0, on=KeyError).retries(ValueError())
            False
        """
        return isinstance(exc, self.on)

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before try number *attempt* (2 for the first retry).

        Example:
            >>> RetryPolicy.fixed(3, 1.5).delay_before(2)
            1.5
        """
        if self.backoff == "fixed":
            delay = self.delay
        else:
            # The exponent is capped so that a long retry budget cannot overflow a float.
            delay = min(self.max_delay, self.delay * 2.0 ** min(max(0, attempt - 2), 1023))
        if self.jitter:
            import random  # only needed when a step is retried with jitter

            delay *= random.uniform(0.5, 1.0)
        return delay


class AttemptsFailed(Exception):
    """Internal: every attempt the policy allowed failed (caught by the step, never shown).

    ``error`` is what the last attempt raised (a :class:`TimeoutError` for a timeout).
    """

    def __init__(self, error: Exception, attempts: int, timeout: float | None, retried: bool):
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts
        self.timeout = timeout  # set if the last attempt timed out
        self.retried = retried  # whether the policy retries this kind of error


async def run_attempts(
    policy: RetryPolicy,
    call: Callable[[], Awaitable[T]],
    timeout: float | None,
    on_retry: Callable[[int, Exception], None],
) -> tuple[T, int]:
    """Await *call* under *policy*, each attempt within *timeout* seconds.

    Returns the result and how many attempts it took, or raises :class:`AttemptsFailed`.
    :class:`~memable.Permanent` and exceptions outside ``policy.on`` are not retried; a
    timeout counts as :class:`TimeoutError`. Cancellation is never caught.
    """
    attempt = 0
    while True:
        attempt += 1
        timed_out: float | None = None
        try:
            if timeout is None:
                return await call(), attempt
            with anyio.move_on_after(timeout) as scope:
                result = await call()
            if not scope.cancelled_caught:
                return result, attempt
            timed_out = timeout
            raise TimeoutError(f"the step's attempt took longer than {timeout} s")
        except Exception as exc:
            retried = not isinstance(exc, Permanent) and policy.retries(exc)
            if attempt >= policy.attempts or not retried:
                raise AttemptsFailed(exc, attempt, timed_out, retried) from exc
            on_retry(attempt, exc)
            await anyio.sleep(policy.delay_before(attempt + 1))


# Public as memable.RetryPolicy, which loads this module on first use.
RetryPolicy.__module__ = "memable"
