"""The pure status transitions of an instance (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, TypeAlias

__all__ = [
    "FINISHED",
    "TRANSITIONS",
    "IllegalTransition",
    "InstanceState",
    "can_move",
    "check_move",
]

#: The persisted state of an instance.
InstanceState: TypeAlias = Literal[
    "enqueued", "running", "suspended", "completed", "failed", "cancelled"
]

#: Which state may follow which. ``running -> running`` is recovery after a crash (or
#: ``resume`` of a stuck instance); ``failed -> running`` is ``resume``;
#: ``cancelled -> running`` happens only to the children of a fan-out whose failed parent
#: is resumed (a top-level cancelled instance is never resumed: the rules refuse it).
#: An instance of a queue waits ``enqueued`` until admission starts it; it goes back to
#: ``enqueued`` (keeping its place) when a signal, a timer or ``resume`` would run it
#: again after it suspended or failed, so that only admission ever starts it.
TRANSITIONS: Final[Mapping[InstanceState, frozenset[InstanceState]]] = {
    "enqueued": frozenset({"running", "cancelled"}),
    "running": frozenset({"running", "suspended", "completed", "failed", "cancelled"}),
    "suspended": frozenset({"running", "enqueued", "cancelled"}),
    "failed": frozenset({"running", "enqueued"}),
    "completed": frozenset(),
    "cancelled": frozenset({"running"}),
}

#: States an instance never leaves on its own.
FINISHED: Final = frozenset[InstanceState]({"completed", "failed", "cancelled"})


class IllegalTransition(AssertionError):
    """A bug: the engine tried to move an instance between states that do not connect.

    (An ``AssertionError``: no user code should ever catch it.)
    """


def can_move(old: InstanceState, new: InstanceState) -> bool:
    """Whether an instance in state *old* may move to *new*.

    >>> can_move("failed", "running"), can_move("completed", "running")
    (True, False)
    """
    return new in TRANSITIONS[old]


def check_move(instance_id: str, old: InstanceState, new: InstanceState) -> None:
    """Raise :class:`IllegalTransition` unless *old* may move to *new*."""
    if not can_move(old, new):
        raise IllegalTransition(f"instance {instance_id!r} cannot move from {old} to {new}")


def sources(new: InstanceState) -> tuple[InstanceState, ...]:
    """Every state from which an instance may move to *new*, in a stable order.

    >>> sources("running")
    ('cancelled', 'enqueued', 'failed', 'running', 'suspended')
    """
    return tuple(sorted(old for old, targets in TRANSITIONS.items() if new in targets))
