"""Replay fidelity: a stored value reads back equal and of the same type, or is refused."""

# No `from __future__ import annotations` here: cattrs reads a NamedTuple's annotations as
# they are, and cannot resolve strings.

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import math
import typing
import uuid
from typing import Any, Generic, NamedTuple, TypedDict, TypeVar

import attrs
import cattrs
import pytest
from cattrs.preconf.json import make_converter as make_json_converter
from hypothesis import given, settings
from hypothesis import strategies as st

import memable
from memable import Context, Engine, _serde
from memable._serde import Serde, conforms

T = TypeVar("T")

serde = Serde()


def assert_same(first: object, again: object, where: str = "value") -> None:
    """*again* equals *first* and has the same type, all the way down (dicts in order)."""
    assert type(again) is type(first), f"{where}: {type(first)} read back as {type(again)}"
    if isinstance(first, list | tuple):
        assert isinstance(again, list | tuple)
        assert len(again) == len(first), where
        for i, (item, item_again) in enumerate(zip(first, again, strict=True)):
            assert_same(item, item_again, f"{where}[{i}]")
    elif isinstance(first, dict):
        assert isinstance(again, dict)
        assert len(again) == len(first), where
        for (key, item), (key_again, item_again) in zip(first.items(), again.items(), strict=True):
            assert_same(key, key_again, f"{where} key {key!r}")
            assert_same(item, item_again, f"{where}[{key!r}]")
    elif isinstance(first, set | frozenset):
        assert first == again, where
        assert isinstance(again, set | frozenset)
        for item in first:
            assert_same(item, next(x for x in again if x == item), f"{where} item {item!r}")
    elif attrs.has(type(first)):
        for field in attrs.fields(typing.cast(Any, type(first))):
            name = field.name
            assert_same(getattr(first, name), getattr(again, name), f"{where}.{name}")
    elif isinstance(first, float) and math.isnan(first):
        assert isinstance(again, float)
        assert math.isnan(again), where
    elif isinstance(first, decimal.Decimal) and first.is_nan():
        assert repr(again) == repr(first), where
    else:
        assert again == first, where


def round_trip(value: object, tp: object, using: Serde = serde) -> None:
    """Store *value* as *tp* and assert it reads back the same."""
    assert_same(value, using.decode(using.encode(value, tp, "k:v1"), tp, "k:v1"))


def refused(value: object, tp: object, using: Serde = serde) -> memable.SerializationError:
    """Assert that storing *value* as *tp* is refused, naming the key and the step."""
    with pytest.raises(memable.SerializationError) as caught:
        using.encode(value, tp, "k:v1", "step 'k:v1' of 'o-17'")
    assert caught.value.key == "k:v1"
    assert "step 'k:v1' of 'o-17'" in str(caught.value)
    return caught.value


@attrs.frozen
class Point:
    x: int
    y: int


@attrs.frozen
class Size:
    x: int
    y: int


@attrs.frozen
class Label:
    text: str


@attrs.frozen
class Box(Generic[T]):
    content: T


@attrs.frozen
class Reading:
    celsius: float


@attrs.frozen
class Point3(Point):
    z: int = 0


class Pair(NamedTuple):
    left: int
    right: str


class Lazy(NamedTuple):
    left: "int"  # a string annotation, as `from __future__ import annotations` makes it


class Movie(TypedDict):
    title: str
    year: int


class Level(enum.IntEnum):
    LOW = 1


@dataclasses.dataclass
class Gauge:
    value: float


# -- the cases of the design ---------------------------------------------------------------


def test_bool_keys_that_json_would_turn_into_strings() -> None:
    """{False: ...} would read back as {True: ...} under dict[bool, str]: refused."""
    error = refused({False: "x"}, dict[bool, str])
    assert "key False" in str(error)
    round_trip({True: "x"}, dict[bool, str])  # this one does read back as itself
    round_trip({1: "x", -5: "y"}, dict[int, str])
    round_trip({1.5: "x", math.nan: "y"}, dict[float, str])


def test_bytes_under_a_union_with_str() -> None:
    """bytes under str | bytes would read back as a str: refused; a str is stored."""
    error = refused(b"\x00raw", str | bytes)
    assert "bytes would be read back as str" in str(error)
    round_trip("text", str | bytes)
    round_trip(b"\x00raw", bytes)


