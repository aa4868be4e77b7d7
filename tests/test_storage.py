"""Storage: the protocol on both backends, and what the SQLite adapter promises."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import memable
from memable import Context, Engine
from memable.storage import (
    InstanceRecord,
    InstanceUpdate,
    MemoryStorage,
    SignalRecord,
    SQLiteStorage,
    StepRecord,
    Storage,
    TimerRecord,
)
from memable.storage._sqlite import SCHEMA_VERSION


@pytest.fixture(params=["sqlite", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """An open storage of each kind."""
    store: Storage = (
        SQLiteStorage(tmp_path / "s.db") if request.param == "sqlite" else MemoryStorage()
    )
    store.open()
    yield store
    store.close()


def record(
    instance_id: str, *, workflow: str = "wf", created: float = 1.0, **kw: object
) -> InstanceRecord:
    return InstanceRecord(
        instance_id=instance_id,
        workflow=workflow,
        status=kw.pop("status", "running"),  # type: ignore[arg-type]
        input='{"type":"None","value":null}',
        created_at=created,
        updated_at=created,
        **kw,  # type: ignore[arg-type]
    )


def step(instance_id: str, key: str, state: str = "completed", value: str = "v") -> StepRecord:
    return StepRecord(
        instance_id=instance_id,
        key=key,
        state=state,  # type: ignore[arg-type]
        value=value if state == "completed" else None,
        error=None if state == "completed" else '{"type":"E","message":"m","traceback":""}',
        attempts=1,
        started_at=0.0,
        finished_at=0.0,
    )


def test_create_is_idempotent(storage: Storage) -> None:
    """An existing id returns the stored record and created=False."""
    first = record("a")
    assert storage.create_instance(first) == (first, True)
    stored, created = storage.create_instance(record("a", workflow="other"))
    assert (stored, created) == (first, False)
    assert storage.get_instance("a") == first
    assert storage.get_instance("missing") is None


def test_list_filters_orders_and_limits(storage: Storage) -> None:
    """Instances list oldest first, by workflow, status and parent."""
    storage.create_instance(record("b", created=2.0))
    storage.create_instance(record("a", created=1.0, workflow="x"))
    storage.create_instance(record("c", created=3.0, status="failed"))
    storage.commit([record("a/k-0", created=4.0, parent_id="a")])
    ids = [r.instance_id for r in storage.list_instances()]
    assert ids == ["a", "b", "c", "a/k-0"]
    assert [r.instance_id for r in storage.list_instances(workflow="x")] == ["a"]
    assert [r.instance_id for r in storage.list_instances(status="failed")] == ["c"]
    assert [r.instance_id for r in storage.list_instances(limit=2)] == ["a", "b"]
    assert [r.instance_id for r in storage.list_instances(parent_id="a")] == ["a/k-0"]


def test_commit_applies_in_order_and_protects_results(storage: Storage) -> None:
    """A completed step is never overwritten; a dead letter is; only_if guards updates."""
    storage.create_instance(record("i"))
    storage.commit([step("i", "dead", "dead"), step("i", "done", value="1")])
    storage.commit([step("i", "dead", value="2"), step("i", "done", value="overwrite?")])
    steps = {s.key: s for s in storage.load_steps("i")}
    assert (steps["dead"].state, steps["dead"].value) == ("completed", "2")
    assert steps["done"].value == "1"
    storage.commit(
        [
            InstanceUpdate(
                instance_id="i", updated_at=5.0, status="completed", only_if=("running",)
            ),
            InstanceUpdate(instance_id="i", updated_at=6.0, status="failed", only_if=("running",)),
        ]
    )
    stored = storage.get_instance("i")
    assert stored is not None
    assert (stored.status, stored.updated_at) == ("completed", 5.0)


def test_restart_is_a_compare_and_set(storage: Storage) -> None:
    """restart() moves only allowed states, deletes dead letters, keeps results."""
    storage.create_instance(record("i", status="failed", error="{}"))
    storage.commit([step("i", "ok"), step("i", "bad", "dead")])
    assert storage.restart("i", only_if=["completed"], updated_at=2.0) is None
    again = storage.restart("i", only_if=["failed"], updated_at=2.0)
    assert again is not None
    assert (again.status, again.error) == ("running", None)
    assert [s.key for s in storage.load_steps("i")] == ["ok"]


def test_signals_timers_and_claims(storage: Storage) -> None:
    """One transaction stores a payload and claims a suspended instance; exactly once."""
    storage.create_instance(record("i"))
    assert storage.suspend("i", waiting_on=["k"], status_message="w", now=1.0)
    suspended = storage.get_instance("i")
    assert suspended is not None
    assert (suspended.status, suspended.waiting_on) == ("suspended", ("k",))
    payload = SignalRecord(instance_id="i", key="k", payload="{}", created_at=2.0)
    outcome, claimed = storage.deliver_signal(payload)
    assert outcome == "claimed"
    assert claimed is not None
    assert claimed.status == "running"
    assert storage.deliver_signal(payload)[0] == "superseded"
    assert (
        storage.deliver_signal(SignalRecord(instance_id="x", key="k", payload="{}", created_at=0))[
            0
        ]
        == "not_found"
    )
    # A payload present refuses suspension: the caller runs again instead.
    assert not storage.suspend("i", waiting_on=["k"], status_message=None, now=3.0)
    storage.commit([TimerRecord(instance_id="i", key="t", deadline=10.0, kind="timeout")])
    assert storage.next_deadline() == 10.0
    assert storage.suspend("i", waiting_on=["t"], status_message=None, now=3.0)
    assert storage.fire_timers(9.0) == []
    [fired] = storage.fire_timers(10.0)
    assert (fired.instance_id, fired.status) == ("i", "running")
    assert storage.next_deadline() is None
    history = storage.load_history("i")
    assert {s.key: s.timed_out for s in history.signals} == {"k": False, "t": True}
    storage.commit([InstanceUpdate(instance_id="i", updated_at=11.0, status="completed")])
    assert (
        storage.deliver_signal(SignalRecord(instance_id="i", key="z", payload="{}", created_at=0))[
            0
        ]
        == "finished"
    )


def test_cancel_and_purge_take_the_whole_family(storage: Storage) -> None:
    """Cancelling cascades to children; purging deletes finished families only."""
    storage.create_instance(record("p"))
    storage.commit([record("p/k-0", parent_id="p"), step("p", "s"), step("p/k-0", "s")])
    storage.create_instance(record("q"))
    before = storage.cancel("p", reason="stop", now=5.0)
    assert before is not None
    assert before.status == "running"
    assert {r.instance_id: r.status for r in storage.list_instances()} == {
        "p": "cancelled",
        "p/k-0": "cancelled",
        "q": "running",
    }
    assert storage.cancel("p", reason="again", now=6.0) is None
    assert storage.purge(finished_before=5.0) == 0  # finished at 5.0, not before
    assert storage.purge(finished_before=100.0) == 1
    assert [r.instance_id for r in storage.list_instances()] == ["q"]
    assert storage.load_steps("p/k-0") == []


# -- SQLite ------------------------------------------------------------------------------------


def test_wal_full_schema_and_indexes(tmp_path: Path) -> None:
    """WAL with synchronous=FULL by default (NORMAL on request), versioned, indexed."""
    path = tmp_path / "s.db"
    storage = SQLiteStorage(path)
    storage.open()
    try:
        assert storage._db is not None
        assert storage._db.execute("PRAGMA synchronous").fetchone()[0] == 2
        with sqlite3.connect(path) as other:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            names = {
                row[0]
                for row in other.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
            }
        assert {"instances_by_status", "instances_by_parent", "timers_due"} <= names
    finally:
        storage.close()
    normal = SQLiteStorage(path, synchronous="normal")
    normal.open()
    try:
        assert normal._db is not None
        assert normal._db.execute("PRAGMA synchronous").fetchone()[0] == 1
    finally:
        normal.close()
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStorage(path, synchronous="off")  # type: ignore[arg-type]


def test_a_schema_from_the_future_is_refused(tmp_path: Path) -> None:
    """A database written by a newer memable is refused, naming the version."""
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 7}")
    with pytest.raises(memable.StorageError, match=f"schema version {SCHEMA_VERSION + 7}"):
        SQLiteStorage(path).open()


def test_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    """A non-SQLite file is a clear StorageError and is left unchanged."""
    path = tmp_path / "notes.db"
    junk = os.urandom(4096)
    path.write_bytes(junk)
    with pytest.raises(memable.StorageError, match="is not a SQLite database") as caught:
        SQLiteStorage(path).open()
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    assert path.read_bytes() == junk


def test_a_missing_directory(tmp_path: Path) -> None:
    """A path in a directory that does not exist is a StorageError, not a sqlite3 error."""
    with pytest.raises(memable.StorageError):
        SQLiteStorage(tmp_path / "nope" / "s.db").open()


def test_one_engine_owns_a_file(tmp_path: Path) -> None:
    """A second storage on the same file fails clearly, in this process and in another."""
    path = tmp_path / "s.db"
    first = SQLiteStorage(path)
    first.open()
    try:
        with pytest.raises(memable.StorageError, match="in use by another engine"):
            SQLiteStorage(path).open()
        code = (
            "import sys, memable.storage as s\n"
            "try:\n    s.SQLiteStorage(sys.argv[1]).open()\n"
            "except Exception as e:\n    print(type(e).__name__, e); sys.exit(3)\n"
        )
        env = dict(os.environ, PYTHONPATH=str(Path(memable.__file__).parents[1]))
        child = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert child.returncode == 3, child.stderr
        assert "StorageError" in child.stdout
        assert f"process {os.getpid()}" in child.stdout
    finally:
        first.close()
    again = SQLiteStorage(path)
    again.open()
    again.close()


def test_memory_storage_is_used_by_one_engine_at_a_time() -> None:
    """A MemoryStorage can be reused after close, but not shared while open."""
    storage = MemoryStorage()
    storage.open()
    with pytest.raises(memable.StorageError, match="already in use"):
        storage.open()
    storage.close()
    storage.open()
    storage.close()


async def test_engines_on_paths_and_memory(tmp_path: Path) -> None:
    """Engine('file.db') creates the file; Engine() is private in-memory; a 2nd engine fails."""

    @memable.workflow("w")
    async def wf(ctx: Context) -> int:
        return 1

    path = tmp_path / "made.db"
    async with Engine(path, workflows=[wf]) as engine:
        assert path.exists()
        assert await engine.run(wf) == 1
        with pytest.raises(memable.StorageError, match="in use"):
            async with Engine(path, workflows=[wf]):
                pass  # pragma: no cover
    async with Engine(workflows=[wf]) as engine:
        assert await engine.run(wf) == 1


def test_sqlite_errors_never_escape(tmp_path: Path) -> None:
    """Errors inside the adapter come out as StorageError with the sqlite3 cause."""
    storage = SQLiteStorage(tmp_path / "s.db")
    storage.open()
    try:
        assert storage._db is not None
        storage._db.execute("DROP TABLE steps")
        with pytest.raises(memable.StorageError) as caught:
            storage.load_steps("x")
        assert isinstance(caught.value.__cause__, sqlite3.Error)
    finally:
        storage.close()
    with pytest.raises(memable.StorageError, match="not open"):
        storage.get_instance("x")
