"""An engine's life cycle, and who may call it.

The life cycle is nested task groups in an exit stack, innermost last: storage ⊃ writer
(the group commit) ⊃ system tasks (timers, healer, inbox, queues, schedules, retention) ⊃
instances. Leaving unwinds it in reverse: instances stop (after the grace period), then
the system tasks, then the writer commits what is queued, then storage closes.
"""

from __future__ import annotations

import contextlib
import threading
import typing
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

import anyio

from ._background import TimerScheduler, heal, retain
from ._commit import GroupCommitter
from ._control import Control
from ._exceptions import NotStarted, StorageError
from ._kernel import Kernel, Store
from ._queues import Admitter
from ._runner import Runner
from ._schedule import Schedule, Ticker
from ._shared import Sharing
from .storage._protocol import Storage

if TYPE_CHECKING:
    import anyio.abc

__all__ = ["Lifecycle"]

_Phase = Literal["new", "running", "closing", "closed"]


class Lifecycle:
    """Starts and stops an engine: its storage, task groups and recovery."""

    def __init__(
        self,
        storage: str | Storage,
        kernel: Kernel,
        runner: Runner,
        control: Control,
        *,
        admitter: Admitter,
        schedules: Iterable[Schedule[Any]],
        sharing: Sharing | None,
        shutdown_timeout: float,
        resume_on_start: bool,
        retention: timedelta | None,
    ) -> None:
        self._spec = storage  # a path becomes a SQLiteStorage on entering
        self._kernel = kernel
        self._runner = runner
        self._control = control
        self._timers = TimerScheduler(kernel, runner.claimed, runner.room)
        self._admitter = admitter
        self._sharing = sharing  # on a database several engines share
        self._ticker = Ticker(kernel, runner.claimed)
        for schedule in schedules:
            kernel.registry.add(schedule.workflow)
            self._ticker.add(schedule)
        self._shutdown_timeout = shutdown_timeout
        self._resume_on_start = resume_on_start
        self._retention = retention
        self._phase: _Phase = "new"
        self._stack = contextlib.AsyncExitStack()
        self._abort = False  # leaving the block by an exception: no grace period
        self._owner: tuple[int, object] | None = None  # (thread, event loop) it runs on

    @property
    def phase(self) -> _Phase:
        """``new``, ``running``, ``closing`` or ``closed``."""
        return self._phase

    async def enter(self) -> None:
        """Open storage, start the task groups, recover; the engine then runs."""
        if self._phase != "new":
            raise RuntimeError("an Engine can be entered only once; make a new one")
        self._phase = "closing"  # until fully started
        self._owner = (threading.get_ident(), anyio.lowlevel.current_token())
        self._storage = _storage_of(self._spec)
        kernel = self._kernel
        # anyio objects are made here, on the event loop that runs the engine.
        limiter = anyio.CapacityLimiter(max(1, int(getattr(self._storage, "threads", 1))))
        shared = None if self._sharing is None else self._sharing.storage
        kernel.store = Store(
            self._storage, limiter, kernel.trouble, shared=shared, registry=kernel.registry
        )
        stack = self._stack
        try:
            # The life cycle, innermost last (see the module's docstring).
            stack.push_async_callback(self._close_storage)
            await kernel.store.call(self._storage.open)
            if shared is not None and shared.engine_id is None:
                raise StorageError(
                    f"{self._storage!r} registered no engine when it opened (a client:"
                    " register=False); an Engine needs a storage that registers"
                )
            await self._admitter.store_limits()  # queues and schedules are stored at once,
            await self._ticker.store_rows()  # so a schedule's first tick is after the start
            kernel.committer = GroupCommitter(self._storage.commit, limiter)
            writer = await stack.enter_async_context(anyio.create_task_group())
            writer.start_soon(kernel.committer.run, name="memable writer")
            stack.callback(kernel.committer.close)
            system = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(system.cancel_scope.cancel)
            stack.callback(kernel.status.close)
            system.start_soon(self._timers.run, name="memable timers")
            system.start_soon(heal, kernel, self._runner, name="memable healer")
            if self._sharing is not None:
                system.start_soon(self._sharing.run, name="memable sharing")
            if getattr(self._storage, "has_inbox", False):  # a SQLite file: other processes
                from . import _inbox  # loaded on first use, not by ``import memable``

                inbox = typing.cast(_inbox.InboxStorage, self._storage)
                system.start_soon(_inbox.serve, kernel, self._control, inbox, name="memable inbox")
            system.start_soon(self._admitter.run, name="memable queues")
            system.start_soon(self._ticker.run, name="memable schedules")
            if self._retention is not None or any(wf.retention for wf in kernel.registry):
                system.start_soon(retain, kernel, self._retention, name="memable retention")
            instances = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(self._stop_instances, instances)
            kernel.open_spawning(instances)
        except BaseException:
            self._abort = True
            with anyio.CancelScope(shield=True):
                await stack.aclose()
            self._phase = "closed"
            raise
        attach = getattr(kernel.clock, "attach", None)
        if callable(attach):  # memable.testing.ManualClock waits for our timers
            attach(self._settled)
        self._phase = "running"
        if self._resume_on_start:
            try:
                await self._runner.recover(shared=self._sharing is not None)
            except BaseException:
                await self.exit(aborted=True)
                raise
        self._kernel.recovered.set()  # queues and schedules start what is due from now on

    async def exit(self, *, aborted: bool) -> None:
        """Stop new work, let instances finish (unless *aborted*), then unwind it all."""
        self._phase = "closing"
        self._abort = aborted
        try:
            # The engine's own tasks never raise; the body's exception is not handed to
            # the task groups, so it propagates as itself, not inside an ExceptionGroup.
            await self._stack.aclose()
        finally:
            self._phase = "closed"

    async def _stop_instances(self, instances: anyio.abc.TaskGroup) -> None:
        if not self._abort:
            with anyio.move_on_after(self._shutdown_timeout):
                await self._runner.wait_idle()
        self._kernel.close_spawning()
        self._runner.stop_all()
        instances.cancel_scope.cancel()

    def _settled(self) -> bool:
        """Whether no timer, queue or schedule has work due at the clock's time that the
        engine has not done (for ManualClock)."""
        return self._phase != "running" or (
            self._timers.settled() and self._admitter.settled() and self._ticker.settled()
        )

    async def _close_storage(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._kernel.store.call(self._storage.close)

    def check_running(self) -> None:
        """Refuse calls to an engine that does not run, or from another thread or loop."""
        phase, owner = self._phase, self._owner
        if phase != "running":
            raise NotStarted(
                f"the engine is {phase}; use it inside 'async with engine:'"
                if phase != "new"
                else "the engine has not started; use it inside 'async with engine:'"
            )
        assert owner is not None
        thread, token = owner
        if threading.get_ident() != thread:
            raise RuntimeError(
                "this Engine runs in another thread; call it from the thread (and event loop)"
                " that entered 'async with engine:' (anyio.from_thread.run() gets you there)"
            )
        try:
            current = anyio.lowlevel.current_token()
        except RuntimeError:
            current = None
        if current != token:
            raise RuntimeError(
                "this Engine runs on another event loop; call it from the event loop that"
                " entered 'async with engine:'"
            )


def _storage_of(spec: str | Storage) -> Storage:
    """The storage an engine was given: a path is a SQLite file (or ``":memory:"``)."""
    if isinstance(spec, str):
        from .storage._sqlite import SQLiteStorage  # loaded on first use

        return SQLiteStorage(spec)
    return spec
