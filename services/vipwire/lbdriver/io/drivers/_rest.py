"""The HTTP plumbing the vendor REST drivers share: one session, TLS, timeouts, transport errors.

Vendor semantics (authentication, error bodies) stay in each driver; this
module only turns "the request did not complete" into ApplianceUnavailable.
Each request belongs to a class (login, read, write, commit) and may take as
long as the appliance's ``timeouts`` allow for that class: a BIG-IP
transaction commit or an ACOS ``write memory`` takes minutes on a large
configuration where a read takes a second.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Coroutine, Mapping
from typing import Any, Literal, NamedTuple, TypeVar

import aiohttp
import msgspec
from yarl import URL

from vipwire.lbdriver.io.drivers.base import ApplianceError, ApplianceUnavailable
from vipwire.lbdriver.io.drivers.credentials import CredentialSource
from vipwire.lbdriver.io.fencing import Fence, NotLeader, fence_for
from vipwire.lbdriver.settings import ApplianceSettings, ApplianceTimeouts

T = TypeVar("T")

log = logging.getLogger("vipwire.lbdriver.rest")

#: The class of a management request, which picks its timeout (``timeouts.<class>_s``).
RequestClass = Literal["login", "read", "write", "commit"]


class HttpResponse(NamedTuple):
    status: int
    body: Any  # decoded JSON, or the text when the body is not JSON


class VendorError(Exception):
    """An appliance answered with an error; the cause of the ApplianceError raised for it."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.body = body


def normalise_base_url(address: str) -> str:
    """``host``, ``host:port`` or a URL → a URL without a trailing slash (https by default)."""
    url = address if "://" in address else f"https://{address}"
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"appliance address {address!r} is not an http(s) URL or host")
    return str(parsed.with_path("").with_query(None).with_fragment(None)).rstrip("/")


def tls_setting(verify_tls: bool, ca_file: str | None) -> ssl.SSLContext | bool:
    """What aiohttp's ``ssl=`` takes: a context trusting ``ca_file``, the defaults, or no checks."""
    if not verify_tls:
        return False
    if ca_file is not None:
        return ssl.create_default_context(cafile=ca_file)
    return True


#: Requests in flight to one appliance at most.
CONNECTIONS = 16


class _FenceAtSend:
    """A fenced request's second check, run by aiohttp's trace hooks (its ``trace_request_ctx``).

    The first check (before ``session.request``) stamps the request. aiohttp then
    opens a connection or takes a pooled one, and only then writes: a leader paused
    while the connection opens would send an already-checked request after SIGCONT.
    So the fence is asked again once the connection is ready, right before the first
    byte goes out: when the headers are serialised (aiohttp then writes them at once,
    or holds them to send with the body) and before the first body chunk (which
    carries the held headers). No await lies between that check and the socket
    write. A refusal there is kept in ``refused``: aiohttp wraps an error raised in
    the body writer in a connection error, which :meth:`RestTransport.send` turns
    back into the NotLeader it is.
    """

    __slots__ = ("fence", "refused", "written")

    def __init__(self, fence: Fence) -> None:
        self.fence = fence
        self.refused: NotLeader | None = None
        #: A body chunk was let through: the request is on the wire, not refused halfway.
        self.written = False

    def check(self) -> None:
        if self.written:
            return
        try:
            self.fence()
        except NotLeader as exc:
            self.refused = exc
            raise


async def _on_headers(
    session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceRequestHeadersSentParams
) -> None:
    del session, params
    if isinstance(fenced := ctx.trace_request_ctx, _FenceAtSend):
        fenced.check()


async def _on_chunk(
    session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceRequestChunkSentParams
) -> None:
    del session, params
    if isinstance(fenced := ctx.trace_request_ctx, _FenceAtSend):
        fenced.check()
        fenced.written = True


def fence_at_send() -> aiohttp.TraceConfig:
    """The trace hooks that ask a fenced request's fence right before it is written."""
    config = aiohttp.TraceConfig()
    config.on_request_headers_sent.append(_on_headers)
    config.on_request_chunk_sent.append(_on_chunk)
    return config


