"""The ``memable`` command line."""

from __future__ import annotations

import argparse
import os
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
    web = commands.add_parser(
        "web",
        help="serve the dashboard (needs memable[web])",
        description="Serve the operators' dashboard over a database, read-only unless"
        " --allow-actions; bound to 127.0.0.1 unless --host says otherwise.",
    )
    web.add_argument(
        "--db",
        default=os.environ.get("MEMABLE_DB"),
        required="MEMABLE_DB" not in os.environ,
        metavar="PATH|URL",
        help="the SQLite file or Postgres URL (default: $MEMABLE_DB)",
    )
    web.add_argument("--host", default="127.0.0.1", help="the address (default: %(default)s)")
    web.add_argument("--port", type=int, default=8000, help="the port (default: %(default)s)")
    web.add_argument(
        "--allow-actions",
        action="store_true",
        help="let the dashboard signal, cancel and resume instances (each a POST with a CSRF"
        " token, handed to the owning engine through the database's inbox)",
    )
    web.add_argument(
        "--backend",
        choices=["asyncio", "trio"],
        default="asyncio",
        help="asyncio (served by uvicorn) or trio (served by hypercorn)",
    )
    args = parser.parse_args(argv)
    if args.command == "web":
        from .web._serve import serve

        return serve(
            args.db,
            host=args.host,
            port=args.port,
            allow_actions=args.allow_actions,
            backend=args.backend,
        )
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(args.db, backend=args.backend, crash_run=args.crash_run)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse checks


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
