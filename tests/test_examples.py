"""The scripts in ``examples/`` run, and run again without repeating work."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = load("order")
    db = str(tmp_path / "orders.db")
    first = await example.main(db)
    assert first == example.Receipt("o-17", approved=True, charge_id="ch-o-17-1250")
    assert "Suspended(waiting_on=('approval:v1',)" in capsys.readouterr().out
    assert await example.main(db) == first  # the finished instance: nothing runs again
    assert capsys.readouterr().out.startswith("Completed(")


async def test_fan_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = load("fan_out")
    db = str(tmp_path / "pages.db")
    assert await example.main(db) == sum(3 + n for n in range(20))
    assert await example.main(db) == 250
    assert capsys.readouterr().out == "250 words in 20 child instances\n" * 2


async def test_reminder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = load("reminder")
    assert await example.main(str(tmp_path / "reminders.db")) == "sent: water the plants"
    out = capsys.readouterr().out
    assert "first engine: Suspended(waiting_on=('wait:v1',)" in out
    assert out.endswith("second engine: completed\nsecond engine: sent: water the plants\n")
