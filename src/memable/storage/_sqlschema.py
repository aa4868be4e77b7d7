"""The SQLite schema of memable: its migrations, in order, and the read-only views.

The stored schema is documented table by table in ``docs/schema.md``; the views
``memable_instances`` and ``memable_steps`` are the stable face for operators' SQL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Final

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

_Migration = Callable[[sqlite3.Connection], None]


def _schema_1(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE instances (
            instance_id    TEXT PRIMARY KEY,
            workflow       TEXT NOT NULL,
            status         TEXT NOT NULL,
            parent_id      TEXT,
            input          TEXT NOT NULL,
            output         TEXT,
            error          TEXT,
            status_message TEXT,
            waiting_on     TEXT NOT NULL DEFAULT '[]',
            created_at     REAL NOT NULL,
            updated_at     REAL NOT NULL,
            finished_at    REAL
        )
        """
    )
    db.execute("CREATE INDEX instances_by_status ON instances (status, workflow, created_at)")
    db.execute("CREATE INDEX instances_by_workflow ON instances (workflow, created_at)")
    db.execute(
        "CREATE INDEX instances_by_parent ON instances (parent_id) WHERE parent_id IS NOT NULL"
    )
    db.execute(
        "CREATE INDEX instances_by_finish ON instances (finished_at) WHERE finished_at IS NOT NULL"
    )
    db.execute(
        """
        CREATE TABLE steps (
            instance_id TEXT NOT NULL,
            key         TEXT NOT NULL,
            state       TEXT NOT NULL,
            value       TEXT,
            error       TEXT,
            attempts    INTEGER NOT NULL,
            started_at  REAL NOT NULL,
            finished_at REAL NOT NULL,
            PRIMARY KEY (instance_id, key)
        ) WITHOUT ROWID
        """
    )


