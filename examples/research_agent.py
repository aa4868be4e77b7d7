"""A research agent whose model calls are durable steps: kill it, and no paid call repeats.

The agent plans topics for a question, then for each topic searches and summarises, and
writes a report. Keys come from the plan (``search:{topic}:v1``, ``summarise:{topic}:v1``):
memable matches results by key, so a plan that decides at run time which tools to call
is recorded like any other step. The "model" is a stub (no network); every paid call is
appended to a log, with the idempotency key a real provider would receive.

    python examples/research_agent.py agent.db calls.log --kill-at summarise:idempotency
    python examples/research_agent.py agent.db calls.log

The first run is killed (SIGKILL) as it is about to make that call; the second recovers
the instance and makes only the calls that had no recorded result — the log shows each
call once.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import anyio
import attrs

import memable
from memable import Context, Engine, RetryPolicy


@attrs.frozen
class Report:
    question: str
    sections: list[str]


@attrs.frozen
class StubModel:
    """A stand-in for a paid model API: deterministic answers, a log of billed calls."""

    log: Path
    kill_at: str | None = None

    def bill(self, call: str, idempotency_key: str) -> None:
        if call == self.kill_at:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # the process dies before paying
        with self.log.open("a") as log:
            log.write(f"{call} {idempotency_key}\n")

    async def plan(self, key: str, question: str) -> list[str]:
        self.bill("plan", key)
        return [word.strip("?").lower() for word in question.split() if len(word) > 6]

    async def search(self, key: str, topic: str) -> list[str]:
        self.bill(f"search:{topic}", key)
        await anyio.sleep(0.01)  # imagine a web search
        return [f"{topic} paper {n}" for n in range(1, 4)]

    async def summarise(self, key: str, topic: str, hits: list[str]) -> str:
        self.bill(f"summarise:{topic}", key)
        return f"{topic}: {len(hits)} sources agree"

    async def write(self, key: str, question: str, notes: list[str]) -> list[str]:
        self.bill("report", key)
        return [f"Q: {question}", *notes]


def research_agent(model: StubModel) -> memable.Workflow[str, Report]:
    """The agent's workflow, calling *model*."""
    retry = RetryPolicy.exponential(attempts=3, base=0.5)

    @memable.workflow("research")
    async def research(ctx: Context, question: str) -> Report:
        def key(step: str) -> str:  # the same on every attempt and every run
            return f"{ctx.instance_id}:{step}"

        topics = await ctx.step("plan:v1", model.plan, key("plan:v1"), question, retry=retry)
        notes = []
        for topic in topics:  # one paid call in flight at a time (see the module's doc)
            ctx.set_status(f"researching {topic}")
            hits = await ctx.step(
                f"search:{topic}:v1",
                model.search,
                key(f"search:{topic}:v1"),
                topic,
                timeout=30,
                retry=retry,
            )
            notes.append(
                await ctx.step(
                    f"summarise:{topic}:v1",
                    model.summarise,
                    key(f"summarise:{topic}:v1"),
                    topic,
                    hits,
                    retry=retry,
                )
            )
        sections = await ctx.step("report:v1", model.write, key("report:v1"), question, notes)
        return Report(question, sections)

    return research


QUESTION = "Why do durable workflows need idempotency and determinism?"


async def main(db: str, log: str, kill_at: str | None = None) -> Report:
    research = research_agent(StubModel(Path(log), kill_at))
    async with Engine(db, workflows=[research]) as engine:
        report = await engine.run(research, QUESTION, instance_id="research-1")
    print("\n".join(report.sections))
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("db", nargs="?", default="agent.db")
    parser.add_argument("log", nargs="?", default="calls.log")
    parser.add_argument("--kill-at", help="a call to die at: plan, search:TOPIC, report ...")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    anyio.run(main, args.db, args.log, args.kill_at, backend=args.backend)
