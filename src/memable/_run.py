"""A run: one instance while a task of this engine runs it — and its checked phases.

A run is *reserved* (an ``invoke`` is creating the instance), then *running* a pass over
the workflow function, possibly *suspending* (one task is writing the suspension), and
finally *ended* with a reason. Only the methods here change a run's fields, and each
checks that its transition is legal (as trio's ``CancelScope`` owns its own state).

Suspension is decided by the run's own bookkeeping, not by scheduling: every durable
operation in flight (a step, a timer or fan-out being written or driven) holds the run
*busy*, and every task that waits at a point or timer registers its key before the run
may suspend. The suspension is written once nothing is busy, and written again if a key
was registered while it was being written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn, Protocol

import anyio

from ._outcome import Outcome

if TYPE_CHECKING:
    from ._records import InstanceRecord, Recorded
    from ._workflow import Workflow

__all__ = ["Driver", "EndReason", "Phase", "Run", "RunStateError", "unwind"]

Phase = Literal["reserved", "running", "suspending", "ended"]

#: Why a run ended. ``restart``: what it waited for came while it suspended, or its
#: storage failed (it runs again); ``crashed``: test crash injection; ``shutdown``: the
#: engine is leaving its block (the instance stays ``running`` in storage); ``lost``: on a
#: shared database, this engine no longer holds the instance (another engine claimed it,
#: it was cancelled there, or this engine's lease expired).
EndReason = Literal[
    "completed", "failed", "suspended", "cancelled", "restart", "crashed", "shutdown", "lost"
]

_MOVES: Final[dict[Phase, frozenset[Phase]]] = {
    "reserved": frozenset({"running", "ended"}),
    "running": frozenset({"suspending", "ended"}),
    "suspending": frozenset({"running", "ended"}),
    "ended": frozenset({"running"}),  # a new pass, after "restart"
}


class RunStateError(AssertionError):
    """A bug: a run was moved between phases that do not connect."""


class Run:
    """An instance while this engine runs it (or a reservation for one).

    (A plain slotted class: internal, mutable, one per run.)
    """

    __slots__ = (
        "_busy",
        "_done",
        "_finished",
        "_idle",
        "driven",
        "fresh",
        "history",
        "instance_id",
        "linked",
        "outcome",
        "pending",
        "phase",
        "reason",
        "replayed",
        "rerun",
        "scope",
        "span",
        "status_dirty",
        "status_message",
        "waiting",
        "workflow",
    )

    def __init__(self, instance_id: str, workflow: Workflow[Any, Any]) -> None:
        self.instance_id = instance_id
        self.workflow = workflow
        self.phase: Phase = "reserved"
        self.reason: EndReason | None = None
        self.outcome: Outcome[Any] | None = None
        # Events are made only when someone waits (thousands of runs live at once).
        self._finished: anyio.Event | None = None
        self._done = False
        self.pending = 0  # invoke calls still deciding whether they start this run
        self.rerun = False  # claimed again while ending: run once more
        self.driven = False  # a task of the engine runs it (not only a reservation)
        self.fresh = False  # just created: there is no history to load
        self.history: Recorded | None = None  # loaded already (by admission): its first pass's
        self.status_message: str | None = None
        self.status_dirty = False
        self.scope = anyio.CancelScope()
        self.waiting: set[str] = set()
        self.replayed = 0  # steps served from storage (telemetry counts them)
        self.span: Any = None  # the span of its current drive (telemetry), if one is made
        self.linked: tuple[str, ...] = ()  # the traceparents that span links to already
        self._busy = 0
        self._idle: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"<Run {self.instance_id!r} {self.phase} reason={self.reason}>"

    def _move(self, new: Phase) -> None:
        if new not in _MOVES[self.phase]:
            raise RunStateError(f"run of {self.instance_id!r} cannot go from {self.phase} to {new}")
        self.phase = new

    @property
    def finished(self) -> anyio.Event:
        """Set when no task runs it any more."""
        if self._finished is None:
            self._finished = anyio.Event()
            if self._done:
                self._finished.set()
        return self._finished

    def set_finished(self) -> None:
        """No task runs it any more."""
        self._done = True
        if self._finished is not None:
            self._finished.set()

    @property
    def live(self) -> bool:
        """Whether a pass is under way (running or suspending)."""
        return self.phase in ("running", "suspending")

    # -- passes -----------------------------------------------------------------------------

    def begin_pass(self) -> None:
        """Start a (first or another) pass over the workflow function, from the top."""
        if self.phase == "ended" and self.reason not in ("restart", "suspended", "lost"):
            raise RunStateError(f"run of {self.instance_id!r} ended {self.reason}; cannot rerun")
        self._move("running")
        self.scope = anyio.CancelScope()
        self.reason = None
        self.outcome = None
        self.rerun = False
        self.waiting = set()
        self._busy = 0
        self._idle = None

    def end(self, reason: EndReason, outcome: Outcome[Any] | None = None) -> bool:
        """End the pass; return False if it had already ended (the first reason stands).

        A pass ended by anything but completing or failing is cancelled through its scope.
        """
        if self.phase == "ended":
            return False
        self._move("ended")
        self.reason = reason
        if outcome is not None:
            self.outcome = outcome
        if reason not in ("completed", "failed"):
            self.scope.cancel()
        return True

    def release(self) -> None:
        """A reservation that never started (the instance existed, or shutdown came)."""
        if self.phase == "reserved":
            self._move("ended")

    # -- suspension bookkeeping -------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether a durable operation is in flight."""
        return self._busy > 0

    def enter(self) -> None:
        """A durable operation (step, timer write, fan-out) starts: the run is busy."""
        self._busy += 1

    def leave(self) -> None:
        """A durable operation ended."""
        self._busy -= 1
        if not self._busy and self._idle is not None:
            self._idle.set()

    async def until_idle(self) -> None:
        """Return once no durable operation is in flight."""
        while self._busy:
            self._idle = anyio.Event()
            await self._idle.wait()

    def wait_on(self, key: str) -> bool:
        """Register a task waiting on *key*; return True if it is to write the suspension.

        The first waiter leads (the run becomes *suspending*); the others only register,
        and the leader includes their keys.
        """
        self.waiting.add(key)
        if self.phase != "running":
            return False
        self._move("suspending")
        return True

    def covered_by(self, written: set[str]) -> bool:
        """Whether a suspension on *written* covers every waiting task (none is busy)."""
        return not self._busy and self.waiting <= written

    def suspend_failed(self) -> None:
        """Writing the suspension failed: the run may suspend again later."""
        if self.phase == "suspending":
            self._move("running")

    def set_status(self, message: str) -> None:
        """Set the live status message (persisted with the next write)."""
        self.status_message = message
        self.status_dirty = True

    def take_status(self) -> str | None:
        """The status message if it changed since the last write, else ``None``."""
        if not self.status_dirty:
            return None
        self.status_dirty = False
        return self.status_message


class Driver(Protocol):
    """What contexts and fan-outs need of the runner that drives their run."""

    def reserve(self, instance_id: str, wf: Workflow[Any, Any]) -> Run: ...

    async def drive(self, run: Run, record: InstanceRecord) -> None: ...

    async def suspend(self, run: Run) -> None: ...

    def storage_failed(self, run: Run, doing: str) -> None: ...

    async def maybe_crash(self, run: Run, key: str, when: Literal["before", "after"]) -> None: ...


async def unwind() -> NoReturn:
    """Wait for the run's (already cancelled) scope to unwind this task."""
    await anyio.sleep_forever()
    raise AssertionError("unreachable: the run's scope is cancelled")  # pragma: no cover
