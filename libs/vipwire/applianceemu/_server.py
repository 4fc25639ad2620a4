"""What both emulators share: an aiohttp server on loopback, latency, injected faults and
the write log."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import msgspec
from aiohttp import web

from vipwire.aio import HttpServer, serve_http

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Who sends a write, and under which lease revision: the lbdriver stamps every request
#: with these. Real F5 and A10 appliances ignore request headers they do not know, so
#: the stamp costs nothing there; only the emulators read it, for the write log.
WRITER_HEADER: Final = "X-Vipwire-Writer"
LEASE_HEADER: Final = "X-Vipwire-Lease"
#: The emulator's own endpoints (never vendor paths, never faulted or delayed).
WRITES_PATH: Final = "/_emulator/writes"
_MUTATING: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Entries kept; the oldest go first (``WriteLog.dropped`` counts them).
WRITE_LOG_SIZE: Final = 200_000


class WriteRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One mutating request (POST, PUT, PATCH, DELETE) the emulator answered.

    Sessions (logins, logoffs, token deletes) are not writes and are not logged.
    Times are wall clock, ns since the epoch: when the request arrived and when
    its answer was ready, so writes of two writers can be checked for overlap
    across processes on one host.
    """

    #: Position in the log (0 is the first write since the emulator was made).
    index: int
    started_ns: int
    ended_ns: int
    #: The ``X-Vipwire-Writer`` header, else the user of the session, else "".
    writer: str
    #: The ``X-Vipwire-Lease`` header (the writer's lease revision), if sent and numeric.
    lease: int | None
    method: str
    path: str
    #: The HTTP status answered (an injected fault's included: the write was attempted).
    status: int


class WriteLog:
    """The emulator's write log: bounded, in arrival order."""

    def __init__(self, size: int = WRITE_LOG_SIZE) -> None:
        self._records: deque[WriteRecord] = deque(maxlen=size)
        self._next = 0

    @property
    def next_index(self) -> int:
        """The index the next record gets (a ``since`` for "from now on")."""
        return self._next

    @property
    def dropped(self) -> int:
        """Records pushed out by newer ones."""
        return self._next - len(self._records)

    def add(self, **fields: Any) -> WriteRecord:
        record = WriteRecord(index=self._next, **fields)
        self._next += 1
        self._records.append(record)
        return record

    def since(self, index: int = 0) -> list[WriteRecord]:
        """Every record kept whose index is ``index`` or later."""
        return [r for r in self._records if r.index >= index]

    def writers(self) -> set[str]:
        return {r.writer for r in self._records}

    def clear(self) -> None:
        self._records.clear()


def overlapping_writes(
    records: Iterable[WriteRecord],
) -> list[tuple[WriteRecord, WriteRecord]]:
    """Pairs of writes by different writers whose times overlap (empty: one writer at a time)."""
    ordered = sorted(records, key=lambda r: r.started_ns)
    found: list[tuple[WriteRecord, WriteRecord]] = []
    open_: list[WriteRecord] = []
    for record in ordered:
        open_ = [r for r in open_ if r.ended_ns >= record.started_ns]
        found.extend((r, record) for r in open_ if r.writer != record.writer)
        open_.append(record)
    return found


async def fetch_writes(url: str, since: int = 0) -> list[WriteRecord]:
    """The write log of the emulator serving at ``url`` (from another process)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}{WRITES_PATH}", params={"since": str(since)}) as resp,
    ):
        resp.raise_for_status()
        body = await resp.read()
    return msgspec.json.decode(body, type=_WritesPage).writes


class _WritesPage(msgspec.Struct, frozen=True):
    writes: list[WriteRecord]
    next: int
    dropped: int


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
        #: Every mutating request answered (see :class:`WriteRecord`); also served
        #: at ``GET /_emulator/writes?since=<index>``.
        self.write_log = WriteLog()
        self._server: HttpServer | None = None
        self._url: str | None = None

    @abstractmethod
    def _routes(self, app: web.Application) -> None: ...

    @abstractmethod
    def _fault_body(self, status: int) -> Any:
        """The vendor's error body for an injected status."""

    @abstractmethod
    def _is_session(self, request: web.Request) -> bool:
        """A login, logoff or token delete: a mutating method, but no configuration write."""

    @abstractmethod
    def _user_of(self, request: web.Request) -> str | None:
        """The user whose session or token the request carries (None: none valid)."""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: a free port); returns the URL."""
        if self._server is not None:
            raise RuntimeError(f"{self.name} is already running")
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get(WRITES_PATH, self._serve_writes)
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

    async def _serve_writes(self, request: web.Request) -> web.Response:
        try:
            since = int(request.query.get("since", "0"))
        except ValueError:
            return json_response({"error": "since must be an integer"}, 400)
        log = self.write_log
        writes = log.since(since)
        return json_response({"writes": writes, "next": log.next_index, "dropped": log.dropped})

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_emulator/"):
            return await handler(request)
        started_ns = time.time_ns()
        # Who writes is read before the handler runs (a logoff ends the session).
        writer: str | None = None
        if request.method in _MUTATING and not self._is_session(request):
            writer = request.headers.get(WRITER_HEADER) or self._user_of(request) or ""
        response = await self._answer(request, handler)
        if writer is not None:
            lease = request.headers.get(LEASE_HEADER, "")
            self.write_log.add(
                started_ns=started_ns,
                ended_ns=time.time_ns(),
                writer=writer,
                lease=int(lease) if lease.isdigit() else None,
                method=request.method,
                path=request.path_qs,
                status=response.status,
            )
        return response

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
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