@pytest.mark.parametrize("tp", [Any, object], ids=["Any", "object"])
@pytest.mark.parametrize(
    "value",
    [
        (1, 2),
        {1, 2},
        frozenset({"a"}),
        Point(1, 2),
        dt.datetime(2024, 1, 2, 3, 4, 5),
        dt.date(2024, 1, 2),
        decimal.Decimal("1.10"),
        uuid.UUID(int=7),
        b"bytes",
        Level.LOW,
        {"nested": [(1, 2)]},
        {1: "int key"},
        [collections.OrderedDict(a=1)],
    ],
    ids=repr,
)
def test_what_json_cannot_tell_apart_under_any(value: object, tp: object) -> None:
    """Under Any or object, only JSON's own kinds read back as themselves."""
    refused(value, tp)


@pytest.mark.parametrize("tp", [Any, object], ids=["Any", "object"])
def test_json_data_under_any(tp: object) -> None:
    """JSON's own kinds round-trip under Any and object, nested, floats and ints apart."""
    round_trip({"a": [1, 2.0, None, True, "s", {"b": [math.inf, -0.0]}], "": {}}, tp)
    round_trip(3, tp)
    round_trip(3.0, tp)
    round_trip(math.nan, tp)


def test_an_int_where_float_is_declared_reads_back_as_the_int() -> None:
    """The first run saw an int, so the replay sees that int, not a float."""
    round_trip(3, float)
    round_trip(3.0, float)
    round_trip([1, 2.5, -0.0], list[float])
    round_trip({"a": 1, "b": 1.5}, dict[str, float])
    round_trip(Reading(20), Reading)
    round_trip(Gauge(7), Gauge)
    round_trip(2, float | None)
    round_trip(Box(3), Box[float])


def test_an_int_where_float_is_declared_without_memables_hooks() -> None:
    """A converter that reads a float back from an int: the int is refused, floats stored."""
    plain = Serde(make_json_converter())
    error = refused(3, float, plain)
    assert "int would be read back as float" in str(error)
    refused([1.0, 2], list[float], plain)
    round_trip(3.0, float, plain)
    round_trip([1.0, 2.5], list[float], plain)


def test_unions_of_classes_of_the_same_shape() -> None:
    """cattrs cannot tell Point from Size in JSON: refused; distinct shapes round-trip."""
    error = refused(Point(1, 2), Point | Size)
    assert "would not read back" in str(error)
    assert error.__cause__ is not None
    round_trip(Point(1, 2), Point | Label)
    round_trip(Label("x"), Point | Label)
    round_trip(None, Point | None)


def test_named_tuples() -> None:
    """A NamedTuple reads back as itself; one holding a field of another type is refused."""
    round_trip(Pair(1, "a"), Pair)
    round_trip([Pair(1, "a")], list[Pair])
    refused(Pair(True, "a"), Pair)
    assert "would not read back" in str(refused(Lazy(1), Lazy))  # not stored to fail later


def test_generic_attrs_classes() -> None:
    """Box[int] reads back as itself; a content of another type is refused."""
    round_trip(Box(1), Box[int])
    round_trip(Box([Box("a")]), Box[list[Box[str]]])
    refused(Box(True), Box[int])
    refused(Box((1, 2)), Box[Any])


def test_typed_dicts() -> None:
    """A TypedDict reads back as an equal dict, keys in order; a wrong one is refused."""
    round_trip(Movie(title="Brazil", year=1985), Movie)
    round_trip({"year": 1985, "title": "Brazil"}, Movie)
    with pytest.raises(memable.TypeMismatch):
        serde.encode({"title": "Brazil"}, Movie, "k")
    with pytest.raises(memable.TypeMismatch):
        serde.encode({"title": "Brazil", "year": "1985"}, Movie, "k")
    assert conforms(Movie(title="Brazil", year=1985), Movie)
    assert not conforms(["title"], Movie)


# -- subclasses that isinstance accepts ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "tp"),
    [
        (Level.LOW, int),
        ([Level.LOW], list[int]),
        (collections.OrderedDict(a=1), dict[str, int]),
        (collections.defaultdict(int, a=1), dict[str, int]),
        (Point3(1, 2, 3), Point),
        ({"p": Point3(1, 2)}, dict[str, Point]),
        (dt.datetime(2024, 1, 2, 3, 4), dt.date),
    ],
    ids=repr,
)
def test_subclasses_would_read_back_as_the_declared_class(value: object, tp: object) -> None:
    """isinstance accepts these, but a replay would see the declared class: refused."""
    assert conforms(value, tp)
    assert "would" in str(refused(value, tp))


