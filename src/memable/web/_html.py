"""The dashboard's pages: HTML built from strings, every stored value escaped."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from html import escape
from typing import Final
from urllib.parse import quote, urlencode

from .._outcome import ErrorInfo
from ._gantt import duration, timeline
from ._source import AGES, STATES, Detail, Filters, ListPage, preview

__all__ = ["Page", "instance_live", "instance_page", "list_live", "list_page", "not_found"]

#: The icons of the statuses (text: no image, no font).
ICONS: Final = {
    "enqueued": "⋯",
    "running": "●",
    "suspended": "❚❚",
    "completed": "✓",
    "failed": "✕",
    "cancelled": "⊘",
}


class Page:
    """What every page shares: the mount point, the actions flag, the CSRF token."""

    def __init__(
        self,
        base: str,
        *,
        allow_actions: bool,
        csrf: str,
        sections: Mapping[str, str],
        payload_types: Mapping[str, str],
    ) -> None:
        self.base = base
        self.allow_actions = allow_actions
        self.csrf = csrf
        self.sections = sections  # path -> title of the extra pages (queues, engines, ...)
        self.payload_types = payload_types

    def url(self, path: str, query: Mapping[str, str] | None = None) -> str:
        return self.base + path + ("?" + urlencode(query) if query else "")

    def instance_url(self, instance_id: str) -> str:
        return self.url("/instances/" + quote(instance_id, safe="/:@"))

    def layout(self, title: str, body: str, *, active: str = "/") -> str:
        nav = [("/", "Instances"), *self.sections.items()]
        links = "".join(
            f'<a href="{self.url(path)}"{" class=active" if path == active else ""}>{escape(name)}</a>'
            for path, name in nav
        )
        mode = (
            '<span class="mode actions" title="signal, cancel and resume are enabled">actions on</span>'
            if self.allow_actions
            else '<span class="mode" title="start with --allow-actions to act">read-only</span>'
        )
        return (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="csrf-token" content="{escape(self.csrf)}">'
            f"<title>{escape(title)} · memable</title>"
            f'<link rel="stylesheet" href="{self.url("/static/memable.css")}">'
            f'<script src="{self.url("/static/htmx.min.js")}" defer></script>'
            f'<script src="{self.url("/static/memable.js")}" defer></script>'
            '</head><body><header class="top">'
            f'<a class="brand" href="{self.url("/")}"><span class="logo">◆</span> memable</a>'
            f"<nav>{links}</nav>{mode}</header>"
            f'<main>{body}</main><footer>memable dashboard · <a href="{self.url("/api/instances")}">JSON API</a></footer>'
            "</body></html>"
        )


def when(at: float | datetime | None) -> str:
    """A time: UTC text, made local and relative by the page's script."""
    if at is None:
        return '<span class="muted">—</span>'
    if isinstance(at, datetime):
        at = at.timestamp()
    moment = datetime.fromtimestamp(at, UTC)
    return (
        f'<time datetime="{moment.isoformat()}" data-t="{at:.3f}" title="{moment:%Y-%m-%d %H:%M:%S} UTC">'
        f"{moment:%Y-%m-%d %H:%M:%S}</time>"
    )


def badge(status: str) -> str:
    return f'<span class="badge {escape(status)}">{ICONS.get(status, "")} {escape(status)}</span>'


def code(text: str | None, tp: str | None = None) -> str:
    if text is None:
        return '<span class="muted">—</span>'
    kind = f'<span class="type">{escape(tp)}</span> ' if tp else ""
    return f"{kind}<code>{escape(text)}</code>"


