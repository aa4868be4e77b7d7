"""Storage: the protocol on both backends, and what the SQLite adapter promises.

The conformance tests are synchronous and drive a storage directly, without an engine, on
``SQLiteStorage`` and ``MemoryStorage`` alike. The SQLite tests check the file: WAL,
``synchronous``, schema version and migrations, indexes, ownership by one process, and
that no ``sqlite3`` error escapes. The last tests give storages to engines.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest

import memable
from memable import Context, Engine
from memable.storage import (
    InstanceRecord,
    InstanceState,
    InstanceUpdate,
    MemoryStorage,
    Recorded,
    SignalRecord,
    SQLiteStorage,
    StepRecord,
    Storage,
    Suspension,
    TimerRecord,
)
from memable.storage._sqlite import MIGRATIONS, SCHEMA_VERSION

from .helpers import StorageFactory, peek

INPUT = '{"type":"None","value":null}'
SRC = str(Path(memable.__file__).resolve().parents[1])


@pytest.fixture(params=["sqlite", "memory"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Storage]:
    """A factory of (unopened) storages over one database: a new object for SQLite."""
    if request.param == "sqlite":
        path = tmp_path / "s.db"
        return lambda: SQLiteStorage(path)
    shared = MemoryStorage()
    return lambda: shared


@pytest.fixture
def storage(reopen: Callable[[], Storage]) -> Iterator[Storage]:
    """An open storage of each kind."""
    store = reopen()
    store.open()
    yield store
    store.close()


def instance(
    instance_id: str,
    *,
    workflow: str = "wf",
    created: float = 1.0,
    status: InstanceState = "running",
    parent_id: str | None = None,
    error: str | None = None,
    finished_at: float | None = None,
) -> InstanceRecord:
    return InstanceRecord(
        instance_id=instance_id,
        workflow=workflow,
        status=status,
        input=INPUT,
        created_at=created,
        updated_at=created,
        parent_id=parent_id,
        error=error,
        finished_at=finished_at,
    )


def step(
    instance_id: str,
    key: str,
    state: Literal["completed", "dead"] = "completed",
    value: str = '{"type":"int","value":1}',
    attempts: int = 1,
) -> StepRecord:
    return StepRecord(
        instance_id=instance_id,
        key=key,
        state=state,
        value=value if state == "completed" else None,
        error=None if state == "completed" else '{"type":"E","message":"m","traceback":""}',
        attempts=attempts,
        started_at=10.0,
        finished_at=11.5,
    )


@contextlib.contextmanager
def raw(path: Path | str) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection (autocommit) to *path*, closed afterwards."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


def ids(records: list[InstanceRecord]) -> list[str]:
    return [record.instance_id for record in records]


def steps_of(storage: Storage, instance_id: str) -> dict[str, StepRecord]:
    return {record.key: record for record in storage.load_steps(instance_id)}


# -- conformance: instances -------------------------------------------------------------------


def test_create_instance_is_idempotent(storage: Storage) -> None:
    """Creating an existing id returns the stored record unchanged and created=False."""
    first = instance("a")
    assert storage.create_instance(first) == (first, True)
    stored, created = storage.create_instance(instance("a", workflow="other", created=9.0))
    assert (stored, created) == (first, False)
    assert storage.get_instance("a") == first
    assert storage.get_instance("missing") is None
    assert ids(storage.list_instances()) == ["a"]


def test_every_instance_field_round_trips(storage: Storage) -> None:
    """What is stored is what is read back, field for field."""
    full = InstanceRecord(
        instance_id="p/k-0",
        workflow="wf",
        status="suspended",
        input='{"type":"str","value":"x"}',
        created_at=1.25,
        updated_at=2.5,
        parent_id="p",
        output=None,
        error=None,
        status_message="waiting for ünïcode ✓",
        waiting_on=("approval:v1", "timer:v1"),
        finished_at=None,
    )
    storage.create_instance(full)
    assert storage.get_instance("p/k-0") == full
    assert storage.list_instances(parent_id="p") == [full]


def test_list_filters_by_workflow_status_and_parent(storage: Storage) -> None:
    """list_instances filters by workflow, status and parent, alone and combined."""
    storage.create_instance(instance("a", workflow="x", created=1.0))
    storage.create_instance(instance("b", workflow="y", created=2.0))
    storage.create_instance(instance("c", workflow="x", created=3.0, status="failed"))
    storage.commit([instance("a/k-0", workflow="x", created=4.0, parent_id="a")])
    assert ids(storage.list_instances(workflow="x")) == ["a", "c", "a/k-0"]
    assert ids(storage.list_instances(status="failed")) == ["c"]
    assert ids(storage.list_instances(status="running")) == ["a", "b", "a/k-0"]
    assert ids(storage.list_instances(workflow="x", status="running")) == ["a", "a/k-0"]
    assert ids(storage.list_instances(parent_id="a")) == ["a/k-0"]
    assert ids(storage.list_instances(parent_id="b")) == []
    assert storage.list_instances(workflow="nope") == []
    assert storage.list_instances(status="completed") == []


def test_list_is_oldest_first_ties_by_id_and_limited(storage: Storage) -> None:
    """Instances list by creation time (then id), and limit keeps the oldest."""
    storage.create_instance(instance("m", created=2.0))
    storage.create_instance(instance("z", created=1.0))
    storage.create_instance(instance("b", created=2.0))
    storage.create_instance(instance("a", created=3.0))
    assert ids(storage.list_instances()) == ["z", "b", "m", "a"]
    assert ids(storage.list_instances(limit=None)) == ["z", "b", "m", "a"]
    assert ids(storage.list_instances(limit=2)) == ["z", "b"]
    assert ids(storage.list_instances(limit=10)) == ["z", "b", "m", "a"]
    assert storage.list_instances(limit=0) == []


# -- conformance: steps and commit ------------------------------------------------------------


def test_load_steps_returns_every_record_of_one_instance(storage: Storage) -> None:
    """load_steps returns all of an instance's records with every field, and only its own."""
    storage.create_instance(instance("i"))
    storage.create_instance(instance("j"))
    records = [step("i", "a:v1"), step("i", "b:v1", "dead", attempts=3), step("j", "a:v1")]
    storage.commit(records)
    assert sorted(storage.load_steps("i"), key=lambda r: r.key) == records[:2]
    assert storage.load_steps("j") == [records[2]]
    assert storage.load_steps("unknown") == []
    history = storage.load_history("i")
    assert sorted(history.steps, key=lambda r: r.key) == records[:2]
    assert (history.signals, history.timers) == ([], [])


