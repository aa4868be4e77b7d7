"""The ``memable`` command line on Postgres, through its entry point (``python -m memable
--db postgresql://… --schema …``), on databases written by running workflows
(tests/cli/app.py and the queue and schedule of tests/test_cli_queues.py): it reads them
as a client (no engine row of its own), and its signal, cancel and resume act directly
in the database while an engine in another process runs, which picks them up."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from memable.storage import PostgresStorage
from tests import test_cli_queues
from tests.cli import app
from tests.test_cli import APP, _env, memable_cli

from .pg import PostgresServer

Database = tuple[str, str]  # (URL, schema)


def make(server: PostgresServer) -> Database:
    schema = server.new_schema()
    anyio.run(app.make, PostgresStorage(server.dsn, schema=schema, pool_size=4))
    anyio.run(test_cli_queues.make, PostgresStorage(server.dsn, schema=schema, pool_size=4))
    return server.dsn, schema


@pytest.fixture(scope="module")
def made(postgres_server: PostgresServer) -> Database:
    """A database with every state, a paused queue and a schedule (only read)."""
    return make(postgres_server)


@pytest.fixture
def fresh(postgres_server: PostgresServer) -> Database:
    """The same, in a schema of its own (for tests that write)."""
    return make(postgres_server)


def cli(db: Database, *args: str, columns: int = 100) -> subprocess.CompletedProcess[str]:
    return memable_cli("--db", db[0], "--schema", db[1], *args, columns=columns)


def ok(db: Database, *args: str, columns: int = 100) -> str:
    done = cli(db, *args, columns=columns)
    assert done.returncode == 0, done.stderr
    return done.stdout


def as_json(db: Database, *args: str) -> Any:
    return json.loads(ok(db, *args, "--json"))


def test_list_show_queues_and_schedules(made: Database) -> None:
    listed = as_json(made, "list")
    ids = [i["instance_id"] for i in listed["instances"]]
    children = ["f1/label:v1-0", "f1/label:v1-1", "f1/label:v1-2"]
    assert sorted(ids[:3]) == children
    assert ids[3:8] == ["f1", "n1", "o1", "b1", "c1"]
    # The queue's world ran on a clock of 2026-01-01: older than everything else.
    assert sorted(ids[8:]) == ["mail-ann", "mail-bob", "mail-cy", "tick@2026-01-01T00:05:00Z"]
    by_id = {i["instance_id"]: i for i in listed["instances"]}
    assert by_id["o1"]["waiting_on"] == ["approval:v1"]
    assert by_id["o1"]["input"] == 3
    assert by_id["c1"]["output"] == "7 approved"
    assert by_id["b1"]["error"]["type"] == "memable.RetriesExhausted"
    assert by_id["mail-ann"]["status"] == "enqueued"
    waiting = as_json(made, "list", "--waiting-on", "nap:v1")["instances"]
    assert [i["instance_id"] for i in waiting] == ["n1"]
    enqueued = as_json(made, "list", "--status", "enqueued")["instances"]
    assert sorted(i["instance_id"] for i in enqueued) == ["mail-ann", "mail-bob", "mail-cy"]
    seen: list[str] = []
    page = as_json(made, "list", "--limit", "5")
    while True:
        seen += [i["instance_id"] for i in page["instances"]]
        if page["next"] is None:
            break
        page = as_json(made, "list", "--limit", "5", "--after", page["next"])
    assert seen == ids

    failed = as_json(made, "show", "b1")
    steps = [(s["key"], s["state"], s["attempts"]) for s in failed["steps"]]
    assert steps == [("price:v1", "completed", 1), ("stock:v1", "dead", 2)]
    assert "Traceback" in failed["steps"][1]["error"]["traceback"]
    fan = as_json(made, "show", "f1")
    assert [c["instance_id"] for c in fan["children"]] == children
    timers = as_json(made, "show", "n1")["timers"]
    assert [(t["key"], t["kind"], t["fired"]) for t in timers] == [("nap:v1", "sleep", False)]
    shown = ok(made, "show", "f1")
    assert "└── f1/label:v1-2  completed" in shown

    assert as_json(made, "queues")["queues"] == [
        {"name": "emails", "concurrency": 2, "rate_limit": [5, 60.0], "paused": True,
         "enqueued": 3, "running": 0, "suspended": 0}
    ]  # fmt: skip
    assert as_json(made, "schedules")["schedules"] == [
        {"name": "tick", "last_tick": "2026-01-01T00:05:00+00:00",
         "last_run": "tick@2026-01-01T00:05:00Z", "last_run_status": "completed"}
    ]  # fmt: skip
    # No engine runs; the command line registers none.
    assert as_json(made, "engines") == {"engines": []}
    assert ok(made, "engines").strip() == "no engine is registered on this database"


@pytest.mark.parametrize("columns", [60, 140])
def test_tables_fit_the_terminal(made: Database, columns: int) -> None:
    lines = ok(made, "list", "--limit", "5", columns=columns).splitlines()
    assert lines[0].split()[:3] == ["ID", "WORKFLOW", "STATUS"]
    assert all(len(line) <= columns for line in lines[:-1])
    rows = {line.split()[0]: line for line in lines[1:] if line and not line.startswith("more")}
    assert "suspended" in rows["n1"]
    out = ok(made, "show", "b1", columns=columns)
    assert "--- step stock:v1 (dead, 2 attempts): ValueError: no stock for 4" in out
    table = ok(made, "queues", columns=columns).splitlines()
    assert table[1].split() == ["emails", "2", "5/60s", "yes", "3", "0", "0"]


def test_the_database_from_the_environment(made: Database) -> None:
    env = _env()
    env["MEMABLE_DB"], env["MEMABLE_SCHEMA"] = made
    done = subprocess.run(
        [sys.executable, "-m", "memable", "list", "--status", "failed", "--json"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [i["instance_id"] for i in json.loads(done.stdout)["instances"]] == ["b1"]


@pytest.fixture
def engine(fresh: Database) -> Iterator[subprocess.Popen[str]]:
    """An engine in another process on *fresh*, running the instance h1 (blocked in a
    step) once it prints ``ready``."""
    process = subprocess.Popen(
        [sys.executable, str(APP), "serve", *fresh],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_for(db: Database, instance_id: str, status: str) -> dict[str, Any]:
    """The instance's header once it has *status* (read through the command line)."""
    deadline = time.monotonic() + 60
    while True:
        header: dict[str, Any] = as_json(db, "show", instance_id)["instance"]
        if header["status"] == status or time.monotonic() > deadline:
            return header
        time.sleep(0.1)


