"""What each child of ``fan_out(..., settle=True)`` settled with: loaded on first use,
not by ``import memable``."""

from typing import Generic, TypeAlias, TypeVar, final

import attrs

from ._outcome import ErrorInfo

__all__ = ["Err", "Ok", "Settled"]

T_co = TypeVar("T_co", covariant=True)


@final
@attrs.frozen(kw_only=True)
class Ok(Generic[T_co]):
    """A child of ``fan_out(..., settle=True)`` that completed with ``value``.

    Example:
        >>> from memable import Ok
        >>> match Ok(value=3):
        ...     case Ok(value=n):
        ...         print(n)
        3
    """

    value: T_co


@final
@attrs.frozen(kw_only=True)
class Err:
    """A child of ``fan_out(..., settle=True)`` that failed or was cancelled.

    Example:
        >>> from memable import Err, ErrorInfo
        >>> error = ErrorInfo(type="KeyError", message="'sku'")
        >>> Err(instance_id="o-1/label:v1-2", error=error).error.type
        'KeyError'
    """

    instance_id: str
    error: ErrorInfo


#: The outcome of one child of ``fan_out(..., settle=True)``.
Settled: TypeAlias = Ok[T_co] | Err


# Public as memable.X, which loads this module on first use.
Ok.__module__ = Err.__module__ = "memable"
