"""Timer firing lateness: from a durable timer's deadline to its workflow running again.

``python benchmarks/timer_lateness.py [--timers 1000] [--backend asyncio|trio]`` starts N
instances on a SQLite file (WAL, synchronous=FULL) with the real clock; each sleeps durably
until a deadline spread over the next few seconds, then records the wall-clock time it
resumed. Prints the median, p99 and max lateness in milliseconds per backend.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio

import memable
from memable import Context, Engine


async def measure(count: int, spread: float) -> list[float]:
    resumed: dict[str, float] = {}
    deadlines: dict[str, float] = {}

    @memable.workflow("sleeper")
    async def sleeper(ctx: Context, deadline: float) -> None:
        await ctx.sleep_until("t", datetime.fromtimestamp(deadline, UTC))
        resumed.setdefault(ctx.instance_id, time.time())

    with tempfile.TemporaryDirectory() as tmp:
        async with Engine(Path(tmp) / "timers.db", workflows=[sleeper]) as engine:
            start = time.time() + 1.0  # leave time to start them all
            for n in range(count):
                deadline = start + spread * n / count
                deadlines[f"t{n}"] = deadline
                await engine.invoke(sleeper, deadline, instance_id=f"t{n}")
            with anyio.fail_after(spread + 30):
                while len(resumed) < count:
                    await anyio.sleep(0.05)
    return [(resumed[i] - deadlines[i]) * 1000 for i in deadlines]


def report(backend: str, lateness: list[float]) -> dict[str, float]:
    ordered = sorted(lateness)
    figures = {
        "median_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, round(0.99 * len(ordered)))],
        "max_ms": ordered[-1],
        "early": sum(1 for x in ordered if x < 0),
    }
    print(
        f"{backend:8} timers={len(ordered)}  median={figures['median_ms']:.2f} ms"
        f"  p99={figures['p99_ms']:.2f} ms  max={figures['max_ms']:.2f} ms"
        f"  fired early={figures['early']}"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timers", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=3.0, help="seconds the deadlines span")
    parser.add_argument("--backend", choices=["asyncio", "trio"], action="append")
    args = parser.parse_args()
    for backend in args.backend or ["asyncio", "trio"]:
        report(backend, anyio.run(measure, args.timers, args.spread, backend=backend))


if __name__ == "__main__":
    main()
