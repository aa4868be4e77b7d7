"""Clients of a Postgres database (``PostgresStorage(register=False)``: the command line,
the dashboard, an operator's script) and ``list_engines()``: a client reads and steers
without being an engine, and what it steers runs on the engines."""

from __future__ import annotations

import anyio
import pytest

import memable
from memable import Context, Engine, StorageError, SuspendPoint
from memable._inbox import apply_directly

from .pg import PostgresServer
from .test_postgres import Shared

GO = SuspendPoint("go:v1", int)


@pytest.fixture
def shared(postgres_server: PostgresServer) -> Shared:
    """Storages on one fresh schema."""
    return Shared(postgres_server.dsn, postgres_server.new_schema())


@memable.workflow("waiter")
async def waiter(ctx: Context, n: int) -> int:
    return n + await ctx.suspend(GO)


@memable.workflow("forever")
async def forever(ctx: Context) -> None:
    await ctx.step("block:v1", anyio.sleep_forever)


def test_a_client_registers_nothing_and_creates_no_schema(shared: Shared) -> None:
    client = shared(register=False)
    with pytest.raises(StorageError, match="not a memable database: it has no memable schema"):
        client.open()
    assert shared.sql("SELECT 1 FROM pg_namespace WHERE nspname = %s", shared.schema) == []
    engine = shared()
    engine.open()  # an engine creates the schema and registers
    try:
        client.open()
        try:
            engines = client.list_engines()
            assert [e.engine_id for e in engines] == [engine.engine_id]
            assert client.engine_id is None
            assert "register=False" in repr(client)
        finally:
            client.close()
        assert len(shared.sql("SELECT * FROM engines")) == 1
    finally:
        engine.close()


async def test_an_engine_refuses_a_client(shared: Shared) -> None:
    first = shared()
    first.open()  # an engine made the schema
    first.close()
    with pytest.raises(StorageError, match="register=False"):
        async with Engine(shared(register=False), workflows=[waiter]):
            pass


async def test_list_engines_heartbeat_age_lease_and_held_instances(shared: Shared) -> None:
    async with Engine(shared(name="memable@box-1:4242", lease=60), workflows=[forever]) as one:
        inv = await one.invoke(forever, instance_id="f-1")
        quiet = shared(name="batch worker", lease=60)  # registered, but never heartbeats
        quiet.open()
        quiet_id = quiet.engine_id
        client = shared(register=False, lease=10)
        client.open()
        try:
            # Its heartbeat is 30 s old by the database clock: past the client's lease
            # (so shown expired), not yet the engines' (so nobody reaps it meanwhile).
            shared.sql(
                "UPDATE engines SET heartbeat = now() - interval '30 seconds' WHERE name = %s",
                "batch worker",
            )
            engines = {e.name: e for e in client.list_engines()}
        finally:
            client.close()
            quiet.close()
        assert list(engines) == ["memable@box-1:4242", "batch worker"]  # oldest first
        first, second = engines["memable@box-1:4242"], engines["batch worker"]
        assert (first.host, first.pid, first.instances) == ("box-1", 4242, 1)
        assert not first.expired
        assert 0 <= first.heartbeat_age < 60
        assert first.started_at <= first.heartbeat
        assert (second.engine_id, second.host, second.pid) == (quiet_id, None, None)
        assert second.instances == 0
        assert second.expired
        assert 30 <= second.heartbeat_age < 60
        await one.cancel(forever, inv.instance_id)


async def test_what_a_client_steers_runs_on_the_engine(shared: Shared) -> None:
    """A signal, a cancel and a resume written by a client (no engine of its own) reach
    the engine that runs the workflow: NOTIFY wakes it, it claims what became runnable
    and stops what was cancelled."""
    async with Engine(shared(), workflows=[waiter, forever]) as engine:
        await (await engine.invoke(waiter, 1, instance_id="w-1")).wait()
        running = await engine.invoke(forever, instance_id="f-1")
        client = shared(register=False)
        await anyio.to_thread.run_sync(client.open)
        try:

            def steer(verb: str, instance_id: str, **request: str) -> str:
                return apply_directly(client, verb, instance_id, now=0.0, **request)

            answer = await anyio.to_thread.run_sync(
                lambda: steer("signal", "w-1", key="go:v1", payload="41")
            )
            assert '"outcome": "claimed"' in answer
            assert "runs on an engine of its workflow" in answer
            assert await engine.handle(waiter, "w-1").result(finished=True) == 42
            answer = await anyio.to_thread.run_sync(lambda: steer("cancel", "f-1", reason="x"))
            assert '"outcome": "cancelled"' in answer
            outcome = await running.wait(finished=True)
            assert isinstance(outcome, memable.Cancelled)
            answer = await anyio.to_thread.run_sync(lambda: steer("resume", "f-1"))
            assert '"outcome": "cancelled"' in answer  # a cancelled instance stays so
        finally:
            await anyio.to_thread.run_sync(client.close)
