"""Envelopes: how values are stored.

A stored value is the JSON text ``{"type": <canonical type name>, "value": <unstructured>}``.
The type name is a canonical string of the *expected* type (``"list[int]"``,
``"myapp.models.Receipt"``), compared when the value is read back. It is never imported or
evaluated, and nothing is ever pickled.
"""

from __future__ import annotations

import collections.abc
import datetime
import functools
import json
import types
import typing
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal, Union, get_args, get_origin

if TYPE_CHECKING:
    import decimal

    import cattrs

from ._exceptions import SerializationError, TypeMismatch

__all__ = ["Serde", "conforms", "make_converter", "type_name"]

_NONE_TYPE: Final = type(None)


def make_converter() -> cattrs.Converter:
    """Return a new cattrs Converter with memable's hooks for JSON envelopes.

    It is cattrs' JSON-preconfigured converter (``datetime`` as ISO 8601, ``bytes`` as
    base85, unions of primitives passed through) plus ``Decimal`` stored as a string, so
    no precision is lost, and ``UUID`` as its canonical string. An aware ``datetime``
    whose UTC offset would not survive the round trip through ISO 8601 (an offset of a
    fraction of a second, which some Python versions read back as UTC) is refused rather
    than stored changed. (cattrs is imported here, when the first engine is made, not
    with memable.)
    """
    import decimal
    import uuid

    from cattrs.preconf.json import make_converter as make_json_converter

    converter = make_json_converter()
    converter.register_unstructure_hook(decimal.Decimal, str)
    converter.register_structure_hook(decimal.Decimal, _structure_decimal)
    converter.register_unstructure_hook(uuid.UUID, str)
    converter.register_structure_hook(uuid.UUID, lambda value, _: uuid.UUID(value))
    converter.register_unstructure_hook(datetime.datetime, _unstructure_datetime)
    return converter


def _unstructure_datetime(value: datetime.datetime) -> str:
    text = value.isoformat()
    offset = value.utcoffset()
    if offset is not None and datetime.datetime.fromisoformat(text).utcoffset() != offset:
        raise ValueError(
            f"the UTC offset {offset} of {value!r} does not survive ISO 8601;"
            " convert the datetime to UTC first"
        )
    return text


def _structure_decimal(value: object, _: object) -> decimal.Decimal:
    import decimal

    if isinstance(value, str | int):
        return decimal.Decimal(value)
    raise TypeError(f"a Decimal is stored as a string, not {type(value).__name__}")


def type_name(tp: object) -> str:
    """Return the canonical name of a type expression.

    >>> type_name(list[int | None])
    'list[int | None]'
    """
    try:
        return _cached_type_name(tp)
    except TypeError:  # an unhashable type expression
        return _type_name(tp)


@functools.lru_cache(maxsize=1024)
def _cached_type_name(tp: object) -> str:
    return _type_name(tp)


