"""Envelopes: every stored type round-trips; type names are canonical; errors name the key."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import math
import typing
import uuid
from typing import Any, Optional

import attrs
import cattrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memable
from memable import Context, Engine
from memable._serde import NOT_QUICK, Serde, type_name


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@attrs.frozen
class Item:
    sku: str
    quantity: int
    tags: list[str]
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class Order:
    order_id: str
    items: list[Item]
    total: decimal.Decimal
    placed: dt.datetime
    colour: Colour


serde = Serde()

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
texts = st.text(st.characters(exclude_categories=["Cs"]))  # no lone surrogates
items = st.builds(Item, texts, st.integers(), st.lists(texts, max_size=3), st.none() | texts)
decimals = st.decimals(allow_nan=False, allow_infinity=False)
# Aware datetimes keep their instant and UTC offset (ISO 8601), not a zone's name.
# (Offsets of whole seconds, as real zones have; sub-second ones are tested on their own.)
fixed_offsets = st.builds(
    dt.timezone,
    st.integers(min_value=-23 * 3600, max_value=23 * 3600).map(lambda s: dt.timedelta(seconds=s)),
)
orders = st.builds(
    Order,
    texts,
    st.lists(items, max_size=3),
    decimals,
    st.datetimes(timezones=st.none() | st.just(dt.UTC)),
    st.sampled_from(Colour),
)

CASES: list[tuple[object, st.SearchStrategy[Any]]] = [
    (int, st.integers()),
    (float, finite_floats),
    (str, texts),
    (bool, st.booleans()),
    (type(None), st.none()),
    (bytes, st.binary()),
    (decimal.Decimal, decimals),
    (dt.datetime, st.datetimes(timezones=st.none() | fixed_offsets)),
    (dt.date, st.dates()),
    (uuid.UUID, st.uuids()),
    (Colour, st.sampled_from(Colour)),
    (Level, st.sampled_from(Level)),
    (list[int], st.lists(st.integers())),
    (dict[str, float], st.dictionaries(texts, finite_floats)),
    (dict[int, str], st.dictionaries(st.integers(), texts)),
    (tuple[int, str], st.tuples(st.integers(), texts)),
    (tuple[int, ...], st.lists(st.integers()).map(tuple)),
    (Optional[int], st.none() | st.integers()),  # noqa: UP045 - the old spelling on purpose
    (int | str, st.integers() | texts),
    (Item, items),
    (Order, orders),
    (list[Order], st.lists(orders, max_size=2)),
    (dict[str, list[Item | None]], st.dictionaries(texts, st.lists(st.none() | items), max_size=2)),
]


@pytest.mark.parametrize(("tp", "strategy"), CASES, ids=[type_name(tp) for tp, _ in CASES])
def test_round_trip(tp: object, strategy: st.SearchStrategy[Any]) -> None:
    """Every supported type decodes to an equal value under its canonical name."""

    @settings(max_examples=60, deadline=None)
    @given(strategy)
    def check(value: Any) -> None:
        envelope = serde.encode(value, tp, "k")
        stored = json.loads(envelope)
        assert set(stored) == {"type", "value"}
        assert stored["type"] == type_name(tp)
        decoded = serde.decode(envelope, tp, "k")
        assert decoded == value
        assert type(decoded) is type(value)

    check()


@settings(max_examples=200, deadline=None)
@given(st.timedeltas(min_value=-dt.timedelta(hours=23), max_value=dt.timedelta(hours=23)))
def test_datetimes_keep_their_offset_or_are_refused(offset: dt.timedelta) -> None:
    """Any fixed offset, even a fraction of a second, comes back exactly or is refused."""
    value = dt.datetime(2000, 1, 1, tzinfo=dt.timezone(offset))
    try:
        envelope = serde.encode(value, dt.datetime, "when:v1")
    except memable.SerializationError as exc:
        assert "when:v1" in str(exc)
        assert offset.microseconds, "only sub-second offsets may be refused"
    else:
        decoded = serde.decode(envelope, dt.datetime, "when:v1")
        assert decoded.utcoffset() == offset


def test_an_offset_python_reads_back_as_utc_is_not_stored_changed() -> None:
    """2000-01-01T00:00:00+00:00:00.000001 is read as UTC by Python 3.11: refused."""
    value = dt.datetime(2000, 1, 1, tzinfo=dt.timezone(dt.timedelta(microseconds=1)))
    if dt.datetime.fromisoformat(value.isoformat()).utcoffset() == value.utcoffset():
        assert serde.decode(serde.encode(value, dt.datetime, "k"), dt.datetime, "k") == value
        return  # a Python that reads it right: stored exactly
    with pytest.raises(memable.SerializationError, match="does not survive ISO 8601"):
        serde.encode(value, dt.datetime, "k")


def test_special_floats_and_decimals() -> None:
    """nan and infinities survive; Decimal keeps every digit."""
    assert math.isnan(serde.decode(serde.encode(math.nan, float, "k"), float, "k"))
    assert serde.decode(serde.encode(-math.inf, float, "k"), float, "k") == -math.inf
    exact = decimal.Decimal("0.10000000000000000000000000001")
    assert serde.decode(serde.encode(exact, decimal.Decimal, "k"), decimal.Decimal, "k") == exact
    nan = serde.decode(
        serde.encode(decimal.Decimal("NaN"), decimal.Decimal, "k"), decimal.Decimal, "k"
    )
    assert nan.is_nan()


def test_canonical_names() -> None:
    """Names are stable strings: unions sorted with None last, aliases normalised."""
    assert type_name(list[int | None]) == "list[int | None]"
    assert type_name(str | int) == type_name(int | str) == "int | str"
    assert type_name(typing.List[int]) == "list[int]"  # noqa: UP006
    assert type_name(Optional[str]) == "str | None"  # noqa: UP045
    assert type_name(typing.Annotated[int, "meta"]) == "int"
    assert type_name(Item) == f"{__name__}.Item"
    assert type_name(tuple[int, ...]) == "tuple[int, ...]"
    assert type_name(typing.Literal["a", 1]) == "Literal['a', 1]"
    with pytest.raises(TypeError, match="string annotation"):
        type_name("int")


def test_type_mismatch_on_decode_names_key_and_types() -> None:
    """A value stored as one type and read as another raises TypeMismatch."""
    envelope = serde.encode(3, int, "price:v1")
    with pytest.raises(memable.TypeMismatch) as caught:
        serde.decode(envelope, decimal.Decimal, "price:v1", "step 'price:v1' of 'o-17'")
    error = caught.value
    assert (error.key, error.expected, error.found) == ("price:v1", "decimal.Decimal", "int")
    assert "step 'price:v1' of 'o-17'" in str(error)
    assert "bump the key" in str(error)


@pytest.mark.parametrize(
    ("value", "tp"),
    [
        ("3", int),
        (True, int),
        ([1, "x"], list[int]),
        (None, str),
        (1.5, int),
        ({"a": "b"}, dict[str, int]),
    ],
)
def test_type_mismatch_on_encode(value: object, tp: object) -> None:
    """A value that is not of the declared type is refused before it is stored."""
    with pytest.raises(memable.TypeMismatch) as caught:
        serde.encode(value, tp, "k")
    assert caught.value.expected == type_name(tp)


@pytest.mark.parametrize(
    "envelope", ["not json", '{"value": 1}', '{"type": 3, "value": 1}', "[]", '{"type": "int"}']
)
def test_corrupted_envelopes(envelope: str) -> None:
    """A corrupted envelope is a SerializationError naming the key, its cause chained."""
    with pytest.raises(memable.SerializationError) as caught:
        serde.decode(envelope, int, "k:v1")
    assert caught.value.key == "k:v1"
    assert caught.value.__cause__ is not None


QUICK_CASES: list[tuple[object, str]] = [
    *[
        (int, f'{{"type":"int","value":{n}}}')
        for n in ("0", "-0", "7", "-12", "01", "1_0", "", "-", "²", "1e3", " 1", "9" * 30)
    ],
    *[
        (str, f'{{"type":"str","value":"{t}"}}')
        for t in ("", "ok", "a b", "\\u00e9", 'a\\"', "\t", "\x00", "\udc80", "é")
    ],
    (str, '{"type":"str","value":"}'),
    (str, '{"type":"str","value":1}'),
    (int, '{"type":"str","value":"1"}'),
    (int, '{"type":"?","value":3}'),
    (bool, '{"type":"bool","value":true}'),
    (bool, '{"type":"bool","value":false}'),
    (bool, '{"type":"bool","value":1}'),
    (None, '{"type":"None","value":null}'),
    (type(None), '{"type":"None","value":null}'),
    (None, '{"type":"None","value":0}'),
    (float, '{"type":"float","value":3}'),
]


@pytest.mark.parametrize(("tp", "envelope"), QUICK_CASES)
def test_quick_decode_is_decode(tp: object, envelope: str) -> None:
    """quick_decode (replay's fast path) gives what decode gives, or leaves the envelope
    to decode (which raises for the corrupt ones)."""
    quick = serde.quick_decode(envelope, tp)
    try:
        value = serde.decode(envelope, tp, "k")
    except memable.MemableError:
        assert quick is NOT_QUICK
    else:
        assert quick is NOT_QUICK or (quick == value and type(quick) is type(value))


def test_quick_decode_reads_plain_envelopes() -> None:
    """The envelopes memable writes of plain ints, strs, bools and None are read quickly;
    not under a converter that changes those values on the way in."""
    for value, tp in [(-12, int), ("ok", str), (True, bool), (None, None)]:
        assert serde.quick_decode(serde.encode(value, tp, "k"), tp) == value
    converter = memable.configure_converter(cattrs.Converter())
    converter.register_structure_hook(str, lambda value, _: value.upper())
    upper = Serde(converter)
    assert upper.quick_decode('{"type":"str","value":"ok"}', str) is NOT_QUICK
    assert upper.decode('{"type":"str","value":"ok"}', str, "k") == "OK"


def test_unserialisable_values() -> None:
    """A value JSON cannot hold is a SerializationError naming the key."""
    with pytest.raises(memable.SerializationError) as caught:
        serde.encode(object(), object, "thing:v1")
    assert caught.value.key == "thing:v1"
    # A lone surrogate is escaped in the JSON text, so even it is stored safely.
    assert serde.decode(serde.encode("\ud800", str, "s"), str, "s") == "\ud800"


def test_the_global_converter_is_never_touched() -> None:
    """memable makes its own cattrs Converter; the global one keeps its hooks."""
    before = cattrs.global_converter.get_unstructure_hook(decimal.Decimal)
    Serde()
    Engine()
    assert cattrs.global_converter.get_unstructure_hook(decimal.Decimal) is before
    assert Serde().converter is not cattrs.global_converter


class Temperature:
    """A class cattrs does not know, stored through a user hook."""

    def __init__(self, kelvin: float) -> None:
        self.kelvin = kelvin

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Temperature) and other.kelvin == self.kelvin

    __hash__ = None  # type: ignore[assignment]


async def test_a_users_converter_is_used() -> None:
    """Engine(converter=...) stores values through the given converter."""
    converter = memable._serde.make_converter()
    converter.register_unstructure_hook(Temperature, lambda t: {"K": t.kelvin})
    converter.register_structure_hook(Temperature, lambda d, _: Temperature(d["K"]))

    async def measure() -> Temperature:
        return Temperature(293.15)

    @memable.workflow("measure")
    async def wf(ctx: Context) -> Temperature:
        return await ctx.step("t:v1", measure)

    async with Engine(workflows=[wf], converter=converter) as engine:
        assert await engine.run(wf, instance_id="m") == Temperature(293.15)
        assert await engine.run(wf, instance_id="m") == Temperature(293.15)  # decoded
