"""Children and fan-out: child instances run in their parent's task group."""

from __future__ import annotations

import json
import typing
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import anyio

from . import _ids
from ._exceptions import ChildFailed, InstanceConflict, StorageError, WorkflowCancelled
from ._failures import dead_letter_error, replayed_failure
from ._kernel import outcome_of
from ._outcome import Cancelled, Completed, ErrorInfo, Failed, Outcome
from ._records import InstanceRecord, InstanceState, StepRecord, Write
from ._run import unwind
from ._settled import Err, Ok
from ._workflow import Workflow

if TYPE_CHECKING:
    from ._journal import Journal
    from ._kernel import Kernel
    from ._run import Driver, Run

__all__ = ["FanOut"]

R = TypeVar("R")

_FINISHED = ("completed", "failed", "cancelled")
_FAILED: frozenset[InstanceState] = frozenset({"failed", "cancelled"})
_RUNNING: frozenset[InstanceState] = frozenset({"running"})
_UNFINISHED: frozenset[InstanceState] = frozenset({"running", "suspended"})

Writer = Callable[[list[Write], str], Awaitable[None]]
Waiter = Callable[[str], Coroutine[Any, Any, NoReturn]]


class FanOut:
    """One fan-out of a parent run: its children, their outcomes, and the recorded result.

    Children are real instances (``"{parent}/{key}-{i}"``) that run in the parent's task,
    at most *limit* at a time. Finished children are not run again; the collected result
    (or the failure raised) is recorded under *key*, so a re-run parent starts no child.
    """

    def __init__(
        self,
        kernel: Kernel,
        runner: Driver,
        run: Run,
        journal: Journal,
        key: str,
        target: Workflow[Any, Any] | Callable[..., Awaitable[Any]],
        items: Sequence[Any],
        settle: bool,
    ) -> None:
        self._kernel = kernel
        self._runner = runner
        self._run = run
        self._journal = journal
        self._key = key
        self._items = items
        self._settle = settle
        self._wf = kernel.registry.child(run.workflow, key, target)
        input_type, output_type = self._wf.types()
        self._input_type = input_type
        self._result_type: Any = (
            list[Ok[output_type] | Err] if settle else list[output_type]  # type: ignore[valid-type]
        )
        self._what = f"fan-out {key!r} of instance {run.instance_id!r}"
        self._woken: dict[str, Outcome[Any]] = {}  # outcomes of the children driven here

    async def run(self, limit: int | None, write: Writer, wait: Waiter) -> list[Any]:
        key = self._key
        journal = self._journal
        if key in journal.values:
            stored = typing.cast(str, journal.values[key])  # None (a storage's bug) is corrupt
            value = self._kernel.serde.decode(stored, self._result_type, key, self._what)
            return list(value)
        if key in journal.dead:
            attempts, error = journal.dead[key]
            raise replayed_failure(key, attempts, error)

        self._run.enter()  # the parent does not suspend while its children run
        try:
            if await self._created():
                # A wake-up: read only what changed (the children claimed to run, and
                # for fail-fast the failed ones), whatever the number of siblings.
                waiting = await self._wake(limit, write)
                if not waiting:
                    children, outcomes = await self._all(self._woken)
            else:
                children = await self._children(write)
                outcomes = [self._outcome(record) for record in children]
                if not self._settle:
                    await self._fail_if_failed(children, outcomes, write)
                runnable = [i for i, record in enumerate(children) if record.status == "running"]
                if runnable:
                    await self._drive(children, outcomes, runnable, limit)
                if not self._settle:
                    await self._fail_if_failed(children, outcomes, write)
                waiting = sum(1 for outcome in outcomes if not _finished(outcome))
        finally:
            self._run.leave()

        if waiting:
            self._run.set_status(f"waiting for {waiting} {'child' if waiting == 1 else 'children'}")
            self._kernel.status.publish(self._run.instance_id, "running",
                                        self._run.status_message)  # fmt: skip
            await wait(_ids.children_waiting_key(key, waiting))

        results = [
            _settled(record, outcome, self._settle)
            for record, outcome in zip(children, outcomes, strict=True)
        ]
        envelope = self._kernel.serde.encode(results, self._result_type, key, self._what)
        now = self._kernel.now()
        step = StepRecord(
            instance_id=self._run.instance_id,
            key=key,
            state="completed",
            value=envelope,
            attempts=1,
            started_at=now,
            finished_at=now,
        )
        await write([step], "recording a fan-out")
        self._journal.record_step(step)
        return results

    def _outcome(self, record: InstanceRecord) -> Outcome[Any] | None:
        if record.status not in _FINISHED:
            return None
        return outcome_of(record, self._kernel.serde, self._wf)

    async def _created(self) -> bool:
        """Whether every child exists (they are created together, so the last one tells)."""
        if not self._items:
            return False
        last = _ids.child_id(self._run.instance_id, self._key, len(self._items) - 1)
        return await self._storage(self._kernel.store.get(last)) is not None

    async def _wake(self, limit: int | None, write: Writer) -> int:
        """Drive the children claimed to run; return how many have not finished.

        Reads only the children in the states that matter (an index range), so a wake-up
        costs the same for 10 siblings or 100,000.
        """
        store, parent_id = self._kernel.store, self._run.instance_id
        prefix = _ids.child_prefix(parent_id, self._key)
        if not self._settle:
            failed = await self._storage(store.fan_out_children(parent_id, prefix, _FAILED))
            if failed:  # (cancelled from outside): fail fast, with every child read
                await self._fail_if_failed(*await self._all({}), write)
        running = await self._storage(store.fan_out_children(parent_id, prefix, _RUNNING))
        for record in running:
            self._check_item(record, int(record.instance_id[len(prefix) :]))
        outcomes: list[Outcome[Any] | None] = [None] * len(running)
        if running:
            await self._drive(running, outcomes, list(range(len(running))), limit)
        self._woken = {
            record.instance_id: outcome
            for record, outcome in zip(running, outcomes, strict=True)
            if outcome is not None
        }
        if not self._settle and any(isinstance(o, Failed | Cancelled) for o in outcomes):
            await self._fail_if_failed(*await self._all(self._woken), write)
        return await self._storage(store.count_children(parent_id, prefix, _UNFINISHED))

    async def _all(
        self, live: dict[str, Outcome[Any]]
    ) -> tuple[list[InstanceRecord], list[Outcome[Any] | None]]:
        """Every child in item order with its outcome (the *live* one where known)."""
        parent_id = self._run.instance_id
        prefix = _ids.child_prefix(parent_id, self._key)
        stored = {
            record.instance_id: record
            for record in await self._storage(self._kernel.store.children(parent_id))
            if record.instance_id.startswith(prefix)
        }
        children = [stored[_ids.child_id(parent_id, self._key, i)] for i in range(len(self._items))]
        outcomes = [live.get(record.instance_id) or self._outcome(record) for record in children]
        return children, outcomes

    def _check_item(self, record: InstanceRecord, index: int) -> None:
        """A child about to run must have been created for the item now at its index."""
        if index >= len(self._items):
            return
        envelope = self._kernel.serde.encode(
            self._items[index], self._input_type, self._key, f"item {index} of {self._what}"
        )
        if json.loads(record.input)["value"] != json.loads(envelope)["value"]:
            raise InstanceConflict(
                f"item {index} of {self._what} differs from the one recorded for child"
                f" {record.instance_id!r}; bump the fan-out key if its items changed"
            )

    async def _drive(
        self,
        children: list[InstanceRecord],
        outcomes: list[Outcome[Any] | None],
        runnable: list[int],
        limit: int | None,
    ) -> None:
        runner = self._runner

        async def worker(queue: Iterator[int], scope: anyio.CancelScope) -> None:
            for i in queue:  # the workers share one iterator
                child_run = runner.reserve(children[i].instance_id, self._wf)
                child_run.driven = True
                await runner.drive(child_run, children[i])
                outcomes[i] = child_run.outcome
                if not self._settle and isinstance(child_run.outcome, Failed | Cancelled):
                    scope.cancel()  # fail fast: cancel the siblings, start no new ones

        queue = iter(runnable)
        async with anyio.create_task_group() as tg:
            for _ in range(min(limit or len(runnable), len(runnable))):
                tg.start_soon(worker, queue, tg.cancel_scope)

    async def _fail_if_failed(
        self,
        children: Sequence[InstanceRecord],
        outcomes: Sequence[Outcome[Any] | None],
        write: Writer,
    ) -> None:
        """Fail fast: if a child failed or was cancelled, cancel the unfinished ones, record
        the failure under the fan-out key (so a replay raises the same) and raise it."""
        failure = _first_failure(children, outcomes)
        if failure is None:
            return
        exc, error = failure
        now = self._kernel.now()
        reason = f"a sibling failed: {exc.instance_id}"
        for record, outcome in zip(children, outcomes, strict=True):
            if not _finished(outcome):
                await self._storage(self._kernel.store.cancel(record.instance_id, reason, now))
        dead = StepRecord(
            instance_id=self._run.instance_id,
            key=self._key,
            state="dead",
            error=dead_letter_error(error, exc),
            attempts=1,
            started_at=now,
            finished_at=now,
        )
        await write([dead], "recording a failed fan-out")
        self._journal.record_step(dead)
        raise exc from exc.__cause__

    async def _storage(self, call: Coroutine[Any, Any, R]) -> R:
        """Await a storage call; if storage fails, the run ends and runs again later."""
        try:
            return await call
        except StorageError:
            self._runner.storage_failed(self._run, f"driving {self._what}")
            await unwind()

    async def _children(self, write: Writer) -> list[InstanceRecord]:
        """The child records of the fan-out, creating the missing ones in one transaction."""
        parent_id = self._run.instance_id
        key = self._key
        prefix = _ids.child_prefix(parent_id, key)
        stored = {
            record.instance_id: record
            for record in await self._storage(self._kernel.store.children(parent_id))
            if record.instance_id.startswith(prefix)
        }
        now = self._kernel.now()
        children: list[InstanceRecord] = []
        new: list[Write] = []
        for i, item in enumerate(self._items):
            child_id = _ids.child_id(parent_id, key, i)
            envelope = self._kernel.serde.encode(
                item, self._input_type, key, f"item {i} of {self._what}"
            )
            record = stored.get(child_id)
            if record is None:
                record = InstanceRecord(
                    instance_id=child_id,
                    workflow=self._wf.name,
                    status="running",
                    input=envelope,
                    parent_id=parent_id,
                    created_at=now,
                    updated_at=now,
                )
                new.append(record)
            elif json.loads(record.input)["value"] != json.loads(envelope)["value"]:
                raise InstanceConflict(
                    f"item {i} of {self._what} differs from the one recorded for child"
                    f" {child_id!r}; bump the fan-out key if its items changed"
                )
            children.append(record)
        if new:
            await write(new, "creating children")
        return children


