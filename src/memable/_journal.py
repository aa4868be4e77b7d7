"""The replay journal: what an instance recorded, by key, and as what kind.

One place answers "is this key recorded, and as a step, a suspend point, a timer or a
fan-out?" for a run; it also enforces that each key is used once per run
(:class:`~memable.DuplicateStepKey`) and that a key keeps its kind across versions
(:class:`~memable.SuspendedStepConflict`).
"""

from __future__ import annotations

from typing import Literal

from . import _ids
from ._exceptions import DuplicateStepKey, SuspendedStepConflict
from ._keys import check_key
from ._records import Recorded, SignalRecord, StepRecord, TimerRecord

__all__ = ["Journal"]

Kind = Literal["step", "fan-out", "suspend point", "timer"]


class Journal:
    """The recorded history of one instance, and the keys one run of it has used."""

    __slots__ = ("_points", "_used", "dead", "instance_id", "signals", "timers", "values")

    def __init__(
        self, instance_id: str, recorded: Recorded, waiting_on: tuple[str, ...] = ()
    ) -> None:
        self.instance_id = instance_id
        # Steps as the plain strings and tuples the storage read (nothing for the garbage
        # collector to walk in a long history), copied so that this run may add the
        # steps it records (copying a dict of 50,000 costs well under a millisecond).
        self.values: dict[str, str | None] = dict(recorded.values)  # completed: envelopes
        self.dead: dict[str, tuple[int, str | None]] = dict(recorded.dead)  # (attempts, error)
        self.signals: dict[str, SignalRecord] = {s.key: s for s in recorded.signals}
        self.timers: dict[str, TimerRecord] = {t.key: t for t in recorded.timers}
        # Keys the instance was last suspended on: points even before any signal came.
        self._points = set(_ids.public_keys(waiting_on))
        self._used: set[str] = set()

    def claim(self, key: str, kind: Kind) -> None:
        """Check *key* and mark it used in this run, as *kind*."""
        check_key(key, f"{kind} key")
        if key in self._used:
            raise DuplicateStepKey(
                f"key {key!r} is already used in this run of {self.instance_id!r};"
                " each step, suspend point and timer needs its own key"
            )
        self._used.add(key)
        waits = key in self.signals or key in self.timers or key in self._points
        if kind in ("step", "fan-out") and waits:
            raise SuspendedStepConflict(
                f"key {key!r} of instance {self.instance_id!r} was recorded as a suspend point"
                f" or timer and is now used as a {kind}; give the {kind} a new key"
            )
        if kind in ("suspend point", "timer") and (key in self.values or key in self.dead):
            raise SuspendedStepConflict(
                f"key {key!r} of instance {self.instance_id!r} was recorded as a step and is"
                f" now used as a {kind}; give it a new key"
            )

    def recorded(self, key: str) -> bool:
        """Whether step *key* has a recorded result or dead letter."""
        return key in self.values or key in self.dead

    def record_step(self, record: StepRecord) -> None:
        if record.state == "completed":
            self.values[record.key] = record.value
            self.dead.pop(record.key, None)
        else:
            self.dead[record.key] = (record.attempts, record.error)

    def record_timer(self, timer: TimerRecord) -> None:
        self.timers[timer.key] = timer
