"""The dashboard as a Starlette application: pages, the JSON API, live updates, actions."""

from __future__ import annotations

import contextlib
import json
import secrets
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any, Final, Literal

import anyio
import attrs
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._exceptions import MemableError, StorageError
from .._ids import public_keys
from .._inspect import StepInfo
from .._keys import check_instance_ref, check_key
from .._outcome import ErrorInfo
from .._records import InstanceRecord
from ._html import Page, instance_live, instance_page, list_live, list_page, not_found, table
from ._sections import SECTIONS, cell, item_json
from ._source import Detail, Filters, ListPage, Source, preview

__all__ = ["Dashboard"]

_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline';"
    " img-src 'self' data:; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()


def _error_json(text: str | None) -> dict[str, str] | None:
    if text is None:
        return None
    error = ErrorInfo.from_json(text)
    return {"type": error.type, "message": error.message, "traceback": error.traceback}


def _value_json(envelope: str | None) -> dict[str, str | None] | None:
    if envelope is None:
        return None
    tp, value = preview(envelope)
    return {"type": tp, "preview": value}


def instance_json(record: InstanceRecord) -> dict[str, Any]:
    return {
        "instance_id": record.instance_id,
        "workflow": record.workflow,
        "status": record.status,
        "status_message": record.status_message,
        "waiting_on": list(public_keys(record.waiting_on)) if record.status == "suspended" else [],
        "parent_id": record.parent_id,
        "created_at": _iso(record.created_at),
        "updated_at": _iso(record.updated_at),
        "finished_at": _iso(record.finished_at),
        "input": _value_json(record.input),
        "output": _value_json(record.output),
        "error": _error_json(record.error),
    }


def _step_json(step: StepInfo) -> dict[str, Any]:
    return {
        "key": step.key,
        "state": step.state,
        "attempts": step.attempts,
        "started_at": step.started_at.isoformat(),
        "finished_at": step.finished_at.isoformat(),
        "duration": step.duration.total_seconds(),
        "value": None if step.value is None else {"type": step.value_type, "preview": step.value},
        "error": None if step.error is None else attrs.asdict(step.error),
    }


def detail_json(detail: Detail) -> dict[str, Any]:
    return {
        "instance": instance_json(detail.record),
        "steps": [_step_json(s) for s in detail.steps],
        "signals": [
            {
                "key": s.key,
                "state": s.state,
                "received_at": s.received_at.isoformat(),
                "payload": None
                if s.payload is None
                else {"type": s.payload_type, "preview": s.payload},
            }
            for s in detail.history.signals
        ],
        "timers": [
            {"key": t.key, "kind": t.kind, "deadline": t.deadline.isoformat(), "fired": t.fired}
            for t in detail.history.timers
        ],
        "children": [detail_json(c) for c in detail.children],
    }


