"""The workflows that wrote ``tests/data/v1.db``, shared by its generator and its test.

``make_v1_db.py`` runs them with memable's first storage format; ``tests/test_compat.py``
opens that file with the code of the day and finishes the instances. Everything stored
depends on what is here — workflow names, step, point and timer keys, input and output
types, the module path of the attrs classes (it is part of their stored type name) — so
**never change any of it**: a new behaviour gets a new workflow, not an edit of these.

Step bodies are deterministic (a re-run computes what the first run did) and note every
call in the ``ran`` list handed to :func:`make_workflows`, as ``(instance_id, key)``, so
a test can tell which bodies ran again.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import attrs

import memable
from memable import Context, SuspendPoint, Workflow

__all__ = [
    "APPROVAL",
    "CANCELLED",
    "CRASHED",
    "DEADLINE",
    "DONE",
    "EARLY_RUNNING",
    "EARLY_SUSPENDED",
    "FAILED",
    "FAN",
    "GENERATED_AT",
    "LABEL_GO",
    "PAYMENT",
    "SUSPENDED",
    "TIMER",
    "Approval",
    "Receipt",
    "V1Workflows",
    "make_workflows",
]

#: The generator's ManualClock stands at this time throughout: every stored timestamp
#: is this one, and deadlines are counted from it.
GENERATED_AT = datetime(2026, 1, 1, tzinfo=UTC)


@attrs.frozen(kw_only=True)
class Receipt:
    """The output of ``order``: an attrs class with a Decimal, a tuple and a datetime."""

    order_id: str
    total: Decimal
    lines: tuple[str, ...]
    charged_at: datetime


@attrs.frozen(kw_only=True)
class Approval:
    """A signal payload of a class type."""

    by: str
    amount: Decimal


APPROVAL = SuspendPoint("approval:v1", bool)
PAYMENT = SuspendPoint("payment:v1", Approval)
LABEL_GO = SuspendPoint("label-go:v1", str)

# The instances of v1.db, and the state the generator left each in.
DONE = "done"  # order("o-1"): completed
CRASHED = "crashed"  # order("o-2"): running, crashed before "lines:v1"
SUSPENDED = "suspended"  # approval("ann"): suspended on APPROVAL
TIMER = "timer"  # timer(41): suspended on "cool-off:v1", due at GENERATED_AT + 1 h
DEADLINE = "deadline"  # deadline("bob"): suspended on APPROVAL, timeout at GENERATED_AT + 2 d
EARLY_RUNNING = "early-running"  # pay("cat"): running, crashed before "prep:v1"; both signals early
EARLY_SUSPENDED = "early-suspended"  # pay("dan"): suspended on APPROVAL; PAYMENT came early
FAILED = "failed"  # flaky("x"): failed, "flaky:v1" dead-lettered (Permanent)
FAN = "fan"  # fan([0, 1]): suspended; child "fan/label:v1-0" completed, "-1" on LABEL_GO
CANCELLED = "cancelled"  # approval("eve"): cancelled while suspended on APPROVAL


@attrs.frozen(kw_only=True)
class V1Workflows:
    """The workflows, made for one engine, and the list of step bodies they ran."""

    ran: list[tuple[str, str]]
    order: Workflow[str, Receipt]
    approval: Workflow[str, str]
    timer: Workflow[int, int]
    deadline: Workflow[str, str]
    pay: Workflow[str, Approval]
    flaky: Workflow[str, str]
    fan: Workflow[list[int], list[str]]

    @property
    def all(self) -> list[Workflow[Any, Any]]:
        """Every workflow, for ``Engine(workflows=...)``."""
        return [
            self.order,
            self.approval,
            self.timer,
            self.deadline,
            self.pay,
            self.flaky,
            self.fan,
        ]

    def ran_in(self, instance_id: str) -> list[str]:
        """The keys of the step bodies that ran for *instance_id*, in order."""
        return [key for instance, key in self.ran if instance == instance_id]


def make_workflows(*, flaky_fails: bool) -> V1Workflows:
    """Make the v1 workflows; ``flaky:v1`` raises :class:`memable.Permanent` if *flaky_fails*."""
    ran: list[tuple[str, str]] = []

    # -- order: completed, and crashed mid-way ----------------------------------------------

    async def price_of(instance: str, order_id: str) -> Decimal:
        ran.append((instance, "price:v1"))
        return Decimal("12.50") + len(order_id)

    async def coupon_for(instance: str, order_id: str) -> Decimal:
        ran.append((instance, "coupon:v1"))
        raise memable.Permanent(f"no coupon for {order_id}")

    async def lines_of(instance: str, order_id: str) -> list[str]:
        ran.append((instance, "lines:v1"))
        return [f"{order_id} x1", f"{order_id} x2"]

    async def charge(instance: str, total: Decimal) -> datetime:
        ran.append((instance, "charge:v1"))
        return GENERATED_AT + timedelta(days=1, seconds=int(total))

    async def order(ctx: Context, order_id: str) -> Receipt:
        price = await ctx.step("price:v1", price_of, ctx.instance_id, order_id)
        try:
            discount = await ctx.step("coupon:v1", coupon_for, ctx.instance_id, order_id)
        except memable.StepFailed:  # a recorded failure replays as the same exception
            discount = Decimal(0)
        total = price - discount
        lines = await ctx.step("lines:v1", lines_of, ctx.instance_id, order_id)
        charged_at = await ctx.step("charge:v1", charge, ctx.instance_id, total)
        return Receipt(order_id=order_id, total=total, lines=tuple(lines), charged_at=charged_at)

    # -- approval: suspended on a point, and cancelled there --------------------------------

    async def ask(instance: str, who: str) -> str:
        ran.append((instance, "ask:v1"))
        return f"asked {who}"

    async def notify(instance: str, who: str, approved: bool) -> str:
        ran.append((instance, "notify:v1"))
        return f"{who}: {'approved' if approved else 'refused'}"

    async def approval(ctx: Context, who: str) -> str:
        await ctx.step("ask:v1", ask, ctx.instance_id, who)
        approved = await ctx.suspend(APPROVAL, status=f"waiting for {who}")
        return await ctx.step("notify:v1", notify, ctx.instance_id, who, approved)

    # -- timer: a durable sleep ---------------------------------------------------------------

    async def add_one(instance: str, key: str, n: int) -> int:
        ran.append((instance, key))
        return n + 1

    async def timer(ctx: Context, n: int) -> int:
        n = await ctx.step("before:v1", add_one, ctx.instance_id, "before:v1", n)
        await ctx.sleep("cool-off:v1", timedelta(hours=1))
        return await ctx.step("after:v1", add_one, ctx.instance_id, "after:v1", n)

    # -- deadline: a point with a timeout -----------------------------------------------------

    async def deadline(ctx: Context, who: str) -> str:
        try:
            approved = await ctx.suspend(APPROVAL, timeout=timedelta(days=2))
        except memable.SuspendTimeout:
            return f"{who}: timed out"
        return f"{who}: {'approved' if approved else 'refused'}"

    # -- pay: signals that came before the workflow reached their points --------------------

    async def prep(instance: str, who: str) -> str:
        ran.append((instance, "prep:v1"))
        return f"prepared {who}"

    async def pay(ctx: Context, who: str) -> Approval:
        await ctx.step("prep:v1", prep, ctx.instance_id, who)
        if not await ctx.suspend(APPROVAL):
            return Approval(by="nobody", amount=Decimal(0))
        return await ctx.suspend(PAYMENT)

    # -- flaky: a dead-lettered step that resume() runs again ---------------------------------

    async def fetch(instance: str, item: str) -> str:
        ran.append((instance, "fetch:v1"))
        return f"{item}: fetched"

    async def fix(instance: str, text: str) -> str:
        ran.append((instance, "flaky:v1"))
        if flaky_fails:
            raise memable.Permanent(f"cannot fix {text!r} yet")
        return f"{text}, fixed"

    async def store(instance: str, text: str) -> str:
        ran.append((instance, "store:v1"))
        return f"{text}, stored"

    async def flaky(ctx: Context, item: str) -> str:
        text = await ctx.step("fetch:v1", fetch, ctx.instance_id, item)
        text = await ctx.step("flaky:v1", fix, ctx.instance_id, text)
        return await ctx.step("store:v1", store, ctx.instance_id, text)

    # -- fan: a parent waiting for a suspended child ------------------------------------------

    async def print_label(instance: str, n: int) -> str:
        ran.append((instance, "print:v1"))
        return f"label-{n}"

    async def label(ctx: Context, n: int) -> str:
        text = await ctx.step("print:v1", print_label, ctx.instance_id, n)
        if n == 1:
            text = f"{text} ({await ctx.suspend(LABEL_GO)})"
        return text

    async def ship(instance: str, labels: list[str]) -> list[str]:
        ran.append((instance, "ship:v1"))
        return [f"shipped {text}" for text in labels]

    async def fan(ctx: Context, items: list[int]) -> list[str]:
        labels = await ctx.fan_out("label:v1", label, items)
        return await ctx.step("ship:v1", ship, ctx.instance_id, labels)

    return V1Workflows(
        ran=ran,
        order=Workflow("order", order),
        approval=Workflow("approval", approval),
        timer=Workflow("timer", timer),
        deadline=Workflow("deadline", deadline),
        pay=Workflow("pay", pay),
        flaky=Workflow("flaky", flaky),
        fan=Workflow("fan", fan),
    )
