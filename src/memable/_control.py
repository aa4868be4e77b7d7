"""What the engine's verbs do: start (or enqueue), signal, cancel, resume and read instances.

:class:`~memable.Engine` keeps the public signatures, their documentation and the check
that it is running; the work behind each verb lives here, over the kernel and the runner.
The inbox, through which other processes (the ``memable`` command line) steer a SQLite
engine, uses the same steering calls (:meth:`Control.deliver`, :meth:`Control.cancel_record`,
:meth:`Control.resume_record`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
import attrs

from . import _log, _telemetry
from ._exceptions import InstanceConflict, InstanceNotFound, SignalRejected, SignalSuperseded
from ._ids import root_of
from ._kernel import Kernel, outcome_of
from ._keys import check_instance_ref, check_key, check_text, new_instance_id
from ._outcome import Outcome
from ._queues import Admitter, Queue
from ._runner import Runner
from ._suspend import SuspendPoint
from ._workflow import Workflow

if TYPE_CHECKING:
    from ._records import InstanceRecord, InstanceState, SignalOutcome, SignalRecord

__all__ = ["NOTHING", "RESUMABLE", "Control"]

O = TypeVar("O")  # noqa: E741
T = TypeVar("T")

#: The default of an omitted workflow input.
NOTHING: Final = object()

_PRIORITY_RANGE: Final = range(-(2**63), 2**63)

#: What ``resume`` restarts: a failed instance, and one stuck running or suspended.
RESUMABLE: Final[tuple[InstanceState, ...]] = ("failed", "running", "suspended")


class Control:
    """The engine's verbs, over its kernel and runner."""

    def __init__(self, kernel: Kernel, runner: Runner, admitter: Admitter) -> None:
        self._kernel = kernel
        self._runner = runner
        self._admitter = admitter
        self._last_id = 0  # the timestamp of the last generated instance id

    # -- starting ---------------------------------------------------------------------------

    async def start(
        self,
        wf: Workflow[Any, Any],
        input: Any,
        instance_id: str | None,
        *,
        queue: Queue | None = None,
        priority: int = 0,
    ) -> str:
        """Create an instance of *wf* (running, or enqueued in *queue*); return its id.

        An id that exists gives the existing instance (nothing runs) if its workflow and
        input are the same, else :class:`~memable.InstanceConflict`.
        """
        from ._records import InstanceRecord  # loaded on first use, not by ``import memable``

        if queue is not None:
            self._admitter.add(queue)
            if type(priority) is not int or priority not in _PRIORITY_RANGE:
                raise TypeError(f"priority must be a 64-bit int, not {priority!r}")
        if wf.takes_input and input is NOTHING:
            verb = "invoke" if queue is None else "enqueue"
            raise TypeError(f"workflow {wf.name!r} takes an input; pass it to {verb}()")
        if not wf.takes_input:
            if input is not NOTHING and input is not None:
                raise TypeError(f"workflow {wf.name!r} takes no input, got {input!r}")
            input = None
        kernel = self._kernel
        generated = instance_id is None
        if instance_id is None:
            now_ns = int(kernel.now() * 1_000_000) * 1000
            instance_id, self._last_id = new_instance_id(now_ns, self._last_id)
        else:
            check_key(instance_id, "instance id")
        input_type, _ = wf.types()
        envelope = kernel.serde.encode(
            input, input_type, "input", f"the input of workflow {wf.name!r}"
        )
        now = kernel.now()
        attributes = {"memable.workflow": wf.name, "memable.instance_id": instance_id}
        with _telemetry.span(f"memable.invoke {wf.name}", attributes, kind="PRODUCER"):
            # On a shared database this engine holds what it starts running (admission
            # claims an enqueued instance when it starts it).
            owner = kernel.owner if queue is None else None
            record = InstanceRecord(
                instance_id=instance_id,
                workflow=wf.name,
                status="running" if queue is None else "enqueued",
                input=envelope,
                created_at=now,
                updated_at=now,
                queue=None if queue is None else queue.name,
                priority=priority,
                trace=_telemetry.current_traceparent(),
                owner=owner,
                epoch=0 if owner is None else 1,
            )
            if queue is None:
                created, stored = await self._create_running(wf, record, generated)
            else:
                with anyio.CancelScope(shield=True):  # what storage answers must be acted on
                    stored, created = await self._create(record, generated)
                if created:
                    self._admitter.wake(queue.name)
        if not created:
            _check_same(stored, wf, envelope)
        return instance_id

    async def _create(self, record: InstanceRecord, generated: bool) -> tuple[InstanceRecord, bool]:
        if generated:
            # A generated id is new (a timestamp and 48 random bits), so its row joins
            # the group commit instead of taking a transaction of its own.
            await self._kernel.write([record], fenced=False)
            return record, True
        return await self._kernel.store.create(record)

    async def _create_running(
        self, wf: Workflow[Any, Any], record: InstanceRecord, generated: bool
    ) -> tuple[bool, InstanceRecord]:
        runner = self._runner
        run = runner.reserve(record.instance_id, wf)
        run.pending += 1
        try:
            with anyio.CancelScope(shield=True):  # what storage answers must be acted on
                stored, created = await self._create(record, generated)
        except BaseException:
            run.pending -= 1
            runner.release(run)  # nothing was created: drop the reservation
            raise
        run.pending -= 1
        if created:
            run.fresh = True
            runner.start(run, stored)
        else:
            runner.release(run)
        return created, stored

    # -- resuming ---------------------------------------------------------------------------

    async def resume(self, wf: Workflow[Any, Any], instance_id: str) -> None:
        """Run a failed or stuck instance of *wf* again, unless this engine runs it."""
        check_instance_ref(instance_id)
        if self._runner.live(instance_id) is None:
            await self.resume_record(await self.record(wf, instance_id))

    async def resume_record(self, record: InstanceRecord) -> bool:
        """Run a failed or stuck instance again (a child: its top-level instance).

        Returns whether it was restarted: not if a task of this engine runs it already, or
        it completed or was cancelled.
        """
        kernel, runner = self._kernel, self._runner
        if runner.live(record.instance_id) is not None:
            return False
        if record.parent_id is not None:
            # A child runs inside its parent: resuming it resumes its top-level instance.
            root = await kernel.store.get(root_of(record.instance_id))
            if root is None or kernel.registry.get(root.workflow) is None:
                return False
            return await self.resume_record(root)
        if record.status not in RESUMABLE:
            return False
        if record.status == "running" and record.owner is not None:
            if record.owner == kernel.owner:
                runner.claimed(record)  # held here, without a run (crash injection)
            return False  # else another engine runs it (a dead one's is reaped first)
        with kernel.claims.claiming():  # what it restarts is held here until it runs
            restarted = await kernel.store.restart(record.instance_id, RESUMABLE, kernel.now())
            if restarted is not None:
                runner.claimed(restarted)
        return restarted is not None

    # -- signals and cancellation -----------------------------------------------------------

    async def signal(
        self, wf: Workflow[Any, Any], instance_id: str, point: SuspendPoint[T], payload: T
    ) -> None:
        """Deliver *payload* to *point* of an instance, running it if it waited there."""
        from ._records import SignalRecord  # loaded on first use, not by ``import memable``

        kernel = self._kernel
        check_instance_ref(instance_id)
        kernel.check_point(wf, point)
        envelope = kernel.serde.encode(
            payload, point.payload_type, point.key, f"the payload of signal {point.key!r}"
        )
        signal = SignalRecord(
            instance_id=instance_id, key=point.key, payload=envelope, created_at=kernel.now()
        )
        await self.record(wf, instance_id)  # unknown id or another workflow: nothing stored
        outcome, record = await self.deliver(signal)
        match outcome:
            case "not_found":
                raise InstanceNotFound(f"no instance {instance_id!r}")
            case "finished":
                assert record is not None
                raise SignalRejected(point.key, f"instance {instance_id!r} is {record.status}")
            case "superseded":
                raise SignalSuperseded(
                    point.key,
                    f"suspend point {point.key!r} of instance {instance_id!r} already has a"
                    " payload (another signal came first); this one is not used",
                )
            case "timed_out":
                raise SignalSuperseded(
                    point.key,
                    f"the deadline of suspend point {point.key!r} of instance {instance_id!r}"
                    " passed before this signal; it is not used",
                )

    async def deliver(self, signal: SignalRecord) -> tuple[SignalOutcome, InstanceRecord | None]:
        """Store a payload; run the instance if it waited on the point (in a span).

        The span's ``traceparent`` is stored with the payload: the run it resumes links to
        the span, in this engine or another, now or after a restart.
        """
        with _telemetry.signal_span(signal.instance_id, signal.key) as span:
            if span is not None:
                signal = attrs.evolve(signal, trace=_telemetry.current_traceparent())
            with self._kernel.claims.claiming():  # what it resumes is held here until it runs
                outcome, record = await self._kernel.store.signal(signal)
                if outcome == "claimed":
                    assert record is not None
                    self._runner.claimed(record)
            if span is not None:
                span.set_attribute("memable.signal.outcome", outcome)
        return outcome, record

    async def cancel(self, wf: Workflow[Any, Any], instance_id: str, reason: str) -> bool:
        """End an instance of *wf* and its children as ``cancelled``; whether this call did."""
        check_text(reason, f"the cancel reason for {instance_id!r}")
        return await self.cancel_record(await self.record(wf, instance_id), reason)

    async def cancel_record(self, record: InstanceRecord, reason: str) -> bool:
        """End a running or suspended instance and its children; whether this call did."""
        kernel, runner = self._kernel, self._runner
        with kernel.claims.claiming():  # a parent it resumes is held here until it runs
            before, to_run = await kernel.store.cancel(record.instance_id, reason, kernel.now())
            if before is None:
                return False  # already finished
            prefix, own = record.instance_id + "/", record.instance_id
            for run_id in [i for i in runner.runs if i == own or i.startswith(prefix)]:
                runner.cancel_live(run_id, reason)
            kernel.status.publish(record.instance_id, "cancelled", reason)
            _log.event(_log.INFO, "instance %r of %r cancelled: %s", record.instance_id,
                       record.workflow, reason or "(no reason)", instance_id=record.instance_id,
                       workflow=record.workflow)  # fmt: skip
            if to_run is not None:  # a parent waited for this child: it runs on
                runner.claimed(to_run)
        return True

    # -- reading ----------------------------------------------------------------------------

    async def record(self, wf: Workflow[Any, Any], instance_id: str) -> InstanceRecord:
        """The stored instance, which must be one of *wf* (or a child of one)."""
        return await self._kernel.store.find(wf.name, instance_id)

    def outcome(self, wf: Workflow[Any, O], record: InstanceRecord) -> Outcome[O] | None:
        """What a finished or suspended instance ended with (``None`` while it runs)."""
        return outcome_of(record, self._kernel.serde, wf)

    def live_message(self, record: InstanceRecord) -> str | None:
        """The status message: the live one while a task of this engine runs the instance."""
        run = self._runner.live(record.instance_id)
        return record.status_message if run is None else run.status_message


def _check_same(stored: InstanceRecord, wf: Workflow[Any, Any], envelope: str) -> None:
    """Refuse to attach to an existing instance of another workflow or input."""
    instance_id = stored.instance_id
    if stored.workflow != wf.name:
        raise InstanceConflict(
            f"instance id {instance_id!r} belongs to workflow {stored.workflow!r}, not {wf.name!r}"
        )
    if json.loads(stored.input)["value"] != json.loads(envelope)["value"]:
        raise InstanceConflict(
            f"instance {instance_id!r} of {wf.name!r} exists with a different input;"
            " use another instance_id, or the same input to attach to it"
        )
