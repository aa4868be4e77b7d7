"""Several engines on one Postgres database: claims, leases, fencing and cross-engine work.

The behaviour suite runs on Postgres through ``make_storage``; these tests are about what
only a shared database has: two engines (in this process, on one schema) hand instances
to each other, a reaped engine's late writes are refused, signals, cancels, timers, waits
and status streams reach an instance wherever it runs. The crash tests with real
processes are in ``tests/crash/test_postgres_chaos.py``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import attrs
import psycopg
import pytest

import memable
from memable import Context, Engine, SuspendPoint
from memable.storage import Fence, InstanceRecord, InstanceUpdate, PostgresStorage, StepRecord

from .pg import PostgresServer

GO = SuspendPoint("go:v1", int)
LEASE = 1.5  # seconds: short, so that take-overs happen within a test


class Shared:
    """Storages on one fresh schema (one per engine), and SQL on it from outside."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema

    def __call__(self, **options: Any) -> PostgresStorage:
        options.setdefault("lease", LEASE)
        options.setdefault("pool_size", 3)
        return PostgresStorage(self.dsn, schema=self.schema, **options)

    def sql(self, query: str, *params: object) -> list[tuple[Any, ...]]:
        """Run a query on the schema (as an operator, or a peer engine, would)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"SET search_path = {self.schema}")
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []


Factory = Shared


@pytest.fixture
def shared(postgres_server: PostgresServer) -> Shared:
    """Storages on one fresh schema."""
    return Shared(postgres_server.dsn, postgres_server.new_schema())


class Gate:
    """A step body that blocks until released, counting its runs."""

    def __init__(self) -> None:
        self.runs = 0
        self.reached = anyio.Event()
        self.release = anyio.Event()

    async def body(self, n: int) -> int:
        self.runs += 1
        self.reached.set()
        await self.release.wait()
        result: int = n * 10
        return result


def gated(gate: Gate, name: str = "gated") -> memable.Workflow[int, int]:
    async def wf(ctx: Context, n: int) -> int:
        first: int = await ctx.step("first", gate.body, n)
        second: int = await ctx.step("second", gate.body, 1)
        return first + second

    return memable.Workflow(name, wf)


def waiting(name: str = "waiting") -> memable.Workflow[int, int]:
    async def wf(ctx: Context, n: int) -> int:
        got: int = await ctx.suspend(GO)
        return n + got

    return memable.Workflow(name, wf)


async def test_engine_accepts_a_postgres_url(postgres_dsn: str) -> None:
    """Engine("postgresql://…") is a PostgresStorage; its repr hides the password."""
    engine = Engine("postgresql://app:s3cret@db.example/orders")
    assert "PostgresStorage" in repr(engine)
    assert "s3cret" not in repr(engine)
    wf = waiting()
    async with Engine(postgres_dsn, workflows=[wf]) as engine:
        invocation = await engine.invoke(wf, 1)
        assert isinstance(await invocation.wait(), memable.Suspended)
        await engine.signal(wf, invocation.instance_id, GO, 2)
        assert await invocation.result() == 3


async def test_unreachable_server_is_a_storage_error_without_the_dsn(tmp_path: Any) -> None:
    """A server that is not there: StorageError at open, naming neither host nor password."""
    dsn = f"postgresql://app:s3cret@/orders?host={tmp_path}&connect_timeout=2"
    with pytest.raises(memable.StorageError) as caught:
        async with Engine(PostgresStorage(dsn, lease=2.0)):
            pass
    assert "s3cret" not in str(caught.value)
    assert str(tmp_path) not in str(caught.value)
    assert isinstance(caught.value.__cause__, psycopg.Error)


def test_a_reaped_engines_late_write_is_refused(shared: Factory) -> None:
    """Storage level: A holds an instance; A is reaped and B claims it; A's write (with its
    fence) is refused and records nothing; B's is recorded; A's heartbeat learns it."""
    a, b = shared(), shared()
    a.open()
    b.open()
    try:
        record = memable.storage.InstanceRecord(
            instance_id="i", workflow="w", status="running", input="{}", created_at=0,
            updated_at=0, owner=a.engine_id, epoch=1,
        )  # fmt: skip
        a.create_instance(record)
        assert a.engine_id is not None
        fence_a = Fence(instance_id="i", owner=a.engine_id, epoch=1)
        step = StepRecord(instance_id="i", key="k", state="completed", value="1", attempts=1,
                          started_at=0.0, finished_at=1.0)  # fmt: skip
        # A stops heartbeating (paused): its heartbeat is older than the lease.
        shared.sql("UPDATE engines SET heartbeat = now() - interval '1 hour' WHERE engine_id = %s",
            a.engine_id)  # fmt: skip
        [claimed] = b.claim(["w"], 10)
        assert (claimed.instance_id, claimed.owner, claimed.epoch) == ("i", b.engine_id, 2)
        with pytest.raises(memable.StorageError, match="lease expired"):
            a.commit([fence_a, step])
        assert a.load_steps("i") == []
        assert b.engine_id is not None
        fence_b = Fence(instance_id="i", owner=b.engine_id, epoch=2)
        late = StepRecord(instance_id="i", key="k", state="completed", value="2", attempts=1,
                          started_at=0.0, finished_at=1.0)  # fmt: skip
        b.commit([fence_b, late])
        assert [s.value for s in b.load_steps("i")] == ["2"]
        old_id = a.engine_id
        assert a.heartbeat([("i", 1)]) is None  # reaped: a new identity
        assert a.engine_id not in (None, old_id)
        # With a new identity A may write again, but not to what B holds.
        with pytest.raises(memable.StorageError, match="no longer held"):
            a.commit([Fence(instance_id="i", owner=old_id, epoch=1), step])
        assert [s.value for s in b.load_steps("i")] == ["2"]
    finally:
        a.close()
        b.close()


def test_first_completed_step_wins(shared: Factory) -> None:
    """Step records are insert-if-absent for results: a second result never replaces one."""
    a = shared()
    a.open()
    try:
        a.create_instance(memable.storage.InstanceRecord(
            instance_id="i", workflow="w", status="running", input="{}", created_at=0,
            updated_at=0,
        ))  # fmt: skip

        def step(value: str) -> StepRecord:
            return StepRecord(instance_id="i", key="k", state="completed", value=value,
                              attempts=1, started_at=0.0, finished_at=1.0)  # fmt: skip

        assert a.commit([step("1")]) == [True]
        assert a.commit([step("2")]) == [False]
        assert [s.value for s in a.load_steps("i")] == ["1"]
    finally:
        a.close()


def test_fenced_step_records(shared: Factory) -> None:
    """A step record with its run's fence (one statement): written once (the first result
    wins), refused at another epoch, and while suspending only if nobody claimed since."""
    a = shared()
    a.open()
    try:
        assert a.engine_id is not None
        a.create_instance(memable.storage.InstanceRecord(
            instance_id="i", workflow="w", status="running", input="{}", created_at=0,
            updated_at=0, owner=a.engine_id, epoch=1,
        ))  # fmt: skip

        def step(key: str, value: str) -> StepRecord:
            return StepRecord(instance_id="i", key=key, state="completed", value=value,
                              attempts=1, started_at=0.0, finished_at=1.0)  # fmt: skip

        fence = Fence(instance_id="i", owner=a.engine_id, epoch=1)
        assert a.commit([fence, step("k", "1")]) == [True, True]
        assert a.commit([fence, step("k", "2")]) == [True, False]
        with pytest.raises(memable.StorageError, match="no longer held"):
            a.commit([Fence(instance_id="i", owner=a.engine_id, epoch=2), step("x", "3")])
        # The run's own suspension let go of it: its last writes pass at the same epoch.
        shared.sql("UPDATE instances SET owner = NULL WHERE instance_id = 'i'")
        with pytest.raises(memable.StorageError, match="no longer held"):
            a.commit([fence, step("y", "4")])
        suspending = Fence(instance_id="i", owner=a.engine_id, epoch=1, suspended=True)
        assert a.commit([suspending, step("y", "4")]) == [True, True]
        with pytest.raises(memable.StorageError, match="no longer held"):
            a.commit([Fence(instance_id="gone", owner=a.engine_id, epoch=1), step("z", "5")])
        assert {(s.key, s.value) for s in a.load_steps("i")} == {("k", "1"), ("y", "4")}
        # A new instance on its own: inserted once.
        started = memable.storage.InstanceRecord(
            instance_id="j", workflow="w", status="running", input="{}", created_at=0,
            updated_at=0, owner=a.engine_id, epoch=1, waiting_on=("a",),
        )  # fmt: skip
        assert a.commit([started]) == [True]
        assert a.commit([attrs.evolve(started, input='{"again": 1}')]) == [False]
        assert a.get_instance("j") == started
    finally:
        a.close()


def test_fenced_finish(shared: Factory) -> None:
    """A run's finish with its fence (one statement when nothing else is at stake):
    refused at another epoch, applied once, and a finish with an unfinished child still
    cancels the child (as the rules do)."""
    a = shared()
    a.open()
    try:
        engine = a.engine_id
        assert engine is not None
        for instance_id, parent in (("p", None), ("q", None), ("q/kids-0", "q")):
            a.create_instance(InstanceRecord(
                instance_id=instance_id, workflow="w", status="running", input="{}",
                created_at=0, updated_at=0, parent_id=parent,
                owner=None if parent else engine, epoch=1,
            ))  # fmt: skip

        def finish(instance_id: str, output: str) -> InstanceUpdate:
            return InstanceUpdate(instance_id=instance_id, updated_at=5.0, status="completed",
                                  only_if=("running",), output=output, waiting_on=(),
                                  finished_at=5.0)  # fmt: skip

        with pytest.raises(memable.StorageError, match="no longer held"):
            a.commit([Fence(instance_id="p", owner=engine, epoch=2), finish("p", '"x"')])
        still = a.get_instance("p")
        assert still is not None
        assert (still.status, still.output) == ("running", None)
        assert a.commit([Fence(instance_id="p", owner=engine, epoch=1), finish("p", '"1"')]) == [
            True,
            True,
        ]
        done = a.get_instance("p")
        assert done is not None
        assert (done.status, done.output, done.finished_at, done.owner) == (
            "completed", '"1"', 5.0, None,
        )  # fmt: skip
        # Finished already, and no longer held by anyone: the fence refuses it.
        with pytest.raises(memable.StorageError, match="no longer held"):
            a.commit([Fence(instance_id="p", owner=engine, epoch=1), finish("p", '"2"')])
        assert a.get_instance("p") == done
        # The run's own suspension let go of it: its finish passes at the same epoch.
        shared.sql("UPDATE instances SET owner = NULL WHERE instance_id = 'q'")
        fence = Fence(instance_id="q", owner=engine, epoch=1, suspended=True)
        assert a.commit([fence, finish("q", '"3"')]) == [True, True]
        q, child = a.get_instance("q"), a.get_instance("q/kids-0")
        assert q is not None
        assert child is not None
        assert (q.status, q.output) == ("completed", '"3"')
        assert child.status == "cancelled"
        # Nothing that is not running finishes: the rules' answer, not an error.
        a.create_instance(InstanceRecord(
            instance_id="r", workflow="w", status="suspended", input="{}", created_at=0,
            updated_at=0, owner=engine, epoch=1,
        ))  # fmt: skip
        assert a.commit([Fence(instance_id="r", owner=engine, epoch=1), finish("r", '"4"')]) == [
            True,
            False,
        ]
        r = a.get_instance("r")
        assert r is not None
        assert r.status == "suspended"
    finally:
        a.close()


async def test_clean_shutdown_hands_instances_back_at_once(shared: Factory) -> None:
    """An engine leaving its block lets go of its running instances; a live engine takes
    them over on the hint (well within a lease), and the recorded step is not run again."""
    gate = Gate()
    firsts: list[int] = []

    async def first(n: int) -> int:
        firsts.append(n)
        return n

    async def body(ctx: Context, n: int) -> int:
        return await ctx.step("first", first, n) + await ctx.step("second", gate.body, n)

    wf = memable.Workflow("handed", body)
    async with Engine(shared(lease=60.0), workflows=[wf]) as b:
        async with Engine(shared(lease=60.0), workflows=[wf], shutdown_timeout=0) as a:
            await a.invoke(wf, 1, instance_id="x")
            await gate.reached.wait()
            gate.reached = anyio.Event()
            # "second" runs (blocked) in A; A leaves now.
        with anyio.fail_after(10):  # the lease is 60 s: only the hand-back can be this quick
            await gate.reached.wait()
            gate.release.set()
            assert await b.handle(wf, "x").result() == 11
    assert gate.runs == 2  # "second" in A (cut short by its shutdown) and in B
    assert firsts == [1]  # recorded by A, replayed by B


async def test_a_reaped_engine_stops_its_run_and_another_finishes_it(shared: Factory) -> None:
    """A's lease expires while a step body runs (A is reaped); B takes the instance over
    and finishes it; A's late result is refused and A's run stops: one result recorded."""
    gate = Gate()
    wf = gated(gate)
    storage_a = shared()
    async with Engine(storage_a, workflows=[wf]) as a:
        await a.invoke(wf, 1, instance_id="x")
        await gate.reached.wait()
        # A is reaped as if it had been paused past its lease (its row deleted by a peer).
        shared.sql("DELETE FROM engines WHERE engine_id = %s", storage_a.engine_id)
        async with Engine(shared(), workflows=[wf]) as b:
            while gate.runs < 2:  # B runs "first" again (A never recorded it)
                await anyio.sleep(0.01)
            gate.release.set()  # both bodies return; only one result can be recorded
            assert await b.handle(wf, "x").result() == 20
            outcome = await a.handle(wf, "x").wait()  # A sees what B recorded
            assert outcome == memable.Completed(output=20)
    [(value,)] = shared.sql("SELECT value FROM steps WHERE key = 'first'")
    assert '"value":10' in value.replace(" ", "")


async def test_only_engines_that_register_a_workflow_claim_it(shared: Factory) -> None:
    """Instances nobody holds wait for an engine that registers their workflow."""
    gate = Gate()
    wf, other = gated(gate), waiting("other")
    async with Engine(shared(), workflows=[wf], shutdown_timeout=0) as a:
        await a.invoke(wf, 1, instance_id="x")
        await gate.reached.wait()
    storage = shared()
    async with Engine(storage, workflows=[other]):
        await anyio.sleep(3 * storage.poll_interval)
        [(owner, status)] = shared.sql("SELECT owner, status FROM instances")
        assert (owner, status) == (None, "running")
    gate.release.set()
    async with Engine(shared(), workflows=[wf]) as c:
        assert await c.handle(wf, "x").result() == 20


@pytest.mark.parametrize("listen", [True, False])
async def test_signals_and_waits_across_engines(shared: Factory, listen: bool) -> None:
    """A signal sent through one engine resumes an instance started on another; wait(),
    result() and subscribe() on the first engine follow it (also when only polling)."""
    wf = waiting()
    async with (
        Engine(shared(listen=listen), workflows=[wf]) as a,
        Engine(shared(listen=listen), workflows=[wf]) as b,
    ):
        invocation = await a.invoke(wf, 1, instance_id="s")
        assert isinstance(await invocation.wait(), memable.Suspended)
        seen: list[str] = []

        async def follow() -> None:
            async for status in a.subscribe(wf, "s"):
                seen.append(status.status)

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await anyio.sleep(0.05)
            await b.signal(wf, "s", GO, 41)
            with anyio.fail_after(10):
                assert await invocation.result() == 42
                assert await b.handle(wf, "s").result() == 42
        assert seen[0] == "suspended"
        assert seen[-1] == "completed"


async def test_cancel_through_another_engine_stops_the_run(shared: Factory) -> None:
    """cancel() on B ends an instance that runs on A: A's task is cancelled promptly."""
    gate = Gate()
    wf = gated(gate)
    async with (
        Engine(shared(lease=60.0), workflows=[wf]) as a,
        Engine(shared(lease=60.0), workflows=[wf]) as b,
    ):
        invocation = await a.invoke(wf, 1, instance_id="c")
        await gate.reached.wait()
        assert await b.cancel(wf, "c", reason="enough")
        with anyio.fail_after(10):  # long before the 60 s lease: the hint stops it
            assert await invocation.wait() == memable.Cancelled(reason="enough")
        assert a._runner.live("c") is None
    assert gate.runs == 1