def test_load_replay_reads_what_replay_needs(storage: Storage) -> None:
    """What replay needs of a history: each completed step's envelope and each dead
    letter's attempts and error by key, the signals and timers; a storage's own
    load_replay gives what Recorded.of makes of its load_history."""
    storage.create_instance(instance("i"))
    storage.create_instance(instance("j"))
    records = [step("i", "a:v1"), step("i", "b:v1", "dead", attempts=3), step("j", "a:v1")]
    timer = TimerRecord(instance_id="i", key="t", deadline=10.0, kind="sleep")
    storage.commit([*records, timer])
    signal = SignalRecord(instance_id="i", key="s", payload="{}", created_at=2.0)
    storage.deliver_signal(signal)
    recorded = Recorded.of(storage.load_history("i"))
    assert recorded.values == {"a:v1": '{"type":"int","value":1}'}
    assert recorded.dead == {"b:v1": (3, records[1].error)}
    assert [s.key for s in recorded.signals] == ["s"]
    assert list(recorded.timers) == [timer]
    load = getattr(storage, "load_replay", None)
    if load is not None:
        assert load("i") == recorded
        assert load("unknown") == Recorded(values={}, dead={}, signals=[], timers=[])
    assert Recorded.of(storage.load_history("unknown")) == Recorded(
        values={}, dead={}, signals=[], timers=[]
    )


def test_commit_applies_writes_in_order(storage: Storage) -> None:
    """Writes apply in the order given: a child inserted then updated; the first CAS wins."""
    storage.create_instance(instance("p"))
    storage.commit(
        [
            instance("p/k-0", parent_id="p"),
            InstanceUpdate(instance_id="p/k-0", updated_at=5.0, status_message="one"),
            InstanceUpdate(instance_id="p/k-0", updated_at=6.0, status_message="two"),
            InstanceUpdate(
                instance_id="p", updated_at=7.0, status="completed", only_if=("running",)
            ),
            InstanceUpdate(instance_id="p", updated_at=8.0, status="failed", only_if=("running",)),
            step("p", "s"),
        ]
    )
    child = storage.get_instance("p/k-0")
    assert child is not None
    # The parent finished with the child unfinished: nothing drives it any more.
    assert (child.status, child.status_message, child.updated_at) == (
        "cancelled",
        "its parent completed",
        7.0,
    )
    parent = storage.get_instance("p")
    assert parent is not None
    assert (parent.status, parent.updated_at) == ("completed", 7.0)
    assert list(steps_of(storage, "p")) == ["s"]


def test_a_completed_step_is_never_overwritten_but_a_dead_letter_is(storage: Storage) -> None:
    """Once a result is recorded it stays; a dead letter is replaced by a retry's outcome."""
    storage.create_instance(instance("i"))
    storage.commit([step("i", "done", value='{"type":"int","value":1}')])
    storage.commit([step("i", "done", value='{"type":"int","value":2}')])
    storage.commit([step("i", "done", "dead", attempts=9)])
    assert steps_of(storage, "i")["done"] == step("i", "done", value='{"type":"int","value":1}')

    storage.commit([step("i", "bad", "dead", attempts=1)])
    storage.commit([step("i", "bad", "dead", attempts=4)])
    assert steps_of(storage, "i")["bad"].attempts == 4
    storage.commit([step("i", "bad", value='{"type":"int","value":3}', attempts=2)])
    bad = steps_of(storage, "i")["bad"]
    assert (bad.state, bad.value, bad.error, bad.attempts) == (
        "completed",
        '{"type":"int","value":3}',
        None,
        2,
    )


def test_a_shared_commit_of_steps_says_which_applied(storage: Storage) -> None:
    """Several steps in one commit (a group commit's): a key that completed before keeps
    its result and is reported not applied; the others, before and after it, apply."""
    storage.create_instance(instance("i"))
    storage.commit([step("i", "b", value='{"type":"int","value":1}')])
    applied = storage.commit(
        [
            step("i", "a", value='{"type":"int","value":10}'),
            step("i", "b", value='{"type":"int","value":20}'),
            step("i", "c", value='{"type":"int","value":30}'),
            step("i", "d", "dead", attempts=3),
        ]
    )
    assert applied == [True, False, True, True]
    values = {key: (record.state, record.value) for key, record in steps_of(storage, "i").items()}
    assert values == {
        "a": ("completed", '{"type":"int","value":10}'),
        "b": ("completed", '{"type":"int","value":1}'),
        "c": ("completed", '{"type":"int","value":30}'),
        "d": ("dead", None),
    }
    assert storage.commit([step("i", "e"), step("i", "f")]) == [True, True]


