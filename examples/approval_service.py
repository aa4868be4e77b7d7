"""An order approval service over HTTP: a Starlette app with the engine in its lifespan.

- ``POST /orders`` ``{"order_id": "o-17", "item": "lamp", "cents": 1250}`` starts an order
  (idempotent: the order id is the instance id).
- ``POST /orders/{id}/approve`` ``{"approver": "ada", "approved": true}`` signals it.
- ``GET /orders/{id}`` shows its state (status, message, what it waits on, the receipt)
  and its history (steps, signals, timers).

The order waits for a typed :class:`Approval` for two days at most; after one day a
sibling task's durable timer sends the manager a reminder. Run it with uvicorn (asyncio)
or hypercorn on trio::

    python -m pip install uvicorn && uvicorn approval_service:app
    python -m pip install hypercorn && hypercorn approval_service:app --worker-class trio

(from the ``examples/`` folder), then
``curl -X POST localhost:8000/orders -d '{"order_id": "o-17", "item": "lamp", "cents": 1250}'``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import anyio
import attrs
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import memable
from memable import Clock, Context, Engine, SuspendPoint


@attrs.frozen
class Order:
    order_id: str
    item: str
    cents: int


@attrs.frozen
class Approval:
    approver: str
    approved: bool


@attrs.frozen
class Receipt:
    order_id: str
    status: str  # "charged", "refused" or "expired"
    charge_id: str | None = None
    approver: str | None = None


#: What the outside world saw, for the demo and the tests (a real service e-mails, charges).
SENT: list[str] = []


async def send_reminder(order_id: str) -> None:
    SENT.append(f"reminder:{order_id}")  # imagine an e-mail to the manager


async def charge(order_id: str, cents: int) -> str:
    SENT.append(f"charge:{order_id}")  # imagine a payment API, with an idempotency key
    return f"ch-{order_id}-{cents}"


approval = SuspendPoint("approval:v1", Approval)


@memable.workflow("order")
async def order(ctx: Context, order: Order) -> Receipt:
    async def remind() -> None:
        await ctx.sleep("remind-after:v1", timedelta(days=1))
        await ctx.step("remind:v1", send_reminder, order.order_id)

    async with anyio.create_task_group() as tg:
        tg.start_soon(remind)
        try:
            decision = await ctx.suspend(
                approval,
                status=f"approve {order.item} for {order.cents}?",
                timeout=timedelta(days=2),
            )
        except memable.SuspendTimeout:
            return Receipt(order.order_id, "expired")
        finally:
            tg.cancel_scope.cancel()  # no reminder once decided
    if not decision.approved:
        return Receipt(order.order_id, "refused", approver=decision.approver)
    charge_id = await ctx.step("charge:v1", charge, order.order_id, order.cents)
    return Receipt(order.order_id, "charged", charge_id, decision.approver)


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def create_order(request: Request) -> JSONResponse:
    body = await request.json()
    try:
        new = Order(str(body["order_id"]), str(body["item"]), int(body["cents"]))
        invocation = await engine_of(request).invoke(order, new, instance_id=new.order_id)
    except (KeyError, ValueError, TypeError) as exc:  # InvalidKey is a ValueError
        return JSONResponse({"error": str(exc)}, status_code=400)
    except memable.InstanceConflict as exc:
        return JSONResponse({"error": str(exc)}, status_code=409)
    return JSONResponse({"order_id": invocation.instance_id}, status_code=202)


async def approve(request: Request) -> JSONResponse:
    order_id = request.path_params["order_id"]
    body = await request.json()
    payload = Approval(str(body["approver"]), bool(body["approved"]))
    try:
        await engine_of(request).signal(order, order_id, approval, payload)
    except memable.InstanceNotFound as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    except (memable.SignalSuperseded, memable.SignalRejected) as exc:
        return JSONResponse({"error": str(exc)}, status_code=409)
    return JSONResponse({"order_id": order_id}, status_code=202)


async def show(request: Request) -> JSONResponse:
    order_id = request.path_params["order_id"]
    engine = engine_of(request)
    try:
        info = await engine.state(order, order_id)
    except (memable.InstanceNotFound, ValueError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    state: dict[str, Any] = {
        "order_id": order_id,
        "status": info.status,
        "message": info.status_message,
        "waiting_on": list(info.waiting_on),
        "created_at": info.created_at.isoformat(),
    }
    if info.status == "completed":
        state["receipt"] = attrs.asdict(await engine.handle(order, order_id).result())
    if info.error is not None:
        state["error"] = f"{info.error.type}: {info.error.message}"
    history = await engine.history(order, order_id)
    state["history"] = {
        "steps": [f"{step.key} {step.state} ({step.attempts} attempts)" for step in history.steps],
        "signals": [f"{signal.key} {signal.state}" for signal in history.signals],
        "timers": [
            f"{timer.key} {'fired' if timer.fired else 'due'} {timer.deadline.isoformat()}"
            for timer in history.timers
        ],
    }
    return JSONResponse(state)


def create_app(path: str = "orders.db", *, clock: Clock | None = None) -> Starlette:
    """The service, storing in the SQLite file *path*."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The engine's task group lives as long as the server: instances run in it, and
        # leaving the block at shutdown waits for them (then recovers them next start).
        async with Engine(path, workflows=[order], clock=clock, shutdown_timeout=5) as engine:
            app.state.engine = engine
            yield

    routes = [
        Route("/orders", create_order, methods=["POST"]),
        Route("/orders/{order_id}", show, methods=["GET"]),
        Route("/orders/{order_id}/approve", approve, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


app = create_app(os.environ.get("ORDERS_DB", "orders.db"))