def table(headers: Iterable[str], rows: Iterable[str], *, cls: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return (
        f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


# -- the instance list ------------------------------------------------------------------------


def list_page(page: Page, listing: ListPage, filters: Filters) -> str:
    def option(value: str, label: str, selected: str | None) -> str:
        sel = " selected" if value == (selected or "") else ""
        return f'<option value="{escape(value)}"{sel}>{escape(label)}</option>'

    statuses = option("", "any status", filters.status) + "".join(
        option(s, s, filters.status) for s in STATES
    )
    ages = option("", "any time", filters.age) + "".join(
        option(a, f"last {a}", filters.age) for a in AGES
    )
    form = (
        f'<form class="filters" method="get" action="{page.url("/")}">'
        f'<label>Workflow<input name="workflow" value="{escape(filters.workflow or "")}"'
        ' placeholder="any workflow"></label>'
        f'<label>Status<select name="status">{statuses}</select></label>'
        f'<label>Waiting on<input name="waiting_on" value="{escape(filters.waiting_on or "")}"'
        ' placeholder="a suspend key"></label>'
        f'<label>Created<select name="age">{ages}</select></label>'
        '<button type="submit">Filter</button>'
        f'<a class="reset" href="{page.url("/")}">reset</a></form>'
    )
    live = page.url("/events", {"view": "list", **filters.query()})
    return page.layout(
        "Instances",
        "<h1>Instances</h1>"
        + form
        + f'<section id="live" data-live="{escape(live)}">{list_live(page, listing, filters)}</section>',
    )


def list_live(page: Page, listing: ListPage, filters: Filters) -> str:
    chips = []
    for state in STATES:
        n = listing.counts.get(state, 0)
        shown = f"{listing.cap:,}+" if n > listing.cap else f"{n:,}"
        active = " active" if filters.status == state else ""
        href = page.url("/", filters.query(status=None if active else state, after=None))
        chips.append(
            f'<a class="count {state}{active}" href="{escape(href)}" data-status="{state}">'
            f'<span class="n">{shown}</span><span class="what">{ICONS.get(state, "")} {state}</span></a>'
        )
    rows = []
    for r in listing.items:
        waiting = (
            ", ".join(k for k in r.waiting_on if not k.startswith("_"))
            if r.status == "suspended"
            else ""
        )
        message = escape(r.status_message or "")
        if waiting:
            message += f' <span class="waits">waits on <code>{escape(waiting)}</code></span>'
        end = r.finished_at if r.finished_at is not None else None
        took = duration(end - r.created_at) if end is not None else ""
        if r.parent_id is not None:  # a child: its own part stands out, its parent's is muted
            head, _, own = r.instance_id.rpartition("/")
            name = f'<span class="parent">{escape(head)}/</span>{escape(own)}'
            sub = " sub"
        else:
            name, sub = escape(r.instance_id), ""
        workflow = (
            f'<span class="muted" title="{escape(r.workflow)}">fan-out child</span>'
            if r.workflow.startswith("_")
            else escape(r.workflow)
        )
        rows.append(
            f'<tr class="instance {r.status}{sub}" data-id="{escape(r.instance_id)}">'
            f'<td class="id"><a href="{page.instance_url(r.instance_id)}">{name}</a></td>'
            f"<td>{workflow}</td><td>{badge(r.status)}</td>"
            f'<td class="message">{message}</td><td>{when(r.created_at)}</td>'
            f'<td>{when(r.updated_at)}</td><td class="num">{took}</td></tr>'
        )
    if not rows:
        rows.append(
            '<tr><td colspan="7" class="empty">No instance matches these filters.</td></tr>'
        )
    pager = []
    if filters.after is not None:
        pager.append(f'<a href="{escape(page.url("/", filters.query(after=None)))}">← newest</a>')
    if listing.next is not None:
        pager.append(
            f'<a rel="next" href="{escape(page.url("/", filters.query(after=listing.next)))}">older →</a>'
        )
    return (
        f'<div class="counts">{"".join(chips)}</div>'
        + table(
            ["Instance", "Workflow", "Status", "Message", "Created", "Updated", "Took"],
            rows,
            cls="instances",
        )
        + f'<nav class="pager">{"".join(pager)}</nav>'
    )


# -- an instance ------------------------------------------------------------------------------


def instance_page(page: Page, detail: Detail) -> str:
    record = detail.record
    crumbs = [f'<a href="{page.url("/")}">Instances</a>']
    parts = record.instance_id.split("/")
    for i in range(len(parts) - 1):
        ancestor = "/".join(parts[: i + 1])
        crumbs.append(f'<a href="{page.instance_url(ancestor)}">{escape(parts[i])}</a>')
    crumbs.append(f"<span>{escape(parts[-1])}</span>")
    live = page.url("/events", {"view": "instance", "id": record.instance_id})
    return page.layout(
        record.instance_id,
        f'<nav class="crumbs">{" / ".join(crumbs)}</nav>'
        f'<section id="live" data-live="{escape(live)}">{instance_live(page, detail)}</section>'
        + (_actions(page, detail) if page.allow_actions else ""),
    )


def instance_live(page: Page, detail: Detail) -> str:
    record = detail.record
    end = record.finished_at if record.finished_at is not None else None
    took = duration(end - record.created_at) if end is not None else None
    meta = [
        ("Workflow", escape(record.workflow)),
        ("Created", when(record.created_at)),
        ("Updated", when(record.updated_at)),
        ("Finished", when(record.finished_at)),
        (
            "Took",
            took or f'<span class="since" data-since="{record.created_at:.3f}">running</span>'
            if record.status == "running"
            else took or '<span class="muted">—</span>',
        ),
    ]
    if record.parent_id is not None:
        meta.append(
            (
                "Parent",
                f'<a href="{page.instance_url(record.parent_id)}">{escape(record.parent_id)}</a>',
            )
        )
    header = (
        f'<header class="instance-head"><h1><span class="id">{escape(record.instance_id)}</span>'
        f" {badge(record.status)}</h1>"
        + (
            f'<p class="message">{escape(record.status_message)}</p>'
            if record.status_message
            else ""
        )
        + '<dl class="meta">'
        + "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in meta)
        + "</dl></header>"
    )
    cards = [header]
    if record.error is not None and record.status in ("failed", "cancelled"):
        cards.append(
            _card("Error", _error(ErrorInfo.from_json(record.error), open_=True), cls="error")
        )
    waiting = _waiting(page, detail)
    cards.append(waiting)
    in_tp, in_value = preview(record.input)
    out_tp, out_value = preview(record.output)
    cards.append(
        _card(
            "Input and output",
            '<dl class="io">'
            f"<div><dt>input</dt><dd>{code(in_value, in_tp)}</dd></div>"
            f"<div><dt>output</dt><dd>{code(out_value, out_tp)}</dd></div></dl>",
            cls="" if waiting else "wide",  # alone on its row: the whole row
        )
    )
    cards.append(
        _card(
            f"Timeline <small>{len(detail.steps)} step{'s' if len(detail.steps) != 1 else ''}</small>",
            f'<div class="gantt-wrap">{timeline(detail)}</div>'
            '<p class="legend"><span class="key completed"></span>step'
            ' <span class="key retry"></span>retried (\u00d7attempts)'
            ' <span class="key dead"></span>failed'
            ' <span class="key hatched"></span>earlier attempt (resumed)'
            ' <span class="key child"></span>child instance'
            ' <span class="key timer"></span>durable timer</p>',
            cls="wide",
        )
    )
    cards.append(_steps(detail))
    if detail.history.signals:
        cards.append(_signals(detail))
    if detail.children:
        cards.append(_children(page, detail))
    return '<div class="grid">' + "".join(c for c in cards if c) + "</div>"


def _card(title: str, body: str, *, cls: str = "") -> str:
    return f'<section class="card {cls}"><h2>{title}</h2>{body}</section>'


def _error(error: ErrorInfo, *, open_: bool = False, ident: str = "error") -> str:
    tb = (
        f'<details data-id="{escape(ident)}"{" open" if open_ else ""}><summary>traceback</summary>'
        f'<pre class="traceback">{escape(error.traceback)}</pre></details>'
        if error.traceback
        else ""
    )
    return f'<p class="error-line"><strong>{escape(error.type)}</strong>: {escape(error.message)}</p>{tb}'


def _waiting(page: Page, detail: Detail) -> str:
    record = detail.record
    rows = []
    for key in detail.waiting_on:
        tp = page.payload_types.get(key) or detail.history.payload_types.get(key)
        rows.append(
            f"<tr><td><code>{escape(key)}</code></td><td>signal</td>"
            f"<td>{f'<span class=type>{escape(tp)}</span>' if tp else '<span class=muted>unknown here</span>'}</td>"
            "<td></td></tr>"
        )
    for timer in detail.history.timers:
        if timer.fired:
            state = '<span class="muted">fired</span>'
        else:
            state = (
                f'<span class="countdown" data-deadline="{timer.deadline.timestamp():.3f}">'
                f"in {duration(timer.deadline.timestamp() - detail.now)}</span>"
            )
        rows.append(
            f'<tr class="timer {"fired" if timer.fired else "pending"}"><td><code>{escape(timer.key)}</code></td>'
            f"<td>{'timer' if timer.kind == 'sleep' else 'deadline'}</td>"
            f"<td>{when(timer.deadline)}</td><td>{state}</td></tr>"
        )
    waits_children = (
        any(k.startswith("_") for k in record.waiting_on) and record.status == "suspended"
    )
    if not rows and not waits_children:
        return ""
    note = '<p class="muted">waiting for its children to finish</p>' if waits_children else ""
    return _card(
        "Waiting on" if record.status == "suspended" else "Timers",
        note + table(["Key", "Kind", "Payload type / deadline", "Left"], rows, cls="waits"),
    )


def _steps(detail: Detail) -> str:
    rows = []
    for step in detail.steps:
        value = (
            code(step.value, step.value_type)
            if step.state == "completed"
            else (
                _error(step.error, ident=f"step-{step.key}-{step.started_at.timestamp()}")
                if step.error
                else ""
            )
        )
        rows.append(
            f'<tr class="step {step.state}"><td><code>{escape(step.key)}</code></td>'
            f"<td>{badge(step.state)}</td><td class=num>{step.attempts}</td>"
            f"<td>{when(step.started_at)}</td>"
            f'<td class="num">{duration(step.duration.total_seconds())}</td>'
            f'<td class="value">{value}</td></tr>'
        )
    if not rows:
        return ""
    return _card(
        "Steps",
        table(["Key", "State", "Attempts", "Started", "Took", "Result / error"], rows, cls="steps"),
        cls="wide",
    )


def _signals(detail: Detail) -> str:
    rows = []
    for signal in detail.history.signals:
        state = signal.state.replace("_", " ")
        rows.append(
            f'<tr class="signal"><td><code>{escape(signal.key)}</code></td>'
            f'<td><span class="tag {state.replace(" ", "-")}">{state}</span></td>'
            f"<td>{when(signal.received_at)}</td>"
            f"<td>{code(signal.payload, signal.payload_type)}</td></tr>"
        )
    return _card("Signals", table(["Key", "State", "Received", "Payload"], rows))


def _children(page: Page, detail: Detail) -> str:
    rows = [
        f'<tr class="child {c.record.status}"><td><a href="{page.instance_url(c.record.instance_id)}">'
        f"{escape(c.record.instance_id)}</a></td><td>{badge(c.record.status)}</td>"
        f'<td class="message">{escape(c.record.status_message or "")}</td>'
        f"<td>{len(c.steps)}</td></tr>"
        for c in detail.children
    ]
    more = '<p class="muted">more children are not shown</p>' if detail.more_children else ""
    return _card(
        "Children", table(["Instance", "Status", "Message", "Steps"], rows) + more, cls="wide"
    )


def _actions(page: Page, detail: Detail) -> str:
    record = detail.record
    iid = escape(record.instance_id)
    token = f'<input type="hidden" name="csrf" value="{escape(page.csrf)}">'
    target = 'hx-target="#action-result" hx-swap="innerHTML"'
    keys = "".join(f'<option value="{escape(k)}">' for k in detail.waiting_on)
    first = escape(detail.waiting_on[0]) if detail.waiting_on else ""
    return (
        '<section class="card actions"><h2>Actions</h2>'
        f'<form class="signal" method="post" action="{page.url("/actions/signal")}" hx-post="{page.url("/actions/signal")}" {target}>'
        f'{token}<input type="hidden" name="id" value="{iid}">'
        f'<label>Suspend key<input name="key" list="wait-keys" value="{first}" required></label>'
        f'<datalist id="wait-keys">{keys}</datalist>'
        '<label>Payload (JSON)<textarea name="payload" rows="2" placeholder="true">true</textarea></label>'
        '<button type="submit">Send signal</button></form>'
        f'<form class="resume" method="post" action="{page.url("/actions/resume")}" hx-post="{page.url("/actions/resume")}" {target}>'
        f'{token}<input type="hidden" name="id" value="{iid}"><button type="submit">Resume</button></form>'
        f'<form class="cancel" method="post" action="{page.url("/actions/cancel")}" hx-post="{page.url("/actions/cancel")}" {target}'
        ' hx-confirm="Cancel this instance and its children?">'
        f'{token}<input type="hidden" name="id" value="{iid}">'
        '<label>Reason<input name="reason" placeholder="why"></label>'
        '<button type="submit" class="danger">Cancel</button></form>'
        '<div id="action-result" role="status"></div></section>'
    )


def not_found(page: Page, instance_id: str) -> str:
    return page.layout(
        "Not found",
        f"<h1>No instance <code>{escape(instance_id)}</code></h1>"
        f'<p><a href="{page.url("/")}">Back to the instances</a></p>',
    )
