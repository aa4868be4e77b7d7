"""Running instances: at most one task per instance, from its start to its end or suspension.

A run that meets a storage error (loading its history, committing a step, suspending,
finishing) is not failed and not left behind: it ends as if the process had died there
and runs again from the top after a backoff, once storage answers, so a long-lived
engine heals itself (recorded steps replay; nothing recorded runs twice).
"""

from __future__ import annotations

import collections
import sys
import typing
from typing import TYPE_CHECKING, Any, Literal

import anyio

from . import _ids, _log, _telemetry
from ._exceptions import StorageError
from ._kernel import Kernel, outcome_of
from ._log import logger
from ._outcome import Cancelled, Completed, ErrorInfo, Failed, Suspended
from ._run import Run
from ._tx import Fenced
from ._workflow import Workflow

if TYPE_CHECKING:
    from ._records import InstanceRecord, InstanceState, Recorded

__all__ = ["Backoff", "Runner"]

#: How a pass may end and still go again if the instance was claimed here meanwhile
#: (a timer or signal fired while it was suspending, or a claim after it was lost).
_AGAIN: typing.Final = frozenset({"suspended", "lost"})


class Backoff:
    """Exponential backoff for retrying storage: 50 ms doubling up to 5 s."""

    __slots__ = ("_delay",)

    def __init__(self) -> None:
        self._delay = 0.05

    async def wait(self) -> None:
        await anyio.sleep(self._delay)
        self._delay = min(5.0, self._delay * 2)


