"""The exceptions memable raises.

Every exception memable raises on purpose derives from :class:`MemableError`; leaves also
inherit the builtin they resemble, so ``except ValueError`` and ``except LookupError`` keep
working::

    MemableError
    ├── InvalidKey (ValueError)
    ├── StorageError
    ├── SerializationError
    ├── TypeMismatch (TypeError)
    ├── StepFailed
    │   ├── StepTimeout (TimeoutError)
    │   └── RetriesExhausted
    ├── DuplicateStepKey
    ├── SuspendedStepConflict
    ├── WorkflowNotFound (LookupError)
    ├── InstanceNotFound (LookupError)
    ├── InstanceConflict
    ├── NotStarted (RuntimeError)
    ├── SignalRejected
    ├── SignalSuperseded
    ├── SuspendTimeout (TimeoutError)
    ├── WorkflowFailed
    ├── WorkflowSuspended
    ├── WorkflowCancelled
    └── ChildFailed

:class:`Permanent` is not an error memable raises: step code raises it to say "do not retry".

Where memable turns another exception into one of these, the original is chained as
``__cause__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._outcome import ErrorInfo

__all__ = [
    "ChildFailed",
    "DuplicateStepKey",
    "InstanceConflict",
    "InstanceNotFound",
    "InvalidKey",
    "MemableError",
    "NotStarted",
    "Permanent",
    "RetriesExhausted",
    "SerializationError",
    "SignalRejected",
    "SignalSuperseded",
    "StepFailed",
    "StepTimeout",
    "StorageError",
    "SuspendTimeout",
    "SuspendedStepConflict",
    "TypeMismatch",
    "WorkflowCancelled",
    "WorkflowFailed",
    "WorkflowNotFound",
    "WorkflowSuspended",
]


class MemableError(Exception):
    """The root of every exception memable raises on purpose.

    Example:
        >>> import memable
        >>> issubclass(memable.InvalidKey, memable.MemableError)
        True
    """


class InvalidKey(MemableError, ValueError):
    """A workflow name, instance id or step key breaks the key rules.

    Keys are non-empty ``str`` of at most 255 characters, without ``/`` or control
    characters; user keys must not start with ``_``. Raised at the call, before anything
    is written.

    Example:
        >>> import memable
        >>> memable.InvalidKey("step key 'a/b' must not contain '/'")
        InvalidKey("step key 'a/b' must not contain '/'")
    """


class StorageError(MemableError):
    """The storage backend failed; the backend's own exception is chained as ``__cause__``.

    Example:
        >>> import memable
        >>> str(memable.StorageError("database is locked"))
        'database is locked'
    """


class SerializationError(MemableError):
    """A value could not be encoded to, or decoded from, a stored envelope.

    Attributes:
        key: The step key, or a description such as ``"input of order"``.

    Example:
        >>> import memable
        >>> memable.SerializationError("charge:v1", "object is not serialisable").key
        'charge:v1'
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message if key in message else f"{key!r}: {message}")
        self.key = key


class TypeMismatch(MemableError, TypeError):
    """A stored value, a step result or a signal payload is not of the expected type.

    Attributes:
        key: The step, suspend point or input at fault.
        expected: The canonical name of the type the code asks for.
        found: The canonical name of the type that is stored or given.

    Example:
        >>> import memable
        >>> e = memable.TypeMismatch("price:v1", "decimal.Decimal", "int")
        >>> e.expected, e.found
        ('decimal.Decimal', 'int')
    """

    def __init__(self, key: str, expected: str, found: str, message: str = "") -> None:
        super().__init__(message or f"{key!r} expects {expected} but found {found}")
        self.key = key
        self.expected = expected
        self.found = found


