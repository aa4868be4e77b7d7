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
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

import memable
from memable import Context, Engine, SuspendPoint
from memable._keys import check_key, check_text
from memable.storage import SQLiteStorage

from .helpers import StorageFactory

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
    "\ud800",
    "lone\udfffsurrogate",
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


LONE = "k\ud800"  # a lone surrogate: a str that UTF-8 (so SQLite and JSON) cannot encode


async def test_unencodable_keys_are_refused_on_every_storage(make_storage: StorageFactory) -> None:
    """Keys, names and ids with a lone surrogate are InvalidKey at the call, on SQLite and
    in memory alike, and nothing is stored."""
    with pytest.raises(memable.InvalidKey, match=r"workflow name .* lone surrogate"):
        memable.workflow(LONE)
    with pytest.raises(memable.InvalidKey, match=r"suspend point key .* lone surrogate"):
        SuspendPoint(LONE, int)

    async def one() -> int:
        return 1

    @memable.workflow("keys")
    async def keys(ctx: Context) -> list[str]:
        refused: list[str] = []
        for attempt in (
            lambda: ctx.step(LONE, one),
            lambda: ctx.step_sync("s\udfff", int),
            lambda: ctx.sleep("t\udc00", timedelta(seconds=1)),
        ):
            try:
                await attempt()
            except memable.InvalidKey as exc:
                refused.append(str(exc))
        return refused

    async with Engine(make_storage(), workflows=[keys, target]) as engine:
        for bad in (LONE, "\udc80", "ok/k\ud800-0"):
            with pytest.raises(memable.InvalidKey, match="instance id"):
                await engine.invoke(target, 1, instance_id=bad)
            with pytest.raises(memable.InvalidKey, match="instance id"):
                await engine.state(target, bad)
            with pytest.raises(memable.InvalidKey, match="instance id"):
                await engine.signal(target, bad, POINT, 1)
        assert list(await engine.instances()) == []
        refused = await engine.run(keys, instance_id="k")
        assert len(refused) == 3, refused
        assert all("lone surrogate" in message for message in refused), refused


def test_check_text_refuses_what_utf8_cannot_encode() -> None:
    """check_text (for status messages and reasons) passes any encodable str through."""
    assert check_text("waiting for ünïcode ✓ \x00\n", "status message") == (
        "waiting for ünïcode ✓ \x00\n"
    )
    with pytest.raises(ValueError, match=r"status message 'abc\\ud800' .*\(character 3"):
        check_text("abc\ud800", "status message")
    with pytest.raises(TypeError, match="cancel reason must be a str, not int"):
        check_text(5, "cancel reason")


@given(st.text(alphabet=st.characters(codec=None), max_size=20))
def test_keys_and_text_are_valid_exactly_when_utf8_encodes_them(text: str) -> None:
    """For any str: check_text accepts it iff UTF-8 encodes it; so does check_key, for
    keys that pass its other rules."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        encodable = False
    else:
        encodable = True
    if encodable:
        assert check_text(text, "text") == text
    else:
        with pytest.raises(ValueError, match="lone surrogate"):
            check_text(text, "text")
    key = "k" + text.replace("/", "").replace("_", "")
    key = "".join(c for c in key if c.isprintable() or not c.isascii())[:255]
    try:
        check_key(key)
    except memable.InvalidKey as exc:
        assert not encodable or "control characters" in str(exc), exc
    else:
        assert encodable


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


def unprivileged() -> list[str]:
    """A command prefix that makes file modes apply to the child process.

    As root, ``setpriv`` strips every capability, so the modes bind root as any user.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:  # pragma: no cover - util-linux is part of every Debian
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    return [setpriv, "--inh-caps=-all", "--bounding-set=-all"]


def run_probe(tmp_path: Path, code: str, *args: str) -> str:
    """Run *code* unprivileged in a child process importing memable from this tree."""
    probe = tmp_path / "probe.py"
    probe.write_text(code)
    src = str(Path(memable.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [*unprivileged(), sys.executable, str(probe), *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_read_only_database_directory(tmp_path: Path, backend: str) -> None:
    """A new or an existing database in a directory nobody may write to: a clear StorageError.

    The probe runs in a subprocess: as root, stripped of every capability by ``setpriv`` so the
    directory's mode applies to it as to any user.
    """

    def attempt(db: Path) -> str:
        return run_probe(tmp_path, READ_ONLY_PROBE, str(db), backend)

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


RECOVERY_PROBE = """
import sys
import anyio
import memable
from memable import Context, Engine, SuspendPoint

@memable.workflow("target")
async def target(ctx: Context, n: int) -> int:
    async def double(n: int) -> int:
        print("step body ran", flush=True)
        return 2 * n
    value = await ctx.step("double:v1", double, n)
    return value + await ctx.suspend(SuspendPoint("point:v1", int))

async def main() -> None:
    try:
        async with Engine(sys.argv[1], workflows=[target]):
            print("started", flush=True)
    except memable.StorageError as exc:
        print("StorageError:", exc)

anyio.run(main)
"""

CRASH_AFTER_A_WRITE = """
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("UPDATE instances SET updated_at = updated_at")
os._exit(0)  # as a killed engine: its -wal and -shm files stay behind
"""


@pytest.mark.parametrize("what", ["file", "directory", "wal and shm"])
def test_a_read_only_database_is_refused_before_recovery_runs_a_step(
    tmp_path: Path, what: str
) -> None:
    """A database memable cannot write — the file, its directory, or the -wal and -shm files
    a crashed engine left — is a StorageError on entering the engine, before recovery runs
    the body of a step whose result it could not record; the file is left as it was."""
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "x.db"
    anyio.run(prepared, path)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("DELETE FROM steps")  # crashed before recording its step
        db.execute("UPDATE instances SET status = 'running'")
    before = dump(path)
    control = tmp_path / "control.db"  # a writable copy: there, recovery runs the step
    shutil.copyfile(path, control)
    ran = run_probe(tmp_path, RECOVERY_PROBE, str(control))
    assert sorted(ran.splitlines()) == ["started", "step body ran"], ran
    if what == "wal and shm":
        crash = subprocess.run(
            [sys.executable, "-c", CRASH_AFTER_A_WRITE, str(path)], check=True, timeout=60
        )
        assert crash.returncode == 0
        locked = [Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert all(p.exists() for p in locked)
    else:
        locked = [folder if what == "directory" else path]
    modes = {p: p.stat().st_mode for p in locked}
    for p in locked:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        out = run_probe(tmp_path, RECOVERY_PROBE, str(path))
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    assert out.startswith("StorageError:"), out
    assert "x.db" in out, out  # the engine's owner learns which file
    assert "step body ran" not in out
    assert dump(path) == before