def test_instance_updates_change_only_given_fields_when_only_if_holds(storage: Storage) -> None:
    """An update leaves None fields alone, applies only from only_if states, ignores unknowns."""
    storage.create_instance(instance("i"))
    storage.commit([InstanceUpdate(instance_id="i", updated_at=2.0, status_message="busy")])
    storage.commit([InstanceUpdate(instance_id="i", updated_at=3.0, waiting_on=("k",), only_if=())])
    record = storage.get_instance("i")
    assert record is not None
    assert (record.status, record.status_message, record.waiting_on, record.updated_at) == (
        "running",
        "busy",
        ("k",),
        3.0,
    )
    assert (record.input, record.created_at) == (INPUT, 1.0)
    done = InstanceUpdate(
        instance_id="i",
        updated_at=4.0,
        status="completed",
        output='{"type":"int","value":5}',
        finished_at=4.0,
        only_if=("running",),
    )
    storage.commit([done])
    late = InstanceUpdate(
        instance_id="i", updated_at=5.0, status="failed", error="{}", only_if=("running",)
    )
    storage.commit([late])  # skipped: the instance is no longer running
    record = storage.get_instance("i")
    assert record is not None
    assert (record.status, record.output, record.error, record.finished_at) == (
        "completed",
        '{"type":"int","value":5}',
        None,
        4.0,
    )
    storage.commit([InstanceUpdate(instance_id="ghost", updated_at=1.0, status="failed")])
    assert storage.get_instance("ghost") is None


def test_commit_inserts_timers_and_children_only_once(storage: Storage) -> None:
    """A timer or child already stored is kept as it is when written again."""
    storage.create_instance(instance("p"))
    storage.commit(
        [
            TimerRecord(instance_id="p", key="t", deadline=10.0, kind="sleep"),
            instance("p/k-0", parent_id="p", created=2.0),
        ]
    )
    storage.commit(
        [
            TimerRecord(instance_id="p", key="t", deadline=99.0, kind="sleep"),
            instance("p/k-0", parent_id="p", workflow="other", created=3.0),
        ]
    )
    assert [t.deadline for t in storage.load_history("p").timers] == [10.0]
    child = storage.get_instance("p/k-0")
    assert child is not None
    assert (child.workflow, child.created_at) == ("wf", 2.0)


# -- conformance: restart ---------------------------------------------------------------------


def test_restart_is_a_compare_and_set(storage: Storage) -> None:
    """restart() moves only allowed states, clears the error, drops dead letters, keeps results."""
    storage.create_instance(instance("i", status="failed", error='{"type":"E"}', finished_at=3.0))
    storage.commit([step("i", "ok"), step("i", "bad", "dead")])
    assert storage.restart("i", only_if=["completed", "suspended"], updated_at=4.0) is None
    unchanged = storage.get_instance("i")
    assert unchanged is not None
    assert (unchanged.status, unchanged.error) == ("failed", '{"type":"E"}')
    assert set(steps_of(storage, "i")) == {"ok", "bad"}  # a refused restart deletes nothing

    again = storage.restart("i", only_if=["failed", "running"], updated_at=4.0)
    assert again is not None
    assert (again.status, again.error, again.finished_at, again.updated_at) == (
        "running",
        None,
        None,
        4.0,
    )
    assert storage.get_instance("i") == again
    assert steps_of(storage, "i") == {"ok": step("i", "ok")}
    assert storage.restart("missing", only_if=["failed"], updated_at=5.0) is None
    assert storage.get_instance("missing") is None


def test_restart_also_restarts_failed_children(storage: Storage) -> None:
    """A restarted parent brings back its failed children, leaving completed ones alone."""
    storage.create_instance(instance("p", status="failed", finished_at=3.0))
    storage.commit(
        [
            instance("p/f-0", parent_id="p", status="failed", error="{}", finished_at=2.0),
            instance("p/f-1", parent_id="p", status="completed", finished_at=2.0),
            step("p/f-0", "x", "dead"),
            step("p/f-0", "y"),
            step("p/f-1", "x"),
        ]
    )
    assert storage.restart("p", only_if=["failed"], updated_at=4.0) is not None
    statuses = {r.instance_id: r.status for r in storage.list_instances()}
    assert statuses == {"p": "running", "p/f-0": "running", "p/f-1": "completed"}
    assert set(steps_of(storage, "p/f-0")) == {"y"}
    assert set(steps_of(storage, "p/f-1")) == {"x"}


# -- conformance: signals, timers, cancel, purge ----------------------------------------------


def test_signals_timers_and_claims(storage: Storage) -> None:
    """One transaction stores a payload and claims a suspended instance; exactly once."""
    storage.create_instance(instance("i"))
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
    missing = SignalRecord(instance_id="x", key="k", payload="{}", created_at=0)
    assert storage.deliver_signal(missing) == ("not_found", None)
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
    late = SignalRecord(instance_id="i", key="z", payload="{}", created_at=0)
    assert storage.deliver_signal(late)[0] == "finished"


def test_suspension_is_a_write_of_the_group_commit(storage: Storage) -> None:
    """A Suspension in a commit suspends beside other writes, and is refused (applied
    False, nothing suspended) when what it waits for has come in the same transaction."""
    storage.create_instance(instance("i"))
    storage.create_instance(instance("j"))
    wait_k = Suspension(instance_id="i", waiting_on=("k",), status_message="w", now=1.0)
    [stepped, suspended] = storage.commit([step("j", "s"), wait_k])
    assert (stepped, suspended) == (True, True)
    record = storage.get_instance("i")
    assert record is not None
    assert (record.status, record.waiting_on, record.status_message) == ("suspended", ("k",), "w")
    # Extending adds keys registered since; a payload that came first refuses it.
    extend = Suspension(instance_id="i", waiting_on=("k", "m"), status_message="w", now=2.0,
                        extend=True)  # fmt: skip
    assert storage.commit([extend]) == [True]
    record = storage.get_instance("i")
    assert record is not None
    assert record.waiting_on == ("k", "m")
    payload = SignalRecord(instance_id="j", key="p", payload="{}", created_at=2.0)
    assert storage.deliver_signal(payload)[0] == "stored"
    refused = Suspension(instance_id="j", waiting_on=("p",), status_message=None, now=3.0)
    assert storage.commit([refused]) == [False]
    again = storage.get_instance("j")
    assert again is not None
    assert again.status == "running"


