"""Fan-out of 10,000 trivial children with limit=100 on SQLite: wall time and peak memory.

``python benchmarks/fanout.py [--children 10000] [--limit 100] [--backend asyncio|trio]``
Each child is a real instance that records one step. Prints wall time, children per second,
and the process's peak resident memory (before and after).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import anyio

import memable
from memable import Context, Engine


async def child(ctx: Context, n: int) -> int:
    async def square(n: int) -> int:
        return n * n

    return await ctx.step("square", square, n)


@memable.workflow("fan")
async def fan(ctx: Context, spec: tuple[int, int]) -> int:
    count, limit = spec
    return sum(await ctx.fan_out("kids", child, range(count), limit=limit))


async def measure(count: int, limit: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        async with Engine(Path(tmp) / "fan.db", workflows=[fan]) as engine:
            started = time.perf_counter()
            total = await engine.run(fan, (count, limit))
            elapsed = time.perf_counter() - started
    assert total == sum(n * n for n in range(count))
    return elapsed, count


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=10_000)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    before = peak_rss_mib()
    elapsed, count = anyio.run(measure, args.children, args.limit, backend=args.backend)
    print(
        f"{args.backend}: {count} children, limit {args.limit}: {elapsed:.2f} s"
        f" ({count / elapsed:,.0f} children/s); peak RSS {before:.0f} MiB before,"
        f" {peak_rss_mib():.0f} MiB after"
    )


if __name__ == "__main__":
    main()
