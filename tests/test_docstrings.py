"""Every example in memable's docstrings runs and shows what it says."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import tempfile

import pytest

import memable

MODULES = sorted(
    {"memable"}
    | {
        name
        for _, name, _ in pkgutil.walk_packages(memable.__path__, "memable.")
        if not name.endswith(("__main__", "_cli", "_demo"))
    }
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples of each module pass as doctests (run in a scratch directory)."""
    monkeypatch.chdir(tempfile.mkdtemp())
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} failing examples in {name}"


def test_public_objects_have_examples() -> None:
    """Every public class and function of memable has an example in its docstring."""
    finder = doctest.DocTestFinder()
    missing = [
        name
        for name in memable.__all__
        if (obj := getattr(memable, name)) is not None
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and not any(test.examples for test in finder.find(obj, name))
    ]
    assert missing == []
