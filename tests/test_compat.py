"""A database written by memable's first storage format still opens and finishes its work.

``tests/data/v1.db`` was written once by ``tests/data/make_v1_db.py`` (see there) and is
never regenerated: each test opens a copy with today's code and the same workflows
(``tests/data/v1_workflows.py``), and drives one of its instances to its end. Only the
public API is used, so the test outlives any rewrite of the engine or the storage.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest

import memable
from memable import Engine, Workflow
from memable.testing import ManualClock
from tests.data import v1_workflows as v1

V1_DB = Path(__file__).parent / "data" / "v1.db"

#: The test's clock starts half an hour after the generator's: before every deadline.
STARTED_AT = v1.GENERATED_AT + timedelta(minutes=30)

#: What the generator left, by instance id.
V1_STATES = {
    v1.DONE: "completed",
    v1.CRASHED: "running",
    v1.SUSPENDED: "suspended",
    v1.TIMER: "suspended",
    v1.DEADLINE: "suspended",
    v1.EARLY_RUNNING: "running",
    v1.EARLY_SUSPENDED: "suspended",
    v1.FAILED: "failed",
    v1.FAN: "suspended",
    f"{v1.FAN}/label:v1-0": "completed",
    f"{v1.FAN}/label:v1-1": "suspended",
    v1.CANCELLED: "cancelled",
}


@attrs.frozen(kw_only=True)
class Opened:
    engine: Engine
    wfs: v1.V1Workflows
    clock: ManualClock


@pytest.fixture
def v1_copy(tmp_path: Path) -> Path:
    """A copy of v1.db to open (the committed file is never written)."""
    copy = tmp_path / "v1.db"
    shutil.copyfile(V1_DB, copy)
    return copy


@contextlib.asynccontextmanager
async def opened(path: Path, *, resume_on_start: bool = True) -> AsyncIterator[Opened]:
    """An engine on *path* with the v1 workflows; ``flaky:v1`` now succeeds."""
    wfs = v1.make_workflows(flaky_fails=False)
    clock = ManualClock(STARTED_AT)
    async with Engine(
        path, workflows=wfs.all, clock=clock, resume_on_start=resume_on_start
    ) as engine:
        yield Opened(engine=engine, wfs=wfs, clock=clock)


def receipt(order_id: str, total: str) -> v1.Receipt:
    return v1.Receipt(
        order_id=order_id,
        total=Decimal(total),
        lines=(f"{order_id} x1", f"{order_id} x2"),
        charged_at=datetime.fromisoformat("2026-01-02T00:00:15+00:00"),
    )


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
        return version
    finally:
        db.close()


def test_v1_db_is_schema_2_in_one_file(tmp_path: Path) -> None:
    """The committed file is self-contained (no WAL beside it) and at schema version 2."""
    for suffix in ("-wal", "-shm", ".lock"):
        assert not V1_DB.with_name(V1_DB.name + suffix).exists()
    copy = tmp_path / "v1.db"
    shutil.copyfile(V1_DB, copy)
    assert user_version(copy) == 2  # what memable's first storage format wrote
    db = sqlite3.connect(copy)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


async def test_every_instance_reads(v1_copy: Path) -> None:
    """Every instance is listed and its state reads as the generator left it."""
    async with opened(v1_copy, resume_on_start=False) as o:
        wfs = o.wfs
        listed = {i.instance_id: i for i in await o.engine.instances()}
        assert {iid: info.status for iid, info in listed.items()} == V1_STATES
        owners: dict[str, Workflow[Any, Any]] = {
            v1.DONE: wfs.order,
            v1.CRASHED: wfs.order,
            v1.SUSPENDED: wfs.approval,
            v1.TIMER: wfs.timer,
            v1.DEADLINE: wfs.deadline,
            v1.EARLY_RUNNING: wfs.pay,
            v1.EARLY_SUSPENDED: wfs.pay,
            v1.FAILED: wfs.flaky,
            v1.FAN: wfs.fan,
            f"{v1.FAN}/label:v1-0": wfs.fan,  # a child is reached through its root
            f"{v1.FAN}/label:v1-1": wfs.fan,
            v1.CANCELLED: wfs.approval,
        }
        for instance_id, wf in owners.items():
            info = await o.engine.state(wf, instance_id)
            assert info.status == V1_STATES[instance_id], instance_id
            assert info.created_at == v1.GENERATED_AT
            assert info.parent_id == (v1.FAN if "/" in instance_id else None)
        assert listed[v1.SUSPENDED].waiting_on == ("approval:v1",)
        assert listed[v1.SUSPENDED].status_message == "waiting for ann"
        assert listed[v1.TIMER].waiting_on == ("cool-off:v1",)
        assert listed[f"{v1.FAN}/label:v1-1"].waiting_on == ("label-go:v1",)
        failure = listed[v1.FAILED].error
        assert failure is not None
        assert failure.type == "memable.StepFailed"
        assert "cannot fix 'x: fetched' yet" in failure.message
        assert wfs.ran == []  # nothing ran: recovery was off
    assert user_version(v1_copy) >= 2  # migrations only go forward


async def test_completed_keeps_its_output(v1_copy: Path) -> None:
    """A completed instance returns its stored output; its input still matches invoke's."""
    async with opened(v1_copy) as o:
        wfs, engine = o.wfs, o.engine
        assert await engine.handle(wfs.order, v1.DONE).result() == receipt("o-1", "15.50")
        again = await engine.invoke(wfs.order, "o-1", instance_id=v1.DONE)  # idempotent
        assert await again.result() == receipt("o-1", "15.50")
        with pytest.raises(memable.InstanceConflict):
            await engine.invoke(wfs.order, "o-9", instance_id=v1.DONE)
        assert wfs.ran_in(v1.DONE) == []