def test_cancel_and_purge_take_the_whole_family(storage: Storage) -> None:
    """Cancelling cascades to children; purging deletes finished families only."""
    storage.create_instance(instance("p"))
    storage.commit([instance("p/k-0", parent_id="p"), step("p", "s"), step("p/k-0", "s")])
    storage.create_instance(instance("q"))
    before, to_run = storage.cancel("p", reason="stop", now=5.0)
    assert to_run is None  # a top-level instance has no parent to run on
    assert before is not None
    assert before.status == "running"
    assert {r.instance_id: r.status for r in storage.list_instances()} == {
        "p": "cancelled",
        "p/k-0": "cancelled",
        "q": "running",
    }
    assert storage.cancel("p", reason="again", now=6.0) == (None, None)
    assert storage.purge(finished_before=5.0) == 0  # finished at 5.0, not before
    assert storage.purge(finished_before=100.0) == 1
    assert ids(storage.list_instances()) == ["q"]
    assert storage.load_steps("p/k-0") == []
    assert storage.load_steps("p") == []


# -- conformance: life cycle ------------------------------------------------------------------


def test_data_survives_close_and_reopen(reopen: Callable[[], Storage]) -> None:
    """What was committed is there after close and a new open (the process restarting)."""
    first = reopen()
    first.open()
    first.create_instance(instance("i"))
    first.commit([step("i", "a"), InstanceUpdate(instance_id="i", updated_at=2.0, status="failed")])
    first.close()
    first.close()  # harmless
    second = reopen()
    second.open()
    try:
        record = second.get_instance("i")
        assert record is not None
        assert record.status == "failed"
        assert steps_of(second, "i") == {"a": step("i", "a")}
    finally:
        second.close()


# -- SQLite -----------------------------------------------------------------------------------


def synchronous_of(storage: SQLiteStorage) -> int:
    """The storage connection's PRAGMA synchronous (a per-connection setting)."""
    assert storage._db is not None
    value: int = storage._db.execute("PRAGMA synchronous").fetchone()[0]
    return value


def test_wal_and_synchronous_full_by_default_normal_on_request(tmp_path: Path) -> None:
    """The file is in WAL mode, synchronous=FULL by default and NORMAL when asked for."""
    path = tmp_path / "s.db"
    storage = SQLiteStorage(path)
    assert storage.synchronous == "full"
    storage.open()
    try:
        assert synchronous_of(storage) == 2  # FULL
        with raw(path) as other:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        storage.close()
    normal = SQLiteStorage(path, synchronous="normal")
    normal.open()
    try:
        assert synchronous_of(normal) == 1  # NORMAL
    finally:
        normal.close()
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStorage(path, synchronous="off")  # type: ignore[arg-type]


def test_schema_version_and_indexes(tmp_path: Path) -> None:
    """The schema is versioned, and lookups by status and by deadline use indexes."""
    path = tmp_path / "s.db"
    storage = SQLiteStorage(path)
    storage.open()
    storage.close()
    with raw(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"instances_by_status", "instances_by_parent", "timers_due"} <= names
        by_status = db.execute(
            "EXPLAIN QUERY PLAN SELECT instance_id FROM instances WHERE status = ?", ("running",)
        ).fetchall()
        assert "instances_by_status" in str(by_status)
        by_deadline = db.execute(
            "EXPLAIN QUERY PLAN SELECT min(deadline) FROM timers WHERE fired = 0"
        ).fetchall()
        assert "timers_due" in str(by_deadline)


