"""The storage methods the engine calls, each one transaction of :mod:`memable._rules`.

A backend subclasses :class:`RuleStorage` and supplies :meth:`~RuleStorage.transaction`
(a :class:`~memable.storage._tx.Tx` inside one transaction) and a few plain reads; it
inherits every state-changing method from here, so it holds no rules of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from .. import _rules
from .._records import (
    Fence,
    InstanceRecord,
    InstanceState,
    SignalOutcome,
    SignalRecord,
    Write,
)
from .._tx import Tx

__all__ = ["RuleStorage"]

R = TypeVar("R")


class RuleStorage:
    """The state-changing half of :class:`~memable.storage.Storage`, over :class:`Tx`.

    Subclasses implement :meth:`transaction` and :meth:`purgeable`.
    """

    #: How many worker threads the engine may use for this storage at once.
    threads: int = 1

    def transaction(self) -> contextlib.AbstractContextManager[Tx]:
        """Open one transaction: committed when the block ends, rolled back on an error."""
        raise NotImplementedError

    def purgeable(
        self, *, finished_before: float, workflow: str | None, exclude: Sequence[str], limit: int
    ) -> list[str]:
        """Ids of finished top-level instances older than *finished_before* (a plain read)."""
        raise NotImplementedError

    def atomically(self, decide: Callable[[Tx], R]) -> R:
        """Run *decide* in one transaction. A backend whose transactions can deadlock
        (row locks on a shared database) runs it again after one; the rules are pure
        over :class:`Tx`, so running them again is safe."""
        with self.transaction() as tx:
            return decide(tx)

    def create_instance(self, record: InstanceRecord) -> tuple[InstanceRecord, bool]:
        return self.atomically(lambda tx: _rules.create(tx, record))

    def commit(self, writes: Sequence[Write]) -> list[bool]:
        return self.atomically(lambda tx: _rules.commit(tx, writes))

    def deliver_signal(self, signal: SignalRecord) -> tuple[SignalOutcome, InstanceRecord | None]:
        return self.atomically(lambda tx: _rules.deliver_signal(tx, signal))

    def suspend(
        self,
        instance_id: str,
        *,
        waiting_on: Sequence[str],
        status_message: str | None,
        now: float,
        extend: bool = False,
        fence: Fence | None = None,
    ) -> bool:
        return self.atomically(
            lambda tx: _rules.suspend(
                tx,
                instance_id,
                waiting_on=waiting_on,
                status_message=status_message,
                now=now,
                extend=extend,
                fence=fence,
            )
        )

    def fire_timers(self, now: float, limit: int = 500) -> list[InstanceRecord]:
        return self.atomically(lambda tx: _rules.fire_timers(tx, now, limit))

    def cancel(
        self, instance_id: str, *, reason: str, now: float
    ) -> tuple[InstanceRecord | None, InstanceRecord | None]:
        return self.atomically(lambda tx: _rules.cancel(tx, instance_id, reason=reason, now=now))

    def restart(
        self, instance_id: str, *, only_if: Sequence[InstanceState], updated_at: float
    ) -> InstanceRecord | None:
        only = tuple(only_if)
        return self.atomically(
            lambda tx: _rules.restart(tx, instance_id, only_if=only, now=updated_at)
        )

    def purge(
        self,
        *,
        finished_before: float,
        workflow: str | None = None,
        exclude: Sequence[str] = (),
        batch: int = 100,
    ) -> int:
        """Delete finished top-level instances in batches of *batch*, a transaction each."""
        purged = 0
        while True:
            ids = self.purgeable(
                finished_before=finished_before, workflow=workflow, exclude=exclude, limit=batch
            )
            if not ids:
                return purged
            done = self.atomically(lambda tx: _rules.purge(tx, ids))  # noqa: B023
            purged += done
            if done == 0:  # every candidate was resumed meanwhile: nothing more to find
                return purged


def family_ids(ids: Iterator[str], instance_id: str) -> list[str]:
    """The ids among *ids* in the family of *instance_id* (for dict-based backends)."""
    prefix = instance_id + "/"
    return [i for i in ids if i == instance_id or i.startswith(prefix)]