def _finished(outcome: Outcome[Any] | None) -> bool:
    return isinstance(outcome, Completed | Failed | Cancelled)


def _first_failure(
    children: Sequence[InstanceRecord], outcomes: Sequence[Outcome[Any] | None]
) -> tuple[ChildFailed, BaseException | ErrorInfo] | None:
    """The failure a fail-fast fan-out raises: the first failed child in item order, else
    the first cancelled one — the same whether it is seen live or read from storage."""
    for record, outcome in zip(children, outcomes, strict=True):
        if isinstance(outcome, Failed):
            error: BaseException | ErrorInfo = outcome.exception or outcome.error
            exc = ChildFailed(record.instance_id, error)
            exc.__cause__ = outcome.exception
            return exc, outcome.error
    for record, outcome in zip(children, outcomes, strict=True):
        if isinstance(outcome, Cancelled):
            cancelled = WorkflowCancelled(outcome.reason)
            exc = ChildFailed(record.instance_id, cancelled)
            exc.__cause__ = cancelled
            return exc, cancelled
    return None


def _settled(record: InstanceRecord, outcome: Outcome[Any] | None, settle: bool) -> Any:
    if isinstance(outcome, Completed):
        return Ok(value=outcome.output) if settle else outcome.output
    if isinstance(outcome, Failed):
        return Err(instance_id=record.instance_id, error=outcome.error)
    if isinstance(outcome, Cancelled):
        error = ErrorInfo(type="memable.WorkflowCancelled", message=outcome.reason)
        return Err(instance_id=record.instance_id, error=error)
    raise AssertionError(f"child {record.instance_id!r} has not finished")  # pragma: no cover
