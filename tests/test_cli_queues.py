"""The ``queues`` and ``schedules`` commands, and ``list --status enqueued``, on a database
written by an engine with a paused queue and a schedule that has ticked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio

import memable
from memable import Context, Engine, Queue, Schedule
from memable.storage import Storage
from memable.testing import ManualClock
from tests.test_cli import as_json, ok

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@memable.workflow("mail")
async def mail(ctx: Context, to: str) -> str:
    return to


@memable.workflow("tick")
async def tick(ctx: Context) -> None:
    pass


async def make(db: str | Storage) -> None:
    emails = Queue("emails", concurrency=2, rate_limit=(5, 60))
    clock = ManualClock(T0)
    schedule = Schedule(tick, every=timedelta(minutes=5))
    async with Engine(
        db, workflows=[mail], queues=[emails], schedules=[schedule], clock=clock
    ) as engine:
        await engine.pause_queue(emails)
        for to in ("ann", "bob", "cy"):
            await engine.enqueue(emails, mail, to, instance_id=f"mail-{to}")
        await clock.advance(timedelta(minutes=5))
        await engine.handle(tick, "tick@2026-01-01T00:05:00Z").wait()


def test_queues_schedules_and_enqueued_instances(tmp_path: Path) -> None:
    db = str(tmp_path / "q.db")
    anyio.run(make, db)
    assert as_json("--db", db, "queues") == {
        "queues": [
            {
                "name": "emails",
                "concurrency": 2,
                "rate_limit": [5, 60.0],
                "paused": True,
                "enqueued": 3,
                "running": 0,
                "suspended": 0,
            }
        ]
    }
    assert as_json("--db", db, "schedules") == {
        "schedules": [
            {
                "name": "tick",
                "last_tick": "2026-01-01T00:05:00+00:00",
                "last_run": "tick@2026-01-01T00:05:00Z",
                "last_run_status": "completed",
            }
        ]
    }
    listed = as_json("--db", db, "list", "--status", "enqueued")
    assert sorted(i["instance_id"] for i in listed["instances"]) == [
        "mail-ann",
        "mail-bob",
        "mail-cy",
    ]
    table = ok("--db", db, "queues").splitlines()
    assert table[0].split() == [
        "QUEUE", "CONCURRENCY", "RATE", "PAUSED", "ENQUEUED", "RUNNING", "SUSPENDED"
    ]  # fmt: skip
    assert table[1].split() == ["emails", "2", "5/60s", "yes", "3", "0", "0"]
    assert "tick@2026-01-01T00:05:00Z" in ok("--db", db, "schedules")


def test_a_database_without_queues(tmp_path: Path) -> None:
    db = str(tmp_path / "empty.db")

    async def empty() -> None:
        async with Engine(db):
            pass

    anyio.run(empty)
    assert ok("--db", db, "queues").strip() == "no queue has been used with this database"
    assert as_json("--db", db, "schedules") == {"schedules": []}
