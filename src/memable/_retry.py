"""Retry policies for steps."""

from __future__ import annotations

import typing
from typing import Literal, final

import attrs

__all__ = ["RetryPolicy"]

_ExcTypes = type[BaseException] | tuple[type[BaseException], ...]


def _as_tuple(on: _ExcTypes) -> tuple[type[BaseException], ...]:
    types = on if isinstance(on, tuple) else (on,)
    for tp in types:
        if not (isinstance(typing.cast(object, tp), type) and issubclass(tp, BaseException)):
            raise TypeError(f"on= takes exception types, not {tp!r}")
    return types


def _positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value!r}")


def _not_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value!r}")


@final
@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How often a failing step is tried, and how long to wait in between.

    ``attempts`` counts every try, the first included: ``attempts=1`` means no retries.
    Only exceptions that are instances of ``on`` are retried (a step timeout counts as
    :class:`TimeoutError`); :class:`~memable.Permanent` and cancellation never are.
    Build one with :meth:`fixed`, :meth:`exponential` or :meth:`none`.

    Example:
        >>> from memable import RetryPolicy
        >>> policy = RetryPolicy.exponential(attempts=4, base=1.0, jitter=False)
        >>> [policy.delay_before(n) for n in (2, 3, 4)]
        [1.0, 2.0, 4.0]
    """

    attempts: int = attrs.field(validator=_positive)
    delay: float = attrs.field(default=0.0, validator=_not_negative)
    backoff: Literal["fixed", "exponential"] = "fixed"
    max_delay: float = attrs.field(default=30.0, validator=_not_negative)
    jitter: bool = False
    on: tuple[type[BaseException], ...] = attrs.field(default=(Exception,), converter=_as_tuple)

    @classmethod
    def fixed(cls, attempts: int, delay: float, *, on: _ExcTypes = Exception) -> RetryPolicy:
        """Try up to *attempts* times, *delay* seconds apart.

        Example:
            >>> RetryPolicy.fixed(3, 0.5).delay_before(3)
            0.5
        """
        return cls(attempts=attempts, delay=delay, backoff="fixed", max_delay=delay, on=on)

    @classmethod
    def exponential(
        cls,
        attempts: int,
        base: float,
        max_delay: float = 30.0,
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
            delay=base,
            backoff="exponential",
            max_delay=max_delay,
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
            delay = min(self.max_delay, self.delay * 2.0 ** max(0, attempt - 2))
        if self.jitter:
            import random  # only needed when a step is retried with jitter

            delay *= random.uniform(0.5, 1.0)
        return delay
