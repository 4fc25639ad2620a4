"""What both emulators share: an aiohttp server on loopback, latency and injected faults."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from vipwire.aio import HttpServer, serve_http

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Fault:
    """The next ``count`` requests matching ``method`` and ``path_contains`` answer ``status``."""

    status: int
    count: int = 1
    method: str | None = None
    path_contains: str | None = None

    def matches(self, request: web.Request) -> bool:
        if self.method is not None and request.method != self.method:
            return False
        return self.path_contains is None or self.path_contains in request.path


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(body), status=status, content_type="application/json"
    )


async def read_json(request: web.Request) -> Any:
    """The request's JSON body (None when empty); a malformed one is the caller's 400."""
    raw = await request.read()
    if not raw.strip():
        return None
    return msgspec.json.decode(raw)


class EmulatorServer(ABC):
    """Lifecycle and fault injection; a vendor subclass supplies the routes and error bodies."""

    def __init__(self, name: str) -> None:
        self.name = name
        #: Seconds added before every request is answered.
        self.latency = 0.0
        #: Pending injected faults, consumed in order.
        self.faults: list[Fault] = []
        #: Every HTTP request served, faults included.
        self.requests = 0
        self._server: HttpServer | None = None
        self._url: str | None = None

    @abstractmethod
    def _routes(self, app: web.Application) -> None: ...

    @abstractmethod
    def _fault_body(self, status: int) -> Any:
        """The vendor's error body for an injected status."""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: a free port); returns the URL."""
        if self._server is not None:
            raise RuntimeError(f"{self.name} is already running")
        app = web.Application(middlewares=[self._middleware])
        self._routes(app)
        server = await serve_http(app, host=host, port=port, shutdown_timeout_s=2.0)
        shown = f"[{host}]" if ":" in host else host
        self._server, self._url = server, f"http://{shown}:{server.port}"
        return self._url

    async def stop(self) -> None:
        server, self._server, self._url = self._server, None, None
        if server is not None:
            await server.close()

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._url

    def fail_next(
        self,
        status: int = 503,
        count: int = 1,
        *,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Answer the next ``count`` matching requests with ``status`` and the vendor's body."""
        self.faults.append(Fault(status, count, method, path_contains))

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests += 1
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        for fault in self.faults:
            if fault.matches(request):
                fault.count -= 1
                if fault.count <= 0:
                    self.faults.remove(fault)
                return json_response(self._fault_body(fault.status), fault.status)
        return await handler(request)
