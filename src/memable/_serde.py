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
import math
import operator
import types
import typing
import weakref
from collections.abc import Callable, Iterable
from itertools import chain, compress, cycle, repeat
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, Union, get_args, get_origin

import attrs

if TYPE_CHECKING:
    import decimal

    import cattrs

from ._exceptions import SerializationError, TypeMismatch

__all__ = [
    "NOT_QUICK",
    "UNTYPED",
    "Serde",
    "configure_converter",
    "conforms",
    "make_converter",
    "type_name",
]

#: The type name of a payload sent as plain JSON by a program without the workflow's
#: code (the ``memable signal`` command): it is read as whatever type its point expects.
UNTYPED: Final = "?"

_NONE_TYPE: Final = type(None)

#: What :meth:`Serde.quick_decode` returns for an envelope it leaves to :meth:`Serde.decode`.
NOT_QUICK: Final = object()
_dumps: Final = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps makes one per call


def _checked_dumps() -> Callable[[object], str]:
    """The encoder of values an exact-type check has passed: the check looks a bounded
    depth down, so such a value has no cycle and the encoder keeps no set of the containers
    it is in. It is made once (``JSONEncoder.encode`` makes a C encoder per call, which
    costs a small envelope more than encoding it)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without json's C accelerator
        return json.JSONEncoder(separators=(",", ":"), check_circular=False).encode

    def default(value: object) -> object:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    # markers, default, encoder, indent, separators, sort_keys, skipkeys, allow_nan: those
    # of JSONEncoder(separators=(",", ":"), check_circular=False).
    encode = make(None, default, json.encoder.encode_basestring_ascii, None, ":", ",",
                  False, False, True)  # fmt: skip
    return lambda value: "".join(encode(value, 0))


_dumps_checked: Final = _checked_dumps()
_CONTAINERS: Final = frozenset({list, dict})


@functools.cache
def _fast_dumps() -> Callable[[object], bytes] | None:
    """orjson's encoder if it is installed (the ``fast`` extra), looked up on first use
    (never by ``import memable``); else None."""
    try:
        import orjson
    except ImportError:
        return None
    return orjson.dumps


_raw_decode: Final = json.JSONDecoder().raw_decode


def _loads(text: str) -> Any:
    """``json.loads``, without its two scans for surrounding whitespace when there is none
    (an envelope memable wrote has none); a text that needs them goes through it."""
    try:
        value, end = _raw_decode(text)
    except ValueError:
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


def make_converter() -> cattrs.Converter:
    """Return a new cattrs Converter for JSON envelopes, with memable's hooks.

    It is cattrs' JSON-preconfigured converter (``datetime`` as ISO 8601, ``bytes`` as
    base85, unions of primitives passed through) prepared by ``configure_converter``.
    (cattrs is imported here, when the first engine is made, not with memable.)
    """
    from cattrs.preconf.json import make_converter as make_json_converter

    return configure_converter(make_json_converter())


def configure_converter(converter: cattrs.Converter) -> cattrs.Converter:
    """Install memable's hooks on *converter* and return it.

    Values read back must be equal to, and of the same type as, the values first seen, so:

    - ``Decimal`` is stored as its string, every digit kept; ``UUID`` as its canonical
      string;
    - an aware ``datetime`` keeps its instant and UTC offset (ISO 8601); one whose offset
      would not survive ISO 8601 (a fraction of a second, which some Python versions read
      back as UTC) is refused rather than stored changed;
    - an ``int`` where ``float`` is declared is read back as that ``int``, not as a
      ``float`` (JSON keeps ``3`` and ``3.0`` apart);
    - a value declared ``object`` is read back as its JSON data, as under ``Any``.

    Pass your own converter through this before registering your hooks on it, so that
    ``Engine(converter=...)`` keeps these; hooks registered afterwards take precedence.

    Example:
        >>> import decimal, cattrs, memable
        >>> converter = memable.configure_converter(cattrs.Converter())
        >>> converter.unstructure(decimal.Decimal("0.10"))
        '0.10'
        >>> converter.structure(3, float)
        3
        >>> engine = memable.Engine(converter=converter)
    """
    import decimal
    import uuid

    converter.register_unstructure_hook(decimal.Decimal, str)
    converter.register_structure_hook(decimal.Decimal, _structure_decimal)
    converter.register_unstructure_hook(uuid.UUID, str)
    converter.register_structure_hook(uuid.UUID, lambda value, _: uuid.UUID(value))
    converter.register_unstructure_hook(datetime.datetime, _unstructure_datetime)
    converter.register_structure_hook(
        datetime.datetime, lambda value, _: datetime.datetime.fromisoformat(value)
    )
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook_func(lambda tp: tp is object, lambda value, _: value)
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


def _structure_float(value: Any, _: object) -> float:
    # The first run saw the int itself (an int is a float to the type system), so an int
    # stored where float is declared reads back as that int.
    if type(value) is int:
        return value
    return float(value)


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
        if typing.is_typeddict(tp):
            return isinstance(value, dict) and _conforms_typeddict(value, tp)
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


def _conforms_typeddict(value: dict[Any, Any], tp: type) -> bool:
    required: frozenset[str] = getattr(tp, "__required_keys__", frozenset())
    if not required <= value.keys():
        return False
    try:
        hints = typing.get_type_hints(tp)
    except Exception:
        return True  # forms this cannot check are accepted
    return all(conforms(item, hints[name]) for name, item in value.items() if name in hints)


def _describe(value: object) -> str:
    """Name the type of *value*, with element types for a short container."""
    name = type_name(type(value))
    if isinstance(value, list | tuple | set | frozenset) and 0 < len(value) <= 100:
        inner = sorted({type_name(type(v)) for v in value})
        return f"{name}[{' | '.join(inner)}]"
    return name


# Replay fidelity: a value is stored only if it reads back equal and of the same type,
# recursively. For type expressions built of JSON's own kinds (None, bool, int, float, str,
# bytes; lists, tuples and dicts of them; Any) an exact-type check over whole columns of
# values decides that at C speed: it is compiled once per type, and trusted only after
# sample values of that type have made the round trip through the engine's converter. Any
# other value is read back after it is encoded, and compared.

_Check = Callable[[Iterable[Any]], bool]  # consumes its argument once


class _Exact(NamedTuple):
    """An exact-type check over a column of values, and samples to probe it with.

    A value that passes is JSON's own kinds exactly, and its floats are finite: any JSON
    encoder writes it as it is (JSON has no NaN or infinity; such a value takes the path
    that reads it back and compares, and is stored as Python's encoder writes it).
    """

    check: _Check
    samples: tuple[object, ...]
    scalars: frozenset[type] | None  # the types accepted, when they are all scalars


_SCALAR_SAMPLES: Final[dict[object, tuple[object, ...]]] = {
    _NONE_TYPE: (None,),
    bool: (False, True),
    int: (0, -(2**70)),
    float: (1.5, -0.0, math.inf, math.nan),
    str: ("", "\u00e9\ud800"),
    bytes: (b"", b"\x00\xff"),
}
_JSON_KINDS: Final = frozenset({_NONE_TYPE, bool, int, float, str, list, dict})
_JSON_SAMPLES: Final[tuple[object, ...]] = (
    None,
    False,
    0,
    1.5,
    "",
    [],
    {},
    [1, "a", None],
    {"k": [True, 2.5]},
)
_JSON_DEPTH: Final = 64  # deeper data is read back and compared instead
_PLAIN: Final = frozenset({_NONE_TYPE, bool, int, str, bytes})  # equal if ==
_STR: Final = frozenset({str})
_LIST: Final = frozenset({list})
_TUPLE: Final = frozenset({tuple})
_DICT: Final = frozenset({dict})


def _compile(tp: object, int_as_float: bool) -> _Exact | None:
    """The exact check of *tp*, or None if a value of *tp* must be read back to be sure.

    *int_as_float*: whether an int is accepted where float is declared (it reads back as
    an int with memable's hooks).
    """
    if tp is None:
        tp = _NONE_TYPE
    if tp is Any or tp is object:
        return _Exact(_json_native, _JSON_SAMPLES, None)
    if isinstance(tp, typing.NewType):
        return _compile(tp.__supertype__, int_as_float)
    if tp in _SCALAR_SAMPLES:
        if tp is float and int_as_float:
            return _scalars(frozenset({float, int}), (*_SCALAR_SAMPLES[float], 3))
        return _scalars(frozenset({typing.cast(type, tp)}), _SCALAR_SAMPLES[tp])
    origin, args = (
        (tp, ()) if tp is list or tp is dict or tp is tuple else (get_origin(tp), get_args(tp))
    )
    if origin is typing.Annotated:
        return _compile(args[0], int_as_float)
    if origin is Union or origin is types.UnionType:
        return _union([_compile(arg, int_as_float) for arg in args])
    if origin is list:
        item = _compile(args[0] if args else Any, int_as_float)
        return None if item is None else _sequence(list, _LIST, item)
    if origin is tuple:
        if tp is tuple or (len(args) == 2 and args[1] is Ellipsis):
            item = _compile(args[0] if args else Any, int_as_float)
            return None if item is None else _sequence(tuple, _TUPLE, item)
        items = [_compile(arg, int_as_float) for arg in args]
        if not items or None in items:
            return None
        return _fixed_tuple(typing.cast(list[_Exact], items))
    if origin is dict:
        key_tp, value_tp = args if len(args) == 2 else (str, Any)
        key, value = _compile(key_tp, int_as_float), _compile(value_tp, int_as_float)
        return None if key is None or value is None else _mapping(key, value)
    return None


def _scalars(kinds: frozenset[type], samples: tuple[object, ...]) -> _Exact:
    if float not in kinds:

        def check(values: Iterable[Any]) -> bool:
            return {*map(type, values)} <= kinds

    else:

        def check(values: Iterable[Any]) -> bool:
            values = values if type(values) is list else [*values]
            types = [*map(type, values)]
            found = {*types}
            return found <= kinds and (
                float not in found or _finite(_of_type(values, types, found, float))
            )

    return _Exact(check, samples, kinds)


def _union(members: list[_Exact | None]) -> _Exact | None:
    if None in members:
        return None
    known = typing.cast(list[_Exact], members)
    samples = tuple(chain.from_iterable(member.samples for member in known))
    scalars = frozenset(chain.from_iterable(m.scalars for m in known if m.scalars is not None))
    others = [member.check for member in known if member.scalars is None]
    if not others:
        return _scalars(scalars, samples)
    if len(others) > 1:
        return None  # which one a value is would be decided by the converter
    inner = others[0]
    if float not in scalars:

        def check(values: Iterable[Any]) -> bool:
            return inner(value for value in values if type(value) not in scalars)

    else:

        def check(values: Iterable[Any]) -> bool:
            values = [*values]
            return _finite(value for value in values if type(value) is float) and inner(
                value for value in values if type(value) not in scalars
            )

    return _Exact(check, samples, None)


def _sequence(kind: type, kinds: frozenset[type], item: _Exact) -> _Exact:
    inner = item.check

    def check(values: Iterable[Any]) -> bool:
        values = [*values]
        return {*map(type, values)} <= kinds and inner(chain.from_iterable(values))

    return _Exact(check, (kind(), kind(item.samples)), None)


def _fixed_tuple(items: list[_Exact]) -> _Exact:
    columns = [(item.check, operator.itemgetter(i)) for i, item in enumerate(items)]
    lengths = frozenset({len(items)})

    def check(values: Iterable[Any]) -> bool:
        values = [*values]
        return (
            {*map(type, values)} <= _TUPLE
            and {*map(len, values)} <= lengths
            and all(inner(map(get, values)) for inner, get in columns)
        )

    width = max(len(item.samples) for item in items)
    samples = tuple(
        tuple(item.samples[i % len(item.samples)] for item in items) for i in range(width)
    )
    return _Exact(check, samples, None)


def _mapping(key: _Exact, value: _Exact) -> _Exact | None:
    if key.scalars is None:
        return None
    keys, values_of = key.check, value.check

    def check(values: Iterable[Any]) -> bool:
        values = [*values]
        return (
            {*map(type, values)} <= _DICT
            and keys(chain.from_iterable(values))
            and values_of(chain.from_iterable(map(dict.values, values)))
        )

    if len(key.samples) >= len(value.samples):
        pairs = zip(key.samples, cycle(value.samples))
    else:
        pairs = zip(cycle(key.samples), value.samples)
    return _Exact(check, ({}, *({k: v} for k, v in pairs)), None)


def _json_native(column: Iterable[Any]) -> bool:
    """Whether every value is JSON's own: None, bool, int, float, str, list, str-keyed dict."""
    values = column if type(column) is list else [*column]  # read, never changed
    for _ in range(_JSON_DEPTH):
        if not values:
            return True
        types = [*map(type, values)]  # once: the kinds, then which values are containers
        kinds = {*types}
        if not kinds <= _JSON_KINDS:
            return False
        if float in kinds and not _finite(_of_type(values, types, kinds, float)):
            return False
        nested: list[Any] = []
        if list in kinds:
            nested.extend(chain.from_iterable(_of_type(values, types, kinds, list)))
        if dict in kinds:
            mappings = _of_type(values, types, kinds, dict)
            if not {*map(type, chain.from_iterable(mappings))} <= _STR:
                return False
            nested.extend(chain.from_iterable(map(dict.values, mappings)))
        values = nested
    return False


def _finite(floats: Iterable[float]) -> bool:
    """Whether every float is finite: their sum is, unless one is NaN or infinite (or huge
    ones overflow it: then the value is read back and compared instead, which is exact)."""
    return math.isfinite(sum(floats, 0.0))


def _of_type(values: list[Any], types: list[type], kinds: set[type], kind: type) -> list[Any]:
    """The values of exactly type *kind* (*types* are theirs; filtered at C speed)."""
    if len(kinds) == 1:
        return values
    return [*compress(values, map(operator.is_, types, repeat(kind)))]


def _difference(first: object, read_back: object) -> str | None:
    """How *read_back* differs from *first*; None if they are equal, of the same types."""
    kind = type(first)
    if type(read_back) is not kind:
        return f"{type_name(kind)} would be read back as {type_name(type(read_back))}"
    again: Any = read_back
    if kind in _PLAIN:
        return None if first == again else f"{_short(first)} would be read back as {_short(again)}"
    if attrs.has(kind):
        return _fields_difference(first, again, attrs.fields(typing.cast(Any, kind)))
    if isinstance(first, list | tuple):
        if len(first) != len(again):
            return f"{len(first)} items would be read back as {len(again)}"
        for i, (item, item_again) in enumerate(zip(first, again, strict=True)):
            if (found := _difference(item, item_again)) is not None:
                return f"[{i}]: {found}"
        return None
    if isinstance(first, dict):
        # In order: a replay iterates over the dict as the first run did.
        if len(first) != len(again):
            return f"{len(first)} keys would be read back as {len(again)}"
        for (key, item), (key_again, item_again) in zip(first.items(), again.items(), strict=True):
            if (found := _difference(key, key_again)) is not None:
                return f"key {key!r}: {found}"
            if (found := _difference(item, item_again)) is not None:
                return f"[{key!r}]: {found}"
        return None
    if isinstance(first, set | frozenset):
        if first != again:
            return f"{_short(first)} would be read back as {_short(again)}"
        items_again = {item: item for item in again}
        for item in first:
            if (found := _difference(item, items_again[item])) is not None:
                return f"item {item!r}: {found}"
        return None
    if hasattr(kind, "__dataclass_fields__"):  # a dataclass (without importing dataclasses)
        import dataclasses

        return _fields_difference(first, again, dataclasses.fields(typing.cast(Any, kind)))
    if isinstance(first, datetime.datetime | datetime.time):
        if first == again and first.utcoffset() == again.utcoffset():
            return None
    else:
        try:
            if first == again:
                return None
            unequal_to_itself = first != first and again != again  # NaN
        except Exception:  # a signalling NaN is not even compared
            unequal_to_itself = True
        if unequal_to_itself and repr(first) == repr(again):
            return None
    return f"{_short(first)} would be read back as {_short(again)}"


def _fields_difference(first: object, again: object, fields: Iterable[Any]) -> str | None:
    for field in fields:
        found = _difference(getattr(first, field.name), getattr(again, field.name))
        if found is not None:
            return f".{field.name}: {found}"
    return None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


_JSON_TYPES: Final = (int, float, str, bool, Any)
#: Types whose plan under memable's own converter is known: JSON's kinds, and lists and
#: str-keyed dicts of them (tests/test_fidelity.py checks each against trying it).
_KNOWN_PLANS: Final = frozenset(
    {None, _NONE_TYPE, *_JSON_TYPES, *(list[t] for t in _JSON_TYPES),  # type: ignore[valid-type]
     *(dict[str, t] for t in _JSON_TYPES),  # type: ignore[valid-type]
     list[dict[str, Any]]}
)  # fmt: skip


class Serde:
    """Encodes and decodes envelopes with one cattrs Converter (the engine's own)."""

    __slots__ = ("_converter", "_own", "_plans", "_quick", "_result_types")

    def __init__(self, converter: cattrs.Converter | None = None) -> None:
        self._converter = converter  # made on first use: cattrs loads only when needed
        self._own = converter is None  # memable's own converter, whose plans are known
        self._result_types: weakref.WeakKeyDictionary[Callable[..., Any], Any] = (
            weakref.WeakKeyDictionary()
        )
        # Per type: its exact check (or None), and whether the converter unstructures
        # values of it as themselves (then encoding skips the converter).
        self._plans: dict[object, tuple[_Check | None, bool]] = {}
        # Per type: how quick_decode reads its plain envelopes (None: it does not).
        self._quick: dict[object, Callable[[str], object] | None] = {}

    @property
    def converter(self) -> cattrs.Converter:
        """The engine's cattrs Converter (the one given, else memable's own, made now)."""
        if self._converter is None:
            self._converter = make_converter()
        return self._converter

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

        The value must read back equal and of the same type (replay fidelity): values of
        JSON's own kinds pass an exact-type check, any other value is read back and
        compared before its envelope is returned.

        Raises:
            TypeMismatch: *value* is not of type *tp*.
            SerializationError: *value* cannot be turned into JSON, or would not read back
                equal and of the same type.
        """
        name = type_name(tp)
        check, as_is = self._plan(tp)
        exact = check is not None and check([value])
        if exact and as_is:
            # JSON's own kinds, exactly, which the converter leaves as they are.
            envelope_of = {"type": name, "value": value}
            if type(value) in _CONTAINERS and (fast := _fast_dumps()) is not None:
                try:  # reads back as the same value: finite floats, str keys, no subclass
                    return fast(envelope_of).decode()
                except Exception:
                    pass  # an int beyond 64 bits, a lone surrogate: Python's encoder writes it
            try:
                return _dumps_checked(envelope_of)
            except Exception:
                pass  # (a value nested too deep, say): the converter's path says what is wrong
        if not exact and not conforms(value, tp):
            found = _describe(value)
            raise TypeMismatch(
                key, name, found, f"{what or repr(key)} is declared {name} but got {found}"
            )
        try:
            data = self.converter.unstructure(value, unstructure_as=tp)
            envelope = _dumps({"type": name, "value": data})
        except Exception as exc:
            raise SerializationError(
                key,
                f"cannot store {what or 'the value'} ({_describe(value)}) as {name}: {exc}",
            ) from exc
        if exact:
            return envelope
        cause: Exception | None = None
        try:
            again = self._structure(json.loads(envelope)["value"], tp, name)
            difference = _difference(value, again)
            reason = f"a replay would see a different value: {difference}"
        except Exception as exc:
            difference = reason = f"it would not read back: {str(exc).rstrip('.')}"
            cause = exc
        if difference is None:
            return envelope
        raise SerializationError(
            key,
            f"cannot store {what or 'the value'} ({_describe(value)}) as {name}: {reason};"
            " declare a type that reads back exactly, or register hooks for it on the converter",
        ) from cause

    def decode(self, envelope: str, tp: object, key: str, what: str = "") -> Any:
        """Return the value stored in *envelope*, which must have been stored as *tp*.

        Raises:
            TypeMismatch: the envelope was stored under another type name.
            SerializationError: the envelope is corrupted or does not fit *tp*.
        """
        found, data = self.open(envelope, key, what)
        expected = type_name(tp)
        if found != expected and found != UNTYPED:
            raise TypeMismatch(
                key,
                expected,
                found,
                f"{what or repr(key)} was recorded as {found} but the code expects {expected};"
                " bump the key if the type of what it stores changed",
            )
        check, as_is = self._plan(tp)
        if as_is and check is not None and check([data]):
            return data  # JSON's own kinds, which the converter would leave as they are
        try:
            return self._structure(data, tp, expected)
        except Exception as exc:
            raise SerializationError(
                key, f"{what or 'the stored value'} does not decode as {expected}: {exc}"
            ) from exc

    def quick_decode(self, envelope: str, tp: object) -> Any:
        """What :meth:`decode` returns for *envelope* as *tp*, read without a JSON parse
        when it is the plain envelope memable writes of an ``int``, ``str``, ``bool`` or
        ``None`` that the converter leaves as it is (replay's common case); else
        :data:`NOT_QUICK`, and :meth:`decode` reads it (and says what is wrong with it)."""
        try:
            read = self._quick[tp]
        except KeyError:
            read = self._quick[tp] = self._quick_reader(tp)
        except TypeError:  # an unhashable type expression
            return NOT_QUICK
        return NOT_QUICK if read is None else read(envelope)

    def _quick_reader(self, tp: object) -> Callable[[str], object] | None:
        if tp is None:
            tp = _NONE_TYPE
        reader = _QUICK_READERS.get(tp) if isinstance(tp, type) else None
        if reader is None:
            return None
        check, as_is = self._plan(tp)
        # decode returns the parsed value itself when the plan's check passes and the
        # converter leaves values as they are: then so may a quick read.
        return reader if as_is and check is not None and check([_QUICK_SAMPLES[tp]]) else None

    def _structure(self, data: object, tp: object, name: str) -> Any:
        if name == "None" and data is None:  # cattrs has no hook for NoneType itself
            return None
        return self.converter.structure(data, typing.cast(Any, tp))

    def _plan(self, tp: object) -> tuple[_Check | None, bool]:
        """The exact-type check of *tp* that this converter was seen to honour (or None),
        and whether the converter was seen to unstructure values of *tp* as themselves."""
        try:
            return self._plans[tp]
        except KeyError:
            pass
        except TypeError:
            return None, False  # an unhashable type expression: read its values back
        plan: tuple[_Check | None, bool] = (None, False)
        if self._own and tp in _KNOWN_PLANS:
            # JSON's own kinds under memable's converter: what trying the samples would
            # find (tests/test_fidelity.py checks it), without loading cattrs for them,
            # so a fresh process replays a history of plain values without that cost.
            exact = _compile(tp, True)
            assert exact is not None
            plan = (exact.check, True)
        for int_as_float in () if plan[0] is not None else (True, False):
            exact = _compile(tp, int_as_float)
            if exact is None:
                break
            if all(self._reads_back(sample, tp) for sample in exact.samples):
                plan = (exact.check, all(self._as_is(sample, tp) for sample in exact.samples))
                break
        if len(self._plans) >= 1024:
            self._plans.clear()
        self._plans[tp] = plan
        return plan

    def _as_is(self, value: object, tp: object) -> bool:
        try:
            return _difference(value, self.converter.unstructure(value, unstructure_as=tp)) is None
        except Exception:
            return False

    def _reads_back(self, value: object, tp: object) -> bool:
        try:
            data = json.loads(_dumps(self.converter.unstructure(value, unstructure_as=tp)))
            return _difference(value, self._structure(data, tp, type_name(tp))) is None
        except Exception:
            return False

    @staticmethod
    def open(envelope: str, key: str, what: str = "") -> tuple[str, Any]:
        """Return the type name and unstructured value of an envelope."""
        try:
            parsed = _loads(envelope)
            found = parsed["type"]
            data = parsed["value"]
            if not isinstance(found, str):
                raise TypeError("the type name is not a string")
        except Exception as exc:
            raise SerializationError(
                key, f"the stored envelope of {what or repr(key)} is corrupted: {exc}"
            ) from exc
        return found, data


def _quick_int(envelope: str) -> object:
    """An ``int`` envelope as memable writes it: ``{"type":"int","value":-12}``."""
    if envelope[:22] != '{"type":"int","value":' or envelope[-1:] != "}":
        return NOT_QUICK
    digits = envelope[22:-1]
    body = digits[1:] if digits[:1] == "-" else digits
    # JSON's integers only (ASCII digits, no leading zero), short of int()'s digit limit.
    if not (0 < len(body) < 19 and body.isdigit() and body.isascii()) or (
        body[0] == "0" and len(body) > 1
    ):
        return NOT_QUICK
    return int(digits)


def _quick_str(envelope: str) -> object:
    """A ``str`` envelope without escapes: ``{"type":"str","value":"ok"}``."""
    if envelope[:23] != '{"type":"str","value":"' or envelope[-2:] != '"}' or len(envelope) < 25:
        return NOT_QUICK
    text = envelope[23:-2]
    # Nothing JSON would unescape or refuse (a quote, a backslash, a control character);
    # memable writes every other character as an escape, so this is ASCII text.
    if '"' in text or "\\" in text or not text.isprintable():
        return NOT_QUICK
    return text


def _quick_bool(envelope: str) -> object:
    if envelope == '{"type":"bool","value":true}':
        return True
    if envelope == '{"type":"bool","value":false}':
        return False
    return NOT_QUICK


def _quick_none(envelope: str) -> object:
    return None if envelope == '{"type":"None","value":null}' else NOT_QUICK


_QUICK_READERS: Final[dict[object, Callable[[str], object]]] = {
    int: _quick_int, str: _quick_str, bool: _quick_bool, _NONE_TYPE: _quick_none
}  # fmt: skip
_QUICK_SAMPLES: Final[dict[object, object]] = {int: 1, str: "a", bool: True, _NONE_TYPE: None}


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
