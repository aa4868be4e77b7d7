"""An engine's part in sharing a database with other engines (Postgres).

A storage that is a :class:`~memable.storage.SharedStorage` gets three more system tasks
here: the heartbeat (renews the engine's lease on a connection of its own; an engine that
was reaped, or cannot renew within its lease, stops its runs itself), the claimer (reaps
expired engines and claims claimable instances of the registered workflows, every poll
interval and whenever a hint comes) and the listener (hints from other engines through
``LISTEN``/``NOTIFY``; a poll-only storage has none). Hints and polls also wake the timer
scheduler, and re-read the instances this engine waits for or follows but does not run,
so that ``wait``, ``result`` and ``subscribe`` see an instance that runs elsewhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from ._exceptions import StorageError
from ._ids import public_keys
from ._log import logger
from .storage._protocol import TAKEN

if TYPE_CHECKING:
    from ._kernel import Kernel
    from ._records import InstanceRecord
    from ._runner import Runner
    from .storage._protocol import SharedStorage

__all__ = ["Sharing"]


class Sharing:
    """The heartbeat, claimer and listener of one engine on a shared database."""

    def __init__(
        self, kernel: Kernel, runner: Runner, storage: SharedStorage, *, claims: bool = True
    ) -> None:
        self._kernel = kernel
        self._claims = claims  # whether it takes over what nobody holds (resume_on_start)
        self._runner = runner
        self._storage = storage
        self._wake = anyio.Event()  # the claimer looks again now
        self._changed: dict[str, anyio.Event] = {}  # instance id -> set on its next change
        # Dedicated threads: neither waits behind the pool's workers, nor they behind it.
        self._beat_limiter = anyio.CapacityLimiter(1)
        self._listen_limiter = anyio.CapacityLimiter(1)

    @property
    def storage(self) -> SharedStorage:
        """The shared storage."""
        return self._storage

    def _runs(self) -> None:
        """Tell the storage which workflows this engine runs (registered ones)."""
        self._storage.runs = frozenset(wf.name for wf in self._kernel.registry)

    async def run(self) -> None:
        """Run the heartbeat, the claimer and (if the storage listens) the listener."""
        self._runs()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeat, name="memable heartbeat")
            tg.start_soon(self._claimer, name="memable claimer")
            if getattr(self._storage, "listen", True):
                tg.start_soon(self._listener, name="memable listener")

    async def changed(self, record: InstanceRecord) -> bool:
        """Wait until a hint names the instance of *record* (a ``running`` one that this
        engine does not run), or one poll interval; ``False`` at once if no engine will
        run it (nobody holds it, and this engine does not take instances over)."""
        if record.owner is None and not self._claims:
            return False
        instance_id = record.instance_id
        if record.owner is not None and record.owner == self._storage.engine_id:
            # Held here without a run: a stale read (its run just ended), a claim whose
            # run starts once its call hands it over (admission, a signal answered on
            # another thread), or a run that ended without letting go (crash injection):
            # then nobody will. The claims on their way are waited for (and the re-scan
            # after one whose answer was lost, which runs what it claimed), then it is
            # read again.
            await self._kernel.claims.settled()
            await self._kernel.settle()
            if instance_id in self._runner.runs:
                return True  # its run is here now (the read below could outlive it)
            fresh = await self._kernel.store.get(instance_id)
            return not (
                fresh is not None
                and fresh.status == "running"
                and fresh.owner == record.owner
                and instance_id not in self._runner.runs
            )
        event = self._changed.get(instance_id)
        if event is None:
            event = self._changed[instance_id] = anyio.Event()
        with anyio.move_on_after(self._storage.poll_interval):
            await event.wait()
        return True

    # -- heartbeat --------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        storage = self._storage
        interval = storage.lease / 3
        last = anyio.current_time()  # of the last renewal (the loop clock: a duration)
        stopped = False  # it stopped its runs, not knowing whether it was reaped
        while True:
            await anyio.sleep(interval)
            held = [(fence.instance_id, fence.epoch) for fence in self._kernel.fences.values()]
            try:
                with anyio.fail_after(max(0.1, storage.lease - (anyio.current_time() - last))):
                    lost = await anyio.to_thread.run_sync(
                        storage.heartbeat, held, limiter=self._beat_limiter, abandon_on_cancel=True
                    )
            except (StorageError, TimeoutError):
                logger.warning("could not renew this engine's lease", exc_info=True)
                if anyio.current_time() - last >= storage.lease:
                    # Others may reap this engine at any moment: stop before they run them.
                    self._runner.lose()
                    stopped = True
                continue
            last = anyio.current_time()
            if stopped and lost is not None:
                # Renewed in time after all: run again what it still holds (the healer's
                # re-scan claims what this engine holds without a run).
                stopped = False
                self._kernel.trouble()
            if lost is None:
                stopped = False
                logger.error("this engine's lease expired and others took its instances over")
                self._runner.lose()
                self._wake.set()
                continue
            for instance_id in lost:
                fence = self._kernel.fences.get(instance_id)
                if fence is not None and (fence.instance_id, fence.epoch) in held:
                    self._runner.lose(instance_id)

    # -- claims and polls -------------------------------------------------------------------

    async def _claimer(self) -> None:
        kernel = self._kernel
        await kernel.recovered.wait()  # what recovery takes is logged as recovered, first
        while True:
            with anyio.move_on_after(self._storage.poll_interval):
                await self._wake.wait()
            self._wake = anyio.Event()
            self._runs()  # workflows may be registered while the engine runs
            kernel.wake_timers(float("-inf"))  # another engine may have written a timer
            await self._refresh(None)
            if not self._claims:
                continue
            with kernel.claims.claiming():
                try:
                    records = await kernel.store.claim()
                except Exception:
                    logger.warning("storage failed while claiming instances", exc_info=True)
                    continue
                for record in records:
                    # A run that is ending (suspended, or lost) goes again: its instance is
                    # held here now, and no other run would take it.
                    run = self._runner.runs.get(record.instance_id)
                    if run is None or run.driven:
                        self._runner.claimed(record)

    async def _refresh(self, ids: list[str] | None) -> None:
        """Wake the waiters of *ids* (``None`` or ``""``: every one) and re-read the
        followed instances among them that this engine does not run."""
        everything = ids is None or "" in ids
        for instance_id in list(self._changed) if everything else ids or ():
            event = self._changed.pop(instance_id, None)
            if event is not None:
                event.set()
        status = self._kernel.status
        for instance_id in status.followed():
            if not everything and instance_id not in (ids or ()):
                continue
            if self._runner.live(instance_id) is not None:
                continue  # its run publishes its changes
            try:
                record = await self._kernel.store.get(instance_id)
            except StorageError:
                continue
            if record is not None:
                waiting = public_keys(record.waiting_on) if record.status == "suspended" else ()
                status.publish(instance_id, record.status, record.status_message, waiting)

    # -- hints ------------------------------------------------------------------------------

    async def _listener(self) -> None:
        storage = self._storage
        delay = 0.05
        while True:
            try:
                ids = await anyio.to_thread.run_sync(
                    storage.hints,
                    max(0.05, storage.poll_interval),
                    limiter=self._listen_limiter,
                    abandon_on_cancel=True,
                )
            except StorageError:
                logger.warning("lost the listening connection; reconnecting", exc_info=True)
                await anyio.sleep(delay)
                delay = min(5.0, delay * 2)
                continue
            delay = 0.05
            if ids is None:  # (re)connected: anything may have happened meanwhile
                self._wake.set()
                self._kernel.wake_queues()
                await self._refresh(None)
                continue
            if not ids:
                continue
            named = [i.removeprefix(TAKEN) for i in ids]
            if len(named) > sum(i.startswith(TAKEN) for i in ids):
                self._wake.set()  # something may be claimable
            else:  # nothing to claim (a claim would find nothing): timers only
                self._kernel.wake_timers(float("-inf"))
            # Another engine's change may have freed a queue slot or enqueued work.
            self._kernel.wake_queues()
            for instance_id in named:
                if instance_id and self._runner.live(instance_id) is not None:
                    await self._check_run(instance_id)
            await self._refresh(named)

    async def _check_run(self, instance_id: str) -> None:
        """A hint names an instance running here: if it was cancelled or claimed
        elsewhere, stop its run now (its next write would be refused anyway)."""
        fence = self._kernel.fences.get(instance_id)
        if fence is None:
            return
        try:
            record = await self._kernel.store.get(instance_id)
        except StorageError:
            return
        taken = record is not None and record.owner not in (None, fence.owner)
        # Claimed again by this engine (a timer or signal it fired while the run was
        # still ending its suspended pass): the run goes once more under the new claim.
        again = record is not None and record.owner == fence.owner and record.epoch > fence.epoch
        gone = (
            record is None
            or taken
            or (record.epoch != fence.epoch and not again)
            or record.status == "cancelled"
        )
        if gone and self._kernel.fences.get(instance_id) is fence:
            self._runner.lose(instance_id)
