"""Creating instances: started at once (``invoke``) or enqueued (``enqueue``), idempotent by id."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final, final

import anyio

from ._exceptions import InstanceConflict
from ._keys import check_key, new_instance_id
from ._records import InstanceRecord

if TYPE_CHECKING:
    from ._kernel import Kernel
    from ._queues import Admitter, Queue
    from ._runner import Runner
    from ._workflow import Workflow

__all__ = ["NOTHING", "Starter"]

#: An input that was not given.
NOTHING: Final[Any] = object()

_PRIORITY_RANGE: Final = range(-(2**63), 2**63)


@final
class Starter:
    """Creates an engine's top-level instances."""

    __slots__ = ("_admitter", "_kernel", "_last_id", "_runner")

    def __init__(self, kernel: Kernel, runner: Runner, admitter: Admitter) -> None:
        self._kernel = kernel
        self._runner = runner
        self._admitter = admitter
        self._last_id = 0  # the timestamp of the last generated instance id

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
        record = InstanceRecord(
            instance_id=instance_id,
            workflow=wf.name,
            status="running" if queue is None else "enqueued",
            input=envelope,
            created_at=now,
            updated_at=now,
            queue=None if queue is None else queue.name,
            priority=priority,
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
            await self._kernel.write([record])
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
