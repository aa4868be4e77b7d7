"""Validation of workflow names, instance ids and step keys."""

from __future__ import annotations

import os
import re
import time

from ._exceptions import InvalidKey

MAX_KEY_LENGTH = 255

# Control characters: C0, DEL and C1.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_key(key: object, what: str = "step key", *, reserved_ok: bool = False) -> str:
    """Return *key* if it is a valid key, else raise :class:`InvalidKey` naming *what*.

    Valid keys are non-empty ``str`` of at most 255 characters, without ``/`` or control
    characters, not starting with ``_`` (reserved for the engine) unless *reserved_ok*.
    """
    if not isinstance(key, str):
        raise InvalidKey(f"{what} must be a str, not {type(key).__name__} ({key!r})")
    if not key:
        raise InvalidKey(f"{what} must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(
            f"{what} {key[:40]!r}... is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}"
        )
    if "/" in key:
        raise InvalidKey(f"{what} {key!r} must not contain '/' (it separates child ids)")
    if _CONTROL.search(key):
        raise InvalidKey(f"{what} {key!r} must not contain control characters")
    if key[0] == "_" and not reserved_ok:
        raise InvalidKey(f"{what} {key!r} must not start with '_' (reserved for memable)")
    return key


def new_instance_id() -> str:
    """Return a new unique instance id that sorts by creation time.

    Twelve hex digits of milliseconds since the epoch, a dash, then 64 random bits.
    """
    return f"{time.time_ns() // 1_000_000:012x}-{os.urandom(8).hex()}"
