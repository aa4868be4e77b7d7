"""The dashboard's extra pages, shown when the storage has what they list: queues and
schedules (a storage with ``list_queues``/``list_schedules``), engines (``list_engines``).

A page is one :class:`Section`: the storage method it calls (no arguments, one
transaction) and how one of its items becomes a row (a mapping of column to value; a
value is shown escaped, or as HTML when it is :class:`Markup`). Adding a page is adding a
``Section`` to :data:`SECTIONS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from html import escape
from typing import Any, Final

import attrs

__all__ = ["SECTIONS", "Markup", "Section", "cell", "plain"]


class Markup(str):
    """Text that is HTML already (built here from escaped parts)."""


@attrs.frozen
class Section:
    title: str
    method: str
    row: Callable[[Any, Callable[[str], str]], dict[str, object]]
    empty: str


def _fields(item: object) -> dict[str, object]:
    """An item's fields: an attrs record's, a mapping's, or a tuple's parts merged."""
    if isinstance(item, tuple):
        merged: dict[str, object] = {}
        for part in item:
            merged.update(_fields(part))
        return merged
    if attrs.has(type(item)):
        return dict(attrs.asdict(item, recurse=False))  # type: ignore[arg-type]
    if isinstance(item, Mapping):
        return {str(k): v for k, v in item.items()}
    return {"value": item}


def _time(at: object) -> object:
    from ._html import when

    return Markup(when(at)) if isinstance(at, int | float) and not isinstance(at, bool) else at


def _queue(item: Any, link: Callable[[str], str]) -> dict[str, object]:
    fields = _fields(item)
    rate = ""
    if fields.get("rate_count") is not None:
        rate = f"{fields['rate_count']} per {fields.get('rate_period')} s"
    return {
        "queue": fields.get("name"),
        "concurrency": fields.get("concurrency") or "no limit",
        "rate limit": rate or "none",
        "paused": "paused" if fields.get("paused") else "",
        "enqueued": fields.get("enqueued", 0),
        "running": fields.get("running", 0),
        "suspended": fields.get("suspended", 0),
    }


def _schedule(item: Any, link: Callable[[str], str]) -> dict[str, object]:
    fields = _fields(item)
    last_run = fields.get("last_run")
    return {
        "schedule": fields.get("name"),
        "last tick": _time(fields.get("last_tick")),
        "latest instance": Markup(f'<a href="{link(last_run)}">{escape(last_run)}</a>')
        if isinstance(last_run, str)
        else None,
    }


def _engine(item: Any, link: Callable[[str], str]) -> dict[str, object]:
    fields = _fields(item)
    age = fields.get("heartbeat_age")
    beat = f"{age:.1f} s ago" if isinstance(age, int | float) else ""
    if fields.get("expired"):
        beat = Markup(f'{escape(beat)} <span class="tag expired">expired</span>')
    return {
        "engine": Markup(f"<code>{escape(str(fields.get('engine_id', '')))}</code>"),
        "name": fields.get("name"),
        "host": fields.get("host"),
        "process": fields.get("pid"),
        "started": _time(fields.get("started_at")),
        "heartbeat": beat,
        "instances held": fields.get("instances", 0),
    }


#: The extra pages: path -> section.
SECTIONS: Final = {
    "/queues": Section("Queues", "list_queues", _queue, "No queue has been used yet."),
    "/schedules": Section("Schedules", "list_schedules", _schedule, "No schedule has run yet."),
    "/engines": Section("Engines", "list_engines", _engine, "No engine is registered."),
}


def cell(value: object) -> str:
    """A value as table-cell HTML."""
    if value is None or value == "":
        return '<span class="muted">—</span>'
    if isinstance(value, Markup):
        return str(value)
    return escape(str(value))


def plain(value: object) -> object:
    """A value for the JSON API."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return str(value)


def item_json(item: object) -> dict[str, object]:
    """An item of a section for the JSON API: all its fields."""
    return {k: plain(v) for k, v in _fields(item).items()}
