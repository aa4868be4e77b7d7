"""What an instance ended with."""

import json
from typing import Generic, TypeAlias, TypeVar, final

import attrs

__all__ = [
    "Cancelled",
    "Completed",
    "ErrorInfo",
    "Failed",
    "Outcome",
    "Suspended",
]

O_co = TypeVar("O_co", covariant=True)


@final
@attrs.frozen(kw_only=True)
class ErrorInfo:
    """An error as stored: the exception's type name, message and formatted traceback.

    Example:
        >>> from memable import ErrorInfo
        >>> ErrorInfo.from_exception(ValueError("bad input")).type
        'ValueError'
    """

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> "ErrorInfo":
        """Describe *exc* (with its traceback and chained causes).

        Example:
            >>> ErrorInfo.from_exception(KeyError("sku")).message
            "'sku'"
        """
        tp = type(exc)
        name = (
            tp.__qualname__ if tp.__module__ == "builtins" else f"{tp.__module__}.{tp.__qualname__}"
        )
        import traceback  # only needed when something fails

        return cls(type=name, message=str(exc), traceback="".join(traceback.format_exception(exc)))

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"

    def to_json(self) -> str:
        """The stored form: a JSON object of type, message and traceback."""
        return json.dumps({"type": self.type, "message": self.message, "traceback": self.traceback})

    @classmethod
    def from_json(cls, text: str | None) -> "ErrorInfo":
        """Read a stored error back; an unreadable record becomes an ``unknown`` error.

        Example:
            >>> ErrorInfo.from_json(ErrorInfo(type="KeyError", message="x").to_json()).type
            'KeyError'
        """
        if text is None:
            return cls(type="unknown", message="no error was recorded")
        try:
            data = json.loads(text)
            return cls(type=data["type"], message=data["message"], traceback=data["traceback"])
        except (ValueError, KeyError, TypeError):
            return cls(type="unknown", message=f"unreadable error record: {text[:200]!r}")


@final
@attrs.frozen(kw_only=True)
class Completed(Generic[O_co]):
    """The instance returned ``output``.

    Example:
        >>> from memable import Completed
        >>> match Completed(output=3):
        ...     case Completed(output=n):
        ...         print(n)
        3
    """

    output: O_co


@final
@attrs.frozen(kw_only=True)
class Failed:
    """The instance raised; ``error`` describes what.

    ``exception`` is the exception itself when the instance failed in this process (it is
    not stored, and does not take part in equality).

    Example:
        >>> from memable import ErrorInfo, Failed
        >>> Failed(error=ErrorInfo(type="ValueError", message="bad")).error.type
        'ValueError'
    """

    error: ErrorInfo
    exception: BaseException | None = attrs.field(default=None, eq=False, repr=False)


@final
@attrs.frozen(kw_only=True)
class Suspended:
    """The instance is suspended, waiting on the keys in ``waiting_on``.

    ``children`` is how many child instances (of fan-outs) it waits for; waiting on them
    is reported here, never as a key.

    Example:
        >>> from memable import Suspended
        >>> Suspended(waiting_on=("approval:v1",), status="waiting").waiting_on
        ('approval:v1',)
    """

    waiting_on: tuple[str, ...]
    status: str | None = None
    children: int = 0


@final
@attrs.frozen(kw_only=True)
class Cancelled:
    """The instance was cancelled, with the given reason.

    Example:
        >>> from memable import Cancelled
        >>> Cancelled(reason="customer left").reason
        'customer left'
    """

    reason: str = ""


#: What ``Invocation.wait()`` returns.
Outcome: TypeAlias = Completed[O_co] | Suspended | Failed | Cancelled
