"""Storage backends: where an engine keeps its instances and step records.

``Engine("orders.db")`` is short for ``Engine(SQLiteStorage("orders.db"))``;
``Engine()`` uses a private in-memory SQLite database; ``Engine("postgresql://…")`` is
short for ``Engine(PostgresStorage("postgresql://…"))``, a database many engines share.
:class:`MemoryStorage` keeps everything in dictionaries, for tests. Any object that
implements :class:`Storage` can be given to an engine.

Example:
    >>> import memable
    >>> from memable.storage import MemoryStorage, SQLiteStorage
    >>> memable.Engine(SQLiteStorage("orders.db", synchronous="full"))  # doctest: +ELLIPSIS
    <memable.Engine storage=SQLiteStorage('orders.db', synchronous='full') ...>
"""

from typing import TYPE_CHECKING

from ._protocol import QueueStorage as QueueStorage
from ._protocol import SharedStorage as SharedStorage
from ._protocol import Storage as Storage

if TYPE_CHECKING:
    from .._records import Admission as Admission
    from .._records import EngineRecord as EngineRecord
    from .._records import Fence as Fence
    from .._records import History as History
    from .._records import InboxItem as InboxItem
    from .._records import InstanceRecord as InstanceRecord
    from .._records import InstanceState as InstanceState
    from .._records import InstanceUpdate as InstanceUpdate
    from .._records import QueueRecord as QueueRecord
    from .._records import Recorded as Recorded
    from .._records import ScheduleRecord as ScheduleRecord
    from .._records import SignalDrop as SignalDrop
    from .._records import SignalOutcome as SignalOutcome
    from .._records import SignalRecord as SignalRecord
    from .._records import StepRecord as StepRecord
    from .._records import StepRows as StepRows
    from .._records import Suspension as Suspension
    from .._records import TimerRecord as TimerRecord
    from .._records import Write as Write
    from ._memory import MemoryStorage as MemoryStorage
    from ._postgres import PostgresStorage as PostgresStorage
    from ._sqlite import SQLiteStorage as SQLiteStorage

__all__ = [
    "Admission",
    "EngineRecord",
    "Fence",
    "History",
    "InboxItem",
    "InstanceRecord",
    "InstanceState",
    "InstanceUpdate",
    "MemoryStorage",
    "PostgresStorage",
    "QueueRecord",
    "QueueStorage",
    "Recorded",
    "SQLiteStorage",
    "ScheduleRecord",
    "SharedStorage",
    "SignalDrop",
    "SignalOutcome",
    "SignalRecord",
    "StepRecord",
    "StepRows",
    "Storage",
    "Suspension",
    "TimerRecord",
    "Write",
]

for _name in ("QueueStorage", "SharedStorage", "Storage"):
    globals()[_name].__module__ = "memable.storage"
del _name

#: The records load on first use (``memable._records`` says they are memable.storage's),
#: so that ``import memable`` and a first ``Engine()`` do not pay for them.
_RECORDS = frozenset(__all__) - {
    "MemoryStorage", "PostgresStorage", "QueueStorage", "SQLiteStorage", "SharedStorage", "Storage"
}  # fmt: skip


def __getattr__(name: str) -> object:
    if name in _RECORDS:  # all of them at once: their annotations name each other
        from .. import _records

        globals().update({record: getattr(_records, record) for record in _RECORDS})
        return globals()[name]
    # The backends load on first use, so that ``import memable`` does not pay for sqlite3.
    if name == "SQLiteStorage":
        from ._sqlite import SQLiteStorage

        return SQLiteStorage
    if name == "PostgresStorage":
        try:
            from ._postgres import PostgresStorage
        except ImportError as exc:
            raise ImportError(
                "PostgresStorage needs psycopg 3 and psycopg-pool: pip install 'memable[postgres]'"
            ) from exc
        return PostgresStorage
    if name == "MemoryStorage":
        from ._memory import MemoryStorage

        return MemoryStorage
    raise AttributeError(f"module 'memable.storage' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The records as if loaded; the backends stay out, as before (the docs list them apart).
    return sorted({*globals(), *_RECORDS})
