"""A nested ETL: a nightly parent fans out to one child workflow per source.

Each child extracts, transforms and loads one source, as its own durable instance
(``nightly-2026-12-04/source:v1-0`` …), at most two at a time. Kill the process in the
middle of the fan-out and run it again: the children that had finished are not run
again, the unfinished ones go on from their last recorded step, and the parent sums up.

    python examples/etl.py etl.db warehouse.db --kill-at load:orders
    python examples/etl.py etl.db warehouse.db
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import sys

import anyio
import attrs

import memable
from memable import Context, Engine

SOURCES = ["customers", "orders", "invoices", "payments", "refunds"]


@attrs.frozen
class Loaded:
    source: str
    rows: int


@attrs.frozen
class Pipeline:
    """The side effects of the ETL: a warehouse (SQLite) and a log of extractions."""

    warehouse: str
    kill_at: str | None = None

    def maybe_die(self, call: str) -> None:
        if call == self.kill_at:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    async def extract(self, source: str) -> list[str]:
        self.maybe_die(f"extract:{source}")
        await anyio.sleep(0.02)  # imagine an export from another system
        with sqlite3.connect(self.warehouse) as db:
            db.execute("CREATE TABLE IF NOT EXISTS extracts (source TEXT)")
            db.execute("INSERT INTO extracts VALUES (?)", (source,))
        return [f"{source}-{n}" for n in range(len(source))]

    async def transform(self, rows: list[str]) -> list[str]:
        return [row.upper() for row in rows]

    async def load(self, source: str, rows: list[str]) -> int:
        self.maybe_die(f"load:{source}")
        with sqlite3.connect(self.warehouse) as db:  # idempotent: a repeat replaces
            db.execute("CREATE TABLE IF NOT EXISTS loaded (source TEXT PRIMARY KEY, n INT)")
            db.execute("INSERT OR REPLACE INTO loaded VALUES (?, ?)", (source, len(rows)))
        return len(rows)


def etl_workflows(
    pipeline: Pipeline,
) -> tuple[memable.Workflow[list[str], int], memable.Workflow[str, Loaded]]:
    """The parent (``nightly``) and child (``source``) workflows over *pipeline*."""

    @memable.workflow("source")
    async def source(ctx: Context, name: str) -> Loaded:
        raw = await ctx.step("extract:v1", pipeline.extract, name)
        rows = await ctx.step("transform:v1", pipeline.transform, raw)
        return Loaded(name, await ctx.step("load:v1", pipeline.load, name, rows))

    @memable.workflow("nightly")
    async def nightly(ctx: Context, sources: list[str]) -> int:
        loaded = await ctx.fan_out("source:v1", source, sources, limit=2)
        ctx.set_status(f"{len(loaded)} sources loaded")
        return sum(item.rows for item in loaded)

    return nightly, source


async def main(db: str, warehouse: str, kill_at: str | None = None) -> int:
    nightly, source = etl_workflows(Pipeline(warehouse, kill_at))
    async with Engine(db, workflows=[nightly, source]) as engine:
        total = await engine.run(nightly, SOURCES, instance_id="nightly-2026-12-04")
    print(f"{total} rows from {len(SOURCES)} sources")
    return total


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("db", nargs="?", default="etl.db")
    parser.add_argument("warehouse", nargs="?", default="warehouse.db")
    parser.add_argument("--kill-at", help="die at extract:SOURCE or load:SOURCE")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    anyio.run(main, args.db, args.warehouse, args.kill_at, backend=args.backend)
