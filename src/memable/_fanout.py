"""Children and fan-out: child instances run in their parent's task group."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from ._exceptions import (
    ChildFailed,
    InstanceConflict,
    SuspendedStepConflict,
    WorkflowCancelled,
)
from ._outcome import (
    Cancelled,
    Completed,
    Err,
    ErrorInfo,
    Failed,
    Ok,
    Outcome,
    Suspended,
)
from ._workflow import Workflow
from .storage._records import InstanceRecord, StepRecord

if TYPE_CHECKING:
    from ._context import Context

__all__ = ["run_fan_out"]

_FINISHED = ("completed", "failed", "cancelled")


async def run_fan_out(
    ctx: Context,
    key: str,
    target: Workflow[Any, Any] | Callable[..., Awaitable[Any]],
    items: Sequence[Any],
    limit: int | None,
    settle: bool,
) -> list[Any]:
    """Run one child instance per item under the parent *ctx*; return results in item order.

    Children are real instances (``"{parent}/{key}-{i}"``) that run in this task, at most
    *limit* at a time. Finished children are not run again; the collected result is
    recorded under *key*, so a re-run parent starts no child at all.
    """
    engine = ctx._engine
    run = ctx._run
    parent_id = ctx.instance_id
    child_wf = engine._child_workflow(run.workflow, key, target)
    input_type, output_type = child_wf.types()
    result_type: Any = list[Ok[output_type] | Err] if settle else list[output_type]  # type: ignore[valid-type]
    what = f"fan-out {key!r} of instance {parent_id!r}"

    recorded = ctx._records.get(key)
    if recorded is not None and recorded.state == "completed":
        assert recorded.value is not None
        return list(engine._serde.decode(recorded.value, result_type, key, what))
    if key in ctx._signals or key in ctx._timers:
        raise SuspendedStepConflict(
            f"key {key!r} of instance {parent_id!r} was recorded as a suspend point or timer"
            " and is now used as a fan-out; give the fan-out a new key"
        )

    children = await _children(ctx, key, child_wf, input_type, items)
    outcomes: list[Outcome[Any] | None] = [
        None if record.status not in _FINISHED else engine._outcome(child_wf, record)
        for record in children
    ]
    if not settle:
        _raise_first_failure(children, outcomes)
    runnable = [i for i, record in enumerate(children) if record.status == "running"]
    failed: list[int] = []

    async def worker(queue: Iterator[int], scope: anyio.CancelScope) -> None:
        for i in queue:  # the workers share one iterator
            child_run = engine._runner.reserve(children[i].instance_id, child_wf)
            child_run.started = True
            await engine._runner.drive(child_run, children[i])
            outcomes[i] = child_run.outcome
            if not settle and isinstance(child_run.outcome, Failed | Cancelled):
                failed.append(i)
                scope.cancel()  # fail fast: cancel the siblings, start no new ones

    run.in_flight += 1  # the parent does not suspend while its children run
    try:
        if runnable:
            queue = iter(runnable)
            async with anyio.create_task_group() as tg:
                for _ in range(min(limit or len(runnable), len(runnable))):
                    tg.start_soon(worker, queue, tg.cancel_scope)
    finally:
        run.in_flight -= 1
        if not run.in_flight:
            run.idle.set()

    if failed:
        unfinished = [
            record.instance_id
            for record, outcome in zip(children, outcomes, strict=True)
            if outcome is None or isinstance(outcome, Suspended)
        ]
        first = min(failed)
        for instance_id in unfinished:
            await engine._storage_call(
                engine._storage.cancel,
                instance_id,
                reason=f"a sibling failed: {children[first].instance_id}",
                now=engine._now(),
            )
        _raise_first_failure(children, outcomes)

    waiting = sum(1 for outcome in outcomes if outcome is None or isinstance(outcome, Suspended))
    if waiting:
        ctx.set_status(f"waiting for {waiting} {'child' if waiting == 1 else 'children'}")
        await ctx._wait(f"_children:{key}")

    results = [
        _settled(record, outcome, settle)
        for record, outcome in zip(children, outcomes, strict=True)
    ]
    envelope = engine._serde.encode(results, result_type, key, what)
    now = engine._now()
    step = StepRecord(
        instance_id=parent_id,
        key=key,
        state="completed",
        value=envelope,
        attempts=1,
        started_at=now,
        finished_at=now,
    )
    await engine._committer.write(ctx._with_status(step))
    ctx._records[key] = step
    return results


async def _children(
    ctx: Context,
    key: str,
    child_wf: Workflow[Any, Any],
    input_type: Any,
    items: Sequence[Any],
) -> list[InstanceRecord]:
    """The child records of a fan-out, creating the missing ones in one transaction."""
    engine = ctx._engine
    parent_id = ctx.instance_id
    stored = {
        record.instance_id: record
        for record in await engine._storage_call(
            engine._storage.list_instances, parent_id=parent_id
        )
    }
    now = engine._now()
    children: list[InstanceRecord] = []
    new: list[InstanceRecord] = []
    for i, item in enumerate(items):
        child_id = f"{parent_id}/{key}-{i}"
        envelope = engine._serde.encode(
            item, input_type, key, f"item {i} of fan-out {key!r} of instance {parent_id!r}"
        )
        record = stored.get(child_id)
        if record is None:
            record = InstanceRecord(
                instance_id=child_id,
                workflow=child_wf.name,
                status="running",
                input=envelope,
                parent_id=parent_id,
                created_at=now,
                updated_at=now,
            )
            new.append(record)
        elif json.loads(record.input)["value"] != json.loads(envelope)["value"]:
            raise InstanceConflict(
                f"item {i} of fan-out {key!r} of instance {parent_id!r} differs from the one"
                f" recorded for child {child_id!r}; bump the fan-out key if its items changed"
            )
        children.append(record)
    if new:
        await engine._committer.write(new)
    return children


def _raise_first_failure(
    children: Sequence[InstanceRecord], outcomes: Sequence[Outcome[Any] | None]
) -> None:
    for record, outcome in zip(children, outcomes, strict=True):
        if isinstance(outcome, Failed):
            error: BaseException | ErrorInfo = outcome.exception or outcome.error
            raise ChildFailed(record.instance_id, error) from outcome.exception
        if isinstance(outcome, Cancelled):
            cancelled = WorkflowCancelled(outcome.reason)
            raise ChildFailed(record.instance_id, cancelled) from cancelled


def _settled(record: InstanceRecord, outcome: Outcome[Any] | None, settle: bool) -> Any:
    if isinstance(outcome, Completed):
        return Ok(value=outcome.output) if settle else outcome.output
    if isinstance(outcome, Failed):
        return Err(instance_id=record.instance_id, error=outcome.error)
    if isinstance(outcome, Cancelled):
        error = ErrorInfo(type="memable.WorkflowCancelled", message=outcome.reason)
        return Err(instance_id=record.instance_id, error=error)
    raise AssertionError(f"child {record.instance_id!r} has not finished")  # pragma: no cover