def _type_name(tp: object) -> str:
    if tp is None or tp is _NONE_TYPE:
        return "None"
    if tp is Any:
        return "Any"
    if tp is Ellipsis:
        return "..."
    origin = get_origin(tp)
    if origin is typing.Annotated:
        return type_name(get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        names = sorted({type_name(arg) for arg in get_args(tp)}, key=lambda n: (n == "None", n))
        return " | ".join(names)
    if origin is Literal:
        return f"Literal[{', '.join(repr(arg) for arg in get_args(tp))}]"
    if origin is not None:
        args = get_args(tp)
        base = type_name(origin)
        return f"{base}[{', '.join(type_name(arg) for arg in args)}]" if args else base
    if isinstance(tp, type):
        if tp.__module__ == "builtins":
            return tp.__qualname__
        return f"{tp.__module__}.{tp.__qualname__}"
    if isinstance(tp, typing.NewType):
        return f"{tp.__module__}.{tp.__name__}"
    if isinstance(tp, typing.TypeVar):
        raise TypeError(f"cannot store a value of unbound type variable {tp!r}")
    if isinstance(tp, str | typing.ForwardRef):
        raise TypeError(f"{tp!r} is a string annotation, not a type; pass the type itself")
    return repr(tp)


def conforms(value: object, tp: object) -> bool:
    """Whether *value* is an instance of the type expression *tp*.

    Containers are checked element by element. Forms this cannot check are accepted.
    """
    if tp is Any or tp is object:
        return True
    if tp is None or tp is _NONE_TYPE:
        return value is None
    origin = get_origin(tp)
    if origin is None:
        if isinstance(tp, typing.NewType):
            return conforms(value, tp.__supertype__)
        if not isinstance(tp, type):
            return True
        if tp is float:
            return isinstance(value, float | int) and not isinstance(value, bool)
        if tp is int and isinstance(value, bool):
            return False
        return isinstance(value, tp)
    args = get_args(tp)
    if origin is typing.Annotated:
        return conforms(value, args[0])
    if origin is Union or origin is types.UnionType:
        return any(conforms(value, arg) for arg in args)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if not isinstance(origin, type):
        return True
    if not isinstance(value, origin):
        return False
    if not args:
        return True
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return all(conforms(item, args[0]) for item in typing.cast(tuple[object, ...], value))
        items = typing.cast(tuple[object, ...], value)
        return len(items) == len(args) and all(map(conforms, items, args))
    if issubclass(origin, collections.abc.Mapping):
        mapping = typing.cast(collections.abc.Mapping[object, object], value)
        key_tp, value_tp = args if len(args) == 2 else (Any, Any)
        return all(conforms(k, key_tp) and conforms(v, value_tp) for k, v in mapping.items())
    if issubclass(origin, collections.abc.Iterable) and len(args) == 1:
        if isinstance(value, collections.abc.Iterator):
            return True  # checking would consume it
        iterable = typing.cast(collections.abc.Iterable[object], value)
        return all(conforms(item, args[0]) for item in iterable)
    return True


def _describe(value: object) -> str:
    """Name the type of *value*, with element types for a short container."""
    name = type_name(type(value))
    if isinstance(value, list | tuple | set | frozenset) and 0 < len(value) <= 100:
        inner = sorted({type_name(type(v)) for v in value})
        return f"{name}[{' | '.join(inner)}]"
    return name


class Serde:
    """Encodes and decodes envelopes with one cattrs Converter (the engine's own)."""

    __slots__ = ("_result_types", "converter")

    def __init__(self, converter: cattrs.Converter | None = None) -> None:
        self.converter = converter if converter is not None else make_converter()
        self._result_types: weakref.WeakKeyDictionary[Callable[..., Any], Any] = (
            weakref.WeakKeyDictionary()
        )

    def result_type(self, key: str, fn: Callable[..., Any], returns: object) -> Any:
        """The type step *key* stores: *returns*, else *fn*'s return annotation (cached)."""
        if returns is not None:
            return returns
        target = getattr(fn, "__func__", fn)
        try:
            return self._result_types[target]
        except (KeyError, TypeError):
            pass
        tp = _return_annotation(key, fn)
        try:
            self._result_types[target] = tp
        except TypeError:
            pass  # not weakly referenceable; resolve again next time
        return tp

    def encode(self, value: object, tp: object, key: str, what: str = "") -> str:
        """Return the envelope of *value* as type *tp*; *what* names it in errors.

        Raises:
            TypeMismatch: *value* is not of type *tp*.
            SerializationError: *value* cannot be turned into JSON.
        """
        name = type_name(tp)
        if not conforms(value, tp):
            found = _describe(value)
            raise TypeMismatch(
                key, name, found, f"{what or repr(key)} is declared {name} but got {found}"
            )
        try:
            data = self.converter.unstructure(value, unstructure_as=tp)
            return json.dumps({"type": name, "value": data}, separators=(",", ":"))
        except Exception as exc:
            raise SerializationError(
                key,
                f"cannot store {what or 'the value'} ({_describe(value)}) as {name}: {exc}",
            ) from exc

    def decode(self, envelope: str, tp: object, key: str, what: str = "") -> Any:
        """Return the value stored in *envelope*, which must have been stored as *tp*.

        Raises:
            TypeMismatch: the envelope was stored under another type name.
            SerializationError: the envelope is corrupted or does not fit *tp*.
        """
        found, data = self.open(envelope, key, what)
        expected = type_name(tp)
        if found != expected:
            raise TypeMismatch(
                key,
                expected,
                found,
                f"{what or repr(key)} was recorded as {found} but the code expects {expected};"
                " bump the key if the type of what it stores changed",
            )
        if expected == "None" and data is None:  # cattrs has no hook for NoneType itself
            return None
        try:
            return self.converter.structure(data, typing.cast(Any, tp))
        except Exception as exc:
            raise SerializationError(
                key, f"{what or 'the stored value'} does not decode as {expected}: {exc}"
            ) from exc

    @staticmethod
    def open(envelope: str, key: str, what: str = "") -> tuple[str, Any]:
        """Return the type name and unstructured value of an envelope."""
        try:
            parsed = json.loads(envelope)
            found = parsed["type"]
            data = parsed["value"]
            if not isinstance(found, str):
                raise TypeError("the type name is not a string")
        except Exception as exc:
            raise SerializationError(
                key, f"the stored envelope of {what or repr(key)} is corrupted: {exc}"
            ) from exc
        return found, data


def _return_annotation(key: str, fn: Callable[..., Any]) -> Any:
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    if not isinstance(target, types.FunctionType | types.MethodType | types.BuiltinFunctionType):
        target = target.__call__  # a callable object: its __call__ has the annotations
    try:
        hints = typing.get_type_hints(target)
    except Exception as exc:
        raise TypeError(
            f"step {key!r}: cannot resolve the return annotation of {fn!r}: {exc};"
            " pass returns= to name the result type"
        ) from exc
    if "return" not in hints:
        raise TypeError(
            f"step {key!r}: {fn!r} has no return annotation, so memable cannot tell how to"
            " store its result; annotate it or pass returns="
        )
    return hints["return"]
