"""Validation of workflow names, instance ids and step keys."""

from __future__ import annotations

import os
import re

from ._exceptions import InvalidKey

MAX_KEY_LENGTH = 255

_NOT_UTF8 = "it holds a lone surrogate, which UTF-8 cannot encode"

# Control characters: C0, DEL and C1.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Lone surrogates: the only str characters that UTF-8 (so SQLite, Postgres, JSON) cannot hold.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def check_key(key: object, what: str = "step key", *, reserved_ok: bool = False) -> str:
    """Return *key* if it is a valid key, else raise :class:`InvalidKey` naming *what*.

    Valid keys are non-empty ``str`` of at most 255 characters, without ``/``, control
    characters or lone surrogates (which UTF-8 cannot encode), not starting with ``_``
    (reserved for the engine) unless *reserved_ok*.
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
    if key.isascii() and key.isprintable():
        pass  # the usual key: no control character, nothing UTF-8 cannot hold
    elif _CONTROL.search(key):
        raise InvalidKey(f"{what} {key!r} must not contain control characters")
    elif not is_utf8(key):
        raise InvalidKey(f"{what} {key!r} is not valid text: {_NOT_UTF8}")
    if key[0] == "_" and not reserved_ok:
        raise InvalidKey(f"{what} {key!r} must not start with '_' (reserved for memable)")
    return key


def is_utf8(text: str) -> bool:
    """Whether UTF-8 can encode *text* (it holds no lone surrogate)."""
    return text.isascii() or _SURROGATE.search(text) is None


def check_instance_ref(instance_id: object) -> str:
    """Return *instance_id* if it can name an existing instance, else raise InvalidKey.

    Besides the ids callers choose, these are child ids (``"{parent}/{key}-{i}"``): every
    ``/``-separated part must be a valid key; only the first is limited to 255 characters.
    """
    if not isinstance(instance_id, str):
        raise InvalidKey(
            f"instance id must be a str, not {type(instance_id).__name__} ({instance_id!r})"
        )
    first, *rest = instance_id.split("/")
    check_key(first, "instance id", reserved_ok=True)
    for part in rest:
        if not part or _CONTROL.search(part) or not is_utf8(part):
            raise InvalidKey(f"instance id {instance_id!r} is not a valid (child) instance id")
    return instance_id


def check_text(value: object, what: str) -> str:
    """Return *value* if it is text memable can store, else raise naming *what*.

    For free text such as status messages and cancel reasons: any ``str`` that UTF-8 can
    encode, so neither backend can fail on it later.

    Raises:
        TypeError: *value* is not a ``str``.
        ValueError: *value* holds a lone surrogate (such as ``"\\ud800"``).
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__} ({value!r:.80})")
    found = _SURROGATE.search(value)
    if found is not None:
        raise ValueError(
            f"{what} {value!r:.80} is not valid text: {_NOT_UTF8}"
            f" (character {found.start()} is {found.group()!r})"
        )
    return value


def new_instance_id(now_ns: int, after: int = 0) -> tuple[str, int]:
    """Return a new unique instance id that sorts by creation time, and its timestamp.

    Sixteen hex digits of *now_ns* (nanoseconds since the epoch, from the engine's clock;
    at least *after* + 1, so ids made one after the other sort in order), a dash, then 48
    random bits.
    """
    stamp = max(now_ns, after + 1)
    return f"{stamp:016x}-{os.urandom(6).hex()}", stamp
