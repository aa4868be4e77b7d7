"""What the engine's verbs do: start, signal, cancel, resume and read instances.

:class:`~memable.Engine` keeps the public signatures, their documentation and the check
that it is running; the work behind each verb lives here, over the kernel and the runner.
"""

from __future__ import annotations

import json
from typing import Any, Final, TypeVar

import anyio

from ._exceptions import InstanceConflict, InstanceNotFound, SignalRejected, SignalSuperseded
from ._ids import root_of
from ._kernel import Kernel, outcome_of
from ._keys import check_instance_ref, check_key, check_text, new_instance_id
from ._outcome import Outcome
from ._records import InstanceRecord, InstanceState, SignalRecord
from ._runner import Runner
from ._suspend import SuspendPoint
from ._workflow import Workflow

__all__ = ["NOTHING", "Control"]

O = TypeVar("O")  # noqa: E741
T = TypeVar("T")

#: The default of an omitted workflow input.
NOTHING: Final = object()

#: What ``resume`` restarts: a failed instance, and one stuck running or suspended.
_RESUMABLE: Final[tuple[InstanceState, ...]] = ("failed", "running", "suspended")


class Control:
    """The engine's verbs, over its kernel and runner."""

    def __init__(self, kernel: Kernel, runner: Runner) -> None:
        self._kernel = kernel
        self._runner = runner
        self._last_id = 0  # the timestamp of the last generated instance id

    # -- starting ---------------------------------------------------------------------------

    async def start(self, wf: Workflow[Any, Any], input: Any, instance_id: str | None) -> str:
        """Create an instance of *wf* (or find the same one) and run it; return its id."""
        kernel = self._kernel
        if wf.takes_input and input is NOTHING:
            raise TypeError(f"workflow {wf.name!r} takes an input; pass it to invoke()")
        if not wf.takes_input:
            if input is not NOTHING and input is not None:
                raise TypeError(f"workflow {wf.name!r} takes no input, got {input!r}")
            input = None
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
        owner = kernel.owner  # on a shared database, this engine holds what it starts
        record = InstanceRecord(
            instance_id=instance_id,
            workflow=wf.name,
            status="running",
            input=envelope,
            created_at=now,
            updated_at=now,
            owner=owner,
            epoch=0 if owner is None else 1,
        )
        run = self._runner.reserve(instance_id, wf)
        run.pending += 1
        try:
            with anyio.CancelScope(shield=True):  # what storage answers must be acted on
                if generated:
                    # A generated id is new (a timestamp and 48 random bits), so its row joins
                    # the group commit instead of taking a transaction of its own.
                    await kernel.write([record], fenced=False)
                    stored, created = record, True
                else:
                    stored, created = await kernel.store.create(record)
        except BaseException:
            run.pending -= 1
            self._runner.release(run)  # nothing was created: drop the reservation
            raise
        run.pending -= 1
        if created:
            run.fresh = True
            self._runner.start(run, stored)
            return instance_id
        self._runner.release(run)
        if stored.workflow != wf.name:
            raise InstanceConflict(
                f"instance id {instance_id!r} belongs to workflow {stored.workflow!r},"
                f" not {wf.name!r}"
            )
        if json.loads(stored.input)["value"] != json.loads(envelope)["value"]:
            raise InstanceConflict(
                f"instance {instance_id!r} of {wf.name!r} exists with a different input;"
                " use another instance_id, or the same input to attach to it"
            )
        return instance_id

    async def resume(self, wf: Workflow[Any, Any], instance_id: str) -> None:
        """Run a failed or stuck instance again (for a child: its top-level instance)."""
        check_instance_ref(instance_id)
        if self._runner.live(instance_id) is not None:
            return
        record = await self.record(wf, instance_id)
        if record.parent_id is not None:
            # A child runs inside its parent: resuming it resumes its top-level instance.
            root = await self._kernel.store.get(root_of(instance_id))
            root_wf = None if root is None else self._kernel.registry.get(root.workflow)
            if root is not None and root_wf is not None:
                await self.resume(root_wf, root.instance_id)
            return
        if record.status not in _RESUMABLE:
            return
        if record.status == "running" and record.owner is not None:
            if record.owner == self._kernel.owner:
                self._runner.claimed(record)  # held here, without a run (crash injection)
            return  # else another engine runs it (a dead one's is reaped first)
        restarted = await self._kernel.store.restart(instance_id, _RESUMABLE, self._kernel.now())
        if restarted is not None:
            self._runner.claimed(restarted)

    # -- signals and cancellation -----------------------------------------------------------

    async def signal(
        self, wf: Workflow[Any, Any], instance_id: str, point: SuspendPoint[T], payload: T
    ) -> None:
        """Deliver *payload* to *point* of an instance, running it if it waited there."""
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
        outcome, record = await kernel.store.signal(signal)
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
            case "claimed":
                assert record is not None
                self._runner.claimed(record)

    async def cancel(self, wf: Workflow[Any, Any], instance_id: str, reason: str) -> bool:
        """End an instance and its children as ``cancelled``; whether this call did."""
        kernel = self._kernel
        check_text(reason, f"the cancel reason for {instance_id!r}")
        record = await self.record(wf, instance_id)
        before, to_run = await kernel.store.cancel(instance_id, reason, kernel.now())
        if before is None:
            return False  # already finished
        prefix = record.instance_id + "/"
        for run_id in [i for i in self._runner.runs if i == instance_id or i.startswith(prefix)]:
            self._runner.cancel_live(run_id, reason)
        kernel.status.publish(record.instance_id, "cancelled", reason)
        if to_run is not None:  # a parent waited for this child: it runs on
            self._runner.claimed(to_run)
        return True

    # -- reading ----------------------------------------------------------------------------

    async def record(self, wf: Workflow[Any, Any], instance_id: str) -> InstanceRecord:
        """The stored instance, which must be one of *wf* (or a child of one)."""
        check_instance_ref(instance_id)
        record = await self._kernel.store.get(instance_id)
        if record is None:
            raise InstanceNotFound(f"no instance {instance_id!r}")
        if record.workflow != wf.name and not (
            record.parent_id is not None and await self._root_is(instance_id, wf)
        ):
            raise InstanceConflict(
                f"instance {instance_id!r} belongs to workflow {record.workflow!r}, not {wf.name!r}"
            )
        return record

    async def _root_is(self, instance_id: str, wf: Workflow[Any, Any]) -> bool:
        """Whether the top-level ancestor of a child instance is an instance of *wf*."""
        root = await self._kernel.store.get(root_of(instance_id))
        return root is not None and root.workflow == wf.name

    def outcome(self, wf: Workflow[Any, O], record: InstanceRecord) -> Outcome[O] | None:
        """What a finished or suspended instance ended with (``None`` while it runs)."""
        return outcome_of(record, self._kernel.serde, wf)

    def live_message(self, record: InstanceRecord) -> str | None:
        """The status message: the live one while a task of this engine runs the instance."""
        run = self._runner.live(record.instance_id)
        return record.status_message if run is None else run.status_message
