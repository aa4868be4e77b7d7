"""Every code block of the documentation runs, on asyncio and on trio.

The ```` ```python ```` blocks of a page run in order in one module, like a script a reader
pastes together; ``anyio.run(main)`` in them runs on the backend under test (unless the
block names one). A block ```` ```{code-block} python ```` with ``:caption: test_….py`` is a
complete test module: it is run by pytest (``pytester``) with memable's plugin.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from .docs_blocks import DOCS, README, blocks, documented_test_modules, scripts

SRC = Path(__file__).parent.parent / "src"

PAGES = sorted(p.name for p in DOCS.glob("*.md") if scripts(p))


def forced_run(backend: str) -> Callable[..., Any]:
    real_run = anyio.run

    def run(func: Callable[..., Any], *args: Any, backend: str = backend, **kwargs: Any) -> Any:
        return real_run(func, *args, backend=backend, **kwargs)

    return run


def run_page(path: Path, backend: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(anyio, "run", forced_run(backend))
    name = f"docs_{path.stem.replace('-', '_')}"
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    for code, line in scripts(path):
        compiled = compile("\n" * (line) + code, str(path), "exec")
        exec(compiled, module.__dict__)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("page", PAGES)
def test_page_runs(
    page: str, backend: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The page's Python blocks run, in order, without an error."""
    run_page(DOCS / page, backend, monkeypatch, tmp_path)


def test_every_page_with_code_is_run() -> None:
    """No page hides Python in a block this test does not run (``py``, ``python3``…)."""
    unrun = [
        f"{path.name}:{line} ({lang})"
        for path in [*DOCS.glob("*.md"), README]
        for lang, opts, _, line in blocks(path)
        if lang in {"py", "python3", "pycon", "ipython"}
        or (lang == "python" and opts and not opts.get("caption", "").startswith("test_"))
    ]
    assert unrun == []


@pytest.mark.parametrize(
    ("page", "name"),
    [(p.name, name) for p in sorted(DOCS.glob("*.md")) for name, _ in documented_test_modules(p)],
)
def test_documented_test_module(
    page: str, name: str, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A complete test module shown in the docs passes under memable's pytest plugin."""
    code = dict(documented_test_modules(DOCS / page))[name]
    pytester.makepyfile(**{name.removesuffix(".py"): code})
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # only the plugins named
    result = pytester.runpytest(
        "-p",
        "anyio",
        "-p",
        "memable.testing.pytest_plugin",
        "-W",
        "error",
        # The plugin may have been imported already (by tests that import every module).
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",
        "-q",
    )
    outcomes = result.parseoutcomes()
    assert result.ret == 0, result.stdout.str()
    kinds = 3 if os.environ.get("MEMABLE_TEST_POSTGRES") else 2
    tests = code.count("\nasync def test_") + code.count("\ndef test_")
    assert outcomes.get("passed", 0) == tests * kinds * 2  # storages x backends
    assert set(outcomes) <= {"passed", "warnings"}


def console_output(path: Path, command: str) -> list[str]:
    """The lines a ``console`` block of *path* shows after ``$ {command}``."""
    for lang, _, code, _ in blocks(path):
        lines = code.splitlines()
        if lang == "console" and lines and lines[0] == f"$ {command}":
            return [line for line in lines[1:] if line != "Killed"]  # the shell says Killed
    raise AssertionError(f"no console block runs {command!r} in {path.name}")


def timeless(lines: list[str]) -> list[str]:
    """*lines* with times and durations masked, and the table columns they set."""
    masked = (re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|\b\d+ ms\b", "T", line) for line in lines)
    return [" ".join(line.split()) for line in masked]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_getting_started_crash_and_recover(backend: str, tmp_path: Path) -> None:
    """Getting started's script, saved as shop.py, is killed by ``--crash`` and finishes
    when run again, printing exactly what the page shows."""
    page = DOCS / "getting-started.md"
    code, _ = scripts(page)[0]
    assert code.count("anyio.run(main)") == 1
    (tmp_path / "shop.py").write_text(
        code.replace("anyio.run(main)", f"anyio.run(main, backend={backend!r})")
    )
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def shop(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "shop.py", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    crashed = shop("--crash")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert crashed.stdout.splitlines() == console_output(page, "python shop.py --crash")
    shown = subprocess.run(
        [sys.executable, "-m", "memable", "show", "order-o-17", "--db", "shop.db"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "running" in shown.stdout
    assert "price:v1" in shown.stdout
    assert "charge:v1" in shown.stdout
    assert "ship:v1" not in shown.stdout  # it died while the body ran
    documented = console_output(page, "python -m memable show order-o-17 --db shop.db")
    assert timeless(shown.stdout.splitlines()) == timeless(documented)
    recovered = shop()
    assert recovered.returncode == 0, recovered.stderr
    assert recovered.stdout.splitlines() == console_output(page, "python shop.py")
    again = shop()
    assert again.stdout.splitlines() == console_output(page, "python shop.py")[-1:]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_operations_command_line(
    backend: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The command-line session of the operations page, run after the page's blocks,
    prints what the page shows (times masked)."""
    page = DOCS / "operations.md"
    run_page(page, backend, monkeypatch, tmp_path)
    session = console_output(page, "memable --db orders.db list")
    commands: list[tuple[str, list[str]]] = [("memable --db orders.db list", [])]
    for line in session:
        if line.startswith("$ "):
            commands.append((line.removeprefix("$ "), []))
        else:
            commands[-1][1].append(line)
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env["COLUMNS"] = "200"
    for command, shown in commands:
        argv = shlex.split(command)
        assert argv[0] == "memable"
        done = subprocess.run(
            [sys.executable, "-m", "memable", *argv[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, (command, done.stderr)
        if shown:
            assert timeless(done.stdout.splitlines()) == timeless(shown), command