async def test_timers_fire_once_whichever_engines_are_up(shared: Factory) -> None:
    """Durable timers of instances on two engines fire once each; every instance ends."""
    ran: list[str] = []

    async def note(instance_id: str) -> str:
        ran.append(instance_id)
        return instance_id

    async def sleeper(ctx: Context, n: int) -> str:
        await ctx.sleep("nap", timedelta(milliseconds=50 + 10 * (n % 5)))
        done: str = await ctx.step("after", note, ctx.instance_id)
        return done

    wf = memable.Workflow("sleeper", sleeper)
    async with (
        Engine(shared(), workflows=[wf]) as a,
        Engine(shared(), workflows=[wf]) as b,
    ):
        invocations = [await (a if n % 2 else b).invoke(wf, n, instance_id=f"t{n}")
                       for n in range(20)]  # fmt: skip
        with anyio.fail_after(20):
            for invocation in invocations:
                while isinstance(await invocation.wait(), memable.Suspended):
                    await anyio.sleep(0.02)  # wait() returns at a suspension too
                assert await invocation.result() == invocation.instance_id
    assert sorted(ran) == sorted(f"t{n}" for n in range(20))


async def test_same_id_invoked_on_two_engines_runs_once(shared: Factory) -> None:
    """Two engines invoking one id at once: one instance, run once, both get its result."""
    gate = Gate()
    gate.release.set()
    wf = gated(gate)
    async with (
        Engine(shared(), workflows=[wf]) as a,
        Engine(shared(), workflows=[wf]) as b,
    ):
        results: list[int] = []

        async def start(engine: Engine) -> None:
            results.append(await engine.run(wf, 2, instance_id="same"))

        async with anyio.create_task_group() as tg:
            for engine in (a, b, a, b):
                tg.start_soon(start, engine)
    assert results == [30] * 4
    assert gate.runs == 2  # "first" and "second", once each


