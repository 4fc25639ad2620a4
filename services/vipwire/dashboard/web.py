"""The dashboard's web app: four pages, a JSON API and a Server-Sent Events stream.

Read-only (GET only), served entirely by us (no CDN, no build step), with a
strict Content-Security-Policy: the pages are static shells and the one
script fills them from the JSON API, escaping everything it shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import hmac
import html
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from typing import Any, Final
from urllib.parse import urlencode

import msgspec
from aiohttp import web

from vipwire.dashboard.control import ControlStatus
from vipwire.dashboard.model import STATES, Change, Query, ReadModel, key_text, parse_key
from vipwire.dashboard.settings import DashboardSettings

log = logging.getLogger("vipwire.dashboard.web")

COOKIE: Final = "vipwire_dashboard"
# More changed Services than this in one flush: clients refetch instead of patching.
_PATCH_LIMIT: Final = 200
_FLUSH_S: Final = 0.25
_KEEPALIVE_S: Final = 15.0
_CLIENT_QUEUE: Final = 64

_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

_STATIC_TYPES: Final = {
    "app.css": "text/css",
    "app.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}


class Hub:
    """Fans bus changes out to every open event stream, coalesced into a few events a second."""

    def __init__(self, model: ReadModel) -> None:
        self._model = model
        self._clients: set[asyncio.Queue[bytes | None]] = set()
        self._added: set[str] = set()
        self._changed: set[str] = set()
        self._removed: set[str] = set()
        self._clusters = False
        self._control = False
        self._closed = False

    @property
    def clients(self) -> int:
        return len(self._clients)

    def mark(self, changes: Iterable[Change]) -> None:
        for change in changes:
            if change.kind == "added":
                self._added.add(change.key)
                self._removed.discard(change.key)
            elif change.kind == "changed":
                self._changed.add(change.key)
            elif change.kind == "removed":
                self._removed.add(change.key)
                self._added.discard(change.key)
                self._changed.discard(change.key)
            else:
                self._clusters = True

    def mark_control(self) -> None:
        self._control = True

    def subscribe(self) -> asyncio.Queue[bytes | None]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=_CLIENT_QUEUE)
        if self._closed:
            queue.put_nowait(None)
        self._clients.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes | None]) -> None:
        self._clients.discard(queue)

    def flush(self) -> None:
        """Send what changed since the last flush, as one event per kind."""
        if not self._clients:
            self._clear()
            return
        events: list[bytes] = []
        if self._added or self._changed or self._removed:
            keys = (self._added | self._changed) - self._removed
            if len(keys) + len(self._removed) > _PATCH_LIMIT:
                payload: dict[str, Any] = {"reload": True, "count": len(keys) + len(self._removed)}
            else:
                rows = []
                for key in sorted(keys):
                    parsed = parse_key(key)
                    row = self._model.row(parsed) if parsed is not None else None
                    if row is not None:
                        rows.append(row)
                payload = {
                    "added": sorted(self._added),
                    "removed": sorted(self._removed),
                    "rows": rows,
                }
            events.append(_sse("services", payload))
        if self._clusters:
            events.append(_sse("clusters", {}))
        if self._control:
            events.append(_sse("control", {}))
        self._clear()
        if events:
            self._send(b"".join(events))

    def _clear(self) -> None:
        self._added.clear()
        self._changed.clear()
        self._removed.clear()
        self._clusters = self._control = False

    def _send(self, data: bytes) -> None:
        for queue in self._clients:
            try:
                queue.put_nowait(data)
            except asyncio.QueueFull:
                # A slow reader: drop what it has not read and tell it to refetch.
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(_sse("services", {"reload": True, "count": -1}))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_S)
            self.flush()

    def close(self) -> None:
        self._closed = True
        for queue in self._clients:
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)


def _sse(event: str, payload: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + msgspec.json.encode(payload) + b"\n\n"


class Assets:
    """The static files and page shells, loaded once; gzipped copies for clients that take them."""

    def __init__(self) -> None:
        folder = resources.files("vipwire.dashboard").joinpath("static")
        self.files: dict[str, tuple[bytes, bytes, str, str]] = {}
        for name, kind in _STATIC_TYPES.items():
            self._add(name, folder.joinpath(name).read_bytes(), kind)
        for page, (title, main) in _PAGES.items():
            self._add(f"page:{page}", _shell(page, title, main).encode(), "text/html")

    def _add(self, name: str, body: bytes, kind: str) -> None:
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        self.files[name] = (body, gzip.compress(body, mtime=0), kind, etag)

    def response(self, request: web.Request, name: str, *, cache: bool) -> web.StreamResponse:
        body, zipped, kind, etag = self.files[name]
        headers = {
            "ETag": etag,
            "Cache-Control": "public, max-age=300" if cache else "no-cache",
            "Vary": "Accept-Encoding",
        }
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            headers["Content-Encoding"] = "gzip"
            body = zipped
        charset = None if kind.startswith("image/") else "utf-8"
        return web.Response(body=body, content_type=kind, charset=charset, headers=headers)


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(payload),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _int_param(request: web.Request, name: str, default: int) -> int:
    try:
        return int(request.query.get(name, default))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer\n") from None


class DashboardWeb:
    """The HTTP side of the dashboard, over a model the service keeps current."""

    def __init__(
        self,
        settings: DashboardSettings,
        model: ReadModel,
        hub: Hub,
        *,
        token: str | None,
        control: Callable[[], ControlStatus],
        readiness: Callable[[], str | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.model = model
        self.hub = hub
        self._token = token
        self._cookie = (
            hmac.new(token.encode(), b"vipwire-dashboard-cookie", hashlib.sha256).hexdigest()
            if token
            else None
        )
        self._control = control
        self._readiness = readiness
        self._clock = clock
        self.assets = Assets()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers, self._auth])
        r = app.router
        r.add_get("/", self._page("overview"))
        r.add_get("/services", self._page("services"))
        r.add_get("/services/{cluster}/{namespace}/{name}", self._page("service"))
        r.add_get("/appliances", self._page("appliances"))
        r.add_get("/static/{file}", self._static)
        r.add_get("/api/overview", self._overview)
        r.add_get("/api/services", self._services)
        r.add_get("/api/services/{cluster}/{namespace}/{name}", self._service)
        r.add_get("/api/appliances", self._appliances)
        r.add_get("/api/events", self._events)
        return app

    # --- middlewares -------------------------------------------------------------------

    @web.middleware
    async def _headers(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(_SECURITY_HEADERS)
            raise
        if not response.prepared:
            response.headers.update(_SECURITY_HEADERS)
        return response

    def _authorized(self, request: web.Request) -> bool:
        assert self._token is not None and self._cookie is not None
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and hmac.compare_digest(
            header[7:].strip().encode(), self._token.encode()
        ):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self._cookie.encode())

    @web.middleware
    async def _auth(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if self._token is None or self._cookie is None:
            return await handler(request)
        offered = request.query.get("token")
        if offered is not None:
            if not hmac.compare_digest(offered.encode(), self._token.encode()):
                return self._refuse()
            # Once: keep it in a cookie and take it out of the address bar and history.
            rest = {k: v for k, v in request.query.items() if k != "token"}
            target = request.path + (f"?{urlencode(rest)}" if rest else "")
            response = web.Response(status=303, headers={"Location": target})
            response.set_cookie(
                COOKIE,
                self._cookie,
                httponly=True,
                samesite="Strict",
                path="/",
                secure=request.secure,
            )
            return response
        if not self._authorized(request):
            return self._refuse()
        return await handler(request)

    @staticmethod
    def _refuse() -> web.Response:
        return web.Response(
            status=401,
            text="401: this dashboard needs its token: open it once with ?token=… "
            "or send Authorization: Bearer …\n",
            headers={"WWW-Authenticate": 'Bearer realm="vipwire-dashboard"'},
        )

    # --- pages -------------------------------------------------------------------------

    def _page(self, name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def page(request: web.Request) -> web.StreamResponse:
            return self.assets.response(request, f"page:{name}", cache=False)

        return page

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["file"]
        if name not in _STATIC_TYPES:
            raise web.HTTPNotFound()
        return self.assets.response(request, name, cache=True)

    # --- API ---------------------------------------------------------------------------

    async def _overview(self, _: web.Request) -> web.Response:
        now = self._clock()
        window = self.settings.history_minutes * 60
        return _json(
            {
                "now": now,
                "ready": self._readiness(),
                "overview": self.model.overview(now, window),
                "control": self._control(),
                "jaeger_url": self.settings.jaeger_url,
            }
        )

    async def _services(self, request: web.Request) -> web.Response:
        state = request.query.get("state", "")
        if state and state not in STATES:
            raise web.HTTPBadRequest(text=f"state must be one of {', '.join(STATES)}\n")
        query = Query(
            q=request.query.get("q", "")[:200],
            cluster=request.query.get("cluster", ""),
            namespace=request.query.get("namespace", ""),
            state=state,
            page=_int_param(request, "page", 1),
            per_page=_int_param(request, "per_page", 50),
        )
        return _json(self.model.query(query))

    async def _service(self, request: web.Request) -> web.Response:
        m = request.match_info
        key = (m["cluster"], m["namespace"], m["name"])
        detail = self.model.detail(key)
        if detail is None:
            return _json({"error": f"no Service {key_text(key)} is known"}, status=404)
        return _json({"service": detail, "jaeger_url": self.settings.jaeger_url})

    async def _appliances(self, _: web.Request) -> web.Response:
        control = self._control()
        return _json(
            {
                "now": self._clock(),
                "appliances": self.model.appliances(),
                "control": control.appliances,
                "error": control.lbdriver_error,
                "polled_at": control.polled_at,
            }
        )

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
                **_SECURITY_HEADERS,
            }
        )
        await response.prepare(request)
        queue = self.hub.subscribe()
        try:
            await response.write(b"retry: 2000\n\n" + _sse("hello", {"now": self._clock()}))
            while True:
                try:
                    data = await asyncio.wait_for(queue.get(), _KEEPALIVE_S)
                except TimeoutError:
                    data = b": keepalive\n\n"
                if data is None:
                    break
                await response.write(data)
        except (ConnectionResetError, ConnectionError):
            pass  # the browser went away
        finally:
            self.hub.unsubscribe(queue)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response


# --- page shells ---------------------------------------------------------------------------

_NAV: Final = (("overview", "/", "Overview"), ("services", "/services", "Services"),
               ("appliances", "/appliances", "Appliances"))  # fmt: skip


def _shell(page: str, title: str, main: str) -> str:
    nav = "".join(
        f'<a href="{href}"{" aria-current=page" if key == page or (page == "service" and key == "services") else ""}>'  # noqa: E501
        f"{html.escape(label)}</a>"
        for key, href, label in _NAV
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · vipwire</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/app.css">
<script src="/static/app.js" defer></script>
</head>
<body data-page="{page}">
<header class="top">
  <a class="brand" href="/"><span class="logo" aria-hidden="true"></span>vipwire</a>
  <nav>{nav}</nav>
  <span class="live" id="live" title="live updates"><span class="dot"></span><span id="live-text">connecting</span></span>
</header>
<main id="main">
{main}
</main>
</body>
</html>
"""  # noqa: E501


