"""A catalogue of bad input: each gets a clear error and leaves storage exactly as it was."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import memable
from memable import Context, Engine, SuspendPoint
from memable.storage import SQLiteStorage

POINT = SuspendPoint("point:v1", int)


@memable.workflow("target")
async def target(ctx: Context, n: int) -> int:
    async def double(n: int) -> int:
        return 2 * n

    value = await ctx.step("double:v1", double, n)
    return value + await ctx.suspend(POINT)


def dump(path: Path) -> list[str]:
    """Every row of the database, as SQL text."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return list(db.iterdump())


async def prepared(path: Path) -> None:
    """One suspended instance 'i' with a recorded step."""
    async with Engine(path, workflows=[target]) as engine:
        await (await engine.invoke(target, 1, instance_id="i")).wait()


BAD_KEYS: list[object] = [
    "",
    "a/b",
    "_reserved",
    "x" * 256,
    "tab\there",
    "nul\x00",
    "del\x7f",
    7,
]

Action = Callable[[Engine], Awaitable[object]]
CASES: dict[str, tuple[Action, type[BaseException], str]] = {
    **{
        f"invoke id {key!r:.20}": (
            lambda e, key=key: e.invoke(target, 1, instance_id=key),  # type: ignore[misc]
            memable.InvalidKey,
            "instance id",
        )
        for key in BAD_KEYS
    },
    "invoke wrong input type": (
        lambda e: e.invoke(target, "1"),  # type: ignore[misc]
        memable.TypeMismatch,
        "int",
    ),
    "invoke other input for id": (
        lambda e: e.invoke(target, 2, instance_id="i"),
        memable.InstanceConflict,
        "different input",
    ),
    "signal wrong payload": (
        lambda e: e.signal(target, "i", POINT, "3"),  # type: ignore[misc]
        memable.TypeMismatch,
        "point:v1",
    ),
    "signal unknown instance": (
        lambda e: e.signal(target, "nope", POINT, 3),
        memable.InstanceNotFound,
        "nope",
    ),
    "signal bad id": (lambda e: e.signal(target, "a//b", POINT, 3), memable.InvalidKey, "a//b"),
    "state unknown": (lambda e: e.state(target, "nope"), memable.InstanceNotFound, "nope"),
    "resume unknown": (lambda e: e.resume(target, "nope"), memable.InstanceNotFound, "nope"),
    "cancel unknown": (lambda e: e.cancel(target, "nope"), memable.InstanceNotFound, "nope"),
    "purge negative": (
        lambda e: e.purge(-__import__("datetime").timedelta(1)),
        ValueError,
        "older_than",
    ),
    "instances negative limit": (lambda e: e.instances(limit=-1), ValueError, "limit"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
async def test_bad_calls_change_nothing(tmp_path: Path, case: str) -> None:
    """A bad call raises a clear error naming what is wrong, and writes nothing."""
    path = tmp_path / "b.db"
    await prepared(path)
    before = dump(path)
    action, error, words = CASES[case]
    async with Engine(path, workflows=[target]) as engine:
        with pytest.raises(error, match=words.replace("(", r"\(")):
            await action(engine)
    assert dump(path) == before


async def test_unusable_results_and_payload_types(tmp_path: Path) -> None:
    """Unstorable results and string annotations are refused with the key named."""

    async def gives_object() -> object:
        return object()

    @memable.workflow("unusable")
    async def wf(ctx: Context) -> str:
        try:
            await ctx.step("obj:v1", gives_object)
        except memable.StepFailed as exc:  # a permanent failure; its cause names the key
            assert isinstance(exc.__cause__, memable.SerializationError)
            return exc.__cause__.key
        return "stored?"  # pragma: no cover

    async with Engine(tmp_path / "u.db", workflows=[wf]) as engine:
        assert await engine.run(wf) == "obj:v1"
    with pytest.raises(TypeError, match="string annotation"):
        SuspendPoint("k", "int")
    with pytest.raises(memable.InvalidKey):
        SuspendPoint("bad/key", int)


async def test_a_corrupted_envelope_in_the_database(tmp_path: Path) -> None:
    """An envelope edited into garbage fails the instance with SerializationError, named."""
    path = tmp_path / "c.db"
    await prepared(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE steps SET value = '{not json' WHERE key = 'double:v1'")
        db.execute("UPDATE instances SET status = 'running'")
    async with Engine(path, workflows=[target]) as engine:
        outcome = await engine.handle(target, "i").wait()
    assert isinstance(outcome, memable.Failed)
    assert outcome.error.type == "memable.SerializationError"
    assert "double:v1" in outcome.error.message
    assert "corrupted" in outcome.error.message


async def test_a_stored_type_name_that_no_longer_matches(tmp_path: Path) -> None:
    """A record whose type name changed is a TypeMismatch naming key, expected and found."""
    path = tmp_path / "t.db"
    await prepared(path)
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE steps SET value = ? WHERE key = 'double:v1'",
            ('{"type":"myapp.Price","value":2}',),
        )
        db.execute("UPDATE instances SET status = 'running'")
    async with Engine(path, workflows=[target]) as engine:
        outcome = await engine.handle(target, "i").wait()
    assert isinstance(outcome, memable.Failed)
    assert isinstance(outcome.exception, memable.TypeMismatch)
    assert (outcome.exception.key, outcome.exception.expected, outcome.exception.found) == (
        "double:v1",
        "int",
        "myapp.Price",
    )


async def test_unknown_workflows_in_storage_are_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Instances of a workflow this engine does not know are logged, not touched."""
    path = tmp_path / "w.db"
    await prepared(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE instances SET status = 'running', workflow = 'retired'")
    before = dump(path)
    with caplog.at_level(logging.WARNING, logger="memable"):
        async with Engine(path, workflows=[target]):
            pass
    assert "unregistered workflow 'retired'" in caplog.text
    assert dump(path) == before


async def test_using_an_engine_outside_its_block(tmp_path: Path) -> None:
    """Before entering and after leaving, every method raises NotStarted."""
    engine = Engine(tmp_path / "n.db", workflows=[target])
    for call in (
        lambda: engine.invoke(target, 1),
        lambda: engine.instances(),
        lambda: engine.signal(target, "i", POINT, 1),
        lambda: engine.resume(target, "i"),
    ):
        with pytest.raises(memable.NotStarted, match="async with"):
            await call()
    async with engine:
        pass
    with pytest.raises(memable.NotStarted, match="closed"):
        await engine.invoke(target, 1)
    with pytest.raises(memable.NotStarted):
        engine.subscribe(target, "i")


def test_bad_engine_arguments(tmp_path: Path) -> None:
    """Wrong constructor arguments are refused at once, naming the value."""
    with pytest.raises(TypeError, match="storage"):
        Engine(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shutdown_timeout"):
        Engine(shutdown_timeout=-1)
    with pytest.raises(TypeError, match="RetryPolicy"):
        Engine(retry=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attempts must be at least 1, not 0"):
        memable.RetryPolicy.fixed(0, 1.0)
    with pytest.raises(ValueError, match="delay must not be negative"):
        memable.RetryPolicy.fixed(2, -1.0)
    with pytest.raises(TypeError, match="exception types"):
        memable.RetryPolicy.fixed(2, 0, on=int)  # type: ignore[arg-type]


async def test_a_database_that_is_not_sqlite_or_from_the_future(tmp_path: Path) -> None:
    """Engines refuse such files with StorageError and leave them as they were."""
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(memable.StorageError, match="not a SQLite database"):
        async with Engine(junk):
            pass  # pragma: no cover
    assert junk.read_bytes() == b"not a database at all" * 100
    future = tmp_path / "future.db"
    with sqlite3.connect(future) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(memable.StorageError, match="schema version 99"):
        async with Engine(SQLiteStorage(future)):
            pass  # pragma: no cover


READ_ONLY_PROBE = """
import sys
import anyio
import memable
from memable import Context, Engine

@memable.workflow("w")
async def w(ctx: Context, n: int) -> int:
    async def double(n: int) -> int:
        return 2 * n
    return await ctx.step("double:v1", double, n)

async def main() -> None:
    try:
        async with Engine(sys.argv[1], workflows=[w]) as engine:
            print("ran", await engine.run(w, 1))
    except memable.StorageError as exc:
        print("StorageError:", exc)

anyio.run(main, backend=sys.argv[2])
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_read_only_database_directory(tmp_path: Path, backend: str) -> None:
    """A new or an existing database in a directory nobody may write to: a clear StorageError.

    The probe runs in a subprocess: as root, stripped of every capability by ``setpriv`` so the
    directory's mode applies to it as to any user.
    """
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:  # pragma: no cover - util-linux is part of every Debian
            pytest.skip("running as root without setpriv: permissions cannot be enforced")
        prefix = [setpriv, "--inh-caps=-all", "--bounding-set=-all"]
    probe = tmp_path / "probe.py"
    probe.write_text(READ_ONLY_PROBE)
    src = str(Path(memable.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def attempt(db: Path) -> str:
        command = [*prefix, sys.executable, str(probe), str(db), backend]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    existing, fresh = tmp_path / "existing", tmp_path / "fresh"
    existing.mkdir()
    fresh.mkdir()
    assert attempt(existing / "x.db") == "ran 2\n"
    before = dump(existing / "x.db")
    for directory in (existing, fresh):
        directory.chmod(0o555)
    try:
        out_fresh = attempt(fresh / "x.db")
        out_existing = attempt(existing / "x.db")
    finally:
        for directory in (existing, fresh):
            directory.chmod(0o755)
    assert out_fresh.startswith("StorageError:"), out_fresh
    assert "x.db" in out_fresh, out_fresh
    assert "Permission denied" in out_fresh, out_fresh
    assert out_existing.startswith("StorageError:"), out_existing
    assert "x.db" in out_existing, out_existing
    assert "readonly database" in out_existing, out_existing
    assert not (fresh / "x.db").exists()
    assert dump(existing / "x.db") == before