class Runner:
    """Starts and drives the runs of one engine's instances, one task per instance.

    A run starts when an instance is created, recovered or claimed (by a signal, a timer,
    a cancelled child or ``resume``) and ends when the instance completes, fails, is
    cancelled or suspends; the engine's group of instances holds its task meanwhile.
    """

    def __init__(self, kernel: Kernel, max_running: int | None = None) -> None:
        if max_running is not None and (
            not isinstance(typing.cast(object, max_running), int)
            or isinstance(max_running, bool)
            or max_running < 1
        ):
            raise ValueError(
                f"max_running must be an int of at least 1 or None, not {max_running!r}"
            )
        self._kernel = kernel
        self.runs: dict[str, Run] = {}
        self._troubled: set[str] = set()  # runs that ended because storage failed
        # At most max_running top-level runs have a task; the others wait here, in order.
        self._max_running = max_running
        self._active = 0
        self._waiting: collections.deque[tuple[Run, InstanceRecord]] = collections.deque()
        self._room: anyio.Event | None = None  # set when a task slot frees up
        # Waiting runs whose instance changed meanwhile (cancelled): read again at their
        # turn. Nothing else changes a waiting instance unless another engine shares
        # the database, where every waiting run is read again.
        self._touched: set[str] = set()

    def claimed(self, record: InstanceRecord, history: Recorded | None = None) -> None:
        """Run an instance stored as ``running``: recovered, or just claimed; *history*:
        what its replay needs, if read right after it was claimed (admission does).

        An instance of a queue that was claimed back to ``enqueued`` waits for admission.
        """
        if record.status == "enqueued":
            if record.queue is not None:
                self._kernel.wake_queue(record.queue)
            return
        wf = self._kernel.registry.get(record.workflow)
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
        if run is not None and run.driven:
            run.rerun = True  # still ending its suspended pass: it goes again
            return
        run = self.reserve(record.instance_id, wf)
        run.history = history
        self.start(run, record)

    async def recover(self, *, shared: bool = False) -> None:
        """Run every top-level instance stored as ``running`` (at engine start); on a
        shared database, first those nobody holds (claimed here)."""
        kernel = self._kernel
        if shared:
            # Claims pass over the instances of workflows not registered here: say so.
            listed = await kernel.store.call(
                kernel.store.storage.list_instances, status="running", limit=1000
            )
            for record in listed:
                if record.parent_id is None and record.owner is None:
                    self._recovered(record)  # claims it, or logs that it cannot run it
        for record in await kernel.store.running():
            if record.parent_id is None:  # children are driven by their parent
                self._recovered(record)

    def _recovered(self, record: InstanceRecord) -> None:
        _log.event(_log.INFO, "instance %r of %r recovered", record.instance_id,
                   record.workflow, instance_id=record.instance_id,
                   workflow=record.workflow)  # fmt: skip
        self.claimed(record)

    def live(self, instance_id: str) -> Run | None:
        """The run of *instance_id* if a task of this engine runs it."""
        run = self.runs.get(instance_id)
        return run if run is not None and run.driven else None

    async def wait_idle(self) -> None:
        while self.runs:
            await next(iter(self.runs.values())).finished.wait()

    def reserve(self, instance_id: str, wf: Workflow[Any, Any]) -> Run:
        run = self.runs.get(instance_id)
        if run is None:
            run = self.runs[instance_id] = Run(instance_id, wf)
        return run

    def release(self, run: Run) -> None:
        if not run.driven and run.pending == 0 and self.runs.get(run.instance_id) is run:
            del self.runs[run.instance_id]
            run.release()
            run.set_finished()

    def start(self, run: Run, record: InstanceRecord) -> None:
        """Give a top-level run a task now, or when a slot frees up (in order)."""
        wf = self._kernel.registry.get(record.workflow)
        if wf is not None:  # racing invokes may have reserved it under another workflow
            run.workflow = wf
        run.driven = True
        if self._waiting or not self.free():
            run.history = None  # it waits: read it when it starts
            self._waiting.append((run, record))
            return
        self._spawn(run, record, waited=False)

    def free(self) -> int:
        """How many more top-level runs may have a task now."""
        if self._max_running is None:
            return 1 << 30
        return max(0, self._max_running - self._active - len(self._waiting))

    async def room(self) -> int:
        """Wait until a top-level run may have a task; return how many may."""
        while not (free := self.free()):
            self._room = anyio.Event()
            await self._room.wait()
        return free

    def _spawn(self, run: Run, record: InstanceRecord, *, waited: bool) -> None:
        self._active += 1
        name = f"memable {run.instance_id}"
        if not self._kernel.spawn(self._admitted, run, record, waited, name=name):
            self._active -= 1
            run.driven = False
            self.release(run)  # shutting down: the next engine recovers it

    async def _admitted(self, run: Run, record: InstanceRecord, waited: bool) -> None:
        try:
            if waited and (
                self._kernel.store.shared is not None or run.instance_id in self._touched
            ):  # it may have been cancelled (or run elsewhere) while it waited
                current = await self._reread(run, Backoff())
                if current is None or current.status != "running":
                    if current is not None:
                        run.outcome = outcome_of(current, self._kernel.serde, run.workflow)
                    if self.runs.get(run.instance_id) is run:
                        del self.runs[run.instance_id]
                    run.set_finished()
                    return
                record = current
            await self.drive(run, record)
        finally:
            self._touched.discard(run.instance_id)  # its cancel mark, read above or left since
            self._active -= 1
            while self._waiting and (self._max_running is None or self._active < self._max_running):
                waiting, waiting_record = self._waiting.popleft()
                self._spawn(waiting, waiting_record, waited=True)
            if self._room is not None and self.free():
                self._room.set()

    def stop_all(self) -> None:
        """Shutdown: end every pass (the instances stay ``running`` in storage)."""
        waiting, self._waiting = self._waiting, collections.deque()
        self._touched.clear()
        for run, _ in waiting:  # never started: the next engine recovers them
            run.driven = False
            self.release(run)
        for run in list(self.runs.values()):
            if run.live:
                run.end("shutdown")

    def lose(self, instance_id: str | None = None) -> None:
        """On a shared database: this engine no longer holds *instance_id* (``None``:
        any instance, its lease expired). Its run stops; storage is left as it is."""
        fences = self._kernel.fences
        for run_id in [instance_id] if instance_id is not None else list(fences):
            fences.pop(run_id, None)
            run = self.live(run_id)
            if run is not None and run.live:
                logger.warning(
                    "instance %r is no longer held by this engine; its run here stops",
                    run_id,
                    extra={"instance_id": run_id},
                )
                run.end("lost")

    async def _hold(self, run: Run, record: InstanceRecord) -> InstanceRecord | None:
        """On a shared database, claim a top-level instance before running it; the
        record to run, or ``None`` if another engine holds it (or it is not running)."""
        from ._records import Fence  # loaded on first use, not by ``import memable``

        kernel = self._kernel
        if record.owner is None or record.owner != kernel.owner:
            if record.status != "running" or record.owner is not None:
                return None
            try:
                acquired = await kernel.store.acquire(record.instance_id)
            except StorageError:
                self._log_trouble(run, "claiming it")  # the healer claims it later
                return None
            if acquired is None:
                return None
            record = acquired
        assert record.owner is not None
        kernel.fences[record.instance_id] = Fence(
            instance_id=record.instance_id, owner=record.owner, epoch=record.epoch
        )
        return record

    def cancel_live(self, instance_id: str, reason: str) -> None:
        """End the pass of a cancelled instance (its storage row says ``cancelled``); one
        that waits for a slot reads its row again when its turn comes."""
        run = self.live(instance_id)
        if run is not None and run.live:
            run.end("cancelled", Cancelled(reason=reason))
        elif run is not None:
            self._touched.add(instance_id)

    async def drive(self, run: Run, record: InstanceRecord) -> None:
        """Run one instance to its end, suspension or shutdown, healing after storage errors."""
        wf = run.workflow.name
        # A child the fan-out just created has not been touched since (it is new).
        new = run.fresh or (record.parent_id is not None and record.updated_at == record.created_at)
        _log.event(_log.INFO, "instance %r of %r %s", run.instance_id, wf,
                   "started" if new else "resumed", instance_id=run.instance_id,
                   workflow=wf)  # fmt: skip
        attributes = {"memable.instance_id": run.instance_id, "memable.workflow": wf,
                      "memable.run.fresh": new}  # fmt: skip
        if record.parent_id is not None:  # a child: under its parent's fan-out span
            scope = _telemetry.span(f"memable.run {wf}", attributes)
        elif run.fresh:  # the first run: a child of the span that invoked it
            scope = _telemetry.span(f"memable.run {wf}", attributes, parent=record.trace)
        else:  # a trace of its own, linked to the invoke (and, see _pass, to the signals
            # that woke it)
            links = (_telemetry.link_of(record.trace),)
            scope = _telemetry.span(f"memable.run {wf}", attributes, root=True, links=links)
        run.replayed = 0
        run.linked = ()
        with scope as span:
            run.span = span
            try:
                await self._drive(run, record)
            finally:
                run.span = None
                if span is not None:
                    span.set_attributes({"memable.run.outcome": run.reason or "unknown",
                                         "memable.steps.replayed": run.replayed})  # fmt: skip
                    if isinstance(run.outcome, Failed) and run.outcome.exception is not None:
                        _telemetry.failed(span, run.outcome.exception)

    async def _drive(self, run: Run, record: InstanceRecord) -> None:
        backoff = Backoff()
        queue = record.queue
        holds = self._kernel.store.shared is not None and record.parent_id is None
        try:
            run.status_message = record.status_message
            while True:
                if holds:
                    held = await self._hold(run, record)
                    if held is None:
                        break
                    record = held
                run.begin_pass()
                self._kernel.status.publish(run.instance_id, "running", run.status_message)
                await self._pass(run, record)
                if run.reason == "lost":
                    current = await self._reread(run, backoff)
                    if not run.rerun:  # else this engine claimed it again meanwhile: go again
                        if current is not None and current.status != "running":
                            run.outcome = outcome_of(current, self._kernel.serde, run.workflow)
                        break
                if not (run.reason == "restart" or (run.reason in _AGAIN and run.rerun)):
                    break
                if run.instance_id in self._troubled:
                    self._troubled.discard(run.instance_id)
                    await backoff.wait()
                current = await self._reread(run, backoff)
                if current is None or current.status != "running":
                    if current is not None and run.reason == "restart":
                        run.outcome = outcome_of(current, self._kernel.serde, run.workflow)
                    break
                record = current
        finally:
            if holds:
                self._kernel.fences.pop(run.instance_id, None)
            if self.runs.get(run.instance_id) is run:
                del self.runs[run.instance_id]
            run.set_finished()
            if queue is not None:  # its slot may be free: the next one starts at once
                self._kernel.slot_freed(queue)

    async def _reread(self, run: Run, backoff: Backoff) -> InstanceRecord | None:
        while True:
            try:
                return await self._kernel.store.get(run.instance_id)
            except StorageError:
                self._log_trouble(run, "reading it")
                await backoff.wait()

    def _log_trouble(self, run: Run, doing: str) -> None:
        logger.warning(
            "storage failed while %s for instance %r; it runs again once storage answers",
            doing,
            run.instance_id,
            exc_info=True,
            extra={"instance_id": run.instance_id},
        )
        self._kernel.trouble()

    def storage_failed(self, run: Run, doing: str) -> None:
        """End the pass as if the process died here; it runs again after a backoff.

        A write refused because this engine no longer holds the instance (a shared
        database) ends the run for good instead: another engine runs it, or it ended.
        """
        if isinstance(sys.exception(), Fenced):
            logger.warning(
                "instance %r is no longer held by this engine (%s refused); its run here stops",
                run.instance_id,
                doing,
                extra={"instance_id": run.instance_id},
            )
            run.end("lost")
            return
        self._log_trouble(run, doing)
        self._troubled.add(run.instance_id)
        run.end("restart")

    async def _pass(self, run: Run, record: InstanceRecord) -> None:
        """One pass over the workflow function, from the top."""
        # loaded on first use, not by ``import memable``
        from ._context import Context
        from ._journal import Journal
        from ._records import Recorded

        kernel = self._kernel
        wf = run.workflow
        with run.scope:
            if run.fresh:
                run.fresh = False
                history = Recorded(values={}, dead={}, signals=(), timers=())
            elif run.history is not None:
                history, run.history = run.history, None
            else:
                try:
                    history = await kernel.store.recorded(run.instance_id)
                except StorageError as exc:
                    if getattr(exc, "permanent", False):  # a corrupt row: retrying won't help
                        logger.error(
                            "instance %r stopped: %s",
                            run.instance_id,
                            exc,
                            extra={"instance_id": run.instance_id},
                        )
                        run.end("crashed", Failed(error=ErrorInfo.from_exception(exc),
                                                  exception=exc))  # fmt: skip
                        return
                    self.storage_failed(run, "loading its history")
                    return
                if run.span is not None:
                    _link_signals(run, history, record.waiting_on)
            context = Context(kernel, self, run, Journal(run.instance_id, history,
                                                         record.waiting_on))  # fmt: skip
            input_type, output_type = wf.types()
            try:
                try:
                    if wf.takes_input:
                        value = kernel.serde.decode(
                            record.input, input_type, "input", f"the input of {run.instance_id!r}"
                        )
                        output = await wf.fn(context, value)
                    else:
                        output = await wf.fn(context)
                    envelope = kernel.serde.encode(
                        output, output_type, "output", f"the output of {run.instance_id!r}"
                    )
                finally:
                    context.close()
            except Exception as exc:
                if run.phase == "running":  # not while suspending, ending or cancelled
                    failed = Failed(error=ErrorInfo.from_exception(exc), exception=exc)
                    await self._finish(run, failed)
            else:
                if run.phase == "running":
                    await self._finish(run, Completed(output=output), output=envelope)

    async def _finish(
        self, run: Run, outcome: Completed[Any] | Failed, output: str | None = None
    ) -> None:
        from ._records import InstanceUpdate  # loaded on first use, not by ``import memable``

        kernel = self._kernel
        now = kernel.now()
        status: InstanceState = "completed" if isinstance(outcome, Completed) else "failed"
        error = None
        if isinstance(outcome, Failed):
            error = outcome.error.to_json()
        update = InstanceUpdate(
            instance_id=run.instance_id,
            updated_at=now,
            status=status,
            only_if=("running",),
            status_message=run.status_message,
            output=output,
            error=error,
            waiting_on=(),
            finished_at=now,
        )
        with anyio.CancelScope(shield=True):  # what storage decided must be known here
            try:
                (applied,) = await kernel.write([update])
                current = None if applied else await kernel.store.get(run.instance_id)
            except StorageError:
                self.storage_failed(run, "recording its end")
                return
        if applied:
            _log.event(_log.ERROR if status == "failed" else _log.INFO, "instance %r of %r %s%s",
                       run.instance_id, run.workflow.name, status,
                       f": {error_of(outcome)}" if isinstance(outcome, Failed) else "",
                       instance_id=run.instance_id, workflow=run.workflow.name)  # fmt: skip
            run.end("completed" if status == "completed" else "failed", outcome)
            kernel.status.publish(run.instance_id, status, run.status_message)
            return
        # Lost a race: it was cancelled (or otherwise ended) meanwhile. Say what storage says.
        if current is not None and current.status == "cancelled":
            run.end("cancelled", Cancelled(reason=current.status_message or ""))
        elif current is not None and current.status == "running":
            run.end("restart")  # pragma: no cover - only a foreign writer could do this
        else:
            stored = None if current is None else outcome_of(current, kernel.serde, run.workflow)
            run.end("cancelled", stored)

    async def suspend(self, run: Run) -> None:
        """Record *run*'s instance as suspended on every key its tasks wait on, then end it.

        Called by the first task that waits; others register their keys meanwhile. The
        suspension is written once no durable operation is in flight, and written again
        (extended) if a key was registered while it was being written.
        """
        attributes = {"memable.instance_id": run.instance_id,
                      "memable.workflow": run.workflow.name}  # fmt: skip
        with _telemetry.span("memable.suspend", attributes) as span:
            await self._suspend(run)
            if span is not None:
                span.set_attribute("memable.waiting_on", sorted(run.waiting))

    async def _suspend(self, run: Run) -> None:
        from ._records import Suspension  # loaded on first use, not by ``import memable``

        kernel = self._kernel
        written: set[str] | None = None
        with anyio.CancelScope(shield=True):  # what storage decided must be known here
            while True:
                await run.until_idle()
                # One scheduling round: tasks just woken or spawned reach their waits
                # (a plain checkpoint: the scope around it is shielded already).
                await anyio.lowlevel.checkpoint()
                if run.busy:
                    continue
                keys = tuple(sorted(run.waiting))
                suspension = Suspension(
                    instance_id=run.instance_id,
                    waiting_on=keys,
                    status_message=run.status_message,
                    now=kernel.now(),
                    extend=written is not None,
                )
                try:
                    if kernel.store.shared is None:
                        # Through the group commit: many instances suspending at once
                        # share transactions, as their steps do.
                        (suspended,) = await kernel.write([suspension])
                    else:  # its own transaction, fenced by the run's claim
                        suspended = await kernel.store.suspend(
                            run.instance_id,
                            keys,
                            run.status_message,
                            suspension.now,
                            suspension.extend,
                            kernel.fence(run.instance_id),
                        )
                except StorageError:
                    run.suspend_failed()
                    self.storage_failed(run, "suspending it")
                    return
                run.status_dirty = False
                if not suspended:
                    run.end("restart")  # what it waits for has come, or it was cancelled
                    return
                written = set(keys)
                # The write let every other task run: those that registered a key
                # meanwhile are added by another (extending) write.
                if run.covered_by(written):
                    break
        assert written is not None
        waiting_on = _ids.public_keys(sorted(written))
        children = _ids.children_waited(written)
        _log.event(_log.INFO, "instance %r of %r suspended on %s", run.instance_id,
                   run.workflow.name, ", ".join(sorted(written)), instance_id=run.instance_id,
                   workflow=run.workflow.name)  # fmt: skip
        if run.end(
            "suspended",
            Suspended(waiting_on=waiting_on, status=run.status_message, children=children),
        ):
            kernel.status.publish(run.instance_id, "suspended", run.status_message, waiting_on)

    async def maybe_crash(self, run: Run, key: str, when: Literal["before", "after"]) -> None:
        """Crash injection (memable.testing): end the run here as if the process died."""
        points = self._kernel.crash_points
        if (key, when) in points:
            points.discard((key, when))
            parts = run.instance_id.split("/")
            for depth in range(len(parts), 0, -1):  # the instance and its ancestors
                ancestor = self.live("/".join(parts[:depth]))
                if ancestor is not None:
                    ancestor.end("crashed")
            await anyio.lowlevel.checkpoint()


def error_of(outcome: Failed) -> str:
    """How a failure reads in a log line."""
    return str(outcome.error)


def _link_signals(run: Run, history: Recorded, waiting_on: tuple[str, ...]) -> None:
    """Link the run's span to the spans that delivered the signals it waited for (it was
    claimed by one of them, or recovered after a crash since), once per drive."""
    for signal in history.signals:
        trace = signal.trace
        if trace is not None and signal.key in waiting_on and trace not in run.linked:
            run.linked += (trace,)
            _telemetry.link(run.span, trace)
