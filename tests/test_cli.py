"""The ``memable`` command line, run through its entry point (``python -m memable``) on
real databases written by running workflows (tests/cli/app.py), beside a running engine
in another process and without one."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from memable import Engine
from tests.cli import app

ROOT = Path(__file__).resolve().parents[1]
APP = Path(app.__file__)


def _env(columns: int = 100) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MEMABLE_DB", "MEMABLE_RICH")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), str(ROOT)]))
    env["COLUMNS"] = str(columns)
    env["MEMABLE_RICH"] = "0"
    return env


def memable_cli(*args: str, columns: int = 100) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memable", *args],
        env=_env(columns),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(*args: str, columns: int = 100) -> str:
    done = memable_cli(*args, columns=columns)
    assert done.returncode == 0, done.stderr
    return done.stdout


def as_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json"))


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database with every state (written once; tests that write use a copy)."""
    db = tmp_path_factory.mktemp("cli") / "app.db"
    anyio.run(app.make, str(db))
    return db


@pytest.fixture
def db(made: Path, tmp_path: Path) -> str:
    copy = tmp_path / "app.db"
    shutil.copyfile(made, copy)
    return str(copy)


def test_list_json_newest_first_with_filters_and_pages(made: Path) -> None:
    db = str(made)
    listed = as_json("--db", db, "list")
    ids = [i["instance_id"] for i in listed["instances"]]
    children = ["f1/label:v1-2", "f1/label:v1-1", "f1/label:v1-0"]
    assert sorted(ids[:3]) == sorted(children)
    assert ids[3:] == ["f1", "n1", "o1", "b1", "c1"]
    assert listed["next"] is None
    by_id = {i["instance_id"]: i for i in listed["instances"]}
    assert by_id["o1"]["status"] == "suspended"
    assert by_id["o1"]["waiting_on"] == ["approval:v1"]
    assert by_id["o1"]["input"] == 3  # JSON, without the application's code
    assert by_id["c1"]["output"] == "7 approved"
    assert by_id["b1"]["error"]["type"] == "memable.RetriesExhausted"

    assert [i["instance_id"] for i in as_json("list", "--db", db, "--status", "failed")[
        "instances"
    ]] == ["b1"]  # fmt: skip
    waiting = as_json("--db", db, "list", "--waiting-on", "nap:v1")["instances"]
    assert [i["instance_id"] for i in waiting] == ["n1"]
    kids = as_json("--db", db, "list", "--parent", "f1")["instances"]
    assert sorted(i["instance_id"] for i in kids) == sorted(children)
    assert [i["instance_id"] for i in as_json("--db", db, "list", "-w", "order")["instances"]] == [
        "o1",
        "c1",
    ]

    seen: list[str] = []
    page = as_json("--db", db, "list", "--limit", "3")
    while True:
        seen += [i["instance_id"] for i in page["instances"]]
        if page["next"] is None:
            break
        page = as_json("--db", db, "list", "--limit", "3", "--after", page["next"])
    assert seen == ids


@pytest.mark.parametrize("columns", [60, 140])
def test_list_table_fits_the_terminal(made: Path, columns: int) -> None:
    out = ok("list", "--db", str(made), "--limit", "5", columns=columns)
    lines = out.splitlines()
    assert all(len(line) <= columns for line in lines[:-1])  # the cursor is never cut
    assert lines[0].split()[:3] == ["ID", "WORKFLOW", "STATUS"]
    rows = {line.split()[0]: line for line in lines[1:] if line and not line.startswith("more")}
    assert "suspended" in rows["n1"]
    assert "completed" in rows["f1"]
    assert lines[-1].startswith("more: memable list --after ")
    if columns >= 100:  # what it waits on (cut first on a narrow terminal)
        assert "waiting on nap:v1" in rows["n1"]


def test_list_shows_a_status_message_only_while_it_is_news(made: Path) -> None:
    out = ok("list", "--db", str(made), "--workflow", "order", columns=160)
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line}
    assert "waiting for a manager" in rows["o1"]  # suspended: what it waits for
    assert "completed" in rows["c1"]
    assert "waiting for a manager" not in rows["c1"]  # its last message, now stale


@pytest.mark.parametrize("columns", [60, 140])
def test_show_a_failed_instance(made: Path, columns: int) -> None:
    out = ok("--db", str(made), "show", "b1", columns=columns)
    assert "instance  b1" in out
    assert "status    failed" in out
    steps = out[out.index("steps") : out.index("errors")]
    assert "price:v1" in steps
    assert "completed" in steps
    assert "stock:v1" in steps
    assert "dead" in steps
    errors = out[out.index("errors") :]
    assert "--- step stock:v1 (dead, 2 attempts): ValueError: no stock for 4" in errors
    assert "Traceback (most recent call last)" in errors
    assert 'raise ValueError(f"no stock for {n}")' in errors
    table_lines = steps.splitlines()
    assert all(len(line) <= columns for line in table_lines)


