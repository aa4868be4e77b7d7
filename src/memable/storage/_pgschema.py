"""The schema of a Postgres database of memable: migrations, in order.

A database's version is how many have run on it; a release appends to the tuple and never
edits what is there.
"""

from __future__ import annotations

from typing import Any, Final

from .._exceptions import StorageError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "check_schema"]

MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE engines (
        engine_id  text PRIMARY KEY,
        name       text NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        heartbeat  timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE instances (
        instance_id    text COLLATE "C" PRIMARY KEY,
        workflow       text NOT NULL,
        status         text NOT NULL,
        parent_id      text COLLATE "C",
        input          text NOT NULL,
        output         text,
        error          text,
        status_message text,
        waiting_on     text NOT NULL DEFAULT '[]',
        created_at     double precision NOT NULL,
        updated_at     double precision NOT NULL,
        finished_at    double precision,
        trace          text,
        owner          text REFERENCES engines (engine_id) ON DELETE SET NULL,
        epoch          bigint NOT NULL DEFAULT 0
    );
    CREATE INDEX instances_by_status ON instances (status, created_at, instance_id);
    CREATE INDEX instances_by_workflow ON instances (workflow, created_at, instance_id);
    CREATE INDEX instances_by_created ON instances (created_at, instance_id);
    CREATE INDEX instances_by_parent ON instances (parent_id) WHERE parent_id IS NOT NULL;
    CREATE INDEX instances_by_finish ON instances (finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX instances_by_owner ON instances (owner) WHERE owner IS NOT NULL;
    CREATE INDEX instances_claimable ON instances (workflow, created_at)
        WHERE status = 'running' AND owner IS NULL AND parent_id IS NULL;
    CREATE TABLE steps (
        instance_id text COLLATE "C" NOT NULL,
        key         text NOT NULL,
        state       text NOT NULL,
        value       text,
        error       text,
        attempts    integer NOT NULL,
        started_at  double precision NOT NULL,
        finished_at double precision NOT NULL,
        PRIMARY KEY (instance_id, key)
    );
    CREATE TABLE signals (
        instance_id text COLLATE "C" NOT NULL,
        key         text NOT NULL,
        payload     text,
        created_at  double precision NOT NULL,
        early       boolean NOT NULL DEFAULT false,
        PRIMARY KEY (instance_id, key)
    );
    CREATE TABLE retired_steps (
        instance_id text COLLATE "C" NOT NULL,
        key         text NOT NULL,
        retired_at  double precision NOT NULL,
        state       text NOT NULL,
        error       text,
        attempts    integer NOT NULL,
        started_at  double precision NOT NULL,
        finished_at double precision NOT NULL,
        PRIMARY KEY (instance_id, key, started_at)
    );
    CREATE TABLE timers (
        instance_id text COLLATE "C" NOT NULL,
        key         text NOT NULL,
        deadline    double precision NOT NULL,
        kind        text NOT NULL,
        fired       boolean NOT NULL DEFAULT false,
        PRIMARY KEY (instance_id, key)
    );
    CREATE INDEX timers_due ON timers (deadline) WHERE NOT fired;
    CREATE VIEW memable_instances AS SELECT
        instance_id, workflow, status, parent_id, status_message,
        waiting_on,
        input::jsonb ->> 'type' AS input_type,
        input::jsonb -> 'value' AS input,
        output::jsonb ->> 'type' AS output_type,
        output::jsonb -> 'value' AS output,
        error::jsonb ->> 'type' AS error_type,
        error::jsonb ->> 'message' AS error_message,
        to_timestamp(created_at) AS created_at,
        to_timestamp(updated_at) AS updated_at,
        to_timestamp(finished_at) AS finished_at,
        owner, epoch
    FROM instances;
    CREATE VIEW memable_steps AS
    SELECT
        instance_id, key, state, attempts,
        to_timestamp(started_at) AS started_at, to_timestamp(finished_at) AS finished_at,
        finished_at - started_at AS duration,
        value::jsonb ->> 'type' AS value_type,
        value::jsonb -> 'value' AS value,
        error::jsonb ->> 'type' AS error_type,
        error::jsonb ->> 'message' AS error_message
    FROM steps
    UNION ALL
    SELECT
        instance_id, key, 'retried' AS state, attempts,
        to_timestamp(started_at), to_timestamp(finished_at), finished_at - started_at,
        NULL, NULL, error::jsonb ->> 'type', error::jsonb ->> 'message'
    FROM retired_steps;
    """,
    """
    ALTER TABLE instances ADD COLUMN queue text;
    ALTER TABLE instances ADD COLUMN priority bigint NOT NULL DEFAULT 0;
    CREATE INDEX instances_queued ON instances (queue, priority DESC, created_at, instance_id)
        WHERE status = 'enqueued';
    CREATE INDEX instances_queue_running ON instances (queue)
        WHERE status = 'running' AND queue IS NOT NULL;
    CREATE INDEX instances_by_parent_status ON instances (parent_id, status, instance_id)
        WHERE parent_id IS NOT NULL;
    CREATE TABLE queues (
        name        text PRIMARY KEY,
        concurrency integer,
        rate_count  integer,
        rate_period double precision,
        paused      boolean NOT NULL DEFAULT false,
        starts      text NOT NULL DEFAULT '[]'
    );
    CREATE TABLE schedules (
        name      text PRIMARY KEY,
        last_tick double precision NOT NULL,
        last_run  text
    );
    CREATE OR REPLACE VIEW memable_instances AS SELECT
        instance_id, workflow, status, parent_id, status_message,
        waiting_on,
        input::jsonb ->> 'type' AS input_type,
        input::jsonb -> 'value' AS input,
        output::jsonb ->> 'type' AS output_type,
        output::jsonb -> 'value' AS output,
        error::jsonb ->> 'type' AS error_type,
        error::jsonb ->> 'message' AS error_message,
        to_timestamp(created_at) AS created_at,
        to_timestamp(updated_at) AS updated_at,
        to_timestamp(finished_at) AS finished_at,
        owner, epoch, queue, priority
    FROM instances;
    """,
    # The trace context of a signal: the run it resumes links to the span that delivered it.
    """
    ALTER TABLE signals ADD COLUMN trace text;
    """,
)
#: Migrations in order; the schema version of a database is how many have run on it.

#: The schema version this release writes.
SCHEMA_VERSION: Final = len(MIGRATIONS)


def check_schema(conn: Any, schema: str) -> None:
    """A client's check (``register=False``) on a psycopg connection: *schema* is
    memable's, of the version this memable writes; else :class:`StorageError`."""
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
        (f"{schema}.schema_version", f"{schema}.instances"),
    ).fetchone()
    if row is None or not row[0]:
        raise StorageError(
            f"this is not a memable database: it has no memable schema {schema!r}"
            " (an engine creates it when it first opens the database)"
        )
    version = conn.execute(f"SELECT max(version) FROM {schema}.schema_version").fetchone()
    found = 0 if version is None or version[0] is None else int(version[0])
    if found != SCHEMA_VERSION:
        if found > SCHEMA_VERSION:
            why = f"newer than this memable knows ({SCHEMA_VERSION}); upgrade memable"
        else:
            why = f"older than this memable's ({SCHEMA_VERSION}); start an engine of it first"
        raise StorageError(f"the memable schema {schema!r} has version {found}, {why}")