_OVERVIEW: Final = """
<h1>Overview</h1>
<section class="cards" id="cards" aria-label="summary"></section>
<section class="panel">
  <h2>Clusters</h2>
  <table class="grid" id="clusters"><thead><tr>
    <th>Cluster</th><th class="num">Services</th><th>States</th>
    <th class="num">Nodes ready</th><th class="num">Agents</th></tr></thead><tbody></tbody></table>
</section>
<div class="two">
<section class="panel">
  <h2>Pools</h2>
  <table class="grid" id="pools"><thead><tr>
    <th>Pool</th><th>Group</th><th class="num">Services</th><th>Usage</th></tr></thead>
    <tbody></tbody></table>
  <p class="note" id="pools-note"></p>
</section>
<section class="panel">
  <h2>Appliances</h2>
  <table class="grid" id="appliances-brief"><thead><tr>
    <th>Appliance</th><th>Health</th><th class="num">Virtual servers</th>
    <th class="num">Services</th></tr></thead><tbody></tbody></table>
  <p class="note" id="appliances-note"></p>
</section>
</div>
"""

_SERVICES: Final = """
<h1>Services <span class="count" id="count"></span></h1>
<form class="toolbar" id="filters" role="search">
  <input type="search" id="q" name="q" placeholder="Search name, VIP, appliance, pool"
         autocomplete="off" spellcheck="false">
  <select id="cluster" name="cluster" aria-label="cluster"><option value="">All clusters</option></select>
  <select id="namespace" name="namespace" aria-label="namespace"><option value="">All namespaces</option></select>
  <select id="state" name="state" aria-label="state"><option value="">All states</option></select>
</form>
<section class="panel flush">
<table class="grid" id="services-table"><thead><tr>
  <th>Service</th><th>Cluster</th><th>State</th><th>VIP</th><th>Appliance</th>
  <th class="num">Nodes applied</th><th class="num">Convergence</th></tr></thead>
  <tbody></tbody></table>
<p class="empty" id="empty" hidden>No Service matches.</p>
</section>
<nav class="pager" id="pager">
  <button type="button" id="prev">← Previous</button>
  <span id="page-info"></span>
  <button type="button" id="next">Next →</button>
</nav>
"""  # noqa: E501

