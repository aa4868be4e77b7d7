"""Identity in one place: child ids, families, and the engine's reserved waiting keys.

A child instance's id is ``"{parent_id}/{key}-{index}"``; the ``/`` (never allowed in a
key) makes it unmistakable, and a family (an instance and its descendants) is every id
equal to the instance's or starting with it and ``/``. A parent that waits for the
children of fan-out *key* records the reserved key ``"_children:{key}"`` among the keys
it waits on (``"_children:{key}:{n}"`` with the number of unfinished children); user keys
never start with ``_``, so no signal or timer can match it, and it is never shown. The
instance a schedule starts for a tick is ``"{schedule}@{tick}"``, the tick in UTC ISO 8601:
the same tick always gives the same id, on every engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final

__all__ = [
    "ancestors",
    "child_id",
    "child_prefix",
    "children_waited",
    "children_waiting_key",
    "descendant_range",
    "fan_out_of",
    "is_children_key",
    "public_keys",
    "root_of",
    "tick_id",
]

_CHILDREN: Final = "_children:"


def child_id(parent_id: str, key: str, index: int) -> str:
    """The id of child *index* of fan-out *key*.

    >>> child_id("order-1", "label:v1", 2)
    'order-1/label:v1-2'
    """
    return f"{parent_id}/{key}-{index}"


def child_prefix(parent_id: str, key: str) -> str:
    """What the ids of the children of fan-out *key* start with."""
    return f"{parent_id}/{key}-"


def root_of(instance_id: str) -> str:
    """The top-level ancestor's id (the instance's own for a top-level instance).

    >>> root_of("order-1/label:v1-2/box:v1-0")
    'order-1'
    """
    return instance_id.split("/", 1)[0]


def ancestors(instance_id: str) -> list[str]:
    """The ids of the instance's ancestors, the top-level one first.

    >>> ancestors("order-1/label:v1-2/box:v1-0")
    ['order-1', 'order-1/label:v1-2']
    """
    parts = instance_id.split("/")
    return ["/".join(parts[:n]) for n in range(1, len(parts))]


def descendant_range(instance_id: str) -> tuple[str, str]:
    """Ids of descendants sort strictly between these two strings."""
    return instance_id + "/", instance_id + "0"  # "0" sorts right after "/"


def children_waiting_key(key: str, unfinished: int) -> str:
    """The reserved key a parent waits on for the children of fan-out *key*."""
    return f"{_CHILDREN}{key}:{unfinished}"


def is_children_key(key: str) -> bool:
    """Whether *key* is a reserved children key (not a user's point or timer)."""
    return key.startswith(_CHILDREN)


def fan_out_of(key: str) -> str:
    """The fan-out key inside a reserved children key (older files lack the count)."""
    body = key[len(_CHILDREN) :]
    head, _, tail = body.rpartition(":")
    return head if head and tail.isdigit() else body


def children_waited(keys: Iterable[str]) -> int:
    """How many children the reserved keys among *keys* wait for (at least 1 each)."""
    total = 0
    for key in keys:
        if is_children_key(key):
            tail = key.rpartition(":")[2]
            total += int(tail) if tail.isdigit() else 1
    return total


def public_keys(keys: Iterable[str]) -> tuple[str, ...]:
    """*keys* without the engine's reserved ones: what users see as ``waiting_on``."""
    return tuple(key for key in keys if not is_children_key(key))


def tick_id(schedule: str, tick: float) -> str:
    """The id of the instance schedule *schedule* starts for *tick* (seconds, UTC).

    >>> tick_id("report", 1767225900.0)
    'report@2026-01-01T00:05:00Z'
    >>> tick_id("fast", 1767225900.25)
    'fast@2026-01-01T00:05:00.250000Z'
    """
    when = datetime.fromtimestamp(tick, UTC)
    fraction = f".{when.microsecond:06d}" if when.microsecond else ""
    return f"{schedule}@{when:%Y-%m-%dT%H:%M:%S}{fraction}Z"
