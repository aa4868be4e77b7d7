"""What ``import memable`` and a first ``Engine()`` load, and that every public name still
resolves when it is loaded on first use (each check runs in a fresh interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import memable
import memable.storage

SRC = Path(__file__).resolve().parents[1] / "src"

#: Loaded only when a workflow runs, a storage opens or an instance is inspected.
DEFERRED = [
    "anyio.lowlevel",
    "cattrs",
    "logging",
    "memable._context",
    "memable._fanout",
    "memable._info",
    "memable._inspect",
    "memable._journal",
    "memable._records",
    "memable._retry",
    "memable._settled",
    "memable._steps",
    "memable.storage._sqlite",
    "sqlite3",
]


def fresh(code: str) -> object:
    """Run *code* in a fresh interpreter; return the JSON it prints last."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_and_a_first_engine_leave_the_rest_unloaded() -> None:
    """``import memable`` + ``Engine()`` loads none of what only running or inspecting
    needs (compared with what the interpreter had loaded before)."""
    loaded = fresh(
        """
        import json, sys
        import anyio
        before = set(sys.modules)
        import memable
        memable.Engine()
        print(json.dumps(sorted(set(sys.modules) - before)))
        """
    )
    assert isinstance(loaded, list)
    assert [name for name in DEFERRED if name in loaded] == []
    assert "memable._engine" in loaded


@pytest.mark.parametrize(
    ("package", "name"),
    [("memable", name) for name in memable.__all__]
    + [("memable.storage", name) for name in memable.storage.__all__],
)
def test_every_public_name_imports_first_in_a_fresh_process(package: str, name: str) -> None:
    """``from memable import X`` works for every name of ``__all__``, each one first in a
    fresh interpreter; it is what the package gives, is listed by ``dir()`` (the storage
    backends are not, as before: the docs list them apart), and says it is public."""
    result = fresh(
        f"""
        import json
        from {package} import {name}
        import {package} as package
        assert {name} is getattr(package, {name!r})
        assert {name!r} in dir(package) or {name!r}.endswith("Storage")
        print(json.dumps(getattr({name}, "__module__", None) if isinstance({name}, type) else None))
        """
    )
    assert result in (None, package)


def test_lazy_names_are_the_classes_the_engine_uses() -> None:
    """A name loaded on first use is the very class the engine's results are made of,
    and it says ``memable`` even when the engine loaded it first."""
    result = fresh(
        """
        import json
        import anyio, memable

        @memable.workflow("w")
        async def w(ctx: memable.Context) -> int:
            return 1

        async def main() -> list[str]:
            async with memable.Engine(workflows=[w]) as engine:
                await engine.run(w, instance_id="i")
                page = await engine.instances()
                history = await engine.history(w, "i")
            import memable._inspect as inspect
            assert type(page) is inspect.Page and type(history) is inspect.History
            names = [type(page).__module__, type(history).__module__, repr(history)[:8]]
            assert memable.Page is type(page) and memable.History is type(history)
            return names

        print(json.dumps(anyio.run(main)))
        """
    )
    assert result == ["memable", "memable", "History("]


def test_attribute_errors_still_name_the_package() -> None:
    with pytest.raises(AttributeError, match=r"module 'memable' has no attribute 'nope'"):
        getattr(memable, "nope")  # noqa: B009
    with pytest.raises(AttributeError, match=r"module 'memable\.storage' has no attribute"):
        getattr(memable.storage, "nope")  # noqa: B009