def test_values_that_do_read_back() -> None:
    """Every kind of value the design lists reads back as itself, nested too."""
    when = dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=-3)))
    round_trip(when, dt.datetime)
    round_trip([when, None], list[dt.datetime | None])
    round_trip({decimal.Decimal("1.10"), decimal.Decimal("2")}, set[decimal.Decimal])
    round_trip(frozenset({uuid.UUID(int=1)}), frozenset[uuid.UUID])
    round_trip((1, "a", None), tuple[int, str, None])
    round_trip((), tuple[int, ...])
    round_trip({"a": (1, 2)}, dict[str, tuple[int, ...]])
    round_trip(decimal.Decimal("sNaN"), decimal.Decimal)
    round_trip(None, None)
    round_trip(None, type(None))
    round_trip([True, 1, "1", None], list[bool | int | str | None])


def test_a_refused_value_is_checked_before_anything_is_returned() -> None:
    """A mismatch deep in a structure is a TypeMismatch, found by the fast check too."""
    value: list[dict[str, int]] = [{"a": 1}] * 50 + [{"a": True}]
    with pytest.raises(memable.TypeMismatch):
        serde.encode(value, list[dict[str, int]], "k")
    with pytest.raises(memable.TypeMismatch):
        serde.encode([1, None], list[int], "k")
    with pytest.raises(memable.TypeMismatch):
        serde.encode({"a": 1, 2: 3}, dict[str, int], "k")


def test_data_nested_too_deep_for_the_fast_check() -> None:
    """Deeply nested JSON data under Any is read back instead; a cycle is refused."""
    deep: list[Any] = []
    for _ in range(200):
        deep = [deep]
    round_trip(deep, Any)
    cycle: list[Any] = []
    cycle.append(cycle)
    refused(cycle, Any)


# -- anything either reads back the same or is refused ---------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=5)
    | st.binary(max_size=5)
    | st.decimals(places=2, allow_nan=False)
    | st.datetimes()
    | st.uuids()
    | st.sampled_from(Level)
)
points = st.builds(Point, st.integers(), st.integers())
keys = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=3)
anything = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(keys, inner, max_size=3)
        | st.frozensets(keys, max_size=3)
        | points
        | st.builds(Box, inner)
    ),
    max_leaves=8,
)
numbers = st.integers() | st.floats() | st.booleans()

