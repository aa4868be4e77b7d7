"""``memable demo``: a real durable workflow that survives a killed process."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import typing
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar

import anyio
import attrs

from ._context import Context
from ._engine import Engine
from ._workflow import Workflow

__all__ = ["run_demo"]

T = TypeVar("T")


@attrs.frozen
class Order:
    order_id: str
    amount: Decimal


@attrs.frozen
class Receipt:
    order_id: str
    reservation: str
    charge: str
    tracking: str


def _token(prefix: str, *parts: str) -> str:
    return prefix + hashlib.sha256("/".join(parts).encode()).hexdigest()[:6].upper()


def _say(line: str) -> None:
    print(line, flush=True)


def _make_workflow(crash_at: str | None) -> Workflow[Order, Receipt]:
    """The demo's order workflow; *crash_at* names a step whose body kills the process."""

    async def slow(label: str) -> None:
        _say(f"      {label} ...")
        await anyio.sleep(0.2)

    async def reserve_stock(order: Order) -> str:
        await slow(f"reserving stock for {order.order_id}")
        return _token("RSV-", order.order_id)

    async def charge_card(order: Order) -> str:
        await slow(f"charging {order.amount} EUR")
        return _token("CHG-", order.order_id, str(order.amount))

    async def ship(order: Order) -> str:
        await slow("booking the courier")
        if crash_at == "ship:v1":
            _say("      *** the process is killed (SIGKILL) before 'ship:v1' is recorded ***")
            if hasattr(signal, "SIGKILL"):
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(137)  # pragma: no cover - where there is no SIGKILL
        return _token("TRK-", order.order_id)

    async def send_email(order: Order, tracking: str) -> bool:
        await slow(f"e-mailing tracking number {tracking}")
        return True

    async def step(
        ctx: Context,
        key: str,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
    ) -> T:
        ran = False

        async def body() -> T:
            nonlocal ran
            ran = True
            return await fn(*args)

        result: T = await ctx.step(key, body, returns=typing.get_type_hints(fn)["return"])
        verdict = "ran and was recorded" if ran else "recorded earlier: skipped"
        _say(f"  step {key:<18} {verdict} -> {result!r}")
        return result

    async def order_workflow(ctx: Context, order: Order) -> Receipt:
        reservation = await step(ctx, "reserve-stock:v1", reserve_stock, order)
        charge = await step(ctx, "charge-card:v1", charge_card, order)
        tracking = await step(ctx, "ship:v1", ship, order)
        await step(ctx, "send-email:v1", send_email, order, tracking)
        return Receipt(order.order_id, reservation, charge, tracking)

    return Workflow("demo-order", order_workflow)


def run_demo(db: str, *, backend: str = "asyncio", crash_run: str | None = None) -> int:
    """Run the demo on the SQLite file *db*; return the exit status."""
    if crash_run is not None:
        anyio.run(_crashing_run, db, crash_run, backend=backend)
        return 1  # not reached: the process kills itself
    return anyio.run(_demo, os.path.abspath(db), backend, backend=backend)


async def _crashing_run(db: str, instance_id: str) -> None:
    wf = _make_workflow(crash_at="ship:v1")
    async with Engine(db, workflows=[wf]) as engine:
        await engine.run(wf, _order(instance_id), instance_id=instance_id)


def _order(instance_id: str) -> Order:
    return Order(instance_id, Decimal("12.50"))


async def _demo(path: str, backend: str) -> int:
    _say(f"memable demo: a durable order workflow on {path}\n")
    # A fresh engine first: the database may hold instances from earlier demos, which it
    # recovers or leaves alone. Pick a new instance id.
    wf = _make_workflow(crash_at=None)
    async with Engine(path, workflows=[wf]) as engine:
        count = len(await engine.instances(wf, limit=None))
    instance_id = f"order-{count + 1}"

    _say(f"Run 1, in a child process that is killed half-way ({instance_id}):")
    child = await anyio.run_process(
        [sys.executable, "-m", "memable", "demo", "--db", path, "--backend", backend,
         "--crash-run", instance_id],
        stdout=None,
        stderr=None,
        check=False,
    )  # fmt: skip
    _say(f"  the child process died (exit status {child.returncode}).\n")

    _say("Run 2, a fresh engine on the same file recovers the instance:")
    async with Engine(path, workflows=[wf]) as engine:
        state = await engine.state(wf, instance_id)
        receipt = await engine.handle(wf, instance_id).result()
        _say(f"  completed: {receipt}\n")

        _say("Run 3, invoking the same instance id again runs nothing:")
        again = await engine.run(wf, _order(instance_id), instance_id=instance_id)
        _say(f"  the stored receipt: {again}\n")
        final = await engine.state(wf, instance_id)
    _say(
        f"The instance {instance_id!r} was {state.status!r} when run 2 began and is"
        f" {final.status!r} now. Run the demo again to add another order to {path}."
    )
    return 0 if receipt == again else 1
