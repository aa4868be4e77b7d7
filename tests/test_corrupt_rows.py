"""Rows edited into nonsense (by hand, a tool or a disk) never escape as raw errors.

Each test corrupts a SQLite file with plain ``sqlite3`` and reads it back. Reading a corrupt
instance row (``get_instance``) or the corrupt history of one (``load_history``) raises a
StorageError naming the instance and what is wrong, never the file's path; a listing leaves
the row out and logs it, so one bad row neither hides the others nor stops an engine's start.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

import memable
from memable import Context, Engine
from memable.storage import InstanceRecord, SignalRecord, SQLiteStorage, StepRecord, TimerRecord
from memable.storage._rows import decode_instance

INPUT = '{"type":"int","value":1}'


def record(instance_id: str, *, parent_id: str | None = None) -> InstanceRecord:
    return InstanceRecord(
        instance_id=instance_id,
        workflow="double",
        status="running",
        input=INPUT,
        created_at=1.0,
        updated_at=1.0,
        parent_id=parent_id,
    )


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A database with instances 'good' and 'bad', 'bad' with a step, signal and timer."""
    path = tmp_path / "c.db"
    storage = SQLiteStorage(path)
    storage.open()
    try:
        storage.create_instance(record("good"))
        storage.create_instance(record("bad"))
        storage.commit(
            [
                StepRecord(
                    instance_id="bad",
                    key="k:v1",
                    state="completed",
                    value=INPUT,
                    attempts=1,
                    started_at=1.0,
                    finished_at=2.0,
                ),
                TimerRecord(instance_id="bad", key="t:v1", deadline=5.0, kind="sleep"),
            ]
        )
        storage.deliver_signal(
            SignalRecord(instance_id="bad", key="s:v1", payload=INPUT, created_at=3.0)
        )
    finally:
        storage.close()
    return path


# Each: an assignment in the instances table, and what the error says is wrong.
INSTANCE_CORRUPTIONS = {
    "waiting_on not JSON": ("waiting_on = '[oops'", "waiting_on is '[oops', not JSON"),
    "waiting_on an object": ("waiting_on = '{\"a\": 1}'", "not a JSON list of strings"),
    "waiting_on numbers": ("waiting_on = '[1, 2]'", "not a JSON list of strings"),
    "waiting_on a blob": ("waiting_on = X'5B5D'", "waiting_on is b'[]', not text"),
    "created_at text": ("created_at = 'yesterday'", "created_at is 'yesterday', not a time"),
    "updated_at infinite": ("updated_at = 9e999", "updated_at is inf, not a time"),
    "finished_at out of range": ("finished_at = 1e300", "finished_at is 1e+300, not a time"),
    "status unknown": ("status = 'paused'", "status is 'paused', not one of"),
    "input a blob": ("input = X'FF'", "input is b'\\xff', not text"),
    "message not UTF-8": ("status_message = CAST(X'C328' AS TEXT)", "status_message is"),
    "workflow a blob": ("workflow = X'41'", "workflow is b'A', not text"),
}


@pytest.mark.parametrize("case", list(INSTANCE_CORRUPTIONS))
def test_a_corrupt_instance_row(path: Path, case: str, caplog: pytest.LogCaptureFixture) -> None:
    """get_instance raises StorageError naming the instance and the column, without the
    path; listings leave the row out and log it; the storage goes on working."""
    assignment, problem = INSTANCE_CORRUPTIONS[case]
    with raw(path) as db:
        db.execute(f"UPDATE instances SET {assignment} WHERE instance_id = 'bad'")
    storage = SQLiteStorage(path)
    storage.open()
    try:
        with pytest.raises(memable.StorageError) as caught:
            storage.get_instance("bad")
        message = str(caught.value)
        assert message.startswith("instance 'bad' has a corrupt row: "), message
        assert problem in message, message
        assert str(path.parent) not in message
        with caplog.at_level(logging.ERROR, logger="memable"):
            assert [r.instance_id for r in storage.list_instances()] == ["good"]
            assert [r.instance_id for r in storage.list_instances(status="running")] == ["good"]
        assert "instance 'bad' has a corrupt row" in caplog.text
        assert caplog.records
        assert all(r.levelno == logging.ERROR for r in caplog.records)
        good = storage.get_instance("good")
        assert good is not None
        assert good.status == "running"
    finally:
        storage.close()


