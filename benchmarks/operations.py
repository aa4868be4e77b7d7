"""Operations figures: a page of ``instances()`` as the table grows, the inbox's
round trip to a running engine, and the command line's start-up.

    PYTHONPATH=src python benchmarks/operations.py [--quick]

Prints medians and the ratio of a page's cost at the largest table to the smallest
(DESIGN §8: no cost grows with what is stored; the ratio should stay near 1).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

import memable
from memable import Context, Engine, SuspendPoint
from memable.storage import SQLiteStorage
from memable.storage._sqlite import InboxClient

GO = SuspendPoint("go:v1", int)


@memable.workflow("wait")
async def wait(ctx: Context) -> int:
    return await ctx.suspend(GO)


def fill(path: str, count: int) -> None:
    """*count* finished instances and 10% suspended ones, written straight into the table."""
    storage = SQLiteStorage(path, synchronous="normal")
    storage.open()
    storage.close()
    import sqlite3

    db = sqlite3.connect(path)
    rows = []
    for n in range(count):
        status = "suspended" if n % 10 == 0 else "completed"
        waiting = '["go:v1"]' if status == "suspended" else "[]"
        rows.append((f"i{n:09d}", "wait", status, '{"type":"None","value":null}', waiting,
                     1e9 + n, 1e9 + n))  # fmt: skip
    db.executemany(
        "INSERT INTO instances (instance_id, workflow, status, input, waiting_on, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    db.commit()
    db.close()


def page_us(path: str, repeat: int, **filters: object) -> float:
    """Median µs for the first and a middle page (limit 50) through the listing API."""
    from memable._inspect import load_page

    storage = SQLiteStorage(path, read_only=True)
    storage.open()
    query: dict[str, object] = {"workflow": None, "status": None, "waiting_on": None,
                                "parent_id": None, "created_after": None}  # fmt: skip
    query.update(filters)
    times = []
    try:
        _, cursor = load_page(storage, limit=50, after=None, **query)  # type: ignore[arg-type]
        for _ in range(repeat):
            start = time.perf_counter()
            load_page(storage, limit=50, after=None, **query)  # type: ignore[arg-type]
            load_page(storage, limit=50, after=cursor, **query)  # type: ignore[arg-type]
            times.append((time.perf_counter() - start) / 2 * 1e6)
    finally:
        storage.close()
    return statistics.median(times)


async def inbox_ms(path: str, repeat: int) -> tuple[float, float]:
    """Median and worst ms from leaving a signal in the inbox to reading the answer."""
    async with Engine(path, workflows=[wait]) as engine:
        for n in range(repeat):
            await (await engine.invoke(wait, instance_id=f"w{n}")).wait()
        client = InboxClient(path)

        def round_trip(n: int) -> float:
            start = time.perf_counter()
            item = client.post("signal", f"w{n}", key="go:v1", payload="1", now=time.time())
            while client.answer(item) is None:
                time.sleep(0.001)
            return (time.perf_counter() - start) * 1000

        times = [await anyio.to_thread.run_sync(round_trip, n) for n in range(repeat)]
        client.close()
    return statistics.median(times), max(times)


def cli_ms(path: str, repeat: int) -> float:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, ["src", env.get("PYTHONPATH")]))
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "memable", "--db", path, "list", "-n", "20"],
                       env=env, check=True, capture_output=True)  # fmt: skip
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    quick = "--quick" in sys.argv
    sizes = [1_000, 100_000] if quick else [1_000, 100_000, 1_000_000]
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            path = str(Path(tmp) / f"list-{size}.db")
            fill(path, size)
            for name, filters in [("all", {}), ("failed", {"status": "failed"}),
                                  ("waiting", {"waiting_on": "go:v1"})]:  # fmt: skip
                results[f"page_{name}_{size}_us"] = page_us(path, 20 if quick else 100, **filters)
        results["cli_list_ms"] = cli_ms(str(Path(tmp) / f"list-{sizes[-1]}.db"), 3 if quick else 7)
        median, worst = anyio.run(inbox_ms, str(Path(tmp) / "inbox.db"), 20)
        results["inbox_round_trip_ms"], results["inbox_round_trip_max_ms"] = median, worst
    for name in ("all", "failed", "waiting"):
        small, large = results[f"page_{name}_{sizes[0]}_us"], results[f"page_{name}_{sizes[-1]}_us"]
        results[f"page_{name}_ratio"] = large / small
    print(json.dumps({k: round(v, 2) for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
