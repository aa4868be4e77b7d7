"""The inbox: requests (signal, cancel, resume) that other processes leave in a SQLite
file for the engine that owns it, applied within a poll interval (50 ms).

Other processes (the ``memable`` command line, an operator's script) cannot open the
file as an engine while one owns it; they write a row to its ``inbox`` table instead,
and read the answer the owner writes back.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final, Protocol

import anyio

from . import _telemetry
from ._control import Control
from ._exceptions import MemableError, StorageError
from ._kernel import Kernel
from ._keys import check_key, check_text
from ._log import logger
from ._records import InboxItem, SignalRecord
from ._serde import UNTYPED

if TYPE_CHECKING:
    from .storage._protocol import Storage

__all__ = [
    "POLL",
    "InboxStorage",
    "answer",
    "apply",
    "apply_directly",
    "serve",
    "signal_answer",
]


#: Seconds between two looks at the inbox.
POLL: Final = 0.05


class InboxStorage(Protocol):
    """A storage with an inbox (:class:`~memable.storage.SQLiteStorage` on a file)."""

    def take_inbox(self, limit: int = 100) -> list[InboxItem]: ...

    def answer_inbox(self, item_id: int, result: str, now: float) -> None: ...


async def serve(kernel: Kernel, control: Control, storage: InboxStorage) -> None:
    """Apply the requests left in the inbox, forever (a system task of the engine)."""
    while True:
        try:
            items = await kernel.store.call(storage.take_inbox, 100)
            for item in items:
                answer = await apply(kernel, control, item)
                await kernel.store.call(storage.answer_inbox, item.id, answer, kernel.now())
        except StorageError:
            logger.warning("storage failed while reading the inbox", exc_info=True)
            await anyio.sleep(1.0)
            continue
        if not items:
            await anyio.sleep(POLL)


def answer(ok: bool, outcome: str, message: str) -> str:
    return json.dumps({"ok": ok, "outcome": outcome, "message": message})


async def apply(kernel: Kernel, control: Control, item: InboxItem) -> str:
    """Apply one request; return the answer (JSON text: ok, outcome, message)."""
    instance_id = item.instance_id
    try:
        if item.verb == "purge":
            age = float(item.payload or "nan")
            if not age >= 0:
                return answer(False, "error", f"not an age in seconds: {item.payload!r}")
            purged = await kernel.store.purge(kernel.now() - age)
            return answer(True, "purged", f"purged {purged} finished instances")
        check_key(instance_id, "instance id")
        record = await kernel.store.get(instance_id)
        if record is None:
            return answer(False, "not_found", f"no instance {instance_id!r}")
        if item.verb == "cancel":
            reason = item.reason or ""
            check_text(reason, f"the cancel reason for {instance_id!r}")
            if await control.cancel_record(record, reason):
                return answer(True, "cancelled", f"instance {instance_id!r} is cancelled")
            return answer(False, record.status, f"instance {instance_id!r} is {record.status}")
        if item.verb == "resume":
            restarted = await control.resume_record(record)
            state = "running" if restarted else record.status
            return answer(True, state, f"instance {instance_id!r} is {state}")
        return await _signal(kernel, control, item, record.workflow)
    except (MemableError, ValueError) as exc:
        return answer(False, "error", str(exc))


async def _signal(kernel: Kernel, control: Control, item: InboxItem, workflow: str) -> str:
    key, instance_id = item.key or "", item.instance_id
    check_key(key, "suspend point key")
    try:
        value = json.loads(item.payload or "null")
    except ValueError:
        return answer(False, "error", f"the payload for {key!r} is not JSON")
    # The waiter reads it as its point's type (a payload that does not fit is set aside
    # and logged, and the instance waits for another).
    tp = kernel.points.get((workflow, key), UNTYPED)
    envelope = json.dumps({"type": tp, "value": value})
    signal = SignalRecord(instance_id=instance_id, key=key, payload=envelope,
                          created_at=kernel.now())  # fmt: skip
    outcome, record = await control.deliver(signal)
    status = "" if record is None else record.status
    return signal_answer(outcome, instance_id, key, status, "runs again")


def signal_answer(outcome: str, instance_id: str, key: str, status: str, claimed: str) -> str:
    """The answer to a signal request, from what storage did with it."""
    messages = {
        "claimed": f"delivered; instance {instance_id!r} {claimed}",
        "stored": f"stored; instance {instance_id!r} reads it when it reaches {key!r}",
        "superseded": f"suspend point {key!r} already has a payload; this one is not used",
        "timed_out": f"the deadline of {key!r} passed first; this payload is not used",
        "finished": f"instance {instance_id!r} is {status}; nothing stored",
        "not_found": f"no instance {instance_id!r}",
    }
    return answer(outcome in ("claimed", "stored"), outcome, messages[outcome])


def apply_directly(
    storage: Storage,
    verb: str,
    instance_id: str,
    *,
    now: float,
    key: str | None = None,
    payload: str | None = None,
    reason: str | None = None,
    payload_type: str = UNTYPED,
) -> str:
    """Apply a request in storage, outside any engine; return the answer (JSON text).

    On a SQLite file no engine runs (what it starts runs when one opens the file); on a
    shared database (Postgres) the engines run it: the transaction's ``NOTIFY`` wakes
    them, an instance set running is claimed by one that runs its workflow, and an
    engine running a cancelled instance stops it. *payload* is JSON text, sent as
    *payload_type* (by default untyped: the waiter reads it as its point's type).
    """
    from ._control import RESUMABLE
    from ._ids import root_of
    from .storage._protocol import SharedStorage

    shared = isinstance(storage, SharedStorage)
    later = "runs on an engine of its workflow" if shared else "runs when an engine starts"
    if verb == "purge":
        age = float(payload or "nan")
        if not age >= 0:
            return answer(False, "error", f"not an age in seconds: {payload!r}")
        purged = storage.purge(finished_before=now - age)
        return answer(True, "purged", f"purged {purged} finished instances")
    record = storage.get_instance(instance_id)
    if record is None:
        return answer(False, "not_found", f"no instance {instance_id!r}")
    if verb == "signal":
        envelope = json.dumps({"type": payload_type, "value": json.loads(payload or "null")})
        with _telemetry.signal_span(instance_id, key or "") as span:  # the run links to it
            trace = _telemetry.current_traceparent()
            signal = SignalRecord(instance_id=instance_id, key=key or "", payload=envelope,
                                  created_at=now, trace=trace)  # fmt: skip
            outcome, after = storage.deliver_signal(signal)
            if span is not None:
                span.set_attribute("memable.signal.outcome", outcome)
        status = "" if after is None else after.status
        return signal_answer(outcome, instance_id, key or "", status, later)
    if verb == "cancel":
        before, _ = storage.cancel(instance_id, reason=reason or "", now=now)
        if before is None:
            return answer(False, record.status, f"instance {instance_id!r} is {record.status}")
        return answer(True, "cancelled", f"instance {instance_id!r} is cancelled")
    root = storage.get_instance(root_of(instance_id)) if record.parent_id else record
    if root is None or root.status not in RESUMABLE:
        return answer(True, record.status, f"instance {instance_id!r} is {record.status}")
    restarted = storage.restart(root.instance_id, only_if=RESUMABLE, updated_at=now)
    if restarted is None:  # an engine holds it (it runs), or it changed meanwhile
        fresh = storage.get_instance(instance_id)
        state = "gone" if fresh is None else fresh.status
        return answer(True, state, f"instance {instance_id!r} is {state}")
    return answer(True, restarted.status, f"instance {instance_id!r} {later}")
