"""Fan out to child workflows with a concurrency limit, then sum their results.

``python examples/fan_out.py``: each page is its own durable instance (``album/pages:v1-0`` …);
kill the process half-way and run it again, and only the unfinished pages run.
"""

from __future__ import annotations

import sys

import anyio

import memable
from memable import Context, Engine


async def count_words(page: str) -> int:
    await anyio.sleep(0.01)  # imagine fetching and parsing the page
    return len(page.split())


@memable.workflow("page")
async def page(ctx: Context, text: str) -> int:
    return await ctx.step("count:v1", count_words, text)


@memable.workflow("album")
async def album(ctx: Context, pages: list[str]) -> int:
    counts = await ctx.fan_out("pages:v1", page, pages, limit=4)  # list[int], in order
    ctx.set_status(f"{len(counts)} pages counted")
    return sum(counts)


async def main(path: str = "pages.db") -> int:
    pages = [f"page {n} has " + "word " * n for n in range(20)]
    async with Engine(path, workflows=[album, page]) as engine:
        total = await engine.run(album, pages, instance_id="album")
        children = [info for info in await engine.instances() if info.parent_id == "album"]
        print(f"{total} words in {len(children)} child instances")
        return total


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "pages.db")
