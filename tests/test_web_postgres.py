"""The dashboard on Postgres: over a client storage (``register=False``, what
``memable web --db postgresql://…`` opens), its actions are written to the database
directly and the engine (here in the same process, on its own storage) picks them up;
the engines page lists the registered engines. The route tests of tests/test_web.py run
on Postgres too (``make_storage``)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

import memable
import memable.web
from memable import Engine
from memable.storage import PostgresStorage

from .pg import PostgresServer
from .test_web import client
from .web_world import WORKFLOWS, approval, order, populate, refund, reminder


@pytest.fixture
async def world(
    postgres_server: PostgresServer,
) -> AsyncIterator[tuple[Engine, PostgresStorage, PostgresStorage]]:
    """An engine on a fresh schema with the world in it, and a client storage on it."""
    schema = postgres_server.new_schema()
    own = PostgresStorage(postgres_server.dsn, schema=schema, pool_size=4)
    async with Engine(own, workflows=WORKFLOWS) as engine:
        await populate(engine)
        reader = PostgresStorage(postgres_server.dsn, schema=schema, register=False)
        await anyio.to_thread.run_sync(reader.open)
        try:
            yield engine, own, reader
        finally:
            await anyio.to_thread.run_sync(reader.close)


async def post(http: httpx.AsyncClient, verb: str, token: str, **form: str) -> httpx.Response:
    return await http.post(
        f"/actions/{verb}", data={**form, "csrf": token}, headers={"accept": "application/json"}
    )


async def test_actions_act_directly_and_the_engine_runs_them(
    world: tuple[Engine, PostgresStorage, PostgresStorage],
) -> None:
    engine, _, reader = world
    app = memable.web.app(reader, allow_actions=True, points=[approval])
    async with client(app) as http:
        page = (await http.get("/instances/order-o-1")).text
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token is not None
        typed = await post(http, "signal", token.group(1), id="order-o-1", key="approval:v1",
                           payload='"yes"')  # fmt: skip
        assert typed.status_code == 400  # checked against the point's type: nothing sent
        sent = await post(http, "signal", token.group(1), id="order-o-1", key="approval:v1",
                          payload="true")  # fmt: skip
        assert sent.status_code == 200, sent.text
        assert sent.json() == {
            "message": "delivered; instance 'order-o-1' runs on an engine of its workflow",
            "outcome": "claimed",
        }
        outcome = await engine.handle(order, "order-o-1").wait(finished=True)
        assert outcome == memable.Completed(output="receipt for o-1: 43 EUR")

        cancelled = await post(http, "cancel", token.group(1), id="reminder-ada", reason="no")
        assert cancelled.json()["outcome"] == "cancelled"
        assert isinstance(
            await engine.handle(reminder, "reminder-ada").wait(finished=True), memable.Cancelled
        )
        resumed = await post(http, "resume", token.group(1), id="refund-o-9")
        assert resumed.json()["outcome"] == "running"
        assert isinstance(
            await engine.handle(refund, "refund-o-9").wait(finished=True), memable.Failed
        )
        detail = (await http.get("/api/instances/refund-o-9")).json()
        assert [s["state"] for s in detail["steps"]] == ["completed", "retried", "dead"]
        again = await post(http, "signal", token.group(1), id="order-o-1", key="approval:v1",
                           payload="false")  # fmt: skip
        assert again.status_code == 409
        assert "is completed; nothing stored" in again.json()["error"]


async def test_the_engines_page(world: tuple[Engine, PostgresStorage, PostgresStorage]) -> None:
    engine, own, reader = world
    held = await engine.invoke(order, "o-3", instance_id="order-o-3")  # held while it runs
    async with client(memable.web.app(reader)) as http:
        home = (await http.get("/")).text
        assert 'href="/engines">Engines</a>' in home
        page = (await http.get("/engines")).text
        assert f"<code>{own.engine_id}</code>" in page
        assert own.name in page
        assert "instances held" in page
        listed = (await http.get("/api/engines")).json()
        assert [row["engine_id"] for row in listed] == [own.engine_id]  # the reader is none
        assert listed[0]["expired"] is False
        assert listed[0]["pid"] is not None
        assert set(listed[0]) == {"engine_id", "name", "host", "pid", "started_at", "heartbeat",
                                  "heartbeat_age", "expired", "instances"}  # fmt: skip
    await held.wait()


def test_memable_web_on_a_postgres_url(postgres_server: PostgresServer) -> None:
    """``memable web --db postgresql://… --schema …`` serves the database as a client."""
    schema = postgres_server.new_schema()
    peer = PostgresStorage(postgres_server.dsn, schema=schema)
    peer.open()  # an engine's row (and the schema)
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command = [sys.executable, "-m", "memable", "web", "--db", postgres_server.dsn,
                   "--schema", schema, "--port", str(port), "--allow-actions"]  # fmt: skip
        env = {"PYTHONPATH": str(Path(memable.__file__).parent.parent), "PATH": "/usr/bin:/bin"}
        with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as server:
            try:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        engines = httpx.get(f"http://127.0.0.1:{port}/api/engines", timeout=5)
                        break
                    except httpx.TransportError:
                        assert server.poll() is None, server.stderr.read() if server.stderr else ""
                        assert time.monotonic() < deadline
                        time.sleep(0.1)
                assert [row["engine_id"] for row in engines.json()] == [peer.engine_id]
                listing = httpx.get(f"http://127.0.0.1:{port}/api/instances", timeout=5).json()
                assert listing["items"] == []
            finally:
                server.terminate()
    finally:
        peer.close()
    done = subprocess.run(
        [*command[:6], "--schema", "not_memable"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("memable: error: this is not a memable database")