class StepFailed(MemableError):
    """A step failed and was not (or no longer) retried; its dead letter is stored.

    The step's last exception is chained as ``__cause__``.

    Attributes:
        key: The step key.
        attempts: How many times the step body ran (this run included).

    Example:
        >>> import memable
        >>> memable.StepFailed("charge:v1", 1).attempts
        1
    """

    def __init__(self, key: str, attempts: int, detail: str = "") -> None:
        message = f"step {key!r} failed after {attempts} attempt{'s' if attempts != 1 else ''}"
        super().__init__(f"{message}: {detail}" if detail else message)
        self.key = key
        self.attempts = attempts


class StepTimeout(StepFailed, TimeoutError):
    """The last attempt of a step ran longer than its ``timeout`` and was cancelled.

    Attributes:
        timeout: The per-attempt timeout in seconds.

    Example:
        >>> import memable
        >>> memable.StepTimeout("fetch:v1", 0.5, attempts=1).timeout
        0.5
    """

    def __init__(self, key: str, timeout: float, attempts: int) -> None:
        super().__init__(key, attempts, f"timed out after {timeout} s")
        self.timeout = timeout


class RetriesExhausted(StepFailed):
    """Every attempt the step's :class:`~memable.RetryPolicy` allows has failed.

    Example:
        >>> import memable
        >>> issubclass(memable.RetriesExhausted, memable.StepFailed)
        True
    """


class DuplicateStepKey(MemableError):
    """A key was used twice within one run of a workflow.

    Two steps under one key would silently share a result; give each its own key.

    Example:
        >>> import memable
        >>> memable.DuplicateStepKey("step key 'a:v1' is already used in this run")
        DuplicateStepKey("step key 'a:v1' is already used in this run")
    """


class SuspendedStepConflict(MemableError):
    """A key recorded as a suspend point is now used as a step, or the reverse.

    Example:
        >>> import memable
        >>> issubclass(memable.SuspendedStepConflict, memable.MemableError)
        True
    """


class WorkflowNotFound(MemableError, LookupError):
    """No workflow of that name is registered with the engine.

    Example:
        >>> import memable
        >>> issubclass(memable.WorkflowNotFound, LookupError)
        True
    """


class InstanceNotFound(MemableError, LookupError):
    """No instance with that id exists in storage.

    Example:
        >>> import memable
        >>> issubclass(memable.InstanceNotFound, LookupError)
        True
    """


class InstanceConflict(MemableError):
    """An instance id is already taken by a different input or workflow.

    Example:
        >>> import memable
        >>> issubclass(memable.InstanceConflict, memable.MemableError)
        True
    """


class NotStarted(MemableError, RuntimeError):
    """The engine is not running: used before ``async with engine:`` or after it ended.

    Example:
        >>> import memable
        >>> issubclass(memable.NotStarted, RuntimeError)
        True
    """