class RestTransport:
    """One appliance management endpoint. The session is made on first use, inside the loop."""

    def __init__(
        self,
        appliance: str,
        base_url: str,
        *,
        verify_tls: bool = True,
        ca_file: str | None = None,
        timeouts: ApplianceTimeouts | None = None,
    ) -> None:
        self.appliance = appliance
        self.base_url = normalise_base_url(base_url)
        self._ssl = tls_setting(verify_tls, ca_file)
        self.timeouts = timeouts or ApplianceTimeouts()
        self._session: aiohttp.ClientSession | None = None
        # Requests wait for a connection here, not in aiohttp's pool: the fence is
        # checked once the slot is ours, so the wait is outside the fencing window
        # (a leader paused or slowed while its writes queued sends none of them late).
        self._slots = asyncio.Semaphore(CONNECTIONS)
        self.requests = 0

    def __repr__(self) -> str:
        return f"RestTransport({self.appliance!r}, {self.base_url!r})"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeouts.read_s),
                connector=self._connector(),
                # Appliance APIs answer JSON whatever they are asked; we always send JSON.
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                trace_configs=[fence_at_send()],
            )
        return self._session

    def _connector(self) -> aiohttp.BaseConnector:
        return aiohttp.TCPConnector(ssl=self._ssl, limit=CONNECTIONS)

    async def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        query: str | None = None,
        kind: RequestClass | None = None,
    ) -> HttpResponse:
        """One request; ApplianceUnavailable if it did not complete (refused, reset, timed out).

        ``query`` is sent as written (vendors want ``$filter`` and ``+`` unescaped).
        ``kind`` picks the timeout; by default a GET is a read and the rest writes.
        """
        kind = kind or ("read" if method == "GET" else "write")
        limit_s: float = getattr(self.timeouts, f"{kind}_s")
        raw = self.base_url + path + (f"?{query}" if query else "")
        url = URL(raw, encoded=True)
        data = msgspec.json.encode(json) if json is not None else None
        fence = fence_for(method)
        at_send = _FenceAtSend(fence) if fence is not None else None
        async with self._slots:
            # Checked per request once the slot is ours (a write of several requests
            # stops at the deadline, and no queueing lies between the check and the
            # send), then again right before the first byte is written (_FenceAtSend).
            if fence is not None:
                headers = {**(headers or {}), **fence()}
            self.requests += 1
            timeout = aiohttp.ClientTimeout(total=limit_s)
            try:
                async with self._client().request(
                    method,
                    url,
                    data=data,
                    headers=headers,
                    timeout=timeout,
                    trace_request_ctx=at_send,
                ) as resp:
                    text = await resp.text()
                    status = resp.status
            except NotLeader as exc:
                if at_send is not None and at_send.refused is exc:
                    self._refused_at_send(method, path, exc)
                raise
            except TimeoutError as exc:
                raise ApplianceUnavailable(
                    self.appliance,
                    f"{method} {path}: no answer within {limit_s:g}s (a {kind}; raise "
                    f"timeouts.{kind}_s of appliance {self.appliance!r} if the appliance "
                    "is slow rather than down)",
                ) from exc
            except (aiohttp.ClientError, OSError) as exc:
                if at_send is not None and at_send.refused is not None:
                    self._refused_at_send(method, path, at_send.refused)
                    raise at_send.refused from exc  # refused before a byte was written
                raise ApplianceUnavailable(
                    self.appliance, f"{method} {path}: {type(exc).__name__}: {exc}"
                ) from exc
        body: Any = text
        if text:
            try:
                body = msgspec.json.decode(text)
            except msgspec.DecodeError:
                body = text
        return HttpResponse(status, body)

    def _refused_at_send(self, method: str, path: str, exc: NotLeader) -> None:
        log.warning(
            "appliance %s: %s %s not sent: it passed the write fence, but no longer did "
            "once its connection was ready (%s; this replica was paused or starved); the "
            "leader writes it if it is still wanted",
            self.appliance,
            method,
            path,
            exc,
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
            # aiohttp closes transports on the next loop turns; let them go before returning.
            await asyncio.sleep(0)


def partition_for(cluster: str, template: str, partitions: dict[str, str] | None) -> str:
    """The appliance partition that holds a cluster's objects: mapped explicitly, else templated."""
    if partitions and cluster in partitions:
        return partitions[cluster]
    return template.format(cluster=cluster)


async def all_or_first_error(*aws: Coroutine[Any, Any, T]) -> list[T]:
    """Run concurrently; every result, or the first error itself (the rest cancelled).

    A TaskGroup would wrap the error in an ExceptionGroup; callers want the
    ApplianceError with its cause.
    """
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(aw) for aw in aws]
    except BaseExceptionGroup as group:
        errors = list(group.exceptions)
        first = next((e for e in errors if isinstance(e, ApplianceError)), errors[0])
        raise first from first.__cause__
    return [t.result() for t in tasks]


class RestDriver:
    """What the vendor REST drivers share: the transport, the credentials, the
    partition a cluster maps to, and the bookkeeping of logins (one at a time,
    counted, the last failure kept to answer with while it lasts)."""

    def __init__(
        self,
        name: str,
        address: str,
        credentials: CredentialSource,
        *,
        verify_tls: bool = True,
        ca_file: str | None = None,
        timeouts: ApplianceTimeouts | None = None,
        partition_template: str = "{cluster}",
        partitions: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self._http = RestTransport(
            name, address, verify_tls=verify_tls, ca_file=ca_file, timeouts=timeouts
        )
        self._credentials = credentials
        self._template = partition_template
        self._partitions = dict(partitions or {})
        self._login_lock = asyncio.Lock()
        self._login_attempts = 0
        self._login_error: ApplianceError | None = None

    @staticmethod
    def common_arguments(settings: ApplianceSettings) -> dict[str, Any]:
        """The constructor's arguments every REST driver takes, from an appliance's settings."""
        assert settings.address is not None and settings.username is not None
        return {
            "name": settings.name,
            "address": settings.address,
            "credentials": CredentialSource(
                settings.name,
                settings.username,
                password_file=settings.password_file,
                password_env=settings.password_env,
            ),
            "verify_tls": settings.verify_tls,
            "ca_file": settings.ca_file,
            "timeouts": settings.timeouts,
            "partition_template": settings.partition_template,
            "partitions": settings.partitions,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, {self._http.base_url!r}, {self._credentials!r})"
        )

    def partition_of(self, cluster: str) -> str:
        return partition_for(cluster, self._template, self._partitions)