async def test_crashed_instance_recovers_without_rerunning_steps(v1_copy: Path) -> None:
    """The crashed ``running`` one is recovered at start; recorded steps (a result and a
    dead letter the workflow caught) replay, only the steps after the crash run."""
    async with opened(v1_copy) as o:
        wfs = o.wfs
        assert await o.engine.handle(wfs.order, v1.CRASHED).result() == receipt("o-2", "15.50")
        assert wfs.ran_in(v1.CRASHED) == ["lines:v1", "charge:v1"]
        assert (await o.engine.state(wfs.order, v1.CRASHED)).status == "completed"


async def test_signal_completes_the_suspended_point(v1_copy: Path) -> None:
    async with opened(v1_copy) as o:
        wfs = o.wfs
        invocation = await o.engine.signal(wfs.approval, v1.SUSPENDED, v1.APPROVAL, True)
        assert await invocation.result() == "ann: approved"
        assert wfs.ran_in(v1.SUSPENDED) == ["notify:v1"]


async def test_advancing_the_clock_fires_the_timer(v1_copy: Path) -> None:
    async with opened(v1_copy) as o:
        wfs = o.wfs
        assert (await o.engine.state(wfs.timer, v1.TIMER)).status == "suspended"
        await o.clock.advance(timedelta(minutes=29))  # due at GENERATED_AT + 1 h
        assert (await o.engine.state(wfs.timer, v1.TIMER)).status == "suspended"
        await o.clock.advance(timedelta(minutes=1))
        assert await o.engine.handle(wfs.timer, v1.TIMER).result() == 43
        assert wfs.ran_in(v1.TIMER) == ["after:v1"]


async def test_a_suspend_timeout_passes(v1_copy: Path) -> None:
    async with opened(v1_copy) as o:
        wfs = o.wfs
        await o.clock.set(v1.GENERATED_AT + timedelta(days=2))
        assert await o.engine.handle(wfs.deadline, v1.DEADLINE).result() == "bob: timed out"
        with pytest.raises(memable.SignalRejected):
            await o.engine.signal(wfs.deadline, v1.DEADLINE, v1.APPROVAL, True)


