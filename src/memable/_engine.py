"""The engine: owns storage, the task group, and every running instance."""

from __future__ import annotations

import os
import types
import typing
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar, final, overload

import attrs

from ._clock import Clock, SystemClock
from ._control import NOTHING, Control
from ._durations import seconds
from ._invocation import Invocation
from ._kernel import Kernel, Registry
from ._keys import check_instance_ref
from ._lifecycle import Lifecycle
from ._queues import Admitter, Queue
from ._runner import Runner
from ._schedule import Schedule
from ._serde import Serde
from ._shared import Sharing
from ._status import Instances, StatusHub, StatusStream
from ._suspend import Status, SuspendPoint
from ._workflow import Workflow
from .storage._protocol import SharedStorage, Storage

if TYPE_CHECKING:
    import cattrs

    from ._info import InstanceInfo
    from ._inspect import History, Page
    from ._records import InstanceState
    from ._retry import RetryPolicy

__all__ = ["Engine"]

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741
R = TypeVar("R")
T = TypeVar("T")


#: How many top-level instances an engine runs at once unless told otherwise.
DEFAULT_MAX_RUNNING: Final = 1000


@final
class Engine:
    """Runs workflows durably and keeps their state in a storage.

    ``async with engine:`` opens storage, starts the engine's task group and re-runs
    instances a crash left ``running``. Leaving the block stops new work, waits up to
    *shutdown_timeout* seconds for running instances, then cancels them; an instance
    cancelled by shutdown stays ``running`` in storage and the next engine recovers it.
    Nothing the engine starts outlives the block. An engine can be entered once.

    Args:
        storage: A SQLite file path (created if missing), ``":memory:"`` (the default: a
            private in-memory database), a PostgreSQL URL (``"postgresql://…"``: a
            database many engines share, see
            :class:`~memable.storage.PostgresStorage`), or a
            :class:`~memable.storage.Storage`.
        workflows: Workflows to register (see :meth:`register`).
        retry: The retry policy of steps that have none of their own.
        resume_on_start: Re-run ``running`` instances on entering.
        shutdown_timeout: Seconds to wait for running instances on leaving.
        retention: Delete finished instances this long after they finished (checked
            periodically; a workflow's own ``retention`` overrides it). ``None`` keeps
            them until :meth:`purge`.
        converter: The cattrs Converter for stored values (by default the engine makes its
            own; the global converter is never used).
        clock: The source of stored time (UTC); :class:`memable.testing` has a controllable
            one.
        queues: Queues whose instances this engine starts (see :meth:`enqueue`).
        schedules: Schedules this engine runs (their workflows are registered).
        max_running: At most this many top-level instances run at once (children run
            inside their parent); the others wait their turn, admitted in order, and due
            timers are claimed as slots free up (``None``: no bound; see docs/limits.md).

    Example:
        >>> import anyio, memable
        >>> @memable.workflow("double")
        ... async def double(ctx: memable.Context, n: int) -> int:
        ...     async def times_two(n: int) -> int:
        ...         return 2 * n
        ...     return await ctx.step("double:v1", times_two, n)
        >>> async def main() -> int:
        ...     async with memable.Engine(workflows=[double]) as engine:
        ...         return await engine.run(double, 21)
        >>> anyio.run(main)
        42
    """

    def __init__(
        self,
        storage: str | os.PathLike[str] | Storage = ":memory:",
        *,
        workflows: Iterable[Workflow[Any, Any]] = (),
        retry: RetryPolicy | None = None,
        resume_on_start: bool = True,
        shutdown_timeout: float | timedelta = 30.0,
        retention: timedelta | None = None,
        converter: cattrs.Converter | None = None,
        clock: Clock | None = None,
        queues: Iterable[Queue] = (),
        schedules: Iterable[Schedule[Any]] = (),
        max_running: int | None = DEFAULT_MAX_RUNNING,
    ) -> None:
        storage = _storage_of(storage)
        _check_retry(retry)
        seconds(shutdown_timeout, "shutdown_timeout")  # checked before anything is made
        if retention is not None and seconds(retention, "retention") <= 0:
            raise ValueError(f"retention must be a positive timedelta, not {retention!r}")
        self._storage = storage
        self._registry = Registry()
        self._kernel = Kernel(
            registry=self._registry,
            serde=Serde(converter),
            clock=clock if clock is not None else SystemClock(),
            retry=retry,
            status=StatusHub(),
        )
        self._runner = Runner(self._kernel, max_running)
        self._admitter = Admitter(self._kernel, self._runner.claimed, queues)
        self._control = Control(self._kernel, self._runner, self._admitter)
        for wf in workflows:
            self.register(wf)
        shared = storage if isinstance(storage, SharedStorage) else None
        self._sharing = (
            None
            if shared is None
            else Sharing(self._kernel, self._runner, shared, claims=resume_on_start)
        )
        self._life = Lifecycle(storage, self._kernel, self._runner, self._control,
                               admitter=self._admitter, schedules=schedules,
                               sharing=self._sharing,
                               shutdown_timeout=seconds(shutdown_timeout, "shutdown_timeout"),
                               resume_on_start=resume_on_start, retention=retention)  # fmt: skip
        self._instances = Instances(
            status=self._kernel.status,
            runs=self._runner.runs,
            check_running=self._check_running,
            record=self._control.record,
            outcome=self._control.outcome,
            live_message=self._control.live_message,
            settle=self._kernel.settle,
            remote=None if self._sharing is None else self._sharing.changed,
        )

    def __repr__(self) -> str:
        return f"<memable.Engine storage={self._storage!r} phase={self._life.phase}>"

    # -- life cycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._life.enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self._life.exit(aborted=exc_type is not None)

    # -- registration -----------------------------------------------------------------------

    def register(self, wf: Workflow[Any, Any]) -> None:
        """Add a workflow to this engine (also allowed while it runs).

        Its annotations are resolved now, so a missing one fails here, not on first use.

        Raises:
            TypeError: *wf* is not a Workflow or lacks annotations.
            ValueError: another function is registered under the same name.

        Example:
            >>> import memable
            >>> @memable.workflow("noop")
            ... async def noop(ctx: memable.Context) -> None:
            ...     pass
            >>> memable.Engine().register(noop)
        """
        self._registry.add(wf)

    # -- starting instances -----------------------------------------------------------------

    @overload
    async def invoke(
        self, wf: Workflow[None, O], /, *, instance_id: str | None = None
    ) -> Invocation[O]: ...

    @overload
    async def invoke(
        self, wf: Workflow[I, O], input: I, /, *, instance_id: str | None = None
    ) -> Invocation[O]: ...

    async def invoke(
        self, wf: Workflow[Any, O], input: Any = NOTHING, /, *, instance_id: str | None = None
    ) -> Invocation[O]:
        """Start an instance of *wf* with *input*; return its :class:`Invocation`.

        Without *instance_id* a new, time-ordered id is made. With an id that exists, the
        call is idempotent: the same input gives the existing instance's handle and runs
        nothing; a different input (or workflow) raises :class:`~memable.InstanceConflict`.

        Raises:
            NotStarted: the engine is not running.
            WorkflowNotFound: *wf* is not registered.
            InvalidKey: *instance_id* breaks the key rules.
            TypeMismatch: *input* is not of the workflow's input type.
            InstanceConflict: *instance_id* exists with another input or workflow.

        Example:
            >>> import anyio, memable
            >>> approval = memable.SuspendPoint("approval:v1", bool)
            >>> @memable.workflow("order")
            ... async def order(ctx: memable.Context, order_id: str) -> int:
            ...     return 1250 if await ctx.suspend(approval, status="approve?") else 0
            >>> async def main() -> None:
            ...     async with memable.Engine(workflows=[order]) as engine:
            ...         invocation = await engine.invoke(order, "o-17", instance_id="order-o-17")
            ...         print(await invocation.wait())
            ...         again = await engine.invoke(order, "o-17", instance_id="order-o-17")
            ...         print(again.instance_id)
            >>> anyio.run(main)
            Suspended(waiting_on=('approval:v1',), status='approve?', children=0)
            order-o-17
        """
        self._check_running()
        wf = self._registry.known(wf)
        instance_id = await self._control.start(wf, input, instance_id)
        return self._invocation(wf, instance_id)

    def _invocation(self, wf: Workflow[Any, O], instance_id: str) -> Invocation[O]:
        return Invocation(self._instances, wf, instance_id)

    # -- queues -----------------------------------------------------------------------------

    @overload
    async def enqueue(
        self,
        queue: Queue,
        wf: Workflow[None, O],
        /,
        *,
        instance_id: str | None = None,
        priority: int = 0,
    ) -> Invocation[O]: ...

    @overload
    async def enqueue(
        self,
        queue: Queue,
        wf: Workflow[I, O],
        input: I,
        /,
        *,
        instance_id: str | None = None,
        priority: int = 0,
    ) -> Invocation[O]: ...

    async def enqueue(
        self,
        queue: Queue,
        wf: Workflow[Any, O],
        input: Any = NOTHING,
        /,
        *,
        instance_id: str | None = None,
        priority: int = 0,
    ) -> Invocation[O]:
        """Record an instance of *wf* as ``enqueued`` in *queue*; it starts when the
        queue's limits allow, highest *priority* (an int) first, then oldest. Idempotent by
        *instance_id* like :meth:`invoke`; from now on this engine admits for *queue*.

        Example:
            >>> import anyio, memable
            >>> emails = memable.Queue("emails", concurrency=10)
            >>> @memable.workflow("send")
            ... async def send(ctx: memable.Context, to: str) -> str:
            ...     return f"sent to {to}"
            >>> async def main() -> None:
            ...     async with memable.Engine(workflows=[send], queues=[emails]) as engine:
            ...         invocation = await engine.enqueue(emails, send, "ada", priority=5)
            ...         print(await invocation.result())
            >>> anyio.run(main)
            sent to ada
        """
        self._check_running()
        wf = self._registry.known(wf)
        instance_id = await self._control.start(
            wf, input, instance_id, queue=queue, priority=priority
        )
        return self._invocation(wf, instance_id)

    async def pause_queue(self, queue: Queue | str) -> None:
        """Start no more instances of *queue* in any engine on this database (stored,
        until :meth:`resume_queue`); enqueuing goes on, running instances run on.

        Raises:
            ValueError: the queue has never been used with this database.

        Example:
            >>> import anyio, memable
            >>> emails = memable.Queue("emails")
            >>> @memable.workflow("send")
            ... async def send(ctx: memable.Context, to: str) -> str:
            ...     return f"sent to {to}"
            >>> async def main() -> None:
            ...     async with memable.Engine(workflows=[send], queues=[emails]) as engine:
            ...         await engine.pause_queue(emails)
            ...         invocation = await engine.enqueue(emails, send, "ada", instance_id="e-1")
            ...         print((await engine.state(send, "e-1")).status)
            ...         await engine.resume_queue(emails)
            ...         print(await invocation.result())
            >>> anyio.run(main)
            enqueued
            sent to ada
        """
        self._check_running()
        await self._admitter.pause(queue, True)

    async def resume_queue(self, queue: Queue | str) -> None:
        """Start instances of a paused *queue* again (:meth:`pause_queue` has an example)."""
        self._check_running()
        await self._admitter.pause(queue, False)

    @overload
    async def run(self, wf: Workflow[None, O], /, *, instance_id: str | None = None) -> O: ...

    @overload
    async def run(
        self, wf: Workflow[I, O], input: I, /, *, instance_id: str | None = None
    ) -> O: ...

    async def run(
        self, wf: Workflow[Any, O], input: Any = NOTHING, /, *, instance_id: str | None = None
    ) -> O:
        """:meth:`invoke`, then :meth:`Invocation.result`.

        Example:
            >>> import anyio, memable
            >>> approval = memable.SuspendPoint("approval:v1", bool)
            >>> @memable.workflow("order")
            ... async def order(ctx: memable.Context, order_id: str) -> int:
            ...     return 1250 if await ctx.suspend(approval, status="approve?") else 0
            >>> async def main() -> None:
            ...     async with memable.Engine(workflows=[order]) as engine:
            ...         try:
            ...             await engine.run(order, "o-17")
            ...         except memable.WorkflowSuspended as exc:
            ...             print("suspended on", exc.key)
            >>> anyio.run(main)
            suspended on approval:v1
        """
        invocation = await self.invoke(wf, input, instance_id=instance_id)
        return await invocation.result()

    def handle(self, wf: Workflow[Any, O], instance_id: str) -> Invocation[O]:
        """Return an :class:`Invocation` for an existing instance (checked when used).

        Example:
            >>> import anyio, memable
            >>> approval = memable.SuspendPoint("approval:v1", bool)
            >>> @memable.workflow("order")
            ... async def order(ctx: memable.Context, order_id: str) -> int:
            ...     return 1250 if await ctx.suspend(approval, status="approve?") else 0
            >>> async def main() -> None:
            ...     async with memable.Engine(workflows=[order]) as engine:
            ...         await engine.invoke(order, "o-17", instance_id="order-o-17")
            ...         await engine.signal(order, "order-o-17", approval, True)
            ...         print(await engine.handle(order, "order-o-17").result())
            >>> anyio.run(main)
            1250
        """
        check_instance_ref(instance_id)
        return self._invocation(self._registry.known(wf), instance_id)

    async def resume(self, wf: Workflow[Any, O], instance_id: str) -> Invocation[O]:
        """Run a failed or stuck instance again.

        Its dead-lettered steps run again with a fresh retry budget; its completed steps
        are served from storage. An instance running in this engine is left alone, and a
        completed or cancelled one is not re-run; either way its handle is returned.

        Raises:
            InstanceNotFound: no instance has this id (none is created).

        Example:
            >>> import anyio, memable
            >>> approval = memable.SuspendPoint("approval:v1", bool)
            >>> @memable.workflow("order")
            ... async def order(ctx: memable.Context, order_id: str) -> int:
            ...     return 1250 if await ctx.suspend(approval, status="approve?") else 0
            >>> async def main() -> None:
            ...     async with memable.Engine(workflows=[order]) as engine:
            ...         await engine.invoke(order, "o-17", instance_id="order-o-17")
            ...         invocation = await engine.resume(order, "order-o-17")  # replays
            ...         print(await invocation.wait())
            >>> anyio.run(main)
            Suspended(waiting_on=('approval:v1',), status='approve?', children=0)
        """
        self._check_running()
        wf = self._registry.known(wf)
        await self._control.resume(wf, instance_id)
        return self._invocation(wf, instance_id)

    # -- signals, cancellation, status -------------------------------------------------------

    async def signal(
        self, wf: Workflow[Any, O], instance_id: str, point: SuspendPoint[T], payload: T, /
    ) -> Invocation[O]:
        """Deliver *payload* to *point* of an instance; return the instance's handle.

        The payload is checked against the point's type before anything is written. If
        the instance is suspended on ``point.key`` it is claimed and runs again; if it has
        not reached the point yet, the payload is kept for when it does.

        Raises:
            TypeMismatch: *payload* is not of the point's type, or of the one the wf waits for.
            InstanceNotFound: no instance has this id.
            SignalRejected: the instance has finished.
            SignalSuperseded: the point already has a payload, or its deadline passed.

        Example:
            >>> import anyio, memable
            >>> approval = memable.SuspendPoint("approval:v1", bool)
            >>> @memable.workflow("order")
            ... async def order(ctx: memable.Context, order_id: str) -> int:
            ...     return 1250 if await ctx.suspend(approval, status="approve?") else 0
            >>> async def main() -> None:
            ...     async with memable.Engine(workflows=[order]) as engine:
            ...         await engine.invoke(order, "o-17", instance_id="order-o-17")
            ...         invocation = await engine.signal(order, "order-o-17", approval, True)
            ...         print(await invocation.result())
            >>> anyio.run(main)
            1250
        """
        self._check_running()
        wf = self._registry.known(wf)
        await self._control.signal(wf, instance_id, point, payload)
        return self._invocation(wf, instance_id)

    async def cancel(self, wf: Workflow[Any, Any], instance_id: str, reason: str = "") -> bool:
        """End a running or suspended instance (and its children) as ``cancelled``.

        A task running it is cancelled through its cancel scope (its ``finally`` blocks
        run; no further result is recorded). Returns whether this call cancelled it: a
        cancel that loses a race with the instance's end (or finds it finished) returns
        ``False`` and changes nothing, so what ``wait()`` reports and what storage holds
        always agree. Cancelling a child counts as its failure for the parent's fan-out.

        Raises:
            InstanceNotFound: no instance has this id.

        Example:
            >>> import anyio, memable
            >>> approval = memable.SuspendPoint("approval:v1", bool)
            >>> @memable.workflow("order")
            ... async def order(ctx: memable.Context, order_id: str) -> int:
            ...     return 1250 if await ctx.suspend(approval, status="approve?") else 0
            >>> async def main() -> None:
            ...     async with memable.Engine(workflows=[order]) as engine:
            ...         invocation = await engine.invoke(order, "o-17", instance_id="order-o-17")
            ...         await invocation.wait()
            ...         await engine.cancel(order, "order-o-17", reason="customer left")
            ...         print(await invocation.wait())
            >>> anyio.run(main)
            Cancelled(reason='customer left')
        """
        self._check_running()
        return await self._control.cancel(self._registry.known(wf), instance_id, reason)

    def subscribe(self, wf: Workflow[Any, Any], instance_id: str) -> AsyncIterator[Status]:
        """Iterate over the status changes of an instance.

        The first item is the current status. Changes follow live while the instance
        runs in this engine, across suspension, signal and completion; the iteration
        ends after a terminal status (``completed``, ``failed``, ``cancelled``), or when
        the engine leaves its ``async with`` block. A finished instance yields its final
        status once.

        Example:
            >>> import anyio, memable
            >>> approval = memable.SuspendPoint("approval:v1", bool)
            >>> @memable.workflow("order")
            ... async def order(ctx: memable.Context, order_id: str) -> int:
            ...     return 1250 if await ctx.suspend(approval, status="approve?") else 0
            >>> async def main() -> None:
            ...     async with memable.Engine(workflows=[order]) as engine:
            ...         await (await engine.invoke(order, "o-17", instance_id="order-o-17")).wait()
            ...         await engine.signal(order, "order-o-17", approval, False)
            ...         async for status in engine.subscribe(order, "order-o-17"):
            ...             last = status
            ...         print(last.status)
            >>> anyio.run(main)
            completed
        """
        self._check_running()
        wf = self._registry.known(wf)
        check_instance_ref(instance_id)
        return StatusStream(self._instances, wf, instance_id)

    # -- retention --------------------------------------------------------------------------

    async def purge(self, older_than: timedelta) -> int:
        """Delete instances that finished more than *older_than* ago; return how many.

        Completed, failed and cancelled top-level instances go with all their steps,
        signals, timers and children, in short batches that let other writes go between
        them. Running and suspended instances are never purged.

        Example:
            >>> import anyio, memable
            >>> from datetime import timedelta
            >>> approval = memable.SuspendPoint("approval:v1", bool)
            >>> @memable.workflow("order")
            ... async def order(ctx: memable.Context, order_id: str) -> int:
            ...     return 1250 if await ctx.suspend(approval, status="approve?") else 0
            >>> async def main() -> None:
            ...     async with memable.Engine(workflows=[order]) as engine:
            ...         print(await engine.purge(older_than=timedelta(days=30)))
            >>> anyio.run(main)
            0
        """
        self._check_running()
        if not isinstance(typing.cast(object, older_than), timedelta) or older_than < timedelta(0):
            raise ValueError(f"older_than must be a non-negative timedelta, not {older_than!r}")
        return await self._kernel.store.purge(self._kernel.now() - older_than.total_seconds())

    # -- reading ----------------------------------------------------------------------------

    async def state(self, wf: Workflow[Any, Any], instance_id: str) -> InstanceInfo:
        """Return what storage knows about an instance (input and output decoded).

        Raises:
            InstanceNotFound: no instance has this id.
            InstanceConflict: the instance belongs to another workflow.

        Example:
            >>> import anyio, memable
            >>> approval = memable.SuspendPoint("approval:v1", bool)
            >>> @memable.workflow("order")
            ... async def order(ctx: memable.Context, order_id: str) -> int:
            ...     return 1250 if await ctx.suspend(approval, status="approve?") else 0
            >>> async def main() -> None:
            ...     async with memable.Engine(workflows=[order]) as engine:
            ...         await (await engine.invoke(order, "o-17", instance_id="order-o-17")).wait()
            ...         info = await engine.state(order, "order-o-17")
            ...         print(info.status, info.status_message, info.waiting_on)
            >>> anyio.run(main)
            suspended approve? ('approval:v1',)
        """
        self._check_running()
        from . import _inspect  # loaded on first use

        record = await self._control.record(wf, instance_id)
        info = _inspect.describe_known(self._kernel, self._registry, record)
        message = self._control.live_message(record)
        return (
            info if message == info.status_message else attrs.evolve(info, status_message=message)
        )

    async def instances(
        self,
        wf: Workflow[Any, Any] | None = None,
        *,
        status: InstanceState | None = None,
        waiting_on: str | None = None,
        parent_id: str | None = None,
        created_after: datetime | None = None,
        limit: int | None = 100,
        after: str | None = None,
    ) -> Page[InstanceInfo]:
        """List instances, newest first, a page at a time (``page.next`` is the cursor).

        Filters: the workflow, the status, suspended on a key (*waiting_on*), children of
        *parent_id*, created after a time. Each page is one index range scan, so its cost
        does not grow with how many instances are stored. ``limit=None`` lists them all.

        Raises:
            ValueError: a negative limit, a naive datetime, or a cursor not from ``next``.

        Example:
            >>> import anyio, memable
            >>> approval = memable.SuspendPoint("approval:v1", bool)
            >>> @memable.workflow("order")
            ... async def order(ctx: memable.Context, order_id: str) -> int:
            ...     return 1250 if await ctx.suspend(approval, status="approve?") else 0
            >>> async def main() -> None:
            ...     async with memable.Engine(workflows=[order]) as engine:
            ...         await (await engine.invoke(order, "o-17", instance_id="order-o-17")).wait()
            ...         print([i.instance_id for i in await engine.instances(status="suspended")])
            >>> anyio.run(main)
            ['order-o-17']
        """
        self._check_running()
        from . import _inspect  # loaded on first use

        query = _inspect.query(wf, status, waiting_on, parent_id, created_after, limit, after)
        return await _inspect.read_page(self._kernel, self._registry, query)

    async def history(self, wf: Workflow[Any, Any], instance_id: str) -> History:
        """Return what an instance did: steps, signals, timers and children, from storage.

        Works for finished instances too and changes nothing (``resume`` keeps a dead
        letter it retries, as an earlier attempt of its step).

        Raises:
            InstanceNotFound: no instance has this id.
            InstanceConflict: the instance belongs to another workflow.

        Example:
            >>> import anyio, memable
            >>> @memable.workflow("order")
            ... async def order(ctx: memable.Context, order_id: str) -> int:
            ...     async def price() -> int:
            ...         return 1250
            ...     return await ctx.step("price:v1", price)
            >>> async def main() -> None:
            ...     async with memable.Engine(workflows=[order]) as engine:
            ...         await engine.run(order, "o-17", instance_id="order-o-17")
            ...         for step in (await engine.history(order, "order-o-17")).steps:
            ...             print(step.key, step.state, step.attempts)
            >>> anyio.run(main)
            price:v1 completed 1
        """
        self._check_running()
        from . import _inspect  # loaded on first use

        record = await self._control.record(wf, instance_id)
        return await _inspect.read_history(self._kernel, self._registry, record)

    # -- plumbing ---------------------------------------------------------------------------

    def _check_running(self) -> None:
        self._life.check_running()


def _check_retry(retry: object) -> None:
    if retry is not None:
        from ._retry import RetryPolicy  # loaded on first use, not by ``import memable``

        if not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, not {retry!r}")


def _storage_of(storage: str | os.PathLike[str] | Storage) -> str | Storage:
    """The storage a Postgres URL or a storage object names; a path stays a path (the
    lifecycle opens it as a SQLite file on entering, so sqlite3 loads only then)."""
    if isinstance(storage, str) and storage.startswith(("postgresql://", "postgres://")):
        from .storage import PostgresStorage  # loaded on first use

        return PostgresStorage(storage)
    if isinstance(storage, str | os.PathLike):
        return os.fspath(storage)
    if not isinstance(storage, Storage):
        raise TypeError(f"storage must be a path or a memable.storage.Storage, not {storage!r}")
    return storage


def kernel_of(engine: Engine) -> Kernel:
    """The kernel of *engine*, for :mod:`memable.testing` (its test hooks) only."""
    return engine._kernel
