"""The public surface: what `memable` exports, and the exception tree of the design."""

from __future__ import annotations

import re

import memable
import memable._exceptions
import memable.storage
import memable.testing
import memable.web

EXPORTED = [
    "Cancelled", "ChildFailed", "Clock", "Completed", "Context", "DuplicateStepKey", "Engine",
    "Err", "ErrorInfo", "Failed", "History", "InstanceConflict", "InstanceInfo",
    "InstanceNotFound", "InvalidKey", "Invocation", "MemableError", "NotStarted", "Ok",
    "Outcome", "Page", "Permanent", "Queue", "RetriesExhausted", "RetryPolicy", "Schedule",
    "SerializationError", "Settled", "SignalInfo", "SignalRejected", "SignalSuperseded",
    "Status", "StepFailed", "StepInfo", "StepTimeout", "StorageError", "SuspendPoint",
    "SuspendTimeout", "Suspended", "SuspendedStepConflict", "TimerInfo", "TypeMismatch",
    "Workflow",
    "WorkflowCancelled", "WorkflowFailed", "WorkflowNotFound", "WorkflowSuspended",
    "configure_converter", "workflow",
]  # fmt: skip


def test_all_is_pinned_and_sorted() -> None:
    """memable.__all__ is exactly the documented surface, sorted."""
    assert memable.__all__ == EXPORTED
    assert sorted(memable.__all__) == memable.__all__


def test_every_export_is_importable_and_says_memable() -> None:
    """Public classes and functions carry __module__ 'memable', never a private path."""
    for name in memable.__all__:
        obj = getattr(memable, name)
        if isinstance(obj, type) or callable(obj):
            assert obj.__module__ == "memable", name
    for name in memable.storage.__all__:
        obj = getattr(memable.storage, name)
        if isinstance(obj, type):
            assert obj.__module__ == "memable.storage", name
    assert set(memable.testing.__all__) == {
        "FaultyStorage",
        "ManualClock",
        "MemoryStorage",
        "crash_at",
        "run_until_suspended",
    }
    assert memable.web.__all__ == ["app"]


def test_exception_tree_matches_the_design() -> None:
    """Leaves inherit their builtin; everything is a MemableError except Permanent."""
    assert issubclass(memable.InvalidKey, ValueError)
    assert issubclass(memable.TypeMismatch, TypeError)
    assert issubclass(memable.WorkflowNotFound, LookupError)
    assert issubclass(memable.InstanceNotFound, LookupError)
    assert issubclass(memable.StepTimeout, memable.StepFailed)
    assert issubclass(memable.StepTimeout, TimeoutError)
    assert issubclass(memable.SuspendTimeout, TimeoutError)
    assert issubclass(memable.RetriesExhausted, memable.StepFailed)
    assert issubclass(memable.NotStarted, RuntimeError)
    assert issubclass(memable.Permanent, Exception)
    assert not issubclass(memable.Permanent, memable.MemableError)
    errors = [
        obj
        for name in memable.__all__
        if isinstance(obj := getattr(memable, name), type) and issubclass(obj, BaseException)
    ]
    assert all(issubclass(e, memable.MemableError) for e in errors if e is not memable.Permanent)


def test_the_drawn_tree_is_the_real_tree() -> None:
    """The tree in memable._exceptions' docstring matches the classes, parent by parent."""
    doc = memable._exceptions.__doc__
    assert doc is not None
    stack: list[tuple[int, type]] = []
    drawn = 0
    for line in doc.splitlines():
        match = re.match(r"^(\s*)(?:[│ ]*[├└]── )?([A-Z]\w+)(?: \((\w+)\))?$", line)
        if not match or not hasattr(memable, match.group(2)):
            continue
        depth = len(line) - len(line.lstrip(" │├└─"))
        cls = getattr(memable, match.group(2))
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            assert issubclass(cls, stack[-1][1]), (cls, stack[-1][1])
        if match.group(3):
            assert issubclass(cls, getattr(__builtins__, match.group(3), BaseException)) or (
                match.group(3) in {c.__name__ for c in cls.__mro__}
            )
        stack.append((depth, cls))
        drawn += 1
    assert drawn == len([e for e in memable._exceptions.__all__ if e != "Permanent"])