async def test_a_signal_beats_the_suspend_timeout(v1_copy: Path) -> None:
    async with opened(v1_copy) as o:
        wfs = o.wfs
        invocation = await o.engine.signal(wfs.deadline, v1.DEADLINE, v1.APPROVAL, False)
        assert await invocation.result() == "bob: refused"
        await o.clock.set(v1.GENERATED_AT + timedelta(days=3))  # the deadline does nothing
        assert await invocation.result() == "bob: refused"


async def test_early_signals_of_a_crashed_instance_are_kept(v1_copy: Path) -> None:
    """Both signals came while it was ``running``; recovered, it needs no other."""
    async with opened(v1_copy) as o:
        wfs = o.wfs
        paid = await o.engine.handle(wfs.pay, v1.EARLY_RUNNING).result()
        assert paid == v1.Approval(by="cat", amount=Decimal("9.99"))
        assert wfs.ran_in(v1.EARLY_RUNNING) == ["prep:v1"]


async def test_an_early_signal_waits_for_its_point(v1_copy: Path) -> None:
    """PAYMENT came while the instance waited on APPROVAL; it is there when reached."""
    async with opened(v1_copy) as o:
        wfs, engine = o.wfs, o.engine
        other = v1.Approval(by="mallory", amount=Decimal(1))
        with pytest.raises(memable.SignalSuperseded):
            await engine.signal(wfs.pay, v1.EARLY_SUSPENDED, v1.PAYMENT, other)
        invocation = await engine.signal(wfs.pay, v1.EARLY_SUSPENDED, v1.APPROVAL, True)
        assert await invocation.result() == v1.Approval(by="dan", amount=Decimal("19.99"))
        assert wfs.ran_in(v1.EARLY_SUSPENDED) == []


async def test_resume_reruns_only_the_dead_step(v1_copy: Path) -> None:
    async with opened(v1_copy) as o:
        wfs, engine = o.wfs, o.engine
        with pytest.raises(memable.WorkflowFailed):
            await engine.handle(wfs.flaky, v1.FAILED).result()
        invocation = await engine.resume(wfs.flaky, v1.FAILED)
        assert await invocation.result() == "x: fetched, fixed, stored"
        assert wfs.ran_in(v1.FAILED) == ["flaky:v1", "store:v1"]


async def test_fan_out_parent_completes_when_its_child_is_signalled(v1_copy: Path) -> None:
    async with opened(v1_copy) as o:
        wfs, engine = o.wfs, o.engine
        child = f"{v1.FAN}/label:v1-1"
        await engine.signal(wfs.fan, child, v1.LABEL_GO, "go")
        result = await engine.handle(wfs.fan, v1.FAN).result()
        assert result == ["shipped label-0", "shipped label-1 (go)"]
        assert wfs.ran_in(v1.FAN) == ["ship:v1"]
        assert wfs.ran_in(f"{v1.FAN}/label:v1-0") == wfs.ran_in(child) == []
        assert (await engine.state(wfs.fan, child)).status == "completed"


async def test_cancelled_stays_cancelled(v1_copy: Path) -> None:
    async with opened(v1_copy) as o:
        wfs, engine = o.wfs, o.engine
        with pytest.raises(memable.WorkflowCancelled) as caught:
            await engine.handle(wfs.approval, v1.CANCELLED).result()
        assert caught.value.reason == "customer left"
        with pytest.raises(memable.SignalRejected):
            await engine.signal(wfs.approval, v1.CANCELLED, v1.APPROVAL, True)
        assert wfs.ran_in(v1.CANCELLED) == []


async def test_purge_removes_only_finished_instances(v1_copy: Path) -> None:
    async with opened(v1_copy, resume_on_start=False) as o:
        wfs, engine = o.wfs, o.engine
        assert await engine.purge(older_than=timedelta(minutes=1)) == 3
        for wf, gone in (
            (wfs.order, v1.DONE),
            (wfs.flaky, v1.FAILED),
            (wfs.approval, v1.CANCELLED),
        ):
            with pytest.raises(memable.InstanceNotFound):
                await engine.state(wf, gone)
        left = {i.instance_id for i in await engine.instances()}
        assert left == set(V1_STATES) - {v1.DONE, v1.FAILED, v1.CANCELLED}
