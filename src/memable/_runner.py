"""Running instances: at most one task per instance, from its start to its end or suspension."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.lowlevel

from ._context import Context
from ._outcome import Completed, ErrorInfo, Failed, Outcome, Suspended
from ._workflow import Workflow
from .storage._records import History, InstanceRecord, InstanceState, InstanceUpdate

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["Run", "Runner"]

logger = logging.getLogger("memable")


_End = Literal["suspended", "restart", "cancelled", "crashed"]


class Run:
    """An instance while a task of this engine runs it (or a reservation for one).

    It lives from the moment the instance starts running here until it completes, fails,
    is cancelled or suspends; a suspended instance has none. (A plain slotted class: it is
    internal, mutable and made once per run.)
    """

    __slots__ = (
        "end",
        "finished",
        "fresh",
        "idle",
        "in_flight",
        "instance_id",
        "outcome",
        "pending",
        "rerun",
        "scope",
        "started",
        "status_dirty",
        "status_message",
        "suspending",
        "waiting",
        "workflow",
    )

    def __init__(self, instance_id: str, workflow: Workflow[Any, Any]) -> None:
        self.instance_id = instance_id
        self.workflow = workflow
        self.finished = anyio.Event()
        self.started = False
        self.pending = 0  # invoke calls still deciding whether they start this run
        self.status_message: str | None = None
        self.status_dirty = False
        self.fresh = False  # just created: there is no history to load
        self.idle = anyio.Event()
        self.reset()

    def __repr__(self) -> str:
        return f"<Run {self.instance_id!r} started={self.started} end={self.end}>"

    def reset(self) -> None:
        """Prepare for a (first or another) pass over the workflow function."""
        self.scope = anyio.CancelScope()
        self.outcome: Outcome[Any] | None = None
        # Suspension: the keys waited on, whether a task is suspending the instance, and
        # the steps in flight (the instance suspends once they have recorded their results).
        self.waiting: set[str] = set()
        self.suspending = False
        self.in_flight = 0
        self.end: _End | None = None  # why the scope was cancelled
        self.rerun = False  # claimed again while ending: run once more


class Runner:
    """Starts and drives the runs of one engine's instances, one task per instance.

    A run starts when an instance is created, recovered or claimed (by a signal, a timer or
    ``resume``) and ends when the instance completes, fails, is cancelled or suspends;
    the engine's task group holds its task meanwhile.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.runs: dict[str, Run] = {}
        self.crash_points: set[tuple[str, str]] = set()  # (key, "before"/"after"), testing

    def claimed(self, record: InstanceRecord) -> None:
        """Run an instance stored as ``running``: recovered, or just claimed by a signal,
        a timer or resume."""
        wf = self._engine._workflows.get(record.workflow)
        if wf is None:
            logger.warning(
                "instance %r of unregistered workflow %r is left running;"
                " register the workflow to run it",
                record.instance_id,
                record.workflow,
                extra={"instance_id": record.instance_id, "workflow": record.workflow},
            )
            return
        run = self.runs.get(record.instance_id)
        if run is not None and run.started:
            run.rerun = True  # still ending its suspended pass: it goes again
            return
        self.start(self.reserve(record.instance_id, wf), record)

    async def wait_idle(self) -> None:
        while self.runs:
            await next(iter(self.runs.values())).finished.wait()

    def reserve(self, instance_id: str, wf: Workflow[Any, Any]) -> Run:
        run = self.runs.get(instance_id)
        if run is None:
            run = self.runs[instance_id] = Run(instance_id, wf)
        return run

    def release(self, run: Run) -> None:
        if not run.started and run.pending == 0 and self.runs.get(run.instance_id) is run:
            del self.runs[run.instance_id]
            run.finished.set()

    def start(self, run: Run, record: InstanceRecord) -> None:
        if self._engine._cancelling or self._engine._task_group is None:
            self.release(run)  # shutting down: the next engine recovers it
            return
        run.started = True
        self._engine._task_group.start_soon(
            self.drive, run, record, name=f"memable {run.instance_id}"
        )

    async def drive(self, run: Run, record: InstanceRecord) -> None:
        """Run one instance to its end, suspension or shutdown, recording how it ended."""
        try:
            run.status_message = record.status_message
            while True:
                self._engine._status.publish(run.instance_id, "running", run.status_message)
                await self._pass(run, record)
                if run.end == "restart" or (run.end == "suspended" and run.rerun):
                    # A signal or timer came while suspending: go again, unless the
                    # instance was cancelled (or otherwise ended) meanwhile.
                    current = await self._engine._storage_call(
                        self._engine._storage.get_instance, run.instance_id
                    )
                    if current is not None and current.status == "running":
                        run.reset()
                        record = current
                        continue
                break
        finally:
            if self.runs.get(run.instance_id) is run:
                del self.runs[run.instance_id]
            run.finished.set()

    async def _pass(self, run: Run, record: InstanceRecord) -> None:
        """One pass over the workflow function, from the top."""
        wf = run.workflow
        try:
            with run.scope:
                if run.fresh:
                    run.fresh = False
                    history = History(steps=[], signals=[], timers=[])
                else:
                    history = await self._engine._storage_call(
                        self._engine._storage.load_history, run.instance_id
                    )
                context = Context(self._engine, run, history)
                input_type, output_type = wf.types()
                try:
                    if wf.takes_input:
                        value = self._engine._serde.decode(
                            record.input, input_type, "input", f"the input of {run.instance_id!r}"
                        )
                        output = await wf.fn(context, value)
                    else:
                        output = await wf.fn(context)
                    envelope = self._engine._serde.encode(
                        output, output_type, "output", f"the output of {run.instance_id!r}"
                    )
                except Exception as exc:
                    if run.end is None:  # not while suspending, crashing or cancelled
                        failed = Failed(error=ErrorInfo.from_exception(exc), exception=exc)
                        await self._finish(run, failed)
                else:
                    await self._finish(run, Completed(output=output), output=envelope)
        except Exception as exc:
            # Storage failed while starting or finishing: the instance stays as stored
            # (``running``), the next engine recovers it; waiters here learn what happened.
            logger.exception(
                "instance %r stopped: its state could not be read or written",
                run.instance_id,
                extra={"instance_id": run.instance_id},
            )
            run.outcome = Failed(error=ErrorInfo.from_exception(exc), exception=exc)

    async def _finish(
        self, run: Run, outcome: Completed[Any] | Failed, output: str | None = None
    ) -> None:
        now = self._engine._now()
        status: InstanceState = "completed" if isinstance(outcome, Completed) else "failed"
        error = None
        if isinstance(outcome, Failed):
            error = outcome.error.to_json()
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    "instance %r failed: %s",
                    run.instance_id,
                    outcome.error,
                    extra={"instance_id": run.instance_id},
                )
        update = InstanceUpdate(
            instance_id=run.instance_id,
            updated_at=now,
            status=status,
            only_if=("running",),
            status_message=run.status_message,
            output=output,
            error=error,
            finished_at=now,
        )
        await self._engine._committer.write([update])
        run.outcome = outcome
        self._engine._status.publish(run.instance_id, status, run.status_message)

    async def suspend(self, run: Run) -> None:
        """Record *run*'s instance as suspended and end the run (called by the context)."""
        waiting_on = tuple(sorted(run.waiting))
        with anyio.CancelScope(shield=True):  # what storage decided must be known here
            suspended = await self._engine._storage_call(
                self._engine._storage.suspend,
                run.instance_id,
                waiting_on=waiting_on,
                status_message=run.status_message,
                now=self._engine._now(),
            )
        run.status_dirty = False
        if suspended:
            run.end = "suspended"
            run.outcome = Suspended(waiting_on=waiting_on, status=run.status_message)
            self._engine._status.publish(
                run.instance_id, "suspended", run.status_message, waiting_on
            )
        elif run.end is None:
            run.end = "restart"  # what it waits for has come (or it was cancelled meanwhile)
        run.scope.cancel()

    async def maybe_crash(self, run: Run, key: str, when: Literal["before", "after"]) -> None:
        """Crash injection (memable.testing): end the run here as if the process died."""
        if (key, when) in self.crash_points:
            self.crash_points.discard((key, when))
            parts = run.instance_id.split("/")
            for depth in range(len(parts), 0, -1):  # the instance and its ancestors
                ancestor = self.runs.get("/".join(parts[:depth]))
                if ancestor is not None and ancestor.started:
                    ancestor.end = "crashed"
                    ancestor.scope.cancel()
            await anyio.lowlevel.checkpoint()
