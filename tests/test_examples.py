"""The scripts in ``examples/`` run, and run again without repeating work."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest
import trio

import memable
from memable.testing import ManualClock

EXAMPLES = Path(__file__).parent.parent / "examples"
SRC = Path(__file__).parent.parent / "src"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = load("order")
    db = str(tmp_path / "orders.db")
    first = await example.main(db)
    assert first == example.Receipt("o-17", approved=True, charge_id="ch-o-17-1250")
    assert "Suspended(waiting_on=('approval:v1',)" in capsys.readouterr().out
    assert await example.main(db) == first  # the finished instance: nothing runs again
    assert capsys.readouterr().out.startswith("Completed(")


async def test_fan_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = load("fan_out")
    db = str(tmp_path / "pages.db")
    assert await example.main(db) == sum(3 + n for n in range(20))
    assert await example.main(db) == 250
    assert capsys.readouterr().out == "250 words in 20 child instances\n" * 2
    assert "``album/pages:v1-0``" in (example.__doc__ or "")  # the ids it promises ...
    async with memable.Engine(db, workflows=[example.album, example.page]) as engine:
        ids = {info.instance_id for info in await engine.instances(limit=None)}
    assert ids == {"album"} | {f"album/pages:v1-{n}" for n in range(20)}  # ... are the ids


async def test_reminder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = load("reminder")
    assert await example.main(str(tmp_path / "reminders.db")) == "sent: water the plants"
    out = capsys.readouterr().out
    assert "first engine: Suspended(waiting_on=('wait:v1',)" in out
    assert out.endswith("second engine: completed\nsecond engine: sent: water the plants\n")


async def test_approval_service(tmp_path: Path) -> None:
    """POST invokes, GET shows the state, a day later a reminder is sent, POST approve
    signals and the order is charged; a second approval is refused; an unanswered order
    expires after two days."""
    example = load("approval_service")
    example.SENT.clear()
    clock = ManualClock()
    app = example.create_app(str(tmp_path / "orders.db"), clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://shop") as client,
    ):
        new = {"order_id": "o-17", "item": "lamp", "cents": 1250}
        assert (await client.post("/orders", json=new)).status_code == 202
        assert (await client.post("/orders", json=new)).status_code == 202  # idempotent
        conflict = {**new, "cents": 1}
        assert (await client.post("/orders", json=conflict)).status_code == 409
        state = await settled(client, "o-17")
        assert state["status"] == "suspended"
        assert state["message"] == "approve lamp for 1250?"
        assert sorted(state["waiting_on"]) == ["approval:v1", "remind-after:v1"]

        await clock.advance(timedelta(days=1))
        state = await settled(client, "o-17")
        assert state["waiting_on"] == ["approval:v1"]
        assert example.SENT == ["reminder:o-17"]

        decision = {"approver": "ada", "approved": True}
        assert (await client.post("/orders/o-17/approve", json=decision)).status_code == 202
        state = await settled(client, "o-17")
        assert state["status"] == "completed"
        assert state["receipt"] == {
            "order_id": "o-17",
            "status": "charged",
            "charge_id": "ch-o-17-1250",
            "approver": "ada",
        }
        assert sorted(state["history"]["steps"]) == [
            "charge:v1 completed (1 attempts)",
            "remind:v1 completed (1 attempts)",
        ]
        assert state["history"]["signals"] == ["approval:v1 delivered"]
        assert sorted(t.split()[:2] for t in state["history"]["timers"]) == [
            ["approval:v1", "due"],
            ["remind-after:v1", "fired"],
        ]
        again = await client.post("/orders/o-17/approve", json=decision)
        assert again.status_code == 409
        assert "completed" in again.json()["error"]
        assert (await client.post("/orders/o-99/approve", json=decision)).status_code == 404
        assert (await client.get("/orders/o-99")).status_code == 404

        quick = {"order_id": "o-19", "item": "desk", "cents": 4000}  # approved at once
        assert (await client.post("/orders", json=quick)).status_code == 202
        await settled(client, "o-19")
        assert (await client.post("/orders/o-19/approve", json=decision)).status_code == 202
        assert (await settled(client, "o-19"))["receipt"]["status"] == "charged"

        late = {"order_id": "o-18", "item": "chair", "cents": 900}
        assert (await client.post("/orders", json=late)).status_code == 202
        await settled(client, "o-18")
        await clock.advance(timedelta(days=1))  # the reminder
        await settled(client, "o-18")
        await clock.advance(timedelta(days=1))  # the deadline
        state = await settled(client, "o-18")
        assert state["receipt"]["status"] == "expired"
    assert example.SENT == ["reminder:o-17", "charge:o-17", "charge:o-19", "reminder:o-18"]


async def settled(client: httpx.AsyncClient, order_id: str) -> dict[str, Any]:
    """The order's state once it is not running (it suspends or finishes promptly)."""
    with anyio.fail_after(10):
        while True:
            response = await client.get(f"/orders/{order_id}")
            assert response.status_code == 200
            state: dict[str, Any] = response.json()
            if state["status"] != "running":
                return state
            await anyio.sleep(0.005)


