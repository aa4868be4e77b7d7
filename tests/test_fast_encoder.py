"""The ``fast`` extra: containers of JSON's own kinds are written by orjson when it is
installed, by Python's encoder when it is not, and read back the same either way.

Every test runs with each encoder (orjson is installed with the test dependencies, and
taken away by the ``encoder`` fixture); what one writes, the other's process reads.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

import memable
from memable import Context, Engine, _serde
from memable._serde import Serde

from .helpers import StorageFactory


@pytest.fixture(params=["orjson", "stdlib"])
def encoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "orjson":
        assert _serde._fast_dumps() is not None  # installed with the test dependencies
    else:
        monkeypatch.setattr(_serde, "_fast_dumps", lambda: None)
    name: str = request.param
    return name


def round_trip(value: object, tp: object) -> tuple[str, Any]:
    serde = Serde()
    envelope = serde.encode(value, tp, "k:v1")
    return envelope, serde.decode(envelope, tp, "k:v1")


def same(first: object, again: object) -> bool:
    """Equal, of the same types all the way down (NaN equal to NaN)."""
    if type(first) is not type(again):
        return False
    if isinstance(first, list):
        assert isinstance(again, list)
        return len(first) == len(again) and all(map(same, first, again))
    if isinstance(first, dict):
        assert isinstance(again, dict)
        return list(first) == list(again) and all(same(v, again[k]) for k, v in first.items())
    if isinstance(first, float) and math.isnan(first):
        return math.isnan(again)  # type: ignore[arg-type]
    return first == again


FLOATS = [0.0, -0.0, 1.5, 0.1, 1e16, 1e-7, 5e-324, 1.7976931348623157e308, 123456789.0, 2.0**60]
VALUES: list[tuple[object, object]] = [
    ([{"id": 1, "price": 1.5, "tags": ["a", "b"], "ok": True, "note": None}], list[dict[str, Any]]),
    (FLOATS, list[float]),
    ([1, 1.0, True, 0, False], list[Any]),
    ({"big": 2**70, "small": -(2**63), "top": 2**64 - 1}, dict[str, int]),
    (["é\u2028", '\x00\x1f"\\', "😀", "\udc80"], list[str]),
    ({"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "one": 1.0}, dict[str, float]),
    ([[math.nan], {"x": math.inf}], list[Any]),
    ([1.0, math.nan], list[float]),
    ({"deep": [[[[[[[[[[1]]]]]]]]]]}, dict[str, Any]),
]


@pytest.mark.parametrize(("value", "tp"), VALUES, ids=[repr(v)[:30] for v, _ in VALUES])
def test_containers_read_back_as_they_were(encoder: str, value: object, tp: object) -> None:
    """Floats to their last bit (and NaN, infinities), ints beyond 64 bits, control and
    non-ASCII characters, lone surrogates: read back equal and of the same types."""
    envelope, decoded = round_trip(value, tp)
    assert same(value, decoded), (envelope, decoded)
    assert same(value, json.loads(envelope)["value"])  # any JSON reader sees the same


def test_a_nan_is_written_as_python_writes_it_with_either_encoder(encoder: str) -> None:
    """orjson would write NaN as null (read back as None): such a value is written by
    Python's encoder, as before; a top-level float beside a container type too."""
    assert round_trip([1.0, math.nan], list[float])[0] == '{"type":"list[float]","value":[1.0,NaN]}'
    envelope, decoded = round_trip(math.inf, float | list[int])
    assert (envelope, decoded) == ('{"type":"float | list[int]","value":Infinity}', math.inf)
    assert round_trip([math.inf], float | list[float])[1] == [math.inf]


def test_what_one_encoder_wrote_the_other_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Envelopes may differ in spelling (orjson writes UTF-8 and 1e16 where Python writes
    \\u00e9 and 1e+16), never in what they read back as."""
    value = {"name": "é", "floats": FLOATS, "n": [2**63, -1]}
    tp = dict[str, Any]
    fast, _ = round_trip(value, tp)
    monkeypatch.setattr(_serde, "_fast_dumps", lambda: None)
    plain, _ = round_trip(value, tp)
    assert fast != plain  # the spellings do differ...
    serde = Serde()
    assert serde.decode(fast, tp, "k") == serde.decode(plain, tp, "k") == value  # ...not values


async def test_a_structured_result_replays_as_recorded(
    encoder: str, make_storage: StorageFactory
) -> None:
    """A step's list of records (a NaN among them) is what a replay gets."""
    rows = [{"id": i, "price": i * 1.5, "tags": ["é", "b"]} for i in range(50)]
    rows.append({"id": -1, "price": math.nan, "tags": []})
    calls: list[int] = []
    gate = memable.SuspendPoint("go:v1", bool)

    async def load() -> list[dict[str, Any]]:
        calls.append(1)
        return rows

    @memable.workflow("rows")
    async def wf(ctx: Context) -> int:
        got = await ctx.step("load:v1", load)
        await ctx.suspend(gate)
        assert same(rows, got)
        return len(got)

    async with Engine(make_storage(), workflows=[wf]) as engine:
        invocation = await engine.invoke(wf, instance_id="r-1")
        with pytest.raises(memable.WorkflowSuspended):
            await invocation.result()
        await engine.signal(wf, "r-1", gate, True)
        assert await invocation.result(finished=True) == 51
    assert calls == [1]
