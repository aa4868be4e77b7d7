"""Every example in memable's docstrings runs and shows what it says."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import re
import tempfile
import types

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


def load(name: str) -> types.ModuleType:
    """The module *name* with every name of its ``__all__`` loaded: a package loads some
    on first use, and their examples are its own."""
    module = importlib.import_module(name)
    for public in getattr(module, "__all__", ()):
        getattr(module, public)
    return module


def method_tests(module: types.ModuleType) -> list[doctest.DocTest]:
    """The examples of the methods and properties of classes defined in *module*.

    ``doctest.testmod`` skips them for public classes, whose ``__module__`` is ``memable``
    rather than the module that defines them."""
    finder = doctest.DocTestFinder()
    found = []
    for cls_name, cls in sorted(vars(module).items()):
        if not inspect.isclass(cls):
            continue
        for attr, value in sorted(vars(cls).items()):
            func = getattr(value, "fget", None) or getattr(value, "__func__", value)
            if getattr(func, "__globals__", None) is not vars(module) or not func.__doc__:
                continue
            if cls.__module__ == module.__name__:
                continue  # testmod finds these itself
            qualname = f"{module.__name__}.{cls_name}.{attr}"
            found += finder.find(func, qualname, module=False, globs=dict(vars(module)))
    return [test for test in found if test.examples]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples of each module pass as doctests (run in a scratch directory)."""
    monkeypatch.chdir(tempfile.mkdtemp())
    module = load(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} failing examples in {name}"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in method_tests(module):
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} failing method examples in {name}"


def all_tests() -> list[doctest.DocTest]:
    found = []
    for name in MODULES:
        module = load(name)
        found += doctest.DocTestFinder().find(module) + method_tests(module)
    return [test for test in found if test.examples]


def test_examples_run_what_they_define() -> None:
    """No example defines a coroutine function at top level and leaves it unused: an
    example that never runs its ``async def`` shows nothing and proves nothing."""
    unrun = []
    for test in all_tests():
        source = "".join(example.source for example in test.examples)
        for name in re.findall(r"^async def (\w+)", source, flags=re.MULTILINE):
            if not re.search(rf"\b{name}\b", source.split(f"async def {name}", 1)[1]):
                unrun.append(f"{test.name}: {name}")
    assert unrun == []


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