async def test_signals_arrive_after_the_listener_is_killed(shared: Factory) -> None:
    """pg_terminate_backend on the LISTEN connection: it reconnects, re-polls, and a
    cross-engine signal still resumes the instance."""
    wf = waiting()
    storage_a = shared(lease=60.0)
    async with (
        Engine(storage_a, workflows=[wf]) as a,
        Engine(shared(lease=60.0), workflows=[wf]) as b,
    ):
        invocation = await a.invoke(wf, 1, instance_id="l")
        assert isinstance(await invocation.wait(), memable.Suspended)
        killed = shared.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%%'",
        )
        assert killed
        await b.signal(wf, "l", GO, 1)
        with anyio.fail_after(10):
            assert await invocation.result() == 2


async def test_an_engine_that_cannot_renew_its_lease_stops_its_runs(shared: Factory) -> None:
    """Heartbeats fail (a partition): once the lease has passed since the last renewal the
    engine stops its runs itself, before another engine may take them; one does."""
    gate = Gate()
    wf = gated(gate)
    storage = shared(lease=1.0)
    async with Engine(storage, workflows=[wf]) as a:
        invocation = await a.invoke(wf, 1, instance_id="p")
        await gate.reached.wait()

        def partitioned(held: object) -> list[str] | None:
            raise memable.StorageError("the network is down (injected)")

        storage.heartbeat = partitioned  # type: ignore[method-assign]
        with anyio.fail_after(10):
            while a._runner.live("p") is not None:
                await anyio.sleep(0.05)
        async with Engine(shared(lease=1.0), workflows=[wf]) as b:
            gate.release.set()
            with anyio.fail_after(10):
                assert await b.handle(wf, "p").result() == 20
                assert await invocation.result() == 20