def test_a_corrupt_child_fails_the_family_read(path: Path) -> None:
    """Listing the children of an instance is a family read: a corrupt child raises
    instead of being left out (the parent would think it was never started)."""
    storage = SQLiteStorage(path)
    storage.open()
    try:
        storage.commit([record("good/f-0", parent_id="good"), record("good/f-1", parent_id="good")])
        assert len(storage.list_instances(parent_id="good")) == 2
    finally:
        storage.close()
    with raw(path) as db:
        db.execute("UPDATE instances SET created_at = 'x' WHERE instance_id = 'good/f-1'")
    storage.open()
    try:
        with pytest.raises(memable.StorageError, match="instance 'good/f-1' has a corrupt row"):
            storage.list_instances(parent_id="good")
    finally:
        storage.close()


def test_a_row_whose_id_is_not_utf8(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An id stored as bytes that are not UTF-8 is one corrupt row, not a failed listing."""
    with raw(path) as db:
        db.execute(
            "INSERT INTO instances (instance_id, workflow, status, input, created_at, updated_at)"
            " VALUES (CAST(X'FF61' AS TEXT), 'double', 'running', ?, 0.5, 0.5)",
            (INPUT,),
        )
    storage = SQLiteStorage(path)
    storage.open()
    try:
        with caplog.at_level(logging.ERROR, logger="memable"):
            assert [r.instance_id for r in storage.list_instances()] == ["bad", "good"]
        assert "instance '\\udcffa' has a corrupt row: instance_id is" in caplog.text
    finally:
        storage.close()


def test_missing_times_are_corrupt() -> None:
    """A NULL where a time must be (possible in a hand-rebuilt table) is corrupt too."""
    row = ("x", "wf", "running", None, INPUT, None, None, None, "[]", None, 1.0, None)
    with pytest.raises(memable.StorageError, match="created_at is None, not a time"):
        decode_instance(row)


HISTORY_CORRUPTIONS = {
    "step state": ("steps", "state = 'weird'", "step 'k:v1': state is 'weird'"),
    "step attempts": ("steps", "attempts = 'many'", "step 'k:v1': attempts is 'many'"),
    "step value missing": ("steps", "value = NULL", "step 'k:v1': value is None, not text"),
    "step value a blob": ("steps", "value = X'00'", "step 'k:v1': value is b'\\x00'"),
    "step time": ("steps", "started_at = 'noon'", "step 'k:v1': started_at is 'noon'"),
    "step key": ("steps", "key = CAST(X'FF' AS TEXT)", "Could not decode to UTF-8"),
    "signal time": ("signals", "created_at = 'x'", "signal 's:v1': created_at is 'x'"),
    "signal payload": ("signals", "payload = X'00'", "signal 's:v1': payload is b'\\x00'"),
    "timer deadline": ("timers", "deadline = 'later'", "timer 't:v1': deadline is 'later'"),
    "timer kind": ("timers", "kind = 'nap'", "timer 't:v1': kind is 'nap'"),
    "timer fired": ("timers", "fired = 7", "timer 't:v1': fired is 7, not 0 or 1"),
}


@pytest.mark.parametrize("load", ["load_history", "load_replay"])
@pytest.mark.parametrize("case", list(HISTORY_CORRUPTIONS))
def test_a_corrupt_history_row(path: Path, case: str, load: str) -> None:
    """load_history, and load_replay (the engine's read of a history before it replays),
    raise StorageError naming the instance and the bad record."""
    table, assignment, problem = HISTORY_CORRUPTIONS[case]
    with raw(path) as db:
        db.execute(f"UPDATE {table} SET {assignment} WHERE instance_id = 'bad'")
    storage = SQLiteStorage(path)
    storage.open()
    try:
        with pytest.raises(memable.StorageError) as caught:
            getattr(storage, load)("bad")
        message = str(caught.value)
        assert "instance 'bad'" in message, message
        assert problem in message, message
        assert str(path.parent) not in message
        assert storage.load_history("good").steps == []
        assert storage.load_replay("good").values == {}
    finally:
        storage.close()


def test_timers_with_impossible_deadlines(path: Path) -> None:
    """A deadline stored as text or too late for a datetime is never due (and never breaks
    the scheduler); one before year 1 is due at once."""
    storage = SQLiteStorage(path)
    storage.open()
    try:
        assert storage.next_deadline() == 5.0
        assert storage._db is not None
        storage._db.execute("UPDATE timers SET deadline = 'later'")
        assert storage.next_deadline() is None
        storage._db.execute("UPDATE timers SET deadline = 9e999")
        assert storage.next_deadline() is None
        storage._db.execute("UPDATE timers SET deadline = -9e999")
        earliest = storage.next_deadline()
        assert earliest is not None
        assert datetime.fromtimestamp(earliest, UTC).year == 1  # the scheduler can sleep on it
    finally:
        storage.close()


@memable.workflow("double")
async def double_wf(ctx: Context, n: int) -> int:
    async def double(n: int) -> int:
        return 2 * n

    return await ctx.step("double:v1", double, n)


async def test_an_engine_starts_with_a_corrupt_running_instance(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A running instance whose row is corrupt is left alone and logged; the engine starts
    and recovers the others; reading the bad one is a StorageError naming it."""
    with raw(path) as db:
        db.execute("DELETE FROM steps")
        db.execute("UPDATE instances SET waiting_on = 'garbage' WHERE instance_id = 'bad'")
    with caplog.at_level(logging.ERROR, logger="memable"):
        async with Engine(path, workflows=[double_wf]) as engine:
            assert await engine.handle(double_wf, "good").result() == 2
            with pytest.raises(memable.StorageError, match="instance 'bad' has a corrupt row"):
                await engine.state(double_wf, "bad")
            assert [i.instance_id for i in await engine.instances()] == ["good"]
    assert "instance 'bad' has a corrupt row: waiting_on" in caplog.text
    assert str(path.parent) not in caplog.text


async def test_an_engine_starts_with_a_corrupt_history(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A running instance whose step row is corrupt stops with the error logged under its
    id, staying as stored; the engine and the other instances go on."""
    with raw(path) as db:
        db.execute("UPDATE steps SET state = 'weird' WHERE instance_id = 'bad'")
    with caplog.at_level(logging.ERROR, logger="memable"):
        async with Engine(path, workflows=[double_wf]) as engine:
            assert await engine.handle(double_wf, "good").result() == 2
            with anyio.fail_after(10):
                while "corrupt row" not in caplog.text:
                    await anyio.sleep(0.01)
            assert (await engine.state(double_wf, "bad")).status == "running"
    assert "instance 'bad' has a corrupt row: step 'k:v1': state is 'weird'" in caplog.text
    assert str(path.parent) not in caplog.text


@pytest.mark.parametrize("value", ['{"type":"int","value":01}', "garbage", '{"type":"int"}'])
async def test_a_corrupt_recorded_value_fails_its_replay(path: Path, value: str) -> None:
    """A step whose stored envelope is not one (sound as a row, so read on the replay's
    fast path) fails the replay with a SerializationError naming the step; the step
    never runs again."""
    with raw(path) as db:
        db.execute(
            "UPDATE steps SET key = 'double:v1', value = ? WHERE instance_id = 'bad'", (value,)
        )
    async with Engine(path, workflows=[double_wf]) as engine:
        assert await engine.handle(double_wf, "good").result() == 2
        with anyio.fail_after(10), pytest.raises(memable.WorkflowFailed) as caught:
            await engine.handle(double_wf, "bad").result()
    message = str(caught.value)
    assert (
        "memable.SerializationError: the stored envelope of step 'double:v1' of instance"
        " 'bad' is corrupted" in message
    ), message
    with raw(path) as db:
        assert db.execute("SELECT value FROM steps WHERE instance_id = 'bad'").fetchall() == [
            (value,)
        ]


async def test_a_corrupt_due_timer_is_set_aside(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A due timer whose row is corrupt is logged under its instance and set aside (marked
    fired), so it holds back neither the other instances nor the engine's next start."""
    with raw(path) as db:
        db.execute("UPDATE timers SET kind = 'weird'")
        db.execute(
            "UPDATE instances SET status = 'suspended', waiting_on = '[\"t:v1\"]'"
            " WHERE instance_id = 'bad'"
        )
    for start in range(2):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="memable"):
            async with Engine(path, workflows=[double_wf]) as engine:
                assert await engine.handle(double_wf, "good").result() == 2
                with anyio.fail_after(10):
                    while start == 0 and "set aside" not in caplog.text:
                        await anyio.sleep(0.01)
                state = await engine.state(double_wf, "bad")
                assert state.status == "suspended"
                assert state.waiting_on == ("t:v1",)
        if start == 0:
            assert "instance 'bad' has a corrupt row: timer 't:v1': kind is 'weird'" in caplog.text
        else:
            assert "corrupt" not in caplog.text  # set aside once, for good
        assert str(path.parent) not in caplog.text
    with raw(path) as db:
        assert db.execute("SELECT fired FROM timers WHERE instance_id = 'bad'").fetchall() == [(1,)]
