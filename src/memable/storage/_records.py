"""The records a :class:`~memable.storage.Storage` keeps, and the writes it applies."""

from __future__ import annotations

from typing import Literal, TypeAlias, final

import attrs

__all__ = ["InstanceRecord", "InstanceState", "InstanceUpdate", "StepRecord", "Write"]

#: The persisted state of an instance.
InstanceState: TypeAlias = Literal["running", "suspended", "completed", "failed", "cancelled"]


@final
@attrs.frozen(kw_only=True)
class InstanceRecord:
    """One workflow instance as stored.

    ``input`` and ``output`` are envelopes (JSON text); ``error`` is the JSON text of an
    :class:`~memable.ErrorInfo`. Times are seconds since the epoch, UTC.

    Example:
        >>> from memable.storage import InstanceRecord
        >>> InstanceRecord(instance_id="o-1", workflow="order", status="running",
        ...                input='{"type":"str","value":"x"}', created_at=0.0, updated_at=0.0).status
        'running'
    """

    instance_id: str
    workflow: str
    status: InstanceState
    input: str
    created_at: float
    updated_at: float
    parent_id: str | None = None
    output: str | None = None
    error: str | None = None
    status_message: str | None = None
    waiting_on: tuple[str, ...] = ()
    finished_at: float | None = None


@final
@attrs.frozen(kw_only=True)
class StepRecord:
    """The outcome of one step: its result (``completed``) or its dead letter (``dead``).

    Example:
        >>> from memable.storage import StepRecord
        >>> StepRecord(instance_id="o-1", key="price:v1", state="completed",
        ...            value='{"type":"int","value":3}', attempts=1,
        ...            started_at=0.0, finished_at=0.1).state
        'completed'
    """

    instance_id: str
    key: str
    state: Literal["completed", "dead"]
    attempts: int
    started_at: float
    finished_at: float
    value: str | None = None
    error: str | None = None


@final
@attrs.frozen(kw_only=True)
class InstanceUpdate:
    """A change to an instance; fields left ``None`` are left as they are.

    The update applies only while the instance's status is one of ``only_if`` (any status
    when empty), so a late write never overwrites a newer terminal state.

    Example:
        >>> from memable.storage import InstanceUpdate
        >>> InstanceUpdate(instance_id="o-1", updated_at=1.0, status_message="charging").status
    """

    instance_id: str
    updated_at: float
    status: InstanceState | None = None
    only_if: tuple[InstanceState, ...] = ()
    status_message: str | None = None
    output: str | None = None
    error: str | None = None
    waiting_on: tuple[str, ...] | None = None
    finished_at: float | None = None


#: What :meth:`~memable.storage.Storage.commit` applies in one transaction.
Write: TypeAlias = StepRecord | InstanceUpdate
