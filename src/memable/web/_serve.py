"""``memable web``: serve the dashboard with uvicorn (asyncio) or hypercorn (trio)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from .._suspend import SuspendPoint
    from ..storage import Storage

__all__ = ["points_of", "serve"]


def points_of(modules: Sequence[str]) -> list[SuspendPoint[Any]]:
    """The suspend points defined at the top level of *modules* (imported from the current
    directory too, like ``python -m``), so the dashboard knows their payload types.

    Raises:
        ValueError: a module cannot be imported (the message says which and why).
    """
    from .._suspend import SuspendPoint

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    points: list[SuspendPoint[Any]] = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # any error of the user's module: say it in one line
            raise ValueError(f"cannot import {name!r}: {type(exc).__name__}: {exc}") from exc
        points += [v for v in vars(module).values() if isinstance(v, SuspendPoint)]
    return points


def serve(
    db: str,
    *,
    schema: str = "memable",
    host: str = "127.0.0.1",
    port: int = 8000,
    allow_actions: bool = False,
    backend: Literal["asyncio", "trio"] = "asyncio",
    imports: Sequence[str] = (),
) -> int:
    """Serve the dashboard over *db* until interrupted; return the exit status.

    Raises:
        StorageError: the database cannot be read.
        ImportError: the web extra is not installed.
    """
    from . import app
    from ._source import open_storage

    points = points_of(imports)
    storage = open_storage(db, schema=schema)
    try:
        application = app(cast("Storage", storage), allow_actions=allow_actions, points=points)
        _run(application, host=host, port=port, allow_actions=allow_actions, backend=backend)
    finally:
        storage.close()
    return 0


def _run(
    application: Starlette,
    *,
    host: str,
    port: int,
    allow_actions: bool,
    backend: Literal["asyncio", "trio"],
) -> None:
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
