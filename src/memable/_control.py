"""Steering instances: what resume, cancel and a signal do to an engine's runs.

Shared by the engine's methods (after they checked their arguments) and by the inbox
through which other processes (the ``memable`` command line) steer a SQLite engine.
"""

from __future__ import annotations

from typing import Final

from . import _log, _telemetry
from ._ids import root_of
from ._kernel import Kernel
from ._records import InstanceRecord, InstanceState, SignalOutcome, SignalRecord
from ._runner import Runner

__all__ = ["RESUMABLE", "cancel", "deliver", "resume"]

#: What ``resume`` restarts: a failed instance, and one stuck running or suspended.
RESUMABLE: Final[tuple[InstanceState, ...]] = ("failed", "running", "suspended")


async def resume(kernel: Kernel, runner: Runner, record: InstanceRecord) -> bool:
    """Run a failed or stuck instance again (a child: its top-level instance).

    Returns whether it was restarted: not if a task of this engine runs it already, or
    it completed or was cancelled.
    """
    if runner.live(record.instance_id) is not None:
        return False
    if record.parent_id is not None:
        # A child runs inside its parent: resuming it resumes its top-level instance.
        root = await kernel.store.get(root_of(record.instance_id))
        if root is None or kernel.registry.get(root.workflow) is None:
            return False
        return await resume(kernel, runner, root)
    if record.status not in RESUMABLE:
        return False
    restarted = await kernel.store.restart(record.instance_id, RESUMABLE, kernel.now())
    if restarted is not None:
        runner.claimed(restarted)
    return restarted is not None


async def cancel(kernel: Kernel, runner: Runner, record: InstanceRecord, reason: str) -> bool:
    """End a running or suspended instance and its children; whether this call did."""
    before, to_run = await kernel.store.cancel(record.instance_id, reason, kernel.now())
    if before is None:
        return False  # already finished
    prefix = record.instance_id + "/"
    for run_id in [i for i in runner.runs if i == record.instance_id or i.startswith(prefix)]:
        runner.cancel_live(run_id, reason)
    kernel.status.publish(record.instance_id, "cancelled", reason)
    _log.event(_log.INFO, "instance %r of %r cancelled: %s", record.instance_id,
               record.workflow, reason or "(no reason)", instance_id=record.instance_id,
               workflow=record.workflow)  # fmt: skip
    if to_run is not None:  # a parent waited for this child: it runs on
        runner.claimed(to_run)
    return True


async def deliver(
    kernel: Kernel, runner: Runner, signal: SignalRecord
) -> tuple[SignalOutcome, InstanceRecord | None]:
    """Store a payload; run the instance if it waited on the point (in a span)."""
    attributes = {"memable.instance_id": signal.instance_id, "memable.signal.key": signal.key}
    with _telemetry.span(f"memable.signal {signal.key}", attributes, kind="PRODUCER") as span:
        outcome, record = await kernel.store.signal(signal)
        if span is not None:
            span.set_attribute("memable.signal.outcome", outcome)
        if outcome == "claimed":
            assert record is not None
            runner.claimed(record, _telemetry.current_context())
    return outcome, record