def _schema_2(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE signals (
            instance_id TEXT NOT NULL,
            key         TEXT NOT NULL,
            payload     TEXT,
            created_at  REAL NOT NULL,
            PRIMARY KEY (instance_id, key)
        ) WITHOUT ROWID
        """
    )
    db.execute(
        """
        CREATE TABLE timers (
            instance_id TEXT NOT NULL,
            key         TEXT NOT NULL,
            deadline    REAL NOT NULL,
            kind        TEXT NOT NULL,
            fired       INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (instance_id, key)
        ) WITHOUT ROWID
        """
    )
    db.execute("CREATE INDEX timers_due ON timers (deadline) WHERE fired = 0")


def _schema_3(db: sqlite3.Connection) -> None:
    """Operations: trace context, early signals, retired dead letters, newest-first
    listing, the inbox of other processes, and the stable read-only views."""
    db.execute("ALTER TABLE instances ADD COLUMN trace TEXT")
    db.execute("ALTER TABLE signals ADD COLUMN early INTEGER NOT NULL DEFAULT 0")
    db.execute(
        """
        CREATE TABLE retired_steps (
            instance_id TEXT NOT NULL,
            key         TEXT NOT NULL,
            retired_at  REAL NOT NULL,
            state       TEXT NOT NULL,
            error       TEXT,
            attempts    INTEGER NOT NULL,
            started_at  REAL NOT NULL,
            finished_at REAL NOT NULL,
            PRIMARY KEY (instance_id, key, started_at)
        ) WITHOUT ROWID
        """
    )
    # Pages of newest-first listings are index range scans (no sort, no count).
    for by in ("workflow", "status"):
        db.execute(f"DROP INDEX instances_by_{by}")
        db.execute(f"CREATE INDEX instances_by_{by} ON instances ({by}, created_at, instance_id)")
    db.execute("CREATE INDEX instances_by_created ON instances (created_at, instance_id)")
    db.execute(
        """
        CREATE TABLE inbox (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            verb        TEXT NOT NULL,
            instance_id TEXT NOT NULL,
            key         TEXT,
            payload     TEXT,
            reason      TEXT,
            created_at  REAL NOT NULL,
            done_at     REAL,
            result      TEXT
        )
        """
    )
    db.execute("CREATE INDEX inbox_pending ON inbox (id) WHERE done_at IS NULL")
    db.execute(_INSTANCES_VIEW)
    db.execute(_STEPS_VIEW)


def _utc(column: str) -> str:
    return f"strftime('%Y-%m-%dT%H:%M:%fZ', {column}, 'unixepoch')"


_INSTANCES_VIEW: Final = f"""
    CREATE VIEW memable_instances AS SELECT
        instance_id, workflow, status, parent_id, status_message,
        waiting_on,
        json_extract(input, '$.type') AS input_type,
        json_extract(input, '$.value') AS input,
        json_extract(output, '$.type') AS output_type,
        json_extract(output, '$.value') AS output,
        json_extract(error, '$.type') AS error_type,
        json_extract(error, '$.message') AS error_message,
        {_utc("created_at")} AS created_at,
        {_utc("updated_at")} AS updated_at,
        {_utc("finished_at")} AS finished_at
    FROM instances
"""

_STEPS_VIEW: Final = f"""
    CREATE VIEW memable_steps AS
    SELECT
        instance_id, key, state, attempts,
        {_utc("started_at")} AS started_at, {_utc("finished_at")} AS finished_at,
        finished_at - started_at AS duration,
        json_extract(value, '$.type') AS value_type,
        json_extract(value, '$.value') AS value,
        json_extract(error, '$.type') AS error_type,
        json_extract(error, '$.message') AS error_message
    FROM steps
    UNION ALL
    SELECT
        instance_id, key, 'retried' AS state, attempts,
        {_utc("started_at")}, {_utc("finished_at")}, finished_at - started_at,
        NULL, NULL, json_extract(error, '$.type'), json_extract(error, '$.message')
    FROM retired_steps
"""

#: Migrations in order; the schema version of a database is how many have run on it.
#: A new release appends to this list and never edits what is there.
#: Schema 4 adds the queue and priority of an instance to its view (as the last columns).
_INSTANCES_VIEW_4: Final = _INSTANCES_VIEW.replace(
    "AS finished_at\n    FROM", "AS finished_at,\n        queue, priority\n    FROM"
)


def _schema_4(db: sqlite3.Connection) -> None:
    """Queues and schedules: an instance's queue and priority, a row per queue and schedule."""
    db.execute("ALTER TABLE instances ADD COLUMN queue TEXT")
    db.execute("ALTER TABLE instances ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")
    db.execute("DROP VIEW memable_instances")
    db.execute(_INSTANCES_VIEW_4)
    db.execute(
        "CREATE INDEX instances_queued ON instances (queue, priority DESC, created_at,"
        " instance_id) WHERE status = 'enqueued'"
    )
    db.execute(
        "CREATE INDEX instances_queue_running ON instances (queue)"
        " WHERE status = 'running' AND queue IS NOT NULL"
    )
    db.execute(
        """
        CREATE TABLE queues (
            name        TEXT PRIMARY KEY,
            concurrency INTEGER,
            rate_count  INTEGER,
            rate_period REAL,
            paused      INTEGER NOT NULL DEFAULT 0,
            starts      TEXT NOT NULL DEFAULT '[]'
        ) WITHOUT ROWID
        """
    )
    db.execute(
        """
        CREATE TABLE schedules (
            name      TEXT PRIMARY KEY,
            last_tick REAL NOT NULL,
            last_run  TEXT
        ) WITHOUT ROWID
        """
    )


def _schema_5(db: sqlite3.Connection) -> None:
    # A fan-out's wake-up reads the children in a few states only (running, suspended):
    # an index range, whatever the number of children in other states.
    db.execute(
        "CREATE INDEX instances_by_parent_status ON instances (parent_id, status, instance_id)"
        " WHERE parent_id IS NOT NULL"
    )


def _schema_6(db: sqlite3.Connection) -> None:
    """Trace context of a signal: the run it resumes links to the span that delivered it."""
    db.execute("ALTER TABLE signals ADD COLUMN trace TEXT")


def _schema_7(db: sqlite3.Connection) -> None:
    """Steps in a rowid table. In a WITHOUT ROWID table the b-tree compares whole rows,
    and SQLite reads a row's overflow pages to compare it: every seek (a step recorded,
    a history loaded, a purge) read the results of the steps it passed, megabytes when
    results are large. A rowid table keeps ``(instance_id, key)`` in its own index."""
    db.execute("DROP VIEW memable_steps")
    db.execute("ALTER TABLE steps RENAME TO steps_6")
    db.execute(
        """
        CREATE TABLE steps (
            instance_id TEXT NOT NULL,
            key         TEXT NOT NULL,
            state       TEXT NOT NULL,
            value       TEXT,
            error       TEXT,
            attempts    INTEGER NOT NULL,
            started_at  REAL NOT NULL,
            finished_at REAL NOT NULL,
            PRIMARY KEY (instance_id, key)
        )
        """
    )
    db.execute(
        "INSERT INTO steps (instance_id, key, state, value, error, attempts, started_at,"
        " finished_at) SELECT instance_id, key, state, value, error, attempts, started_at,"
        " finished_at FROM steps_6 ORDER BY instance_id, key"
    )
    db.execute("DROP TABLE steps_6")
    db.execute(_STEPS_VIEW)


MIGRATIONS: Final[tuple[_Migration, ...]] = (
    _schema_1, _schema_2, _schema_3, _schema_4, _schema_5, _schema_6, _schema_7
)  # fmt: skip
SCHEMA_VERSION: Final = len(MIGRATIONS)