def test_an_older_schema_is_migrated_keeping_its_data(tmp_path: Path) -> None:
    """A database of schema version 1 is brought up to date on open, its rows intact."""
    path = tmp_path / "old.db"
    with raw(path) as db:
        MIGRATIONS[0](db)
        db.execute("PRAGMA user_version = 1")
        db.execute(
            "INSERT INTO instances (instance_id, workflow, status, input, created_at, updated_at)"
            " VALUES ('old', 'wf', 'suspended', ?, 1.0, 1.0)",
            (INPUT,),
        )
    storage = SQLiteStorage(path)
    storage.open()
    try:
        record = storage.get_instance("old")
        assert record is not None
        assert (record.workflow, record.status, record.waiting_on) == ("wf", "suspended", ())
        payload = SignalRecord(instance_id="old", key="k", payload="{}", created_at=2.0)
        assert storage.deliver_signal(payload)[0] == "stored"  # the signals table exists now
    finally:
        storage.close()
    with raw(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_a_schema_5_file_opens_and_works(tmp_path: Path) -> None:
    """A file of schema 5 (signals without their trace context) is migrated by an engine:
    its suspended instance and early payload read as before, a signal finishes it, and
    from then on a signal's traceparent is kept."""
    path = tmp_path / "v5.db"
    with raw(path) as db:
        for migration in MIGRATIONS[:5]:
            migration(db)
        db.execute("PRAGMA user_version = 5")
        db.execute(
            "INSERT INTO instances (instance_id, workflow, status, input, waiting_on,"
            " created_at, updated_at) VALUES ('old', 'pair', 'suspended', ?, ?, 1.0, 1.0)",
            (INPUT, '["one:v1"]'),
        )
        db.execute(
            "INSERT INTO signals (instance_id, key, payload, created_at, early)"
            " VALUES ('old', 'two:v1', ?, 1.0, 1)",
            ('{"type":"str","value":"b"}',),
        )
    one, two = memable.SuspendPoint("one:v1", str), memable.SuspendPoint("two:v1", str)

    @memable.workflow("pair")
    async def pair(ctx: Context) -> str:
        return await ctx.suspend(one) + await ctx.suspend(two)

    async with Engine(path, workflows=[pair]) as engine:
        (early,) = (await engine.history(pair, "old")).signals
        assert (early.key, early.state) == ("two:v1", "early")
        await engine.signal(pair, "old", one, "a")
        assert await engine.handle(pair, "old").result() == "ab"
    with raw(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
        assert db.execute("SELECT key, trace FROM signals ORDER BY key").fetchall() == [
            ("one:v1", None),  # no tracer provider: no span, no trace context
            ("two:v1", None),
        ]
    storage = SQLiteStorage(path)
    storage.open()
    try:
        traced = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
        storage.create_instance(instance("new"))
        signal = SignalRecord(instance_id="new", key="k", payload="{}", created_at=2.0,
                              trace=traced)  # fmt: skip
        assert storage.deliver_signal(signal)[0] == "stored"
        assert [s.trace for s in storage.load_history("new").signals] == [traced]
    finally:
        storage.close()


async def test_a_schema_6_file_keeps_its_steps(tmp_path: Path) -> None:
    """A file of schema 6 (steps in a WITHOUT ROWID table) is migrated by an engine: its
    recorded steps, a large result among them, replay without running again, and the
    ``memable_steps`` view still lists them."""
    path = tmp_path / "v6.db"
    rows = [{"id": i, "name": f"item {i}"} for i in range(2000)]
    with raw(path) as db:
        for migration in MIGRATIONS[:6]:
            migration(db)
        db.execute("PRAGMA user_version = 6")
        db.execute(
            "INSERT INTO instances (instance_id, workflow, status, input, waiting_on,"
            " created_at, updated_at) VALUES ('old', 'six', 'suspended', ?, ?, 1.0, 1.0)",
            (INPUT, '["go:v1"]'),
        )
        for key, value in (("big:v1", rows), ("small:v1", 7)):
            tp = "int" if key == "small:v1" else "list[dict[str, Any]]"
            db.execute(
                "INSERT INTO steps (instance_id, key, state, value, attempts, started_at,"
                " finished_at) VALUES ('old', ?, 'completed', ?, 1, 1.0, 1.0)",
                (key, json.dumps({"type": tp, "value": value})),
            )
    go = memable.SuspendPoint("go:v1", int)
    ran: list[str] = []

    async def big() -> list[dict[str, Any]]:
        ran.append("big")
        return []

    async def small() -> int:
        ran.append("small")
        return 0

    @memable.workflow("six")
    async def six(ctx: Context) -> int:
        found = await ctx.step("big:v1", big)
        return len(found) + await ctx.step("small:v1", small) + await ctx.suspend(go)

    async with Engine(path, workflows=[six]) as engine:
        await engine.signal(six, "old", go, 3)
        assert await engine.handle(six, "old").result() == 2000 + 7 + 3
    assert ran == []  # both steps replayed from the migrated table
    with raw(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute(
            "SELECT key, state, value_type FROM memable_steps WHERE instance_id = 'old'"
            " ORDER BY key"
        ).fetchall() == [("big:v1", "completed", "list[dict[str, Any]]"),
                         ("small:v1", "completed", "int")]  # fmt: skip


def test_a_signal_keeps_its_trace_context(make_storage: StorageFactory) -> None:
    """The traceparent of a signal's span is stored with its payload, whether the payload
    claims the instance or comes early, and read back with the history."""
    claiming = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    early = "00-" + "3" * 32 + "-" + "4" * 16 + "-00"

    def check(storage: Storage) -> None:
        storage.create_instance(instance("t"))
        assert storage.suspend("t", waiting_on=["k"], status_message=None, now=1.0)
        first = SignalRecord(instance_id="t", key="k", payload="{}", created_at=2.0,
                             trace=claiming)  # fmt: skip
        assert storage.deliver_signal(first)[0] == "claimed"
        second = SignalRecord(instance_id="t", key="e", payload="{}", created_at=3.0,
                              trace=early)  # fmt: skip
        assert storage.deliver_signal(second)[0] == "stored"
        untraced = SignalRecord(instance_id="t", key="u", payload="{}", created_at=4.0)
        assert storage.deliver_signal(untraced)[0] == "stored"
        signals = {s.key: (s.trace, s.early) for s in storage.load_history("t").signals}
        assert signals == {"k": (claiming, False), "e": (early, True), "u": (None, True)}

    peek(make_storage(), check)


def test_a_schema_from_the_future_is_refused(tmp_path: Path) -> None:
    """A database written by a newer memable is a StorageError naming its version."""
    path = tmp_path / "future.db"
    with raw(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 7}")
    with pytest.raises(memable.StorageError, match=f"schema version {SCHEMA_VERSION + 7}"):
        SQLiteStorage(path).open()
    with raw(path) as db:  # and it is left as it was
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 7


def test_a_file_that_is_not_sqlite_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    """A non-SQLite file is a clear StorageError chaining the sqlite3 error; its bytes stay."""
    path = tmp_path / "notes.db"
    junk = os.urandom(4096)
    path.write_bytes(junk)
    with pytest.raises(memable.StorageError, match="is not a SQLite database") as caught:
        SQLiteStorage(path).open()
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    assert path.read_bytes() == junk


def test_a_path_in_a_missing_directory_is_a_storage_error(tmp_path: Path) -> None:
    """A file that cannot be created is a StorageError, never an OSError or sqlite3 error."""
    with pytest.raises(memable.StorageError) as caught:
        SQLiteStorage(tmp_path / "nope" / "s.db").open()
    assert not isinstance(caught.value, OSError | sqlite3.Error)
    assert not (tmp_path / "nope").exists()


def test_a_directory_as_the_path_is_a_storage_error(tmp_path: Path) -> None:
    """A path that is a directory is a StorageError chaining the error that said so."""
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(memable.StorageError, match="Is a directory") as caught:
        SQLiteStorage(folder).open()
    assert isinstance(caught.value.__cause__, OSError | sqlite3.Error)
    again = SQLiteStorage(folder)  # the failed open kept no lock
    with pytest.raises(memable.StorageError, match="cannot open"):
        again.open()


def test_sqlite_errors_never_escape(tmp_path: Path) -> None:
    """Errors inside the adapter are StorageError with the sqlite3 error as cause."""
    storage = SQLiteStorage(tmp_path / "s.db")
    with pytest.raises(memable.StorageError, match="not open"):
        storage.get_instance("x")
    storage.open()
    try:
        with pytest.raises(memable.StorageError, match="already open"):
            storage.open()
        assert storage._db is not None
        storage._db.execute("DROP TABLE steps")
        with pytest.raises(memable.StorageError) as caught:
            storage.load_steps("x")
        assert isinstance(caught.value.__cause__, sqlite3.Error)
        # It may reach an application's users: it names no file (opening errors do).
        assert "the database" in str(caught.value)
        assert str(tmp_path) not in str(caught.value)
        with pytest.raises(memable.StorageError) as caught:
            storage.commit([step("x", "k")])
        assert isinstance(caught.value.__cause__, sqlite3.Error)
        assert storage.get_instance("x") is None  # the connection still works
    finally:
        storage.close()
    with pytest.raises(memable.StorageError, match="not open"):
        storage.list_instances()


def test_a_commit_that_fails_writes_nothing(tmp_path: Path) -> None:
    """commit() is one transaction: if a write fails, the writes before it are rolled back."""
    storage = SQLiteStorage(tmp_path / "s.db")
    storage.open()
    try:
        storage.create_instance(instance("i"))
        unstorable = StepRecord(
            instance_id="i",
            key="bad",
            state="completed",
            value=object(),  # type: ignore[arg-type]
            attempts=1,
            started_at=0.0,
            finished_at=0.0,
        )
        with pytest.raises(memable.StorageError) as caught:
            storage.commit(
                [
                    step("i", "good"),
                    InstanceUpdate(instance_id="i", updated_at=2.0, status="completed"),
                    unstorable,
                ]
            )
        assert isinstance(caught.value.__cause__, sqlite3.Error)
        assert storage.load_steps("i") == []
        record = storage.get_instance("i")
        assert record is not None
        assert record.status == "running"
        storage.commit([step("i", "good")])  # and the storage goes on working
        assert list(steps_of(storage, "i")) == ["good"]
    finally:
        storage.close()


def test_a_commit_that_fails_at_commit_time_does_not_wedge_the_storage(tmp_path: Path) -> None:
    """A COMMIT that fails is rolled back: later writes work and nothing uncommitted is read."""
    storage = SQLiteStorage(tmp_path / "s.db")
    storage.open()
    try:
        assert storage._db is not None
        # A deferred constraint is checked at COMMIT: an easy way to make COMMIT itself fail,
        # as a full disk or an I/O error can, without SQLite rolling back on its own.
        storage._db.executescript(
            """
            PRAGMA foreign_keys = ON;
            CREATE TABLE target (id TEXT PRIMARY KEY);
            CREATE TABLE source (id TEXT REFERENCES target (id) DEFERRABLE INITIALLY DEFERRED);
            CREATE TRIGGER poison AFTER INSERT ON steps WHEN NEW.key = 'poison'
            BEGIN INSERT INTO source VALUES ('missing'); END;
            """
        )
        storage.create_instance(instance("i"))
        with pytest.raises(memable.StorageError) as caught:
            storage.commit([step("i", "poison")])
        assert isinstance(caught.value.__cause__, sqlite3.Error)
        assert storage.load_steps("i") == []  # not half there
        storage.commit([step("i", "fine")])
        assert list(steps_of(storage, "i")) == ["fine"]
    finally:
        storage.close()
    reopened = SQLiteStorage(tmp_path / "s.db")
    reopened.open()
    try:
        assert list(steps_of(reopened, "i")) == ["fine"]
    finally:
        reopened.close()


def test_one_storage_owns_a_file_in_this_process(tmp_path: Path) -> None:
    """A second SQLiteStorage on an open file is refused; after close() it opens."""
    path = tmp_path / "s.db"
    first = SQLiteStorage(path)
    first.open()
    try:
        with pytest.raises(memable.StorageError, match="in use by another engine"):
            SQLiteStorage(path).open()
        with pytest.raises(memable.StorageError, match="in use"):
            SQLiteStorage(str(path)).open()
        first.create_instance(instance("still-works"))
    finally:
        first.close()
    again = SQLiteStorage(path)
    again.open()
    try:
        assert again.get_instance("still-works") is not None
    finally:
        again.close()


def other_names(real: Path) -> list[Path]:
    """Other names of the existing file *real*: a symlink, '..', a linked folder, a hard link."""
    folder = real.parent
    (folder / "sub").mkdir()
    (folder / "link.db").symlink_to(real)
    (folder / "folder-link").symlink_to(folder, target_is_directory=True)
    os.link(real, folder / "hard.db")
    return [
        real,
        folder / "link.db",
        folder / "sub" / ".." / real.name,
        folder / "folder-link" / real.name,
        folder / "hard.db",
    ]


IN_USE_HERE = f"is in use by another engine \\(process {os.getpid()}\\)"


def test_a_file_in_use_is_refused_under_any_of_its_names(tmp_path: Path) -> None:
    """Every name of an open file is refused (the same path, a symlink, '..', a linked
    folder, a hard link); the owner goes on working; once it closes, any name opens."""
    real = tmp_path / "real.db"
    first = SQLiteStorage(real)
    first.open()
    try:
        names = other_names(real)
        for n, other in enumerate(names):
            with pytest.raises(memable.StorageError, match=IN_USE_HERE):
                SQLiteStorage(other).open()
            first.create_instance(instance(f"i{n}"))
    finally:
        first.close()
    for other in names:
        again = SQLiteStorage(other)
        again.open()
        try:
            assert len(again.list_instances()) == len(names)
        finally:
            again.close()


def test_there_is_no_lock_file_to_delete(tmp_path: Path) -> None:
    """The owner's lock is on the database file itself: deleting the lock file older
    memables kept beside it frees nothing, and none is made."""
    path = tmp_path / "s.db"
    stale = tmp_path / "s.db.lock"
    stale.write_text("1")
    first = SQLiteStorage(path)
    first.open()
    try:
        stale.unlink()
        with pytest.raises(memable.StorageError, match=IN_USE_HERE):
            SQLiteStorage(path).open()
        assert not [name for name in os.listdir(tmp_path) if name.endswith(".lock")]
    finally:
        first.close()


def posix_locks(path: Path) -> list[str]:
    """This process's fcntl (POSIX) locks on *path*'s inode, from /proc/locks: SQLite's."""
    info = os.stat(path)
    inode = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    # Each line starts with its place in the kernel's list ("8:"), which moves whenever
    # another process takes or drops a lock: compare the locks without it.
    return [
        line.split(":", 1)[1].strip()
        for line in Path("/proc/locks").read_text().splitlines()
        if {"POSIX", str(os.getpid()), inode} <= set(line.split())
    ]


def descriptors_of(path: Path) -> int:
    """How many of this process's file descriptors refer to *path*."""
    target = os.path.realpath(path)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == target
    return count


def missing(*args: object, **kwargs: object) -> os.stat_result:
    raise FileNotFoundError(args[0] if args else "")


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/locks (Linux)")
@pytest.mark.parametrize("raced", [False, True], ids=["seen", "raced"])
def test_a_refused_open_keeps_the_owners_sqlite_locks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raced: bool
) -> None:
    """A refused second open in the owner's process closes no descriptor of the file while
    the owner runs: that would drop SQLite's fcntl locks, which belong to the process.

    *raced*: the file is owned by the time it is opened, not yet when it is looked at
    (os.stat is made to miss it): the refused descriptor is left to the owner's close.
    """
    path = tmp_path / "s.db"
    first = SQLiteStorage(path)
    first.open()
    try:
        first.create_instance(instance("i"))
        held = posix_locks(path)
        assert held, "an open WAL connection keeps a shared lock on the file"
        os.link(path, tmp_path / "hard.db")
        with monkeypatch.context() as patch:
            if raced:
                patch.setattr(os, "stat", missing)
            with pytest.raises(memable.StorageError, match=IN_USE_HERE):
                SQLiteStorage(tmp_path / "hard.db").open()
        assert posix_locks(path) == held
        first.create_instance(instance("j"))
    finally:
        first.close()
    assert descriptors_of(path) == 0
    assert posix_locks(path) == []


def python(code: str, *args: str) -> list[str]:
    """The command line of a Python child process running *code*."""
    return [sys.executable, "-c", code, *args]


def child_env() -> dict[str, str]:
    """The environment of a child process importing memable from this source tree."""
    return dict(os.environ, PYTHONPATH=SRC)


OPEN_EACH = (
    "import sys\n"
    "from memable.storage import SQLiteStorage\n"
    "for path in sys.argv[1:]:\n"
    "    storage = SQLiteStorage(path)\n"
    "    try:\n"
    "        storage.open()\n"
    "    except Exception as e:\n"
    "        print(type(e).__name__, e)\n"
    "    else:\n"
    "        print('opened')\n"
    "        storage.close()\n"
)


def open_each(*paths: Path, prefix: Sequence[str] = ()) -> list[str]:
    """Open (and close) a SQLiteStorage on each path in a child process; what each printed."""
    child = subprocess.run(
        [*prefix, *python(OPEN_EACH, *map(str, paths))],
        capture_output=True,
        text=True,
        env=child_env(),
        check=False,
        timeout=60,
    )
    assert child.returncode == 0, child.stdout + child.stderr
    return child.stdout.splitlines()


def test_another_process_cannot_open_a_file_in_use(tmp_path: Path) -> None:
    """A second process gets StorageError naming us, under any name of the file, even
    after this process closed other descriptors of it (which drops fcntl locks)."""
    path = tmp_path / "s.db"
    first = SQLiteStorage(path)
    first.open()
    try:
        names = other_names(path)
        with raw(path) as db:  # SQLite opens and closes a descriptor of its own
            assert db.execute("SELECT count(*) FROM instances").fetchone() == (0,)
        os.close(os.open(path, os.O_RDONLY))
        attempts = open_each(*names)
        assert len(attempts) == len(names)
        for line in attempts:
            assert line.startswith("StorageError "), line
            assert f"is in use by another engine (process {os.getpid()})" in line, line
        first.create_instance(instance("still-works"))
    finally:
        first.close()
    assert open_each(tmp_path / "hard.db", path) == ["opened", "opened"]


def test_a_bind_mount_reaches_the_same_owner(tmp_path: Path) -> None:
    """A process that sees the file bind-mounted under another name (in its own mount
    namespace, where no lock file beside the real path can be seen) is refused.

    Needs root with CAP_SYS_ADMIN for ``unshare``/``mount``: skipped otherwise.
    """
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None or sys.platform != "linux":
        pytest.skip("bind mounts need root and unshare(1)")
    real, mirror = tmp_path / "data" / "s.db", tmp_path / "mirror" / "other.db"
    real.parent.mkdir()
    mirror.parent.mkdir()
    first = SQLiteStorage(real)
    first.open()
    mirror.touch()  # the mount point
    # The mount exists only in the child's private namespace: nothing to clean up here.
    prefix = [
        unshare,
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount --bind "$0" "$1" || exit 77; shift; exec "$@"',
        str(real),
        str(mirror),
    ]
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, check=False, timeout=60)
        if probe.returncode != 0:
            pytest.skip(f"cannot bind-mount here: {probe.stderr.decode(errors='replace')}")
        [line] = open_each(mirror, prefix=prefix)
        assert line.startswith("StorageError "), line
        assert f"is in use by another engine (process {os.getpid()})" in line, line
        first.create_instance(instance("still-works"))
    finally:
        first.close()
    assert open_each(mirror, prefix=prefix) == ["opened"]


def test_a_killed_process_does_not_keep_the_file(tmp_path: Path) -> None:
    """A process that dies holding the file (SIGKILL) leaves it openable, data intact."""
    path = tmp_path / "s.db"
    code = (
        "import sys, time\n"
        "from memable.storage import InstanceRecord, SQLiteStorage\n"
        "s = SQLiteStorage(sys.argv[1])\n"
        "s.open()\n"
        "s.create_instance(InstanceRecord(instance_id='i', workflow='wf', status='running',"
        " input='{}', created_at=1.0, updated_at=1.0))\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    holder = subprocess.Popen(
        python(code, str(path)), stdout=subprocess.PIPE, text=True, env=child_env()
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(memable.StorageError, match="in use"):
            SQLiteStorage(path).open()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
        if holder.stdout is not None:
            holder.stdout.close()
    storage = SQLiteStorage(path)
    storage.open()
    try:
        record = storage.get_instance("i")
        assert record is not None
        assert record.status == "running"
    finally:
        storage.close()


# -- MemoryStorage ----------------------------------------------------------------------------


def test_memory_storage_is_used_by_one_engine_at_a_time() -> None:
    """A MemoryStorage cannot be opened twice at once, but can be reopened after close."""
    storage = MemoryStorage()
    storage.open()
    with pytest.raises(memable.StorageError, match="already in use"):
        storage.open()
    storage.create_instance(instance("kept"))
    storage.close()
    storage.open()
    try:
        assert storage.get_instance("kept") is not None
    finally:
        storage.close()


# -- storages given to engines ----------------------------------------------------------------


@memable.workflow("one")
async def one_wf(ctx: Context) -> int:
    return 1


@pytest.mark.parametrize("as_str", [False, True], ids=["Path", "str"])
async def test_an_engine_on_a_path_creates_the_file(tmp_path: Path, as_str: bool) -> None:
    """Engine('file.db') (str or Path) creates a SQLite file that keeps its instances."""
    path = tmp_path / "made.db"
    target: str | Path = str(path) if as_str else path
    assert not await anyio.Path(path).exists()
    async with Engine(target, workflows=[one_wf]) as engine:
        assert await anyio.Path(path).exists()
        assert await engine.run(one_wf, instance_id="x") == 1
    with raw(path) as db:
        assert db.execute("SELECT instance_id, status FROM instances").fetchall() == [
            ("x", "completed")
        ]


async def test_engines_in_memory_are_private() -> None:
    """Engine() runs on a private in-memory database: two engines share nothing."""
    async with Engine(workflows=[one_wf]) as first, Engine(workflows=[one_wf]) as second:
        assert await first.run(one_wf, instance_id="x") == 1
        assert list(await second.instances()) == []
        assert await second.run(one_wf, instance_id="x") == 1
    async with Engine(":memory:", workflows=[one_wf]) as third:
        assert list(await third.instances()) == []


async def test_a_second_engine_on_a_file_in_use_fails_on_entering(tmp_path: Path) -> None:
    """A second engine on an open file fails with StorageError; the first is unharmed."""
    path = tmp_path / "s.db"
    async with Engine(path, workflows=[one_wf]) as engine:
        second = Engine(SQLiteStorage(path, synchronous="normal"), workflows=[one_wf])
        with pytest.raises(memable.StorageError, match="in use"):
            async with second:
                pytest.fail("the second engine must not start")  # pragma: no cover
        with pytest.raises(memable.NotStarted):
            await second.instances()
        assert await engine.run(one_wf, instance_id="first") == 1
    async with Engine(path, workflows=[one_wf]) as later:  # free again
        assert [i.instance_id for i in await later.instances()] == ["first"]


async def test_a_memory_storage_serves_one_engine_at_a_time() -> None:
    """Two engines on one MemoryStorage at once: the second fails; one after another works."""
    shared = MemoryStorage()
    async with Engine(shared, workflows=[one_wf]) as engine:
        with pytest.raises(memable.StorageError, match="in use"):
            async with Engine(shared, workflows=[one_wf]):
                pytest.fail("the second engine must not start")  # pragma: no cover
        await engine.run(one_wf, instance_id="a")
    async with Engine(shared, workflows=[one_wf]) as engine:
        assert [i.status for i in await engine.instances()] == ["completed"]


def test_an_engine_needs_a_storage() -> None:
    """Engine() refuses what is neither a path nor a Storage."""
    with pytest.raises(TypeError, match="storage"):
        Engine(42)  # type: ignore[arg-type]
