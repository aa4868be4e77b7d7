"""Step and fan-out failures, live and replayed alike.

A dead letter stores the original error (public type name, message, traceback) and what
the workflow was told: the failure's class and attributes. A run that replays the dead
letter raises the same class with the same attributes, and a cause that describes the
original error, so a workflow that caught the failure takes the same path again.
"""

from __future__ import annotations

import builtins
import json
from typing import Any

from ._exceptions import ChildFailed, Permanent, RetriesExhausted, StepFailed, StepTimeout
from ._outcome import ErrorInfo
from ._retry import AttemptsFailed

__all__ = ["dead_letter_error", "replayed_failure", "step_failure"]


def step_failure(key: str, failed: AttemptsFailed) -> StepFailed:
    """What a step raises into the workflow when its attempts are used up."""
    if failed.timeout is not None:
        return StepTimeout(key, failed.timeout, failed.attempts)
    detail = f"{type(failed.error).__name__}: {failed.error}"
    if failed.attempts > 1 and failed.retried:
        return RetriesExhausted(key, failed.attempts, detail)
    return StepFailed(key, failed.attempts, detail)


def dead_letter_error(error: BaseException | ErrorInfo, failure: Exception) -> str:
    """The stored form of a dead letter: the original error and the failure raised."""
    info = error if isinstance(error, ErrorInfo) else ErrorInfo.from_exception(error)
    data: dict[str, Any] = {"type": info.type, "message": info.message, "traceback": info.traceback}
    if isinstance(failure, ChildFailed):
        data["failure"] = {"class": "ChildFailed", "instance_id": failure.instance_id}
    elif isinstance(failure, StepFailed):
        data["failure"] = {
            "class": type(failure).__name__,
            "attempts": failure.attempts,
            "timeout": getattr(failure, "timeout", None),
            "message": str(failure),
        }
    return json.dumps(data)


def replayed_failure(key: str, attempts: int, stored: str | None) -> Exception:
    """The failure a replayed dead letter raises, its cause describing the original."""
    error = ErrorInfo.from_json(stored)
    failure: dict[str, Any] = {}
    try:
        data = json.loads(stored or "{}")
        if isinstance(data, dict) and isinstance(data.get("failure"), dict):
            failure = data["failure"]
    except ValueError:
        pass
    cause = _describe(error)
    kind = failure.get("class")
    exc: Exception
    if kind == "ChildFailed" and isinstance(failure.get("instance_id"), str):
        exc = ChildFailed(failure["instance_id"], error)
    elif kind == "StepTimeout" and isinstance(failure.get("timeout"), int | float):
        exc = StepTimeout(key, float(failure["timeout"]), int(failure.get("attempts", attempts)))
    elif kind in ("RetriesExhausted", "StepFailed"):
        cls = RetriesExhausted if kind == "RetriesExhausted" else StepFailed
        exc = cls(key, int(failure.get("attempts", attempts)))
        message = failure.get("message")
        if isinstance(message, str):
            exc.args = (message,)
    else:  # written by an older version: a plain StepFailed, as it raised then
        exc = StepFailed(key, attempts, f"{error} (dead letter; engine.resume() runs it again)")
    exc.__cause__ = cause
    return exc


def _describe(error: ErrorInfo) -> Exception:
    """An exception standing for a recorded error: the builtin class where it was one."""
    tp = getattr(builtins, error.type, None)
    cause: Exception
    if error.type == "memable.Permanent":
        cause = Permanent(error.message)
    elif isinstance(tp, type) and issubclass(tp, Exception):
        try:
            cause = tp(error.message)
        except Exception:
            cause = Exception(f"{error.type}: {error.message}")
    else:
        cause = Exception(f"{error.type}: {error.message}")
    if error.traceback:
        cause.add_note(f"recorded when it first happened:\n{error.traceback.rstrip()}")
    return cause