def run_example(
    name: str, *args: str, backend: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``examples/{name}.py`` in a fresh interpreter (memable from this checkout)."""
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *args, "--backend", backend],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


AGENT_CALLS = [
    "plan",
    *(f"{kind}:{topic}" for topic in ["durable", "workflows", "idempotency", "determinism"]
      for kind in ["search", "summarise"]),
    "report",
]  # fmt: skip


@pytest.mark.parametrize(
    ("backend", "kill_at"),
    [
        ("asyncio", "search:durable"),
        ("trio", "summarise:idempotency"),
        ("asyncio", "report"),
        ("trio", "plan"),
    ],
)
def test_research_agent_survives_sigkill(kill_at: str, backend: str, tmp_path: Path) -> None:
    """Killed with SIGKILL as it is about to make a paid call, the agent recovers in a new
    process and makes each paid call exactly once, with the same idempotency keys."""
    db, log = str(tmp_path / "agent.db"), tmp_path / "calls.log"
    killed = run_example("research_agent", db, str(log), "--kill-at", kill_at, backend=backend)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    before = log.read_text().splitlines() if log.exists() else []
    assert [line.split()[0] for line in before] == AGENT_CALLS[: AGENT_CALLS.index(kill_at)]
    done = run_example("research_agent", db, str(log), backend=backend)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert [line.split()[0] for line in calls] == AGENT_CALLS  # each once, none repeated
    assert calls[-1] == "report research-1:report:v1"
    assert done.stdout.splitlines()[0].startswith("Q: Why do durable workflows")
    assert "idempotency: 3 sources agree" in done.stdout
    again = run_example("research_agent", db, str(log), backend=backend)
    assert again.stdout == done.stdout
    assert log.read_text().splitlines() == calls  # a finished instance calls nothing


async def finished_children(db: str, example: ModuleType, parent: str) -> set[str]:
    """The ids of *parent*'s completed children, read without running anything."""
    workflows = example.etl_workflows(example.Pipeline("unused.db"))
    async with memable.Engine(db, workflows=workflows, resume_on_start=False) as engine:
        infos = await engine.instances(limit=None)
    return {i.instance_id for i in infos if i.parent_id == parent and i.status == "completed"}


@pytest.mark.parametrize("kill_at", ["extract:invoices", "load:refunds"])
async def test_etl_survives_sigkill_mid_fan_out(
    kill_at: str, anyio_backend: str, tmp_path: Path
) -> None:
    """Killed in the middle of the fan-out, the nightly ETL recovers: children that had
    finished are not run again, every source is loaded once, the total is right."""
    example = load("etl")
    db, warehouse = str(tmp_path / "etl.db"), str(tmp_path / "warehouse.db")
    killed = await anyio.to_thread.run_sync(
        lambda: run_example("etl", db, warehouse, "--kill-at", kill_at, backend=anyio_backend)
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    parent = "nightly-2026-12-04"
    finished = await finished_children(db, example, parent)
    assert finished  # the kill came mid-fan-out: some children were done ...
    assert len(finished) < len(example.SOURCES)  # ... and some were not
    done_sources = {example.SOURCES[int(i.rsplit("-", 1)[1])] for i in finished}
    done = await anyio.to_thread.run_sync(
        lambda: run_example("etl", db, warehouse, backend=anyio_backend)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{sum(map(len, example.SOURCES))} rows from 5 sources\n"
    with sqlite3.connect(warehouse) as conn:
        extracts = [row[0] for row in conn.execute("SELECT source FROM extracts")]
        loaded = dict(conn.execute("SELECT source, n FROM loaded").fetchall())
    assert loaded == {source: len(source) for source in example.SOURCES}
    for source in done_sources:
        assert extracts.count(source) == 1, (source, extracts)  # not run again
    assert set(extracts) == set(example.SOURCES)


def test_trio_service(tmp_path: Path) -> None:
    """The engine runs as a task of a trio nursery: retried downloads, a timed-out resize
    with a fallback, live status lines; a second service start finds the jobs done."""
    example = load("trio_service")
    db = str(tmp_path / "thumbs.db")
    lines = trio.run(example.main, db)
    results = [line for line in lines if line.endswith(("128px", "placeholder"))]
    assert sorted(results) == [
        "thumb-cat.jpg: cat.jpg: 70 bytes -> 128px",
        "thumb-dog.jpg: dog.jpg: 70 bytes -> 128px",
        "thumb-huge.tiff: huge.tiff: placeholder",
    ]
    assert "thumb-huge.tiff: running resize timed out" in lines
    assert example.attempts == {"cat.jpg": 3, "dog.jpg": 3, "huge.tiff": 3}
    assert trio.run(example.main, db)[-1].endswith(("128px", "placeholder"))
    assert example.attempts == {"cat.jpg": 3, "dog.jpg": 3, "huge.tiff": 3}  # nothing re-ran


def readme_example() -> str:
    text = (EXAMPLES.parent / "README.md").read_text()
    start = text.index("```python\n") + len("```python\n")
    return text[start : text.index("```\n", start)]


def test_readme_example_is_fifteen_lines() -> None:
    """The README promises fifteen lines, imports included, blank lines aside."""
    assert len([line for line in readme_example().splitlines() if line.strip()]) <= 15


def charge_recorded(cwd: Path, env: dict[str, str]) -> bool:
    """Whether ``orders.db`` holds the README example's charge, as ``memable show`` says."""
    shown = subprocess.run(
        [sys.executable, "-m", "memable", "--json", "show", "order-o-17", "--db", "orders.db"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if shown.returncode != 0:
        return False  # no database, or no instance yet
    steps = json.loads(shown.stdout)["steps"]
    return any(s["key"] == "charge:v1" and s["state"] == "completed" for s in steps)


@pytest.mark.parametrize(
    ("backend", "kill_at"),
    [
        ("asyncio", "start"),  # while it imports or opens the engine
        ("trio", 0.4),  # seconds after the start: opening, invoking, charging ...
        ("trio", "charging"),  # the charge printed, maybe not yet recorded
        ("asyncio", "cool-off"),  # the charge recorded, the timer waiting
        ("trio", "shipped"),  # after the result
    ],
)
def test_readme_example_survives_a_kill(kill_at: str | float, backend: str, tmp_path: Path) -> None:
    """The README's example, killed with SIGKILL at several points, finishes when run
    again without charging again once the charge is recorded; a third run prints the
    stored result at once."""
    script = tmp_path / "readme_example.py"
    code = readme_example()
    assert code.count("anyio.run(main)") == 1
    assert code.count('"cool-off:v1", 5)') == 1
    code = code.replace("anyio.run(main)", f"anyio.run(main, backend={backend!r})")
    script.write_text(code.replace('"cool-off:v1", 5)', '"cool-off:v1", 2)'))  # quicker
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-u", str(script)]
    with subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        if isinstance(kill_at, float):
            time.sleep(kill_at)
        elif kill_at in {"charging", "cool-off"}:
            assert proc.stdout.readline() == "charging o-17\n"
            while kill_at == "cool-off" and not charge_recorded(tmp_path, env):
                assert proc.poll() is None, "it finished before the charge was seen recorded"
        elif kill_at == "shipped":
            assert proc.stdout.readline() == "charging o-17\n"
            assert proc.stdout.readline() == "ch-o-17 shipped\n"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    recorded = kill_at in {"cool-off", "shipped"} or charge_recorded(tmp_path, env)
    for _ in range(2):
        rerun = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert rerun.returncode == 0, rerun.stderr
        lines = rerun.stdout.splitlines()
        assert lines == (["ch-o-17 shipped"] if recorded else [*lines[:-1], "ch-o-17 shipped"])
        assert lines[:-1] in ([], ["charging o-17"])  # charged at most once more
        recorded = True


SERVERS = {
    "uvicorn": ["-m", "uvicorn", "approval_service:app", "--host", "127.0.0.1", "--port"],
    "hypercorn-trio": ["-m", "hypercorn", "-k", "trio", "approval_service:app", "--bind"],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serve(server: str, db: Path) -> Iterator[httpx.Client]:
    """Run the approval service under *server* in a subprocess; stop it with SIGINT."""
    port = free_port()
    address = str(port) if server == "uvicorn" else f"127.0.0.1:{port}"
    env = {
        **os.environ,
        "ORDERS_DB": str(db),
        "PYTHONPATH": os.pathsep.join([str(SRC), str(EXAMPLES), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, *SERVERS[server], address]
    with (
        subprocess.Popen(command, cwd=EXAMPLES, env=env, stderr=subprocess.PIPE, text=True) as proc,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        try:
            for _ in range(400):  # until it listens (the lifespan has entered the engine)
                if proc.poll() is not None:
                    raise AssertionError(f"{server} exited: {proc.stderr and proc.stderr.read()}")
                try:
                    client.get("/orders/none")
                    break
                except httpx.TransportError:
                    time.sleep(0.025)
            yield client
        finally:
            proc.send_signal(signal.SIGINT)  # a graceful shutdown: the lifespan leaves
            assert proc.wait(timeout=30) == 0, proc.stderr and proc.stderr.read()


def state_when_settled(client: httpx.Client, order_id: str) -> dict[str, Any]:
    for _ in range(400):
        state: dict[str, Any] = client.get(f"/orders/{order_id}").json()
        if state["status"] != "running":
            return state
        time.sleep(0.01)
    raise AssertionError(f"order {order_id} still running")


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_approval_service_on_a_real_server(server: str, tmp_path: Path) -> None:
    """Served by uvicorn (asyncio) or hypercorn's trio worker, the service takes an order,
    is stopped while the order waits, and finishes it after a restart."""
    db = tmp_path / "orders.db"
    with serve(server, db) as client:
        order = {"order_id": "o-1", "item": "lamp", "cents": 1250}
        assert client.post("/orders", json=order).status_code == 202
        assert state_when_settled(client, "o-1")["waiting_on"] == [
            "approval:v1",
            "remind-after:v1",
        ]
    with serve(server, db) as client:  # a new process: the order still waits
        assert state_when_settled(client, "o-1")["status"] == "suspended"
        approval = {"approver": "ada", "approved": True}
        assert client.post("/orders/o-1/approve", json=approval).status_code == 202
        state = state_when_settled(client, "o-1")
        assert state.get("receipt", {}).get("charge_id") == "ch-o-1-1250", state
