"""The dashboard's routes (``memable.web``), on asyncio and trio, over every storage."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import httpx
import pytest

import memable
import memable.web
from memable import Engine
from memable.storage import SQLiteStorage, Storage

from .helpers import StorageFactory
from .web_world import WORKFLOWS, approval, note, order, populate, refund

TOP = ["order-o-1", "order-o-2", "refund-o-9", "reminder-ada"]


def client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
        base_url="http://127.0.0.1",
    )


@pytest.fixture
async def world(make_storage: StorageFactory) -> AsyncIterator[tuple[Engine, Storage]]:
    storage = make_storage()
    async with Engine(storage, workflows=WORKFLOWS) as engine:
        await populate(engine)
        yield engine, storage


def ids(html: str) -> list[str]:
    return re.findall(r'<tr class="instance \w+(?: sub)?" data-id="([^"]+)"', html)


async def test_instance_list_rows_counts_filters_and_pages(
    world: tuple[Engine, Storage],
) -> None:
    _, storage = world
    async with client(memable.web.app(storage)) as http:
        page = await http.get("/")
        assert page.status_code == 200
        shown = ids(page.text)
        assert set(TOP) <= set(shown)
        assert len(shown) == len(TOP) + 6  # and the six label children
        found = re.findall(r'<span class="n">(\d+)</span><span class="what">\S+ (\w+)', page.text)
        counts = {state: n for n, state in found}
        assert counts == {
            "enqueued": "0", "running": "0", "suspended": "2", "completed": "7", "failed": "1",
            "cancelled": "0",
        }  # fmt: skip
        assert ids((await http.get("/?status=failed")).text) == ["refund-o-9"]
        assert ids((await http.get("/?waiting_on=approval:v1")).text) == ["order-o-1"]
        assert ids((await http.get("/?workflow=reminder&age=1h")).text) == ["reminder-ada"]
        # Pages of two, newest first, follow the cursor to the end with nothing twice.
        seen: list[str] = []
        url = "/?limit=2"
        while url:
            text = (await http.get(url)).text
            seen += ids(text)
            cursor = re.search(r'<a rel="next" href="([^"]+)"', text)
            url = cursor.group(1).replace("&amp;", "&") if cursor else ""
        assert seen == shown
        bad = await http.get("/?status=sleeping")
        assert bad.status_code == 400
        assert "status must be one of" in bad.text


async def test_instance_page_timeline_waits_children_and_errors(
    world: tuple[Engine, Storage],
) -> None:
    _, storage = world
    async with client(memable.web.app(storage, points=[approval])) as http:
        page = (await http.get("/instances/order-o-1")).text
        executed = len(storage.load_steps("order-o-1")) + sum(
            len(storage.load_steps(f"order-o-1/label:v1-{i}")) for i in range(3)
        )
        assert executed == 6
        svg = re.search(r"<svg class=\"gantt\".*?</svg>", page, re.S)
        assert svg is not None
        assert len(re.findall(r'<rect class="bar step ', svg.group(0))) == executed
        assert 'data-key="reserve:v1"' in svg.group(0)
        assert "\u00d73" in svg.group(0)
        assert len(re.findall(r'<rect class="bar child completed"', svg.group(0))) == 3
        assert (
            "<code>approval:v1</code></td><td>signal</td><td><span class=type>bool</span>" in page
        )
        assert re.search(r'class="countdown" data-deadline="[\d.]+">in 1 h 59 min', page)
        assert page.count('href="/instances/order-o-1/label:v1-') >= 3  # children linked
        failed = (await http.get("/instances/refund-o-9")).text
        assert "<strong>memable.StepFailed</strong>: step &#x27;refund:v1&#x27; failed" in failed
        assert '<pre class="traceback">ValueError: order o-9 was never charged' in failed
        child = await http.get("/instances/order-o-1/label:v1-2")
        assert child.status_code == 200
        assert "render:v1" in child.text
        missing = await http.get("/instances/nope")
        assert missing.status_code == 404
        assert "No instance <code>nope</code>" in missing.text


async def test_failures_retries_and_early_signals_are_marked(
    world: tuple[Engine, Storage],
) -> None:
    engine, storage = world
    # A payload for a point order-o-1 has not reached: kept, and shown as early.
    await engine.signal(order, "order-o-1", note, "gift wrap")
    # A failed instance resumed: its dead letter stays as an earlier attempt.
    await (await engine.resume(refund, "refund-o-9")).wait()
    async with client(memable.web.app(storage)) as http:
        page = (await http.get("/instances/order-o-1")).text
        assert '<td><code>note:v1</code></td><td><span class="tag early">early</span>' in page
        assert '<span class="type">str</span> <code>&quot;gift wrap&quot;</code>' in page
        failed = (await http.get("/instances/refund-o-9")).text
        svg = re.search(r"<svg class=\"gantt\".*?</svg>", failed, re.S)
        assert svg is not None
        refunds = re.findall(
            r'<rect class="bar (\w+) (\w+)"[^>]*data-key="refund:v1"', svg.group(0)
        )
        assert refunds == [("attempt", "retried"), ("step", "dead")]  # on one row, in order
        assert svg.group(0).count('class="fail-mark"') == 2
        detail = (await http.get("/api/instances/refund-o-9")).json()
        assert [s["state"] for s in detail["steps"]] == ["completed", "retried", "dead"]


async def test_stored_text_is_escaped(make_storage: StorageFactory) -> None:
    storage = make_storage()
    async with Engine(storage, workflows=WORKFLOWS) as engine:
        await (
            await engine.invoke(order, "<img src=x onerror=alert(1)>", instance_id="<b>x")
        ).wait()
        async with client(memable.web.app(storage)) as http:
            for url in ("/", "/instances/<b>x"):
                text = (await http.get(url)).text
                assert "<b>x" not in text
                assert "&lt;b&gt;x" in text
                assert "<img" not in text


async def test_json_api(world: tuple[Engine, Storage]) -> None:
    _, storage = world
    async with client(memable.web.app(storage)) as http:
        listing = (await http.get("/api/instances?status=suspended")).json()
        assert [i["instance_id"] for i in listing["items"]] == ["reminder-ada", "order-o-1"]
        assert listing["counts"]["completed"] == 7
        detail = (await http.get("/api/instances/order-o-1")).json()
        assert detail["instance"]["waiting_on"] == ["approval:v1"]
        assert [s["key"] for s in detail["steps"]] == ["price:v1", "reserve:v1", "label:v1"]
        assert detail["steps"][1]["attempts"] == 3
        assert [t["kind"] for t in detail["timers"]] == ["timeout"]
        assert len(detail["children"]) == 3
        failed = (await http.get("/api/instances/refund-o-9")).json()
        assert failed["instance"]["error"]["type"] == "memable.StepFailed"
        assert (await http.get("/api/instances/nope")).status_code == 404


async def test_live_updates_send_the_page_when_it_changes(db_path: Path) -> None:
    async with Engine(db_path, workflows=WORKFLOWS) as engine:
        await populate(engine)
        app = memable.web.app(db_path, poll=0.05)  # read-only, beside the live engine
        async with client(app) as http:
            page = (await http.get("/instances/order-o-1")).text
            version = re.search(r'data-version="(\d+)"', page)
            assert version is not None
            url = f"/events?view=instance&id=order-o-1&version={version.group(1)}&events=1"
            got: list[str] = []

            async def follow() -> None:
                got.append((await http.get(url)).text)

            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                await anyio.sleep(0.3)
                assert not got  # nothing changed: nothing sent
                await engine.signal(order, "order-o-1", approval, True)
            assert "event: update" in got[0]
            # The signal and the claim are one transaction: the first new snapshot has both.
            assert '<span class="tag delivered">delivered</span>' in got[0]
            head = re.search(r'<span class="id">order-o-1</span> <span class="badge (\w+)"', got[0])
            assert head is not None
            assert head.group(1) in ("running", "completed")


async def test_actions_need_the_flag_a_csrf_token_and_a_good_payload(db_path: Path) -> None:
    async with Engine(db_path, workflows=WORKFLOWS) as engine:
        await populate(engine)
        read_only = memable.web.app(db_path)
        async with client(read_only) as http:
            refused = await http.post("/actions/signal", data={"id": "order-o-1"})
            assert refused.status_code == 403
            assert "read-only" in refused.text
        app = memable.web.app(db_path, allow_actions=True, points=[approval])
        async with client(app) as http:
            page = (await http.get("/instances/order-o-1")).text
            token = re.search(r'name="csrf" value="([^"]+)"', page)
            assert token is not None
            form = {"id": "order-o-1", "key": "approval:v1", "payload": "true"}
            wrong = await http.post("/actions/signal", data={**form, "csrf": "guess"})
            assert wrong.status_code == 403
            assert "CSRF" in wrong.text
            cross = await http.post(
                "/actions/signal",
                data={**form, "csrf": token.group(1)},
                headers={"origin": "http://evil.example"},
            )
            assert cross.status_code == 403
            typed = await http.post(
                "/actions/signal", data={**form, "payload": '"yes"', "csrf": token.group(1)}
            )
            assert typed.status_code == 400
            assert "approval:v1" in typed.text
            not_json = await http.post(
                "/actions/signal", data={**form, "payload": "{", "csrf": token.group(1)}
            )
            assert not_json.status_code == 400
            assert "not JSON" in not_json.text
            sent = await http.post(
                "/actions/signal",
                data={**form, "csrf": token.group(1)},
                headers={"accept": "application/json"},
            )
            assert sent.status_code == 200, sent.text
            assert sent.json()["outcome"] == "claimed"
            outcome = await engine.handle(order, "order-o-1").wait()
            assert isinstance(outcome, memable.Completed)


def test_memable_web_serves_on_trio_with_hypercorn(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    SQLiteStorage(path).open()  # an empty database of this version (closed at exit)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "memable", "web", "--db", str(path), "--port", str(port),
               "--backend", "trio"]  # fmt: skip
    env = {"PYTHONPATH": str(Path(memable.__file__).parent.parent), "PATH": "/usr/bin:/bin"}
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as server:
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    answer = httpx.get(f"http://127.0.0.1:{port}/api/instances", timeout=5)
                    break
                except httpx.TransportError:
                    assert server.poll() is None, server.stderr.read() if server.stderr else ""
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            assert answer.json() == {
                "items": [], "next": None,
                "counts": dict.fromkeys(
                    ["enqueued", "running", "suspended", "completed", "failed", "cancelled"], 0
                ),
                "counts_stop_at": 10_001,
            }  # fmt: skip
            assert answer.headers["x-frame-options"] == "DENY"
        finally:
            server.terminate()


def test_memable_web_says_what_is_wrong(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "memable", "web", "--db", str(tmp_path / "none.db")],
        env={"PYTHONPATH": str(Path(memable.__file__).parent.parent), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("memable: error: no SQLite database at")


async def test_actions_say_why_nothing_was_done(
    make_storage: StorageFactory, tmp_path: Path
) -> None:
    storage = make_storage()
    async with Engine(storage, workflows=WORKFLOWS) as engine:
        await populate(engine)
        async with client(memable.web.app(storage, allow_actions=True)) as http:
            page = (await http.get("/instances/order-o-1")).text
            token = re.search(r'name="csrf" value="([^"]+)"', page)
            assert token is not None
            answer = await http.post(
                "/actions/resume",
                data={"id": "order-o-1", "csrf": token.group(1)},
                headers={"accept": "application/json"},
            )
            # Only an engine applies actions, through the inbox of its SQLite file (the
            # engine's own storage object will do, in its process); on Postgres they are
            # written directly (the engines pick them up); in memory there is none.
            if isinstance(storage, SQLiteStorage):
                assert answer.status_code == 200, answer.text
                assert answer.json()["message"] == "instance 'order-o-1' is running"
            elif hasattr(storage, "list_engines"):
                assert answer.status_code == 200, answer.text
                assert answer.json() == {
                    "message": "instance 'order-o-1' runs on an engine of its workflow",
                    "outcome": "running",
                }
            else:
                assert answer.status_code == 409
                assert "has no inbox" in answer.json()["error"]
            missing = await http.post(
                "/actions/cancel",
                data={"id": "nope", "csrf": token.group(1)},
                headers={"accept": "application/json"},
            )
            assert missing.status_code == 404
            assert missing.json()["error"] == "no instance 'nope'"
    if isinstance(storage, SQLiteStorage):  # the file, with no engine on it any more
        stopped = memable.web.app(storage.path, allow_actions=True)
        async with client(stopped) as http:
            page = (await http.get("/instances/order-o-1")).text
            token = re.search(r'name="csrf" value="([^"]+)"', page)
            assert token is not None
            answer = await http.post(
                "/actions/signal",
                data={"id": "order-o-1", "key": "approval:v1", "csrf": token.group(1)},
            )
            assert answer.status_code == 409
            assert "no engine runs on this database" in answer.text


async def test_a_second_signal_is_refused_with_the_engines_answer(db_path: Path) -> None:
    async with Engine(db_path, workflows=WORKFLOWS) as engine:
        await populate(engine)
        app = memable.web.app(db_path, allow_actions=True)
        async with client(app) as http:
            page = (await http.get("/instances/order-o-2")).text
            token = re.search(r'name="csrf" value="([^"]+)"', page)
            assert token is not None
            form = {"id": "order-o-2", "key": "approval:v1", "payload": "false"}
            answer = await http.post("/actions/signal", data={**form, "csrf": token.group(1)})
            assert answer.status_code == 409
            assert "is completed; nothing stored" in answer.text
            assert answer.text.startswith('<p class="problem">')


async def test_mounted_under_a_prefix(world: tuple[Engine, Storage]) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    _, storage = world
    outer = Starlette(routes=[Mount("/ops/memable", app=memable.web.app(storage))])
    async with client(outer) as http:
        page = await http.get("/ops/memable/")
        assert page.status_code == 200
        assert 'href="/ops/memable/instances/order-o-1"' in page.text
        assert 'src="/ops/memable/static/htmx.min.js"' in page.text
        assert (await http.get("/ops/memable/static/htmx.min.js")).status_code == 200
        detail = await http.get("/ops/memable/instances/order-o-1/label:v1-0")
        assert 'href="/ops/memable/instances/order-o-1"' in detail.text  # its parent


async def test_counts_stop_at_their_cap(
    make_storage: StorageFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memable.web import _source

    monkeypatch.setattr(_source, "COUNT_CAP", 3)
    monkeypatch.setattr(_source, "SLOW_COUNT_CAP", 3)
    storage = make_storage()
    async with Engine(storage, workflows=WORKFLOWS) as engine:
        for i in range(5):
            await (await engine.invoke(refund, f"r-{i}")).wait()
        async with client(memable.web.app(storage)) as http:
            page = (await http.get("/")).text
            assert '<span class="n">3+</span><span class="what">✕ failed</span>' in page
            assert '<span class="n">0</span><span class="what">● running</span>' in page
            counts = (await http.get("/api/instances")).json()
            assert counts["counts"]["failed"] == 4  # more than the cap: 3+
            assert counts["counts_stop_at"] == 4


class _WithQueues:
    """A storage that also lists queues and schedules (the shapes the queue feature
    stores: a queue's row with its counts per status, a schedule's row)."""

    def __init__(
        self, storage: Storage, queues: Sequence[object], schedules: Sequence[object]
    ) -> None:
        self._storage = storage
        self._queues = queues
        self._schedules = schedules

    def __getattr__(self, name: str) -> object:
        return getattr(self._storage, name)

    def list_queues(self) -> Sequence[object]:
        return self._queues

    def list_schedules(self) -> Sequence[object]:
        return self._schedules


async def test_queue_and_schedule_pages_appear_when_the_storage_has_them(
    world: tuple[Engine, Storage],
) -> None:
    import attrs

    @attrs.frozen
    class Queue:
        name: str
        concurrency: int | None
        rate_count: int | None
        rate_period: float | None
        paused: bool

    @attrs.frozen
    class Schedule:
        name: str
        last_tick: float
        last_run: str | None

    _, storage = world
    async with client(memable.web.app(storage)) as http:
        plain = (await http.get("/")).text
        # Queue pages are shown exactly when the storage can list queues.
        has_queues = callable(getattr(storage, "list_queues", None))
        assert ('href="/queues"' in plain) == has_queues
        assert (await http.get("/queues")).status_code == (200 if has_queues else 404)
    queues = [(Queue("emails", 10, 5, 60.0, False), {"enqueued": 3, "running": 2})]
    schedules = [Schedule("report", 1_800_000_000.0, "order-o-1")]
    richer = _WithQueues(storage, queues, schedules)
    async with client(memable.web.app(richer)) as http:  # type: ignore[arg-type]
        home = (await http.get("/")).text
        assert 'href="/queues">Queues</a>' in home
        assert 'href="/schedules">Schedules</a>' in home
        assert ('href="/engines"' in home) == hasattr(storage, "list_engines")
        page = (await http.get("/queues")).text
        assert "<td>emails</td><td>10</td><td>5 per 60.0 s</td>" in page
        assert "<td>3</td><td>2</td><td>0</td>" in page  # enqueued, running, suspended
        page = (await http.get("/schedules")).text
        assert '<a href="/instances/order-o-1">order-o-1</a>' in page
        assert 'data-t="1800000000.000"' in page
        listed = (await http.get("/api/queues")).json()
        assert listed == [
            {"name": "emails", "concurrency": 10, "rate_count": 5, "rate_period": 60.0,
             "paused": False, "enqueued": 3, "running": 2}
        ]  # fmt: skip


def test_memable_web_imports_modules_for_their_suspend_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memable.web._serve import points_of

    (tmp_path / "flows_for_the_dashboard.py").write_text(
        "import memable\n"
        "approval = memable.SuspendPoint('approval:v1', bool)\n"
        "notes = memable.SuspendPoint('note:v1', list[str])\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    points = points_of(["flows_for_the_dashboard"])
    assert sorted((p.key, p.payload_type) for p in points) == [
        ("approval:v1", bool), ("note:v1", list[str])
    ]  # fmt: skip
    with pytest.raises(ValueError, match="cannot import 'no_such_flows': ModuleNotFoundError"):
        points_of(["no_such_flows"])
    done = subprocess.run(
        [sys.executable, "-m", "memable", "web", "--db", "x.db", "--import", "no_such_flows"],
        env={"PYTHONPATH": str(Path(memable.__file__).parent.parent), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "memable: error: cannot import 'no_such_flows'" in done.stderr


async def _same(ctx: memable.Context, item: int) -> int:
    return item


@memable.workflow("many")
async def many(ctx: memable.Context) -> list[int]:
    return await ctx.fan_out("each:v1", _same, list(range(60)), limit=30)


async def test_a_large_fan_out_shows_a_bounded_number_of_children(
    make_storage: StorageFactory,
) -> None:
    storage = make_storage()
    async with Engine(storage, workflows=[many]) as engine:
        assert len(await engine.run(many, instance_id="many-1")) == 60
        async with client(memable.web.app(storage)) as http:
            page = (await http.get("/instances/many-1")).text
            assert page.count('<tr class="child completed">') == 50
            assert "more children are not shown" in page
            assert page.count('<rect class="bar child completed"') == 50
            detail = (await http.get("/api/instances/many-1")).json()
            assert len(detail["children"]) == 50