class Dashboard:
    """The routes of the dashboard over one :class:`Source`."""

    def __init__(
        self,
        source: Source,
        *,
        allow_actions: bool,
        poll: float,
        payload_types: Mapping[str, str],
        types: Mapping[str, Any],
    ) -> None:
        self.source = source
        self.types = dict(types)
        self.allow_actions = allow_actions
        self.poll = poll
        self.payload_types = dict(payload_types)
        self.csrf = secrets.token_urlsafe(32)  # per process: forms carry it, POSTs check it
        storage = source.storage
        self.sections = {
            path: section
            for path, section in SECTIONS.items()
            if callable(getattr(storage, section.method, None))
        }

    def page(self, request: Request) -> Page:
        return Page(
            request.scope.get("root_path", "").rstrip("/"),
            allow_actions=self.allow_actions,
            csrf=self.csrf,
            sections={path: section.title for path, section in self.sections.items()},
            payload_types=self.payload_types,
        )

    # -- pages ------------------------------------------------------------------------------

    async def list_page(self, request: Request) -> Response:
        try:
            filters = Filters.parse(request.query_params)
        except ValueError as exc:
            return HTMLResponse(self.page(request).layout("Bad filter", _problem(str(exc))), 400)
        listing = await self.source.page(filters)
        html = list_page(self.page(request), listing, filters).replace(
            'data-live="', f'data-version="{_version(listing)}" data-live="', 1
        )
        return HTMLResponse(html)

    async def instance_page(self, request: Request) -> Response:
        instance_id = request.path_params["instance_id"]
        detail = await self.source.detail(instance_id)
        page = self.page(request)
        if detail is None:
            return HTMLResponse(not_found(page, instance_id), 404)
        html = instance_page(page, detail).replace(
            'data-live="', f'data-version="{_version(detail)}" data-live="', 1
        )
        return HTMLResponse(html)

    async def section_page(self, request: Request) -> Response:
        path = "/" + request.path_params["name"]
        page = self.page(request)
        section = self.sections.get(path)
        if section is None:
            return HTMLResponse(page.layout("Not found", _problem("no such page")), 404)
        items = await self.source.call(getattr(self.source.storage, section.method))
        rows = [section.row(item, page.instance_url) for item in items]
        columns = list(rows[0]) if rows else []
        body = (
            table(
                columns,
                [
                    "<tr>" + "".join(f"<td>{cell(row[c])}</td>" for c in columns) + "</tr>"
                    for row in rows
                ],
                cls="instances",
            )
            if rows
            else f'<p class="muted">{escape(section.empty)}</p>'
        )
        return HTMLResponse(
            page.layout(section.title, f"<h1>{escape(section.title)}</h1>" + body, active=path)
        )

    # -- the JSON API -----------------------------------------------------------------------

    async def api_instances(self, request: Request) -> Response:
        try:
            filters = Filters.parse(request.query_params)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        listing = await self.source.page(filters)
        return JSONResponse(
            {
                "items": [instance_json(r) for r in listing.items],
                "next": listing.next,
                "counts": listing.counts,
                "counts_stop_at": listing.cap + 1,
            }
        )

    async def api_instance(self, request: Request) -> Response:
        instance_id = request.path_params["instance_id"]
        detail = await self.source.detail(instance_id)
        if detail is None:
            return JSONResponse({"error": f"no instance {instance_id!r}"}, 404)
        return JSONResponse(detail_json(detail))

    async def api_section(self, request: Request) -> Response:
        section = self.sections.get("/" + request.path_params["name"])
        if section is None:
            return JSONResponse({"error": "no such listing"}, 404)
        items = await self.source.call(getattr(self.source.storage, section.method))
        return JSONResponse([item_json(item) for item in items])

    # -- live updates -----------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        params = request.query_params
        view = params.get("view")
        page = self.page(request)
        render: Callable[[], Any]
        if view == "instance":
            instance_id = params.get("id", "")

            async def render_instance() -> tuple[int, str] | None:
                detail = await self.source.detail(instance_id)
                if detail is None:
                    return None
                return _version(detail), instance_live(page, detail)

            render = render_instance
        elif view == "list":
            try:
                filters = Filters.parse(params)
            except ValueError as exc:
                return Response(str(exc), 400)

            async def render_list() -> tuple[int, str] | None:
                listing = await self.source.page(filters)
                return _version(listing), list_live(page, listing, filters)

            render = render_list
        else:
            return Response("view must be 'list' or 'instance'", 400)
        seen = params.get("version")
        most = int(params.get("events", "0") or 0)  # end after this many (0: never); for tests

        async def stream() -> AsyncIterator[str]:
            last = None if seen is None else int(seen)
            sent = idle = 0
            yield "retry: 2000\n\n"
            while True:
                got = await render()
                if got is not None and got[0] != last:
                    last, html = got
                    yield (
                        f"event: update\nid: {last}\ndata: "
                        + html.replace("\n", "\ndata: ")
                        + "\n\n"
                    )
                    sent += 1
                    idle = 0
                    if most and sent >= most:
                        return
                else:
                    idle += 1
                    if idle * self.poll >= 15:  # a comment keeps proxies from closing it
                        idle = 0
                        yield ": keep-alive\n\n"
                await anyio.sleep(self.poll)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # -- actions ----------------------------------------------------------------------------

    async def action(self, request: Request) -> Response:
        verb = request.path_params["verb"]
        wants_json = "application/json" in request.headers.get("accept", "")
        if verb not in ("signal", "cancel", "resume"):
            return _answer("unknown action", 404, wants_json)
        if not self.allow_actions:
            return _answer(
                "this dashboard is read-only; start it with --allow-actions to act", 403, wants_json
            )
        origin = request.headers.get("origin")
        host = request.headers.get("host")
        if origin is not None and host is not None and origin.split("://", 1)[-1] != host:
            return _answer("cross-site request refused", 403, wants_json)
        # URL-encoded forms only (what browsers and htmx send): no multipart parser needed.
        body = (await request.body()).decode("utf-8", "replace")
        form = {k: v[-1] for k, v in urllib.parse.parse_qs(body, keep_blank_values=True).items()}
        token = form.get("csrf") or request.headers.get("x-csrf-token") or ""
        if not secrets.compare_digest(token.encode(), self.csrf.encode()):
            return _answer("missing or wrong CSRF token; reload the page", 403, wants_json)

        def field(name: str) -> str | None:
            value = form.get(name)
            return value.strip() or None if isinstance(value, str) else None

        instance_id = field("id") or ""
        key = field("key")
        payload = field("payload")
        reason = field("reason")
        try:
            check_instance_ref(instance_id)
            if verb == "signal":
                check_key(key, "suspend key")
                assert key is not None
                payload = _checked_payload(payload, key, self.types.get(key))
        except (MemableError, ValueError, TypeError) as exc:
            return _answer(str(exc), 400, wants_json)
        if await self.source.detail(instance_id) is None:
            return _answer(f"no instance {instance_id!r}", 404, wants_json)
        try:
            answer = await self.source.steer(
                verb, instance_id, key=key, payload=payload, reason=reason or ""
            )
        except StorageError as exc:
            return _answer(str(exc), 503, wants_json)
        ok = bool(answer.get("ok"))
        text = str(answer.get("message") or answer.get("outcome") or "done")
        return _answer(text, 200 if ok else 409, wants_json, outcome=answer.get("outcome"))

    # -- the application --------------------------------------------------------------------

    def app(self) -> Starlette:
        static = StaticFiles(directory=Path(__file__).parent / "static")

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            try:
                yield
            finally:
                self.source.close()

        app = Starlette(
            routes=[
                Route("/", self.list_page, name="instances"),
                Route("/instances/{instance_id:path}", self.instance_page, name="instance"),
                Route("/events", self.events, name="events"),
                Route("/actions/{verb}", self.action, methods=["POST"], name="action"),
                Route("/api/instances", self.api_instances, name="api_instances"),
                Route("/api/instances/{instance_id:path}", self.api_instance, name="api_instance"),
                Route("/api/{name}", self.api_section, name="api_section"),
                Mount("/static", static, name="static"),
                Route("/{name}", self.section_page, name="section"),
            ],
            lifespan=lifespan,
        )
        app.add_middleware(_SecurityHeaders)
        return app