_SERVICE: Final = """
<p class="crumbs"><a href="/services">Services</a> / <span id="crumb"></span></p>
<h1><span id="svc-name">…</span> <span id="svc-state"></span></h1>
<p class="error-box" id="svc-error" hidden></p>
<section class="panel">
  <dl class="facts" id="facts"></dl>
</section>
<section class="panel">
  <div class="panel-head"><h2>Last change</h2><a id="trace-link" class="button" hidden
    target="_blank" rel="noopener noreferrer">Open trace in Jaeger ↗</a></div>
  <div id="waterfall" class="waterfall"></div>
</section>
<section class="panel">
  <h2>Timeline</h2>
  <table class="grid" id="timeline"><thead><tr>
    <th>Time</th><th>Hop</th><th>Event</th><th>Detail</th><th>Trace</th></tr></thead>
    <tbody></tbody></table>
</section>
"""

_APPLIANCES: Final = """
<h1>Appliances</h1>
<section class="panel flush">
<table class="grid" id="appliances"><thead><tr>
  <th>Appliance</th><th>Health</th><th>Driver</th><th>Group</th><th>Role</th>
  <th class="num">Virtual servers</th><th class="num">Services</th><th class="num">Failing</th>
  <th>Last write</th><th>Last error</th></tr></thead><tbody></tbody></table>
<p class="empty" id="empty" hidden>No appliance has programmed a Service yet.</p>
</section>
<p class="note" id="note"></p>
"""

_PAGES: Final = {
    "overview": ("Overview", _OVERVIEW),
    "services": ("Services", _SERVICES),
    "service": ("Service", _SERVICE),
    "appliances": ("Appliances", _APPLIANCES),
}
