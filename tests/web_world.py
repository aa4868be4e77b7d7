"""A small world of instances for the dashboard's tests (and its screenshots): steps with
retries, a failure with a traceback, children, a suspended instance with a deadline, a
durable sleep, early signals."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import anyio

import memable
from memable import Context, Engine, RetryPolicy, SuspendPoint

approval = SuspendPoint("approval:v1", bool)
note = SuspendPoint("note:v1", str)

_tries: dict[str, int] = {}


async def fetch_price(order_id: str) -> int:
    await anyio.sleep(0.03)
    return 40 + len(order_id)


async def reserve(order_id: str) -> str:
    _tries[order_id] = _tries.get(order_id, 0) + 1
    await anyio.sleep(0.01)
    if _tries[order_id] < 3:
        raise ConnectionError("warehouse did not answer")
    return f"slot-{order_id}"


async def print_label(ctx: Context, item: int) -> str:
    return await ctx.step("render:v1", render_label, item)


async def render_label(item: int) -> str:
    await anyio.sleep(0.01 * item)
    return f"label-{item}"


async def charge(order_id: str, price: int) -> str:
    await anyio.sleep(0.02)
    return f"receipt for {order_id}: {price} EUR"


@memable.workflow("order")
async def order(ctx: Context, order_id: str) -> str:
    price = await ctx.step("price:v1", fetch_price, order_id)
    await ctx.step("reserve:v1", reserve, order_id, retry=RetryPolicy.fixed(3, 0.01))
    await ctx.fan_out("label:v1", print_label, [1, 2, 3], limit=2)
    ctx.set_status(f"waiting for approval of {price} EUR")
    if not await ctx.suspend(approval, timeout=timedelta(hours=2)):
        return "rejected"
    return await ctx.step("charge:v1", charge, order_id, price)


async def refund_call(order_id: str) -> str:
    raise memable.Permanent(ValueError(f"order {order_id} was never charged"))


@memable.workflow("refund")
async def refund(ctx: Context, order_id: str) -> str:
    await ctx.step("lookup:v1", fetch_price, order_id)
    return await ctx.step("refund:v1", refund_call, order_id)


@memable.workflow("reminder")
async def reminder(ctx: Context, who: str) -> str:
    await ctx.step("draft:v1", render_label, 1)
    await ctx.sleep("wait:v1", timedelta(days=3))
    return f"reminded {who}"


WORKFLOWS = (order, refund, reminder)


async def populate(engine: Engine) -> None:
    """Start the world's instances and wait until each has completed, failed or suspended."""
    _tries.clear()
    for i in (1, 2):
        await (await engine.invoke(order, f"o-{i}", instance_id=f"order-o-{i}")).wait()
    await engine.signal(order, "order-o-2", approval, True)
    await engine.handle(order, "order-o-2").wait()
    await (await engine.invoke(refund, "o-9", instance_id="refund-o-9")).wait()
    await (await engine.invoke(reminder, "ada", instance_id="reminder-ada")).wait()


@contextlib.contextmanager
def serving(path: str, *, allow_actions: bool, backend: str = "asyncio") -> Iterator[str]:
    """Run an engine on *path* with the world in it, and the dashboard over the same file
    (read-only; actions through the engine's inbox) served by uvicorn on 127.0.0.1 (a free
    port), in a thread; yield the dashboard's URL."""
    import uvicorn

    import memable.web

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    ready = threading.Event()
    failed: list[BaseException] = []
    servers: list[uvicorn.Server] = []

    async def main() -> None:
        async with Engine(path, workflows=WORKFLOWS) as engine:
            await populate(engine)
            app = memable.web.app(
                path, allow_actions=allow_actions, points=[approval, note], poll=0.2
            )
            server = uvicorn.Server(
                uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
            )
            servers.append(server)
            ready.set()
            await server.serve(sockets=[sock])

    def run() -> None:
        try:
            anyio.run(main, backend=backend)
        except BaseException as exc:  # reported by the caller
            failed.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(60)
    if failed:
        raise failed[0]
    server = servers[0]
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    if failed:
        raise failed[0]