class _SecurityHeaders:
    """Headers on every response: no framing (clickjacking), only our own scripts."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in _HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def _version(data: ListPage | Detail) -> int:
    return zlib.crc32(str(data.fingerprint()).encode())


def _problem(text: str) -> str:
    return f'<p class="problem">{escape(text)}</p>'


def _answer(text: str, status: int, wants_json: bool, **extra: object) -> Response:
    if wants_json:
        return JSONResponse({"message" if status < 400 else "error": text, **extra}, status)
    kind: Literal["ok", "problem"] = "ok" if status < 400 else "problem"
    return HTMLResponse(f'<p class="{kind}">{escape(text)}</p>', status)


def _checked_payload(payload: str | None, key: str, tp: Any) -> str:
    """The JSON text of a signal's payload: JSON, and of the point's type *tp* if known.

    Raises ValueError (not JSON) or the engine's own TypeMismatch / SerializationError.
    """
    text = payload if payload is not None else "null"
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"the payload of signal {key!r} is not JSON: {exc}") from None
    if tp is not None:
        from .._serde import Serde, type_name

        serde = Serde()
        what = f"the payload of signal {key!r}"
        envelope = json.dumps({"type": type_name(tp), "value": value})
        typed = serde.decode(envelope, tp, key, what)
        # Strict: the JSON must be what the typed value encodes to ("yes" is no bool).
        if json.loads(serde.encode(typed, tp, key, what))["value"] != value:
            raise ValueError(
                f"{what} must be a {type_name(tp)} as JSON; {text} is not (nothing was sent)"
            )
    return text
