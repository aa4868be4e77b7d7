"""``memable web``: serve the dashboard with uvicorn (asyncio) or hypercorn (trio)."""

from __future__ import annotations

import sys
from typing import Literal

__all__ = ["serve"]


def serve(
    db: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    allow_actions: bool = False,
    backend: Literal["asyncio", "trio"] = "asyncio",
) -> int:
    """Serve the dashboard over *db* until interrupted; return the exit status.

    Raises:
        StorageError: the database cannot be read.
        ImportError: the web extra is not installed.
    """
    from . import app

    application = app(db, allow_actions=allow_actions)
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
    except KeyboardInterrupt:
        pass
    return 0
