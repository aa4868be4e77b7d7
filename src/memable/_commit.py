"""Group commit: writes that arrive while a commit is in flight share the next transaction."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import sniffio

from ._exceptions import StorageError

if TYPE_CHECKING:
    from ._records import Write

__all__ = ["GroupCommitter", "WriterThread"]

A = TypeVar("A")
R = TypeVar("R")


class _Job(Generic[A, R]):
    __slots__ = ("arg", "done", "error", "fn", "result")

    def __init__(self, fn: Callable[[A], R], arg: A) -> None:
        self.fn = fn
        self.arg = arg
        self.done = anyio.Event()
        self.result: R | None = None
        self.error: BaseException | None = None


class WriterThread:
    """One thread of the engine's own that runs its commits, one at a time, in order.

    The same as ``anyio.to_thread.run_sync`` under a limiter, but the thread is always the
    same one, waiting on a queue: no worker pool to look up, and about half the hand-off
    cost, which a sequential workload pays on every step. Waiting is shielded from
    cancellation, as with ``to_thread``: a commit, once handed over, is always waited for,
    so its outcome is known. :meth:`stop` lets the thread end after its queued work.
    """

    def __init__(self, limiter: anyio.CapacityLimiter) -> None:
        self._limiter = limiter
        self._jobs: queue.SimpleQueue[_Job[Any, Any] | None] | None = None

    async def run(self, fn: Callable[[A], R], arg: A) -> R:
        """``fn(arg)`` on the thread (started on first use); its result or its error."""
        jobs = self._jobs
        if jobs is None:
            jobs = self._jobs = self._start()
        job = _Job(fn, arg)
        limiter = self._limiter
        try:
            # A free limiter is taken without the scheduling round ``acquire`` adds (a
            # sequential workload would pay it on every step): a cancelled caller still
            # stops here, and the wait for the commit is the scheduling point.
            limiter.acquire_nowait()
        except anyio.WouldBlock:
            await limiter.acquire()
        else:
            try:
                await anyio.lowlevel.checkpoint_if_cancelled()
            except BaseException:
                limiter.release()
                raise
        try:
            jobs.put(job)
            with anyio.CancelScope(shield=True):
                await job.done.wait()
        finally:
            limiter.release()
        if job.error is not None:
            error, job.error = job.error, None  # no reference cycle through the traceback
            raise error
        return job.result  # type: ignore[return-value]  # set when error is None

    def stop(self) -> None:
        """Let the thread end once the work handed to it is done."""
        if self._jobs is not None:
            self._jobs.put(None)

    def _start(self) -> queue.SimpleQueue[_Job[Any, Any] | None]:
        soon: Callable[[Callable[[], object]], object]
        if sniffio.current_async_library() == "trio":
            import trio

            soon = trio.lowlevel.current_trio_token().run_sync_soon
        else:
            import asyncio

            soon = asyncio.get_running_loop().call_soon_threadsafe
        jobs: queue.SimpleQueue[_Job[Any, Any] | None] = queue.SimpleQueue()
        threading.Thread(
            target=_serve, args=(jobs, soon), name="memable writer", daemon=True
        ).start()
        return jobs


def _serve(
    jobs: queue.SimpleQueue[_Job[Any, Any] | None], soon: Callable[[Callable[[], object]], object]
) -> None:
    while (job := jobs.get()) is not None:
        try:
            job.result = job.fn(job.arg)
        except BaseException as exc:  # handed to the waiting task, which raises it
            job.error = exc
        try:
            soon(job.done.set)
        except RuntimeError:  # the event loop has closed: nobody is waiting any more
            return
        del job


class _Batch:
    """The writes of every caller that shares one transaction, and one event for all of them.

    A caller appends its writes and remembers where they sit (its index and the span of
    its writes); it waits on the batch's one event, then reads its own answer. Nothing is
    allocated per caller beyond what the wait itself needs, so thousands of concurrent
    writers cost the event loop (and the garbage collector) little.
    """

    __slots__ = ("applied", "callers", "done", "ends", "errors", "writes")

    def __init__(self) -> None:
        self.writes: list[Write] = []
        self.ends: list[int] = []  # the end of each caller's span in writes
        self.callers = 0
        self.done = anyio.Event()
        self.applied: list[bool] = []
        self.errors: list[BaseException | None] | None = None  # per caller, when any failed

    def add(self, writes: Sequence[Write]) -> int:
        self.writes.extend(writes)
        self.ends.append(len(self.writes))
        self.callers += 1
        return self.callers - 1

    def answer(self, index: int) -> list[bool]:
        """The caller's applied flags, or its error raised."""
        if self.errors is not None and (error := self.errors[index]) is not None:
            raise error
        start = self.ends[index - 1] if index else 0
        return self.applied[start : self.ends[index]]


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
        self._thread = WriterThread(limiter)
        self._closed = False
        self._in_flight = False  # a commit is running, direct or by the writer task
        self._shared = False  # the last commit served more than one caller
        self._idle: anyio.Event | None = None  # set when a direct commit ends
        self._next: _Batch | None = None  # the batch forming for the writer task
        self._wake = anyio.Event()  # set when a batch starts forming (or on close)

    async def write(self, writes: Sequence[Write]) -> list[bool]:
        """Commit *writes* (in order, in one transaction); return which of them applied.

        Raises StorageError on failure (nothing of *writes* is known to be written).
        """
        if self._closed:
            raise StorageError("the engine's writer has stopped; nothing was written")
        batch = self._next
        if batch is None:
            if not (self._in_flight or self._shared):
                return await self._direct(writes)
            batch = self._next = _Batch()
            self._wake.set()
        index = batch.add(writes)
        await batch.done.wait()
        return batch.answer(index)

    async def _direct(self, writes: Sequence[Write]) -> list[bool]:
        self._in_flight = True
        try:
            return await self._try(writes)
        finally:
            self._in_flight = False
            if self._idle is not None:
                self._idle.set()

    def close(self) -> None:
        """Accept no more writes; :meth:`run` returns once the queued ones are committed."""
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        """The writer task: commit batches until :meth:`close`."""
        try:
            await self._run()
        finally:
            self._thread.stop()

    async def _run(self) -> None:
        while True:
            if self._next is None:
                if self._closed:
                    return
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            # One scheduling round (microseconds, no timer): the writers woken by the
            # previous commit queue their next writes and join this transaction.
            await anyio.lowlevel.cancel_shielded_checkpoint()
            while self._in_flight:  # a direct commit is running: wait for its end
                self._idle = anyio.Event()
                await self._idle.wait()
            self._idle = None
            batch, self._next = self._next, None
            await self._commit_batch(batch)

    async def _commit_batch(self, batch: _Batch) -> None:
        settled = False
        self._in_flight, self._shared = True, batch.callers > 1
        try:
            try:
                batch.applied = await self._try(batch.writes)
            except StorageError as shared:
                batch.errors = [shared] * batch.callers
                if batch.callers > 1:
                    batch.applied = [False] * len(batch.writes)
                    for index in range(batch.callers):
                        start = batch.ends[index - 1] if index else 0
                        try:
                            applied = await self._try(batch.writes[start : batch.ends[index]])
                        except StorageError as own:
                            batch.errors[index] = own
                        else:
                            batch.errors[index] = None
                            batch.applied[start : batch.ends[index]] = applied
            settled = True
        finally:
            self._in_flight = False
            if not settled:
                # Cancelled mid-commit: the outcome is unknown, so never report success.
                stopped = StorageError("the engine stopped while committing this write")
                batch.errors = [
                    stopped if batch.errors is None or batch.errors[i] is None else batch.errors[i]
                    for i in range(batch.callers)
                ]
            batch.done.set()

    async def _try(self, writes: Sequence[Write]) -> list[bool]:
        try:
            applied = await self._thread.run(self._commit, writes)
        except StorageError:
            raise
        except Exception as exc:
            error = StorageError(f"storage failed to commit {len(writes)} writes: {exc!r}")
            raise error from exc
        # A storage written for the older protocol returns None: every write applied.
        stored: list[bool] | None = applied
        return list(stored) if stored else [True] * len(writes)