async def test_a_schema_of_version_2_is_migrated_and_works(shared: Factory) -> None:
    """A schema written before signals kept their trace context (version 2) is brought
    up to date by the first engine: its suspended instance and early payload read as
    before, a signal finishes it, and a signal's traceparent is stored from then on."""
    from memable.storage._pgschema import MIGRATIONS, SCHEMA_VERSION

    with psycopg.connect(shared.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {shared.schema}")
        conn.execute(f"SET search_path = {shared.schema}")
        for migration in MIGRATIONS[:2]:
            conn.execute(migration)
        conn.execute("CREATE TABLE schema_version (version integer)")
        conn.execute("INSERT INTO schema_version VALUES (2)")
        conn.execute(
            "INSERT INTO instances (instance_id, workflow, status, input, waiting_on,"
            " created_at, updated_at) VALUES ('old', 'pair', 'suspended', %s, %s, 1.0, 1.0)",
            ('{"type":"None","value":null}', '["one:v1"]'),
        )
        conn.execute(
            "INSERT INTO signals (instance_id, key, payload, created_at, early)"
            " VALUES ('old', 'two:v1', %s, 1.0, true)",
            ('{"type":"str","value":"b"}',),
        )
    one, two = SuspendPoint("one:v1", str), SuspendPoint("two:v1", str)

    @memable.workflow("pair")
    async def pair(ctx: Context) -> str:
        return await ctx.suspend(one) + await ctx.suspend(two)

    async with Engine(shared(), workflows=[pair]) as engine:
        (early,) = (await engine.history(pair, "old")).signals
        assert (early.key, early.state) == ("two:v1", "early")
        await engine.signal(pair, "old", one, "a")
        assert await engine.handle(pair, "old").result() == "ab"
    assert shared.sql("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert SCHEMA_VERSION == 3
    assert shared.sql("SELECT key, trace FROM signals ORDER BY key") == [
        ("one:v1", None),  # no tracer provider: no span, no trace context
        ("two:v1", None),
    ]


def test_a_corrupt_row_is_a_storage_error_naming_the_instance(shared: Factory) -> None:
    """Postgres rows decode as SQLite's do (one decoder): a step, a timer or an instance
    row that does not decode is a StorageError naming the instance and the column."""
    storage = shared()
    storage.open()
    try:
        shared.sql(
            "INSERT INTO instances (instance_id, workflow, status, input, created_at,"
            " updated_at) VALUES ('bad', 'wf', 'running', '{}', 1.0, 1.0)"
        )
        shared.sql(
            "INSERT INTO steps (instance_id, key, state, value, attempts, started_at,"
            " finished_at) VALUES ('bad', 'k:v1', 'weird', 'x', 1, 1.0, 2.0)"
        )
        with pytest.raises(memable.StorageError, match="'bad' has a corrupt row: step 'k:v1'"):
            storage.load_history("bad")
        shared.sql("DELETE FROM steps")
        shared.sql(
            "INSERT INTO timers (instance_id, key, deadline, kind) VALUES ('bad', 't', 1.0, 'x')"
        )
        with pytest.raises(memable.StorageError, match="timer 't': kind is 'x'"):
            storage.load_history("bad")
        shared.sql("UPDATE instances SET waiting_on = 'nope'")
        with pytest.raises(memable.StorageError, match="'bad' has a corrupt row: waiting_on"):
            storage.get_instance("bad")
    finally:
        storage.close()