PROPERTY_CASES: list[tuple[object, st.SearchStrategy[Any]]] = [
    (Any, anything),
    (object, anything),
    (dict[str, Any], st.dictionaries(st.text(max_size=3), anything, max_size=3)),
    (list[Any], st.lists(anything, max_size=3)),
    (dict[bool, str], st.dictionaries(st.booleans(), st.text(max_size=3))),
    (dict[int | bool, str], st.dictionaries(st.integers() | st.booleans(), st.text(max_size=3))),
    (dict[float, float], st.dictionaries(numbers, numbers, max_size=3)),
    (str | bytes, st.text() | st.binary()),
    (float, numbers),
    (int | float, numbers),
    (float | None, numbers | st.none()),
    (list[float | str], st.lists(numbers | st.text(max_size=3))),
    (tuple[int, ...], st.lists(numbers).map(tuple)),
    (Point | Size, points | st.builds(Size, st.integers(), st.integers())),
    (Box[int], st.builds(Box, numbers)),
    (Box[float], st.builds(Box, numbers)),
    (Pair, st.builds(Pair, numbers, st.text(max_size=3))),
    (int, st.integers() | st.sampled_from(Level)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("tp", "strategy"), PROPERTY_CASES, ids=[repr(tp) for tp, _ in PROPERTY_CASES]
)
def test_stored_values_read_back_the_same_or_are_refused(
    tp: object, strategy: st.SearchStrategy[Any]
) -> None:
    """No value is stored that a replay would see as another value or another type."""

    @settings(max_examples=150, deadline=None)
    @given(strategy)
    def check(value: Any) -> None:
        try:
            envelope = serde.encode(value, tp, "k")
        except memable.TypeMismatch:
            assert not conforms(value, tp)
            return
        except memable.SerializationError:
            return
        assert_same(value, serde.decode(envelope, tp, "k"))

    check()


# -- configure_converter ---------------------------------------------------------------------


def test_configure_converter_installs_memables_hooks() -> None:
    """A plain cattrs Converter gets Decimal, UUID, datetime, float and object hooks."""
    converter = cattrs.Converter()
    assert memable.configure_converter(converter) is converter
    own = Serde(converter)
    round_trip(decimal.Decimal("0.10000000000000000000000000001"), decimal.Decimal, own)
    round_trip(uuid.UUID(int=42), uuid.UUID, own)
    round_trip(dt.datetime(2024, 1, 2, tzinfo=dt.UTC), dt.datetime, own)
    round_trip([3, 1.5], list[float], own)
    round_trip({"a": [1]}, object, own)
    sub_second = dt.datetime(2000, 1, 1, tzinfo=dt.timezone(dt.timedelta(microseconds=1)))
    if dt.datetime.fromisoformat(sub_second.isoformat()).utcoffset() != sub_second.utcoffset():
        with pytest.raises(memable.SerializationError, match="does not survive ISO 8601"):
            own.encode(sub_second, dt.datetime, "k")
    refused((1, 2), Any, own)


def test_hooks_registered_afterwards_take_precedence() -> None:
    """configure_converter first, then the user's own hooks, which win."""
    converter = memable.configure_converter(make_json_converter())
    converter.register_unstructure_hook(decimal.Decimal, lambda d: [str(d)])
    converter.register_structure_hook(decimal.Decimal, lambda d, _: decimal.Decimal(d[0]))
    own = Serde(converter)
    envelope = own.encode(decimal.Decimal("1.5"), decimal.Decimal, "k")
    assert '"value":["1.5"]' in envelope
    round_trip(decimal.Decimal("1.5"), decimal.Decimal, own)


def test_make_converter_is_configured() -> None:
    """memable's default converter is cattrs' JSON converter with the same hooks."""
    converter = memable._serde.make_converter()
    assert converter.unstructure(decimal.Decimal("1.10")) == "1.10"
    assert converter.unstructure(uuid.UUID(int=1)) == str(uuid.UUID(int=1))
    assert converter.structure(3, float) == 3
    assert type(converter.structure(3, float)) is int


async def test_an_engine_keeps_the_hooks_of_a_configured_converter() -> None:
    """Engine(converter=configure_converter(mine)) stores Decimals exactly and replays them."""
    calls: list[int] = []

    async def price() -> decimal.Decimal:
        calls.append(1)
        return decimal.Decimal("10.10")

    @memable.workflow("price")
    async def wf(ctx: Context) -> decimal.Decimal:
        return await ctx.step("price:v1", price)

    converter = memable.configure_converter(cattrs.Converter())
    async with Engine(workflows=[wf], converter=converter) as engine:
        first = await engine.run(wf, instance_id="p")
        again = await engine.run(wf, instance_id="p")
    assert_same(decimal.Decimal("10.10"), first)
    assert_same(decimal.Decimal("10.10"), again)
    assert calls == [1]


_PLAIN_VALUES: list[object] = [
    0, -3, 2**70, 1.5, -0.0, True, False, "", "é\u2028", None, [], [1, 2], [1.5, 2],
    [True], ["a", None], {}, {"a": 1}, {"a": [1, {"b": None}]}, [{"a": 1.5, "t": ["x"]}],
    (1, 2), {1: "a"}, [(1,)], Level.LOW, [Level.LOW], {"a": Level.LOW}, decimal.Decimal(1),
]  # fmt: skip


@pytest.mark.parametrize("tp", sorted(_serde._KNOWN_PLANS, key=repr), ids=repr)
def test_plain_types_store_as_with_cattrs_loaded(tp: object) -> None:
    """JSON's own types (and lists and str-keyed dicts of them) are encoded, decoded and
    refused without loading cattrs exactly as memable's converter, tried, would."""
    known, tried = Serde(), Serde(memable.configure_converter(make_json_converter()))

    def outcome(serde: Serde, value: object) -> object:
        try:
            envelope = serde.encode(value, tp, "k:v1")
        except memable.MemableError as exc:
            return type(exc)
        decoded = serde.decode(envelope, tp, "k:v1")
        return envelope, decoded, type(decoded)

    for value in _PLAIN_VALUES:
        assert outcome(known, value) == outcome(tried, value), value