def test_show_json_is_the_history(made: Path) -> None:
    shown = as_json("--db", str(made), "show", "b1")
    assert shown["instance"]["status"] == "failed"
    steps = [(s["key"], s["state"], s["attempts"]) for s in shown["steps"]]
    assert steps == [("price:v1", "completed", 1), ("stock:v1", "dead", 2)]
    assert shown["steps"][0]["value"] == "28"
    assert shown["steps"][0]["value_type"] == "int"
    assert shown["steps"][0]["duration"] >= 0
    assert shown["steps"][1]["error"]["type"] == "ValueError"
    assert "Traceback" in shown["steps"][1]["error"]["traceback"]

    fan = as_json("--db", str(made), "show", "f1")
    assert [c["instance_id"] for c in fan["children"]] == [
        "f1/label:v1-0",
        "f1/label:v1-1",
        "f1/label:v1-2",
    ]
    assert fan["children"][0]["output"] == "label a"
    assert fan["children"][0]["children"] == []
    timers = as_json("--db", str(made), "show", "o1")["timers"]
    assert [(t["key"], t["kind"], t["fired"]) for t in timers] == [
        ("approval:v1", "timeout", False)
    ]


def test_show_waits_timers_and_children(made: Path) -> None:
    napping = ok("--db", str(made), "show", "n1")
    assert re.search(r"waits on  nap:v1 \(timer, in 5\dm \d+s\)", napping), napping
    assert "nap:v1  sleep" in napping
    waiting = ok("--db", str(made), "show", "o1")
    assert "status    suspended — waiting for a manager" in waiting
    assert re.search(r"approval:v1 \(signal, deadline in 1d 2[23]h\)", waiting)
    fan = ok("--db", str(made), "show", "f1")
    assert "├── f1/label:v1-0  completed" in fan
    assert "└── f1/label:v1-2  completed" in fan
    assert 'output    ["label a", "label b", "label c"]' in fan


def test_steering_without_an_engine(db: str) -> None:
    """signal, cancel, resume and purge act on the file directly when no engine owns it;
    what they start runs when an engine opens the file."""
    assert "delivered; instance 'o1' runs when an engine starts" in ok(
        "--db", db, "signal", "o1", "approval:v1", "true"
    )
    again = memable_cli("--db", db, "signal", "o1", "approval:v1", "false")
    assert again.returncode == 1
    assert "already has a payload" in again.stdout
    assert "cancelled" in ok("--db", db, "cancel", "n1", "--reason", "not needed")
    assert as_json("--db", db, "show", "n1")["instance"]["status_message"] == "not needed"
    resumed = as_json("--db", db, "resume", "b1")
    assert resumed == {
        "ok": True,
        "outcome": "running",
        "message": "instance 'b1' runs when an engine starts",
    }

    async def reopen() -> None:
        async with Engine(db, workflows=app.WORKFLOWS) as engine:
            assert await engine.handle(app.order, "o1").result() == "21 approved"
            await engine.handle(app.broken, "b1").wait()

    anyio.run(reopen)
    history = as_json("--db", db, "show", "b1")
    assert [(s["key"], s["state"]) for s in history["steps"]] == [
        ("price:v1", "completed"),
        ("stock:v1", "retried"),
        ("stock:v1", "dead"),
    ]
    purged = as_json("--db", db, "purge", "--older-than", "0s")
    assert purged["outcome"] == "purged"
    assert purged["message"] == "purged 5 finished instances"
    assert as_json("--db", db, "list")["instances"] == []


