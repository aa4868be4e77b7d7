"""Write ``v1.db``: a database in memable's first storage format, for ``test_compat.py``.

Usage (from the repository root)::

    PYTHONPATH=src python tests/data/make_v1_db.py tests/data/v1.db

It runs the workflows of ``v1_workflows.py`` with the memable of the day (public API and
``memable.testing`` only) and leaves one instance in each state a later version must be
able to finish; see the ids in ``v1_workflows.py``. The committed ``v1.db`` is the
output of the version that introduced it: regenerating it with a later memable would
test nothing, so do it only to add states, and only with that first version's code.
"""

from __future__ import annotations

import sqlite3
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio

# Run as a script, the module must still be ``tests.data.v1_workflows``: the module path
# of its attrs classes is part of their stored type name.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import memable
from memable.testing import ManualClock, crash_at
from tests.data import v1_workflows as v1


async def _crash(invocation: memable.Invocation[Any]) -> None:
    """Wait until a run stopped by crash_at has ended (it stays ``running``)."""
    try:
        outcome = await invocation.wait()
    except memable.NotStarted:
        return
    raise AssertionError(f"{invocation} did not crash: {outcome}")


async def _suspended(invocation: memable.Invocation[Any]) -> None:
    outcome = await invocation.wait()
    assert isinstance(outcome, memable.Suspended), (invocation, outcome)


async def write(path: Path) -> None:
    """Write every state of v1.db into a fresh file at *path*."""
    wfs = v1.make_workflows(flaky_fails=True)
    clock = ManualClock(v1.GENERATED_AT)
    async with memable.Engine(path, workflows=wfs.all, clock=clock) as engine:
        await engine.run(wfs.order, "o-1", instance_id=v1.DONE)

        with crash_at(engine, "lines:v1", when="before"):
            await _crash(await engine.invoke(wfs.order, "o-2", instance_id=v1.CRASHED))

        await _suspended(await engine.invoke(wfs.approval, "ann", instance_id=v1.SUSPENDED))
        await _suspended(await engine.invoke(wfs.timer, 41, instance_id=v1.TIMER))
        await _suspended(await engine.invoke(wfs.deadline, "bob", instance_id=v1.DEADLINE))

        with crash_at(engine, "prep:v1", when="before"):
            await _crash(await engine.invoke(wfs.pay, "cat", instance_id=v1.EARLY_RUNNING))
        await engine.signal(wfs.pay, v1.EARLY_RUNNING, v1.APPROVAL, True)
        payment = v1.Approval(by="cat", amount=Decimal("9.99"))
        await engine.signal(wfs.pay, v1.EARLY_RUNNING, v1.PAYMENT, payment)

        await _suspended(await engine.invoke(wfs.pay, "dan", instance_id=v1.EARLY_SUSPENDED))
        payment = v1.Approval(by="dan", amount=Decimal("19.99"))
        await engine.signal(wfs.pay, v1.EARLY_SUSPENDED, v1.PAYMENT, payment)

        outcome = await (await engine.invoke(wfs.flaky, "x", instance_id=v1.FAILED)).wait()
        assert isinstance(outcome, memable.Failed), outcome

        await _suspended(await engine.invoke(wfs.fan, [0, 1], instance_id=v1.FAN))

        await _suspended(await engine.invoke(wfs.approval, "eve", instance_id=v1.CANCELLED))
        await engine.cancel(wfs.approval, v1.CANCELLED, reason="customer left")

        states = {i.instance_id: i.status for i in await engine.instances(limit=None)}
    expected = {
        v1.DONE: "completed",
        v1.CRASHED: "running",
        v1.SUSPENDED: "suspended",
        v1.TIMER: "suspended",
        v1.DEADLINE: "suspended",
        v1.EARLY_RUNNING: "running",
        v1.EARLY_SUSPENDED: "suspended",
        v1.FAILED: "failed",
        v1.FAN: "suspended",
        f"{v1.FAN}/label:v1-0": "completed",
        f"{v1.FAN}/label:v1-1": "suspended",
        v1.CANCELLED: "cancelled",
    }
    assert states == expected, states
    assert wfs.ran_in(v1.CRASHED) == ["price:v1", "coupon:v1"], wfs.ran


def checkpoint(path: Path) -> None:
    """Fold the write-ahead log into the file itself, so that the file alone is the db."""
    db = sqlite3.connect(path)
    try:
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0, "the checkpoint could not finish"
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    for suffix in ("-wal", "-shm", ".lock"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            if suffix == "-wal":
                assert side.stat().st_size == 0, f"{side} is not empty after the checkpoint"
            side.unlink()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUTPUT.db", file=sys.stderr)
        return 2
    path = Path(argv[1])
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    anyio.run(write, path)
    checkpoint(path)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