def test_steering_a_running_engine_directly(fresh: Database, engine: subprocess.Popen[str]) -> None:
    """The engine in another process picks up what the command line writes: a running
    instance cancelled stops, a resumed one runs again there, a signalled one completes."""
    engines = as_json(fresh, "engines")["engines"]
    assert len(engines) == 1
    row = engines[0]
    assert row["process"] == str(engine.pid)
    assert row["storage"] == "postgres"
    assert row["instances"] == 1  # h1
    assert row["expired"] is False
    assert row["heartbeat_age"] >= 0
    assert set(row) == {"engine_id", "name", "host", "process", "started_at", "heartbeat",
                        "heartbeat_age", "expired", "instances", "storage"}  # fmt: skip
    table = ok(fresh, "engines").splitlines()
    assert table[0].split() == ["ENGINE", "HOST", "PROCESS", "UP", "HEARTBEAT", "INSTANCES",
                                "NAME"]  # fmt: skip
    assert str(engine.pid) in table[1]
    assert wait_for(fresh, "h1", "running")["status"] == "running"

    cancelled = as_json(fresh, "cancel", "h1", "--reason", "stuck")
    assert cancelled == {
        "ok": True, "outcome": "cancelled", "message": "instance 'h1' is cancelled"
    }  # fmt: skip
    assert as_json(fresh, "cancel", "n1")["outcome"] == "cancelled"
    resumed = as_json(fresh, "resume", "b1")
    assert resumed == {
        "ok": True, "outcome": "running",
        "message": "instance 'b1' runs on an engine of its workflow",
    }  # fmt: skip
    assert wait_for(fresh, "b1", "failed")["status"] == "failed"  # run again there
    states = [s["state"] for s in as_json(fresh, "show", "b1")["steps"]]
    assert states == ["completed", "retried", "dead"]
    signalled = ok(fresh, "signal", "o1", "approval:v1", "true")
    assert signalled.strip() == "delivered; instance 'o1' runs on an engine of its workflow"
    out, err = engine.communicate(timeout=60)
    assert out.splitlines() == ["h1 cancelled", "done 21 approved"], err
    assert engine.returncode == 0
    again = cli(fresh, "signal", "o1", "approval:v1", "false")
    assert again.returncode == 1
    assert "is completed; nothing stored" in again.stdout
    assert as_json(fresh, "show", "h1")["instance"]["status_message"] == "stuck"
    assert as_json(fresh, "engines") == {"engines": []}  # it left: its row went with it

    purged = as_json(fresh, "purge", "--older-than", "0s")
    assert purged == {"ok": True, "outcome": "purged", "message": "purged 7 finished instances"}
    left = {i["instance_id"]: i["status"] for i in as_json(fresh, "list")["instances"]}
    assert left == dict.fromkeys(["mail-ann", "mail-bob", "mail-cy"], "enqueued")


def test_bad_databases_exit_2_with_one_line_and_no_secret(
    made: Database, postgres_server: PostgresServer, tmp_path: Any
) -> None:
    secret = "s3cret-pw"
    cases = {
        (f"postgresql://app:{secret}@127.0.0.1:1/orders", "list"):
            "the server refused the connection",
        (f"postgresql://app:{secret}@[::1/orders", "list"): "the connection string is not valid",
        (f"postgresql://app:{secret}@/orders?host={tmp_path}", "list"):
            "no server listens on that socket",
        (made[0], "--schema", "nothing_here", "list"):
            "not a memable database: it has no memable schema 'nothing_here'",
        (made[0], "--schema", "Bad-Name", "list"): "schema must be a lowercase SQL identifier",
        (made[0], "--schema", made[1], "show", "nope"): "no instance 'nope'",
        (made[0], "--schema", made[1], "engines", "--lease", "0"): "not a lease in seconds: '0'",
        (str(tmp_path / "x.db"), "--schema", made[1], "list"):
            "--schema is for a postgresql:// database",
    }  # fmt: skip
    for (db, *args), message in cases.items():
        done = memable_cli("--db", db, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stdout == ""
        lines = done.stderr.splitlines()
        assert len(lines) == 1, done.stderr
        assert message in lines[0], lines[0]
        assert secret not in done.stderr
        assert db not in done.stderr
        assert "127.0.0.1" not in done.stderr
        assert str(tmp_path) not in done.stderr or db.endswith(".db")
    # A client created nothing where it found no memable schema.
    import psycopg

    with psycopg.connect(made[0], autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'nothing_here'")
        assert found.fetchall() == []
