"""Group commit: writes that arrive while a commit is in flight share the next transaction."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import anyio
import anyio.lowlevel

from ._exceptions import StorageError
from ._records import Write

__all__ = ["GroupCommitter"]


class _Pending:
    __slots__ = ("applied", "done", "error", "writes")

    def __init__(self, writes: Sequence[Write]) -> None:
        self.writes = writes
        self.done = anyio.Event()
        self.error: BaseException | None = None
        self.applied: list[bool] = []


class GroupCommitter:
    """Funnels every write of an engine through one writer task.

    :meth:`write` returns once its writes are committed. The writer takes whatever has
    queued up while the previous commit ran and commits it as one transaction, so a lone
    writer pays no batching delay and many concurrent writers share the cost of a commit.
    If a shared transaction fails, each caller's writes are retried on their own, so one bad
    write fails only its own caller.

    A writer that finds nothing in flight and the last commit unshared (a sequential
    workload) commits its own writes directly, skipping the hand-off to the writer task;
    at most one commit is ever in flight.
    """

    def __init__(
        self, commit: Callable[[Sequence[Write]], list[bool]], limiter: anyio.CapacityLimiter
    ) -> None:
        self._commit = commit
        self._limiter = limiter
        self._send, self._receive = anyio.create_memory_object_stream[_Pending](math.inf)
        self._closed = False
        self._in_flight = False  # a commit is running, direct or by the writer task
        self._shared = False  # the last commit served more than one caller
        self._idle: anyio.Event | None = None  # set when a direct commit ends
        self._queued = 0  # writes handed to the writer task and not yet settled

    async def write(self, writes: Sequence[Write]) -> list[bool]:
        """Commit *writes* (in order, in one transaction); return which of them applied.

        Raises StorageError on failure (nothing of *writes* is known to be written).
        """
        if not (self._in_flight or self._shared or self._closed or self._queued):
            return await self._direct(writes)
        pending = _Pending(writes)
        try:
            self._send.send_nowait(pending)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise StorageError("the engine's writer has stopped; nothing was written") from None
        self._queued += 1
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.applied

    async def _direct(self, writes: Sequence[Write]) -> list[bool]:
        self._in_flight = True
        pending = _Pending(writes)
        try:
            pending.error = await self._try(pending)
        finally:
            self._in_flight = False
            if self._idle is not None:
                self._idle.set()
        if pending.error is not None:
            raise pending.error
        return pending.applied

    def close(self) -> None:
        """Accept no more writes; :meth:`run` returns once the queued ones are committed."""
        self._closed = True
        self._send.close()

    async def run(self) -> None:
        """The writer task: commit batches until :meth:`close`."""
        async with self._receive:
            async for first in self._receive:
                # One scheduling round (microseconds, no timer): the writers woken by the
                # previous commit queue their next writes and join this transaction.
                await anyio.lowlevel.cancel_shielded_checkpoint()
                while self._in_flight:  # a direct commit is running: wait for its end
                    self._idle = anyio.Event()
                    await self._idle.wait()
                self._idle = None
                batch = [first]
                while True:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                await self._commit_batch(batch)

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        settled = False
        self._in_flight, self._shared = True, len(batch) > 1
        try:
            whole = _Pending([write for pending in batch for write in pending.writes])
            error = await self._try(whole)
            if error is not None and len(batch) > 1:
                for pending in batch:
                    pending.error = await self._try(pending)
            else:
                start = 0
                for pending in batch:
                    pending.error = error
                    pending.applied = whole.applied[start : start + len(pending.writes)]
                    start += len(pending.writes)
            settled = True
        finally:
            self._in_flight = False
            self._queued -= len(batch)
            for pending in batch:
                if not settled and pending.error is None:
                    # Cancelled mid-commit: the outcome is unknown, so never report success.
                    pending.error = StorageError("the engine stopped while committing this write")
                pending.done.set()

    async def _try(self, pending: _Pending) -> BaseException | None:
        writes = pending.writes
        try:
            applied = await anyio.to_thread.run_sync(self._commit, writes, limiter=self._limiter)
        except StorageError as exc:
            return exc
        except Exception as exc:
            error = StorageError(f"storage failed to commit {len(writes)} writes: {exc!r}")
            error.__cause__ = exc
            return error
        # A storage written for the older protocol returns None: every write applied.
        stored: list[bool] | None = applied
        pending.applied = list(stored) if stored else [True] * len(writes)
        return None
