"""The kernel: the services a run needs, in one small object — never the Engine.

Runners, contexts, fan-outs and the engine's background tasks are handed a
:class:`Kernel` (as svcs hands a container its registry, not the application): the
storage façade, the group committer, serde, the clock, the registry of workflows, the
default retry policy, the status hub, the timer and queue wake-ups, spawning, the
healer's alarm and the test hooks. The engine builds it and owns its life cycle.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import time
import typing
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, final

import anyio
import attrs

from ._clock import SystemClock
from ._exceptions import (
    InstanceConflict,
    InstanceNotFound,
    StorageError,
    TypeMismatch,
    WorkflowNotFound,
)
from ._ids import children_waited, public_keys, root_of
from ._keys import check_instance_ref
from ._outcome import Cancelled, Completed, ErrorInfo, Failed, Outcome, Suspended
from ._serde import type_name
from ._suspend import SuspendPoint
from ._tx import Fenced
from ._workflow import Workflow, function_workflow

if TYPE_CHECKING:
    import anyio.abc

    from ._clock import Clock
    from ._commit import GroupCommitter
    from ._records import (
        Admission,
        Fence,
        InstanceRecord,
        InstanceState,
        QueueRecord,
        Recorded,
        ScheduleRecord,
        SignalOutcome,
        SignalRecord,
        Write,
    )
    from ._retry import RetryPolicy
    from ._serde import Serde
    from ._status import StatusHub
    from .storage._protocol import QueueStorage, SharedStorage, Storage

__all__ = ["Claims", "Kernel", "Registry", "Store", "outcome_of"]

P = ParamSpec("P")
R = TypeVar("R")


_PURGE_SLICE = 0.002  # seconds one purge batch should take


@final
class Registry:
    """The workflows an engine runs, by name, and the workflows of fan-outs over functions."""

    __slots__ = ("_children", "_workflows")

    def __init__(self) -> None:
        self._workflows: dict[str, Workflow[Any, Any]] = {}
        self._children: dict[tuple[str, str], Workflow[Any, Any]] = {}

    def __iter__(self) -> Any:
        return iter(self._workflows.values())

    def add(self, wf: Workflow[Any, Any]) -> None:
        if not isinstance(wf, Workflow):
            raise TypeError(f"register() takes a memable.Workflow, not {wf!r}")
        known = self._workflows.get(wf.name)
        if known is not None:
            if known.fn is wf.fn:
                return
            raise ValueError(
                f"workflow name {wf.name!r} is already registered to {known.fn!r};"
                f" cannot register {wf.fn!r} under it too"
            )
        wf.types()
        self._workflows[wf.name] = wf

    def get(self, name: str) -> Workflow[Any, Any] | None:
        """The workflow registered under *name* (or a fan-out's function workflow)."""
        wf = self._workflows.get(name)
        if wf is None and name.startswith("_"):
            for child in self._children.values():
                if child.name == name:
                    return child
        return wf

    def known(self, wf: object) -> Workflow[Any, Any]:
        """The registered workflow *wf*, or :class:`WorkflowNotFound`."""
        known = self._workflows.get(wf.name) if isinstance(wf, Workflow) else None
        if known is None or known.fn is not getattr(wf, "fn", None):
            raise WorkflowNotFound(
                f"workflow {getattr(wf, 'name', wf)!r} is not registered with this engine;"
                " pass it to Engine(workflows=[...]) or call engine.register()"
            )
        return known

    def child(self, parent: Workflow[Any, Any], key: str, target: object) -> Workflow[Any, Any]:
        """The workflow the children of a fan-out run: a registered one, or a function's."""
        if isinstance(target, Workflow):
            return self.known(target)
        cache_key = (parent.name, key)
        wf = self._children.get(cache_key)
        if wf is None or wf.fn is not target:
            wf = function_workflow(f"_{parent.name}.{key}", target)  # type: ignore[arg-type]
            wf.types()
            self._children[cache_key] = wf
        return wf


@final
class Store:
    """Typed async calls of the storage, each in a worker thread under the engine's limiter."""

    __slots__ = ("_limiter", "_registry", "_trouble", "shared", "storage")

    def __init__(
        self,
        storage: Storage,
        limiter: anyio.CapacityLimiter,
        trouble: Callable[[], None] = lambda: None,
        *,
        shared: SharedStorage | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.storage = storage
        self.shared = shared  # the same storage, if several engines share it
        self._registry = registry
        self._limiter = limiter
        self._trouble = trouble

    async def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run *fn* in a worker thread. A storage error raises the engine's alarm: a write
        may have committed although its answer was lost (a signal that claimed an
        instance, a restart), so the healer re-scans for runs that have no task."""
        call = functools.partial(fn, *args, **kwargs)
        try:
            return await anyio.to_thread.run_sync(call, limiter=self._limiter)
        except StorageError:
            self._trouble()
            raise

    async def get(self, instance_id: str) -> InstanceRecord | None:
        return await self.call(self.storage.get_instance, instance_id)

    async def find(self, workflow: str, instance_id: str) -> InstanceRecord:
        """The instance *instance_id* of *workflow* (or a child of one of its instances).

        Raises:
            InstanceNotFound: no instance has this id.
            InstanceConflict: it belongs to another workflow.
        """
        check_instance_ref(instance_id)
        record = await self.get(instance_id)
        if record is None:
            raise InstanceNotFound(f"no instance {instance_id!r}")
        if record.workflow != workflow and record.parent_id is not None:
            root = await self.get(root_of(instance_id))
            if root is not None and root.workflow == workflow:
                return record
        if record.workflow != workflow:
            raise InstanceConflict(
                f"instance {instance_id!r} belongs to workflow {record.workflow!r},"
                f" not {workflow!r}"
            )
        return record

    async def create(self, record: InstanceRecord) -> tuple[InstanceRecord, bool]:
        return await self.call(self.storage.create_instance, record)

    async def children(self, parent_id: str) -> list[InstanceRecord]:
        return await self.call(self.storage.list_instances, parent_id=parent_id)

    async def fan_out_children(
        self, parent_id: str, prefix: str, status: frozenset[InstanceState]
    ) -> list[InstanceRecord]:
        """The children of a fan-out in one of *status* (an index range where supported)."""
        method = getattr(self.storage, "list_children", None)
        if method is not None:
            found: list[InstanceRecord] = await self.call(method, parent_id, prefix, status)
            return found
        return [
            record
            for record in await self.children(parent_id)
            if record.instance_id.startswith(prefix) and record.status in status
        ]

    async def count_children(
        self, parent_id: str, prefix: str, status: frozenset[InstanceState]
    ) -> int:
        method = getattr(self.storage, "count_children", None)
        if method is not None:
            count: int = await self.call(method, parent_id, prefix, status)
            return count
        return len(await self.fan_out_children(parent_id, prefix, status))

    async def running(self) -> list[InstanceRecord]:
        """The ``running`` instances this engine should run: every one, or on a shared
        database those it holds and those it could claim (which it claims)."""
        if self.shared is None:
            return await self.call(self.storage.list_instances, status="running")
        names = [wf.name for wf in self._registry or ()]
        self.shared.runs = frozenset(names)
        return await self.call(self.shared.claim, names, 1000)

    async def claim(self) -> list[InstanceRecord]:
        """On a shared database: claim what nobody holds (of the registered workflows)."""
        assert self.shared is not None
        names = [wf.name for wf in self._registry or ()]
        return await self.call(self.shared.claim, names, 1000, held=False)

    async def acquire(self, instance_id: str) -> InstanceRecord | None:
        assert self.shared is not None
        return await self.call(self.shared.acquire, instance_id)

    async def recorded(self, instance_id: str) -> Recorded:
        """What replaying *instance_id* needs (see :meth:`load_replay`)."""
        return await self.call(self.load_replay, instance_id)

    def load_replay(self, instance_id: str) -> Recorded:
        """The storage's ``load_replay`` if it has one, else what replay needs of its
        ``load_history`` (in a worker thread)."""
        from ._records import Recorded  # loaded on first use, not by ``import memable``

        load = getattr(self.storage, "load_replay", None)
        if load is not None:
            recorded: Recorded = load(instance_id)
            return recorded
        return Recorded.of(self.storage.load_history(instance_id))

    async def signal(self, signal: SignalRecord) -> tuple[SignalOutcome, InstanceRecord | None]:
        return await self.call(self.storage.deliver_signal, signal)

    async def suspend(
        self,
        instance_id: str,
        waiting_on: Sequence[str],
        message: str | None,
        now: float,
        extend: bool,
        fence: Fence | None = None,
    ) -> bool:
        # Only passed when set, so storages written before it existed keep working.
        more: dict[str, Any] = {"extend": True} if extend else {}
        if fence is not None:
            more["fence"] = fence
        return await self.call(
            self.storage.suspend,
            instance_id,
            waiting_on=waiting_on,
            status_message=message,
            now=now,
            **more,
        )

    async def cancel(
        self, instance_id: str, reason: str, now: float
    ) -> tuple[InstanceRecord | None, InstanceRecord | None]:
        result: Any = await self.call(self.storage.cancel, instance_id, reason=reason, now=now)
        if not isinstance(result, tuple):  # a storage written for the older protocol
            return result, None
        return result

    async def restart(
        self, instance_id: str, only_if: Sequence[InstanceState], now: float
    ) -> InstanceRecord | None:
        return await self.call(self.storage.restart, instance_id, only_if=only_if, updated_at=now)

    async def next_deadline(self) -> float | None:
        return await self.call(self.storage.next_deadline)

    async def fire_timers(self, now: float, limit: int) -> list[InstanceRecord]:
        return await self.call(self.storage.fire_timers, now, limit)

    async def purge(self, finished_before: float, **filters: Any) -> int:
        """Purge batch by batch, one storage call each, so that the engine's other writes
        (which wait for the same storage thread, first come first served) go between
        batches; a batch is sized to take about 2 ms."""
        purged, batch = 0, 100
        while True:
            started = time.perf_counter()
            done = await self.call(
                self.storage.purge,
                finished_before=finished_before,
                batch=batch,
                limit=batch,
                **filters,
            )
            purged += done
            if done == 0:
                return purged
            took = max(time.perf_counter() - started, 1e-4)
            batch = max(10, min(1000, int(batch * _PURGE_SLICE / took)))

    # -- queues and schedules ---------------------------------------------------------------

    def queues(self) -> QueueStorage:
        """The storage as a :class:`QueueStorage`, or a clear error if it is not one."""
        if not callable(getattr(self.storage, "admit", None)):
            raise TypeError(
                f"{type(self.storage).__name__} does not support queues and schedules;"
                " use a built-in storage (SQLite, memory or Postgres)"
            )
        return typing.cast("QueueStorage", self.storage)

    async def define_queue(self, row: QueueRecord) -> QueueRecord:
        return await self.call(self.queues().define_queue, row)

    async def pause_queue(self, name: str, paused: bool) -> bool:
        return await self.call(self.queues().pause_queue, name, paused)

    async def admit(
        self, name: str, now: float, workflows: Sequence[str], *, look: bool
    ) -> tuple[Admission, Recorded | None]:
        """Admit for queue *name* in one worker thread: with *look*, first ask a storage
        that can tell cheaply (``admission_possible``) whether anything could start; and
        when one instance starts, read its history there too (its run starts without
        another trip to a thread)."""
        from ._records import Admission  # loaded on first use, not by ``import memable``

        storage = self.queues()
        possible = getattr(storage, "admission_possible", None) if look else None

        def admit() -> tuple[Admission, Recorded | None]:
            if possible is not None and not possible(name, workflows):
                return Admission(), None
            admission = storage.admit(name, now=now, workflows=workflows)
            if len(admission.started) != 1:
                return admission, None
            try:
                return admission, self.load_replay(admission.started[0].instance_id)
            except StorageError:  # its run reads it again
                return admission, None

        return await self.call(admit)

    async def define_schedule(self, name: str, now: float) -> ScheduleRecord:
        return await self.call(self.queues().define_schedule, name, now)

    async def tick_schedule(
        self,
        name: str,
        *,
        expected: float,
        last_tick: float,
        records: Sequence[InstanceRecord],
        overlap: bool,
    ) -> tuple[ScheduleRecord | None, list[InstanceRecord] | None]:
        return await self.call(
            self.queues().tick_schedule,
            name,
            expected=expected,
            last_tick=last_tick,
            records=records,
            overlap=overlap,
        )


@final
class Claims:
    """The storage calls of this engine that may be claiming instances right now.

    Such a call holds an instance for this engine (stored ``running``, its owner this
    engine) before its run exists: admission, a fired timer, a delivered signal, a
    claim. A waiter that reads an instance held here without a run waits for the calls
    on their way (:meth:`settled`) before it decides that no run will come: a
    fact, not a guessed delay, however long a loaded machine takes.

    Example:
        >>> import anyio
        >>> from memable._kernel import Claims
        >>> claims = Claims()
        >>> async def main() -> None:
        ...     with claims.claiming():
        ...         pass  # a storage call, then its records handed to their runs
        ...     await claims.settled()  # nothing on its way: returns at once
        >>> anyio.run(main)
    """

    __slots__ = ("_keys", "_on_way")

    def __init__(self) -> None:
        self._keys = itertools.count()
        self._on_way: dict[int, anyio.Event | None] = {}  # an event once somebody waits

    @contextlib.contextmanager
    def claiming(self) -> Iterator[None]:
        """Around a storage call that may claim and the hand-over of what it claimed."""
        key = next(self._keys)
        self._on_way[key] = None
        try:
            yield
        finally:
            event = self._on_way.pop(key)
            if event is not None:
                event.set()

    async def settled(self) -> None:
        """Wait until the claiming calls on their way now have handed over what they
        claimed (later ones cannot have claimed what the caller read before)."""
        for key in list(self._on_way):
            if key not in self._on_way:
                continue  # ended meanwhile
            event = self._on_way[key]
            if event is None:
                event = self._on_way[key] = anyio.Event()
            await event.wait()


@final
class Kernel:
    """The services of one engine that runs, contexts and background tasks use."""

    __slots__ = (
        "_alarm",
        "_healed",
        "_recovered",
        "_spawner",
        "claims",
        "clock",
        "committer",
        "crash_points",
        "fences",
        "points",
        "registry",
        "retry",
        "serde",
        "slot_freed",
        "status",
        "store",
        "wake_queue",
        "wake_queues",
        "wake_timers",
    )

    def __init__(
        self,
        *,
        registry: Registry,
        serde: Serde,
        clock: Clock,
        retry: RetryPolicy | None,
        status: StatusHub,
    ) -> None:
        self.registry = registry
        self.serde = serde
        self.clock = clock
        self.retry = retry
        self.status = status
        self.crash_points: set[tuple[str, Literal["before", "after"]]] = set()
        # The payload type (canonical name) each workflow was seen waiting for at a key.
        self.points: dict[tuple[str, str], str] = {}
        self.wake_timers: Callable[[float], None] = lambda deadline: None
        # Admission of a queue may start something: a slot freed, or work came back.
        self.wake_queue: Callable[[str], None] = lambda name: None
        # A run of the queue ended here: a slot is free (admit without looking first).
        self.slot_freed: Callable[[str], None] = lambda name: None
        # Every queue: another engine on a shared database changed something (its hint).
        self.wake_queues: Callable[[], None] = lambda: None
        self._recovered: anyio.Event | None = None
        # Made on first use, on the engine's loop (anyio's events load with them).
        self._alarm: anyio.Event | None = None
        self._healed: anyio.Event | None = None  # unset from trouble() to the next re-scan
        self._spawner: anyio.abc.TaskGroup | None = None
        # On a shared database: the claim each top-level instance runs under here.
        self.fences: dict[str, Fence] = {}
        # On a shared database: the calls on their way that may be claiming instances.
        self.claims = Claims()
        # Made when the engine starts (on its event loop):
        self.store: Store
        self.committer: GroupCommitter

    @property
    def recovered(self) -> anyio.Event:
        """Set once the engine has re-run its running instances (made on first use, on
        the engine's loop)."""
        if self._recovered is None:
            self._recovered = anyio.Event()
        return self._recovered

    def check_point(self, wf: Workflow[Any, Any], point: SuspendPoint[Any]) -> None:
        """Refuse a signal for a point whose type is not the one *wf* was seen waiting for
        at its key (the payload itself is checked against the point when encoded)."""
        if not isinstance(typing.cast(object, point), SuspendPoint):
            raise TypeError(f"signal() takes a memable.SuspendPoint, not {point!r}")
        key = point.key
        waits_for = self.points.get((wf.name, key))
        sent = type_name(point.payload_type)
        if waits_for is not None and waits_for != sent:
            raise TypeMismatch(
                key,
                waits_for,
                sent,
                f"workflow {wf.name!r} waits at {key!r} for a {waits_for}, but this signal's"
                f" point carries a {sent} (nothing is stored); use the workflow's own"
                " SuspendPoint",
            )

    def now(self) -> float:
        """The engine clock's time, as seconds since the epoch."""
        if type(self.clock) is SystemClock:  # the hot path: no datetime made per call
            return time.time()
        return self.clock.now().timestamp()

    @property
    def owner(self) -> str | None:
        """This engine's id on a shared database (``None`` on a single-process one)."""
        shared = self.store.shared
        return None if shared is None else shared.engine_id

    def fence(self, instance_id: str) -> Fence | None:
        """The claim the run of *instance_id* (or of its top-level instance) holds, on a
        shared database; :class:`Fenced` if it holds none any more."""
        if self.store.shared is None:
            return None
        fence = self.fences.get(root_of(instance_id))
        if fence is None:
            raise Fenced(f"instance {root_of(instance_id)!r} is no longer held by this engine")
        return fence

    def write(
        self, writes: Sequence[Write], *, fenced: bool = True, suspending: bool = False
    ) -> Coroutine[Any, Any, list[bool]]:
        """Commit *writes* through the group committer; which of them applied.

        On a shared database the writes of a run carry its claim (*fenced*): they apply
        only while this engine still holds the instance (or, while the run is
        *suspending*, while nobody claimed it since the run's own suspension let it go).
        """
        if fenced and writes and self.store.shared is not None:
            return self._write_fenced(writes, suspending)
        return self.committer.write(writes)  # no coroutine of its own: the hot path

    async def _write_fenced(self, writes: Sequence[Write], suspending: bool) -> list[bool]:
        fence = self.fence(writes[0].instance_id)
        assert fence is not None
        if suspending:
            fence = attrs.evolve(fence, suspended=True)
        return (await self.committer.write([fence, *writes]))[1:]

    # -- spawning ---------------------------------------------------------------------------

    def open_spawning(self, task_group: anyio.abc.TaskGroup) -> None:
        self._spawner = task_group

    def close_spawning(self) -> None:
        self._spawner = None

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: str) -> bool:
        """Start a task in the engine's group of instances; False when shutting down."""
        if self._spawner is None:
            return False
        self._spawner.start_soon(fn, *args, name=name)
        return True

    # -- healing ----------------------------------------------------------------------------

    def trouble(self) -> None:
        """Storage failed somewhere: ask the healer to re-scan once storage works again."""
        if self._alarm is None:
            self._alarm = anyio.Event()
        self._alarm.set()
        if self._healed is None or self._healed.is_set():
            self._healed = anyio.Event()

    async def wait_trouble(self) -> None:
        if self._alarm is None:
            self._alarm = anyio.Event()
        await self._alarm.wait()
        self._alarm = anyio.Event()

    def rescanned(self, *, final: bool = False) -> None:
        """The healer finished a re-scan (or stopped, *final*): waiters of :meth:`settle`
        go on, unless new trouble came during the re-scan."""
        if self._healed is not None and (final or self._alarm is None or not self._alarm.is_set()):
            self._healed.set()

    async def settle(self) -> bool:
        """Wait for a pending re-scan after storage trouble; whether there was one."""
        if self._healed is None or self._healed.is_set():
            return False
        await self._healed.wait()
        return True


def outcome_of(record: InstanceRecord, serde: Serde, wf: Workflow[Any, Any]) -> Outcome[Any] | None:
    """The outcome a stored instance stands at (``None`` while it is running)."""
    match record.status:
        case "completed":
            assert record.output is not None
            _, output_type = wf.types()
            output = serde.decode(
                record.output, output_type, "output", f"the output of {record.instance_id!r}"
            )
            return Completed(output=output)
        case "failed":
            return Failed(error=ErrorInfo.from_json(record.error))
        case "suspended":
            return Suspended(
                waiting_on=public_keys(record.waiting_on),
                status=record.status_message,
                children=children_waited(record.waiting_on),
            )
        case "cancelled":
            return Cancelled(reason=record.status_message or "")
        case _:
            return None
