"""The ``memable`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``memable`` command line; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="memable", description="Durable execution for async Python."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run a durable workflow that survives a killed process",
        description="Run a multi-step order workflow on a SQLite file, kill the process"
        " half-way, and recover it with a fresh engine: recorded steps are skipped.",
    )
    demo.add_argument(
        "--db", default="memable-demo.db", help="the SQLite file (default: %(default)s)"
    )
    demo.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    demo.add_argument("--crash-run", metavar="ID", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(args.db, backend=args.backend, crash_run=args.crash_run)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse checks


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
