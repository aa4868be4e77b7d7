"""``memable web``: serve the dashboard with uvicorn (asyncio) or hypercorn (trio)."""

from __future__ import annotations

import sys
from typing import Literal

from .._exceptions import StorageError

__all__ = ["serve"]


def serve(
    db: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    allow_actions: bool = False,
    backend: Literal["asyncio", "trio"] = "asyncio",
) -> int:
    """Serve the dashboard over *db* until interrupted; return the exit status."""
    try:
        from . import app
    except ImportError as exc:  # pragma: no cover - starlette missing
        print(f"memable web: {exc}; install memable[web]", file=sys.stderr)
        return 2
    try:
        application = app(db, allow_actions=allow_actions)
    except (StorageError, ValueError) as exc:
        print(f"memable web: {exc}", file=sys.stderr)
        return 2
    mode = "actions allowed" if allow_actions else "read-only"
    print(f"memable web: http://{host}:{port}/ ({mode}); Ctrl-C stops it", file=sys.stderr)
    try:
        if backend == "trio":
            import trio
            from hypercorn.config import Config
            from hypercorn.trio import serve as hypercorn_serve

            config = Config()
            config.bind = [f"{host}:{port}"]
            config.accesslog = None
            config.graceful_timeout = 2
            trio.run(hypercorn_serve, application, config)  # type: ignore[arg-type]
        else:
            import uvicorn

            uvicorn.run(
                application, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2
            )
    except ImportError as exc:
        print(f"memable web: {exc}; install memable[web]", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0