def test_steering_a_running_engine_through_its_inbox(db: str) -> None:
    """An engine in another process owns the file: the CLI reads it without the lock and
    hands it the signal, the cancel and the resume through the inbox."""
    engine = subprocess.Popen(
        [sys.executable, str(APP), "serve", db],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert engine.stdout is not None
        assert engine.stdout.readline().strip() == "ready"
        engines = as_json("--db", db, "engines")["engines"]
        assert engines == [{"process": str(engine.pid), "storage": "sqlite"}]
        assert as_json("--db", db, "show", "o1")["instance"]["status"] == "suspended"
        cancelled = as_json("--db", db, "cancel", "n1")
        assert cancelled["outcome"] == "cancelled"
        resumed = memable_cli("--db", db, "resume", "b1", "--json")
        assert json.loads(resumed.stdout)["outcome"] == "running"
        signalled = ok("--db", db, "signal", "o1", "approval:v1", "true")
        assert signalled.strip() == "delivered; instance 'o1' runs again"
        out, err = engine.communicate(timeout=30)
        assert out.strip() == "done 21 approved", err
        assert engine.returncode == 0
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    assert as_json("--db", db, "show", "n1")["instance"]["status"] == "cancelled"
    states = [s["state"] for s in as_json("--db", db, "show", "b1")["steps"]]
    assert states == ["completed", "retried", "dead"]


def test_bad_arguments_and_files_exit_2_with_one_line(made: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE t (x)")
    connection.close()
    cases = {
        ("--db", str(tmp_path / "missing.db"), "list"): "no SQLite database at",
        ("--db", str(text), "list"): "is not a SQLite database",
        ("--db", str(other), "show", "x"): "is not a memable database",
        ("--db", str(made), "show", "nope"): "no instance 'nope'",
        ("--db", str(made), "lst"): "invalid choice: 'lst'",
        ("--db", str(made), "purge"): "--older-than",
        ("--db", str(made), "purge", "--older-than", "7x"): "not a duration: '7x'",
        ("--db", str(made), "signal", "o1", "approval:v1", "yes"): "not JSON",
        ("--db", str(made), "signal", "o1", "_x", "1"): "must not start with '_'",
        ("--db", str(made), "list", "--after", "zzz"): "not a cursor",
        ("--db", str(made), "list", "--status", "queued"): "invalid choice: 'queued'",
        ("list",): "no database",
    }
    for args, message in cases.items():
        done = memable_cli(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stdout == ""
        lines = done.stderr.splitlines()
        assert len(lines) == 1, (args, done.stderr)
        assert lines[0].startswith("memable")
        assert message in lines[0], (args, lines[0])
    assert not (tmp_path / "missing.db").exists()  # reading never creates a file


def test_version_and_env_database(made: Path) -> None:
    version = memable_cli("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("memable ")
    env = _env()
    env["MEMABLE_DB"] = str(made)
    done = subprocess.run(
        [sys.executable, "-m", "memable", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert len(json.loads(done.stdout)["instances"]) == 8


def test_sql_views_answer_operators_queries(made: Path) -> None:
    """memable_instances and memable_steps: JSON values, ISO times, retried dead letters."""
    with contextlib.closing(sqlite3.connect(f"file:{made}?mode=ro", uri=True)) as db:
        failed = db.execute(
            "SELECT instance_id, workflow, input, error_type, error_message, created_at"
            " FROM memable_instances WHERE status = 'failed'"
        ).fetchall()
        assert len(failed) == 1
        instance_id, workflow, input_, error_type, message, created = failed[0]
        assert (instance_id, workflow, input_) == ("b1", "broken", 4)
        assert error_type == "memable.RetriesExhausted"
        assert "no stock for 4" in message
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", created)
        steps = db.execute(
            "SELECT key, state, attempts, value_type, value, error_type, duration"
            " FROM memable_steps WHERE instance_id = 'b1' ORDER BY started_at"
        ).fetchall()
        assert [row[:6] for row in steps] == [
            ("price:v1", "completed", 1, "int", 28, None),
            ("stock:v1", "dead", 2, None, None, "ValueError"),
        ]
        assert all(row[6] >= 0 for row in steps)
        (output,) = db.execute(
            "SELECT output FROM memable_instances WHERE instance_id = 'f1'"
        ).fetchone()
        assert json.loads(output) == ["label a", "label b", "label c"]


@pytest.mark.parametrize(
    "filters",
    [{}, {"status": "failed"}, {"workflow": "order"}, {"created_after": 0.0},
     {"before": (1e12, "z")}, {"status": "suspended", "before": (1e12, "z")},
     {"waiting_on": "approval:v1"}],
)  # fmt: skip
def test_listing_pages_are_index_range_scans(made: Path, filters: dict[str, Any]) -> None:
    """Each filter of instances() is served by an index in newest-first order: no sort
    of the table, whatever it holds."""
    from memable.storage._rows import listing
    from memable.storage._sqlite import _WAITING

    query: dict[str, Any] = {
        "workflow": None, "status": None, "parent_id": None, "waiting_on": None,
        "created_after": None, "before": None, "newest_first": True,
    }  # fmt: skip
    sql, params = listing(mark="?", waiting=_WAITING, **{**query, **filters})
    with contextlib.closing(sqlite3.connect(f"file:{made}?mode=ro", uri=True)) as db:
        rows = db.execute("EXPLAIN QUERY PLAN " + sql, [*params, 50]).fetchall()
    plan = " ".join(str(row[3]) for row in rows)
    assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan
    assert "TEMP B-TREE" not in plan, plan


def test_rich_tables_when_asked(made: Path) -> None:
    """With rich (memable[cli]) the same tables are drawn by it, fitted to the width."""
    env = _env(columns=90)
    env["MEMABLE_RICH"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "memable", "--db", str(made), "show", "b1"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "stock:v1" in done.stdout
    assert "dead" in done.stdout
    assert "ValueError: no stock for 4" in done.stdout
    tables = done.stdout[: done.stdout.index("\nerrors\n")]  # tracebacks are not cut
    assert all(len(line) <= 90 for line in tables.splitlines())
