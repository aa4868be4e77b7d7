"""The kernel's claims on their way: a waiter waits for those running when it looks, for
as long as they take, and for no later one."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from memable._kernel import Claims

pytestmark = pytest.mark.anyio


async def test_settled_waits_for_the_claims_on_their_way_and_no_later_one() -> None:
    claims = Claims()
    order: list[str] = []
    first_done, later_done = anyio.Event(), anyio.Event()

    async def claim(done: anyio.Event, name: str) -> None:
        with claims.claiming():
            await done.wait()
            order.append(name)

    async def wait() -> None:
        await claims.settled()
        order.append("settled")

    async with anyio.create_task_group() as tg:
        tg.start_soon(claim, first_done, "first handed over")
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(claim, later_done, "later handed over")  # begun after the look
        await anyio.wait_all_tasks_blocked()
        assert order == []  # the first claim is still on its way: the waiter waits
        first_done.set()
        await anyio.wait_all_tasks_blocked()
        assert order == ["first handed over", "settled"]  # not held back by the later one
        later_done.set()
    assert order == ["first handed over", "settled", "later handed over"]


async def test_a_claim_that_fails_or_is_cancelled_still_lets_waiters_go() -> None:
    claims = Claims()
    with pytest.raises(RuntimeError), claims.claiming():
        raise RuntimeError("storage failed")
    with anyio.CancelScope() as scope:
        with claims.claiming():
            scope.cancel()
            await anyio.lowlevel.checkpoint()
    with anyio.fail_after(5):
        await claims.settled()  # nothing left on its way
