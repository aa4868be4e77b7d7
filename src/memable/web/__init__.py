"""The memable dashboard: an ASGI application (Starlette) for operators.

Install the extra (``pip install "memable[web]"``) and either run it beside your engine::

    memable web --db orders.db            # http://127.0.0.1:8000, read-only
    memable web --db orders.db --allow-actions

or mount it in your own ASGI application (Starlette, FastAPI, ...)::

    from starlette.applications import Starlette
    from starlette.routing import Mount
    import memable.web

    app = Starlette(routes=[Mount("/memable", app=memable.web.app("orders.db"))])

The dashboard reads the database (a SQLite file is opened read-only, so it runs beside the
engine that owns it; a Postgres database as a client, which registers no engine). With
``allow_actions=True`` its signal, cancel and resume forms hand the action to the engine
that owns a SQLite file through the database's inbox, or on Postgres write it directly
(the engines pick it up).

Example:
    >>> import memable.web
    >>> from memable.storage import MemoryStorage
    >>> app = memable.web.app(MemoryStorage())
    >>> [route.path for route in app.routes][:2]
    ['/', '/instances/{instance_id:path}']
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from .._suspend import SuspendPoint
    from ..storage import Storage

__all__ = ["app"]


def app(
    storage: Storage | str | os.PathLike[str],
    allow_actions: bool = False,
    *,
    points: Iterable[SuspendPoint[Any]] = (),
    poll: float = 0.5,
) -> Starlette:
    """Return the dashboard over *storage* as a Starlette (ASGI) application.

    Args:
        storage: A SQLite path (opened read-only here and closed by the application's
            lifespan), a Postgres URL (opened as a client on the ``memable`` schema), or
            a :class:`~memable.storage.Storage` that the caller keeps open (an engine's
            own, or ``PostgresStorage(url, schema=..., register=False)``).
        allow_actions: Show the signal, cancel and resume forms (each a POST checked
            against a per-process CSRF token). Off by default: a read-only dashboard.
        points: Suspend points whose payload types the dashboard shows and checks signal
            payloads against (otherwise a payload is handed over as JSON and the engine
            checks it).
        poll: How often, in seconds, an open page's live updates read the database.

    Example:
        >>> import memable, memable.web
        >>> from memable.storage import MemoryStorage
        >>> approval = memable.SuspendPoint("approval:v1", bool)
        >>> app = memable.web.app(MemoryStorage(), allow_actions=True, points=[approval])
    """
    from .._serde import type_name
    from .._suspend import SuspendPoint
    from ._app import Dashboard
    from ._source import Source, open_storage

    if not poll > 0:
        raise ValueError(f"poll must be a positive number of seconds, not {poll!r}")
    known: dict[str, Any] = {}
    for point in points:
        if not isinstance(point, SuspendPoint):
            raise TypeError(f"points must be memable.SuspendPoint objects, not {point!r}")
        known[point.key] = point.payload_type
    if isinstance(storage, str | os.PathLike):
        source = Source(open_storage(storage), owned=True)
    else:
        source = Source(storage, owned=False)
    dashboard = Dashboard(
        source,
        allow_actions=allow_actions,
        poll=poll,
        payload_types={key: type_name(tp) for key, tp in known.items()},
        types=known,
    )
    return dashboard.app()
