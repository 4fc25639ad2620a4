"""The dashboard's web app: four pages, a JSON API and a Server-Sent Events stream.

Read-only (GET only), served entirely by us (no CDN, no build step), with a
strict Content-Security-Policy: the pages are static shells and the one
script fills them from the JSON API, escaping everything it shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import urlencode

import msgspec
from aiohttp import web

from vipwire.contracts import ServiceRef
from vipwire.dashboard.core import alerts, queries
from vipwire.dashboard.core.fold import ReadModel
from vipwire.dashboard.core.views import SORTS, STATES, ControlStatus, Query
from vipwire.dashboard.io.pages import STATIC_TYPES, Assets
from vipwire.dashboard.io.streaming import Hub, sse
from vipwire.dashboard.settings import DashboardSettings

log = logging.getLogger("vipwire.dashboard.web")

COOKIE: Final = "vipwire_dashboard"
_KEEPALIVE_S: Final = 15.0

_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


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
        r.add_get("/nodes", self._page("nodes"))
        r.add_get("/static/{file}", self._static)
        r.add_get("/api/overview", self._overview)
        r.add_get("/api/services", self._services)
        r.add_get("/api/services/{cluster}/{namespace}/{name}", self._service)
        r.add_get("/api/appliances", self._appliances)
        r.add_get("/api/nodes", self._nodes)
        r.add_get("/api/banners", self._banners)
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
        if name not in STATIC_TYPES:
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
                "overview": queries.overview(self.model, now, window),
                "control": self._control(),
                "jaeger_url": self.settings.jaeger_url,
            }
        )

    async def _services(self, request: web.Request) -> web.Response:
        state = request.query.get("state", "")
        if state and state not in STATES:
            raise web.HTTPBadRequest(text=f"state must be one of {', '.join(STATES)}\n")
        sort = request.query.get("sort", "")
        if sort and sort not in SORTS:
            raise web.HTTPBadRequest(text=f"sort must be one of {', '.join(SORTS)}\n")
        query = Query(
            sort=sort,
            desc=request.query.get("desc", "") in ("1", "true"),
            q=request.query.get("q", "")[:200],
            cluster=request.query.get("cluster", ""),
            namespace=request.query.get("namespace", ""),
            state=state,
            page=_int_param(request, "page", 1),
            per_page=_int_param(request, "per_page", 50),
        )
        return _json(queries.page(self.model, query))

    async def _service(self, request: web.Request) -> web.Response:
        m = request.match_info
        ref = ServiceRef(m["cluster"], m["namespace"], m["name"])
        detail = queries.detail(self.model, ref)
        if detail is None:
            return _json({"error": f"no Service {ref.text} is known"}, status=404)
        return _json({"service": detail, "jaeger_url": self.settings.jaeger_url})

    async def _appliances(self, _: web.Request) -> web.Response:
        control = self._control()
        return _json(
            {
                "now": self._clock(),
                "appliances": queries.appliances(self.model),
                "control": control.appliances,
                "error": control.lbdriver_error,
                "polled_at": control.polled_at,
            }
        )

    async def _nodes(self, request: web.Request) -> web.Response:
        now = self._clock()
        cluster = request.query.get("cluster", "")
        return _json({"now": now, "nodes": queries.nodes(self.model, now, cluster)})

    async def _banners(self, _: web.Request) -> web.Response:
        """The alert banners, and the times the page says it is "as of"."""
        now = self._clock()
        return _json(
            {
                "now": now,
                "last_event": self.model.last_event,
                "polled_at": self._control().polled_at,
                "banners": alerts.banners(
                    self.model, self._control(), now, reader=self._readiness()
                ),
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
            await response.write(b"retry: 2000\n\n" + sse("hello", {"now": self._clock()}))
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