class SignalRejected(MemableError):
    """A signal cannot be delivered, e.g. because the instance has finished.

    Attributes:
        key: The suspend point's key.
        reason: Why the signal was rejected.

    Example:
        >>> import memable
        >>> memable.SignalRejected("approval:v1", "instance is completed").reason
        'instance is completed'
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"signal {key!r} rejected: {reason}")
        self.key = key
        self.reason = reason


class SignalSuperseded(MemableError):
    """A payload came first, or the suspend point's deadline passed: this one is not used.

    The message says which came first and names the instance.

    Example:
        >>> import memable
        >>> memable.SignalSuperseded("approval:v1").key
        'approval:v1'
    """

    def __init__(self, key: str, message: str = "") -> None:
        super().__init__(message or f"suspend point {key!r} already has a payload")
        self.key = key


class SuspendTimeout(MemableError, TimeoutError):
    """The deadline of ``ctx.suspend(..., timeout=...)`` passed before a signal came.

    Example:
        >>> import memable
        >>> memable.SuspendTimeout("approval:v1").key
        'approval:v1'
    """

    def __init__(self, key: str) -> None:
        super().__init__(f"suspend point {key!r} timed out")
        self.key = key


class WorkflowFailed(MemableError):
    """Raised by ``Invocation.result()`` when the instance ended ``failed``.

    Attributes:
        instance_id: The failed instance.
        error: The recorded error (type, message, traceback).

    Where the failure happened in this process, the workflow's exception is chained as
    ``__cause__``.

    Example:
        >>> import memable
        >>> from memable import ErrorInfo
        >>> e = memable.WorkflowFailed("o-1", ErrorInfo(type="ValueError", message="bad"))
        >>> str(e)
        "instance 'o-1' failed: ValueError: bad"
    """

    def __init__(self, instance_id: str, error: ErrorInfo) -> None:
        super().__init__(f"instance {instance_id!r} failed: {error.type}: {error.message}")
        self.instance_id = instance_id
        self.error = error


class WorkflowSuspended(MemableError):
    """Raised by ``Invocation.result()`` when the instance is suspended.

    Example:
        >>> import memable
        >>> memable.WorkflowSuspended("approval:v1", "waiting").key
        'approval:v1'
    """

    def __init__(
        self,
        key: str,
        status: str | None,
        *,
        instance_id: str | None = None,
        children: int = 0,
    ) -> None:
        who = "instance" if instance_id is None else f"instance {instance_id!r}"
        if key:
            where = f"at {key!r}"
        elif children:
            where = f"waiting for {children} {'child' if children == 1 else 'children'}"
        else:
            where = "waiting"
        detail = f": {status}" if status else ""
        super().__init__(
            f"{who} is suspended {where}{detail}; it runs on when a signal, its timer or"
            " its children resume it"
        )
        self.key = key
        self.status = status
        self.instance_id = instance_id
        self.children = children


class WorkflowCancelled(MemableError):
    """Raised by ``Invocation.result()`` when the instance was cancelled.

    Example:
        >>> import memable
        >>> memable.WorkflowCancelled("customer left").reason
        'customer left'
    """

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"instance was cancelled: {reason}" if reason else "instance was cancelled"
        )
        self.reason = reason


class ChildFailed(MemableError):
    """A child instance of a fan-out failed; its error is chained as ``__cause__``.

    Example:
        >>> import memable
        >>> memable.ChildFailed("o-1/label:v1-0", ValueError("x")).instance_id
        'o-1/label:v1-0'
    """

    def __init__(self, instance_id: str, error: BaseException | ErrorInfo) -> None:
        # Described as stored ("type: message"), so a replay says exactly the same.
        if isinstance(error, BaseException):
            from ._outcome import ErrorInfo

            detail = str(ErrorInfo.from_exception(error))
        else:
            detail = str(error)
        super().__init__(f"child instance {instance_id!r} failed: {detail}")
        self.instance_id = instance_id
        self.error = error


class Permanent(Exception):
    """Raised by step code to stop retries: the step fails at once.

    ``Permanent(exc)`` chains ``exc``; ``Permanent("message")`` carries a message.

    Example:
        >>> import anyio, memable
        >>> async def charge(card: str) -> int:
        ...     if card == "expired":
        ...         raise memable.Permanent("card expired")  # no retry will help
        ...     return 42
        >>> @memable.workflow("pay")
        ... async def pay(ctx: memable.Context, card: str) -> int:
        ...     retry = memable.RetryPolicy.fixed(attempts=5, delay=1.0)
        ...     try:
        ...         return await ctx.step("charge:v1", charge, card, retry=retry)
        ...     except memable.StepFailed as exc:
        ...         print(f"{exc.attempts} attempt: {exc.__cause__!r}")
        ...         return 0
        >>> async def main() -> int:
        ...     async with memable.Engine(workflows=[pay]) as engine:
        ...         return await engine.run(pay, "expired")
        >>> anyio.run(main)
        1 attempt: Permanent('card expired')
        0
    """

    def __init__(self, exc_or_message: BaseException | str) -> None:
        super().__init__(exc_or_message if isinstance(exc_or_message, str) else str(exc_or_message))
        if isinstance(exc_or_message, BaseException):
            self.__cause__ = exc_or_message
