"""The workflows behind the command-line tests, and an engine process serving them.

``python app.py make DB`` writes a database with instances in every interesting state;
``python app.py serve DB`` runs an engine on it (printing ``ready``) until the instance
``o1`` completes, then prints ``done <its result>``. With a Postgres URL and a schema
(``python app.py serve URL SCHEMA``) the engine also runs ``h1``, which blocks in a step
until it is cancelled (printing ``h1 cancelled``) before ``ready``.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

import anyio

import memable
from memable import Context, Engine, RetryPolicy, SuspendPoint
from memable.storage import Storage

APPROVAL = SuspendPoint("approval:v1", bool)


async def price(n: int) -> int:
    return n * 7


async def out_of_stock(n: int) -> int:
    raise ValueError(f"no stock for {n}")


async def label(ctx: Context, item: str) -> str:
    return f"label {item}"


@memable.workflow("order")
async def order(ctx: Context, n: int) -> str:
    cents = await ctx.step("price:v1", price, n)
    ctx.set_status("waiting for a manager")
    approved = await ctx.suspend(APPROVAL, timeout=timedelta(days=2))
    return f"{cents} {'approved' if approved else 'rejected'}"


@memable.workflow("broken")
async def broken(ctx: Context, n: int) -> int:
    await ctx.step("price:v1", price, n)
    return await ctx.step("stock:v1", out_of_stock, n, retry=RetryPolicy.fixed(2, 0))


@memable.workflow("nap")
async def nap(ctx: Context) -> None:
    await ctx.sleep("nap:v1", timedelta(hours=1))


@memable.workflow("fan")
async def fan(ctx: Context) -> list[str]:
    return await ctx.fan_out("label:v1", label, ["a", "b", "c"])


@memable.workflow("hold")
async def hold(ctx: Context) -> None:
    await ctx.step("block:v1", anyio.sleep_forever)


WORKFLOWS: list[memable.Workflow[Any, Any]] = [order, broken, nap, fan, hold]


def storage(db: str, schema: str | None = None) -> str | Storage:
    """*db*, or with a *schema* the Postgres storage of that schema."""
    if schema is None:
        return db
    from memable.storage import PostgresStorage

    return PostgresStorage(db, schema=schema, pool_size=4)


async def make(db: str | Storage, schema: str | None = None) -> None:
    """Completed (c1, f1 and its children), failed with a dead letter (b1), suspended on
    a signal with a deadline (o1), suspended on a timer (n1); created in that order."""
    async with Engine(storage(db, schema) if isinstance(db, str) else db,
                      workflows=WORKFLOWS) as engine:  # fmt: skip
        await (await engine.invoke(order, 1, instance_id="c1")).wait()
        await engine.signal(order, "c1", APPROVAL, True)
        await engine.handle(order, "c1").result(finished=True)
        await (await engine.invoke(broken, 4, instance_id="b1")).wait()
        await (await engine.invoke(order, 3, instance_id="o1")).wait()
        await (await engine.invoke(nap, instance_id="n1")).wait()
        await engine.run(fan, instance_id="f1")


async def serve(db: str, schema: str | None = None) -> None:
    async with Engine(storage(db, schema), workflows=WORKFLOWS) as engine:
        if schema is not None:
            held = await engine.invoke(hold, instance_id="h1")
        print("ready", flush=True)
        result = await engine.handle(order, "o1").result(finished=True)
        if schema is not None:
            print("h1", type(await held.wait(finished=True)).__name__.lower(), flush=True)
        print("done", result, flush=True)


if __name__ == "__main__":
    db, schema = sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else None)
    anyio.run(make if sys.argv[1] == "make" else serve, db, schema)
