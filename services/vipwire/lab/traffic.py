"""Real TCP in the lab: HTTP servers in the pods, an HTTP client in the client namespace.

Both run in this process's event loop: their sockets are opened inside the
namespaces (a socket belongs to the namespace it was made in), so every
packet crosses the lab's veths, bridge, appliance and nodes like any other.
Each pod answers with its name and the client address it saw, which tells
whether a request took a second hop (it would then come from a node).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import msgspec

from vipwire.aio import cancel_and_wait
from vipwire.lab.topology import Pod
from vipwire.metrics import percentile
from vipwire.netns import call_in_netns

_HEAD_LIMIT = 16 * 1024


def sctp_problem() -> str | None:
    """Why this kernel cannot carry SCTP (no module, not built), or None when it can."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
    except (OSError, AttributeError) as exc:
        return (
            f"this kernel has no SCTP ({exc}); load it with 'modprobe sctp' "
            "(package linux-modules-extra on some distributions)"
        )
    sock.close()
    return None


class PodServer:
    """A pod's HTTP server: ``GET`` anything, get ``{"pod": name, "client": address}``.

    The same answer to any UDP datagram on the same port, and over SCTP (HTTP on a
    one-to-one SCTP socket) when the kernel has it.
    """

    def __init__(self, pod: Pod, *, sctp: bool = False) -> None:
        self.pod = pod
        #: Requests served, by the client address the pod saw.
        self.peers: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._sctp_server: asyncio.Server | None = None
        self._sctp = sctp
        self._udp: asyncio.DatagramTransport | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        #: Why the SCTP listener could not start (None: it did, or was not asked for).
        self.sctp_error: str | None = None

    @property
    def served(self) -> int:
        return sum(self.peers.values())

    async def start(self) -> None:
        pod = self.pod

        def listen() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((pod.address, pod.port))
            sock.listen(128)
            sock.setblocking(False)
            return sock

        sock = call_in_netns(pod.netns, listen)
        self._server = await asyncio.start_server(self._accept, sock=sock)
        await self._start_udp()
        if self._sctp:
            try:
                await self._start_sctp()
            except (OSError, ValueError) as exc:
                # The kernel offers SCTP sockets but not in this namespace or not this way:
                # the lab reports SCTP skipped with this reason rather than fail to start.
                self.sctp_error = f"{type(exc).__name__}: {exc}"

    async def _start_udp(self) -> None:
        pod = self.pod

        def bind() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((pod.address, pod.port))
            sock.setblocking(False)
            return sock

        server = self

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
                peer = str(addr[0])
                server.peers[peer] += 1
                answer = json.dumps({"pod": pod.name, "client": peer}).encode()
                self.transport.sendto(answer, addr)  # type: ignore[attr-defined]

        loop = asyncio.get_running_loop()
        sock = call_in_netns(pod.netns, bind)
        transport, _ = await loop.create_datagram_endpoint(Echo, sock=sock)
        self._udp = transport

    async def _start_sctp(self) -> None:
        pod = self.pod

        def listen() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((pod.address, pod.port))
            sock.listen(128)
            sock.setblocking(False)
            return sock

        sock = call_in_netns(pod.netns, listen)
        self._sctp_server = await asyncio.start_server(self._accept, sock=sock)

    async def stop(self) -> None:
        for server in (self._server, self._sctp_server):
            if server is not None:
                server.close()
                await server.wait_closed()
        self._server = self._sctp_server = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        await cancel_and_wait(list(self._handlers))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            peer = str(writer.get_extra_info("peername")[0])
            async with asyncio.timeout(5.0):
                await reader.readuntil(b"\r\n\r\n")
            self.peers[peer] += 1
            body = json.dumps({"pod": self.pod.name, "client": peer}).encode()
            head = (
                "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            if task is not None:
                self._handlers.discard(task)


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    ms: float
    pod: str | None = None
    #: The client address the pod saw.
    seen_as: str | None = None
    error: str | None = None


class Client:
    """Opens each connection from the client namespace, one request per connection.

    ``source``: the client address to send from (one of the namespace's own; None:
    the kernel's choice); ``protocol``: ``TCP`` or ``SCTP`` (HTTP over either).
    """

    def __init__(self, netns: str) -> None:
        self.netns = netns

    def _socket(self, kind: int, proto: int, source: str | None) -> socket.socket:
        def make() -> socket.socket:
            sock = socket.socket(socket.AF_INET, kind, proto)
            if source is not None:
                sock.bind((source, 0))
            return sock

        sock = call_in_netns(self.netns, make)
        sock.setblocking(False)
        return sock

    async def get(
        self,
        address: str,
        port: int,
        *,
        timeout: float = 2.0,
        source: str | None = None,
        protocol: str = "TCP",
    ) -> Reply:
        loop = asyncio.get_running_loop()
        proto = socket.IPPROTO_SCTP if protocol == "SCTP" else 0
        sock = self._socket(socket.SOCK_STREAM, proto, source)
        writer: asyncio.StreamWriter | None = None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (address, port))
                reader, writer = await asyncio.open_connection(sock=sock)
                writer.write(f"GET / HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
                data = await reader.read(_HEAD_LIMIT)
                while chunk := await reader.read(_HEAD_LIMIT):
                    data += chunk
        except (OSError, TimeoutError) as exc:
            ms = (time.perf_counter() - started) * 1000
            return Reply(ok=False, ms=ms, error=f"{type(exc).__name__}: {exc}")
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            else:
                sock.close()
        ms = (time.perf_counter() - started) * 1000
        return parse_reply(data, ms)

    async def udp(
        self, address: str, port: int, *, timeout: float = 2.0, source: str | None = None
    ) -> Reply:
        """One datagram to ``address``:``port``; the pod's answer (or why none came)."""
        loop = asyncio.get_running_loop()
        sock = self._socket(socket.SOCK_DGRAM, 0, source)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_sendto(sock, b"ping", (address, port))
                data = await loop.sock_recv(sock, _HEAD_LIMIT)
        except (OSError, TimeoutError) as exc:
            ms = (time.perf_counter() - started) * 1000
            return Reply(ok=False, ms=ms, error=f"{type(exc).__name__}: {exc}")
        finally:
            sock.close()
        ms = (time.perf_counter() - started) * 1000
        try:
            doc = json.loads(data)
            return Reply(ok=True, ms=ms, pod=str(doc["pod"]), seen_as=str(doc["client"]))
        except (ValueError, KeyError, TypeError):
            return Reply(ok=False, ms=ms, error=f"bad datagram: {data[:80]!r}")

    async def many(
        self,
        address: str,
        port: int,
        *,
        requests: int,
        concurrency: int = 8,
        timeout: float = 2.0,
        deadline: float = 30.0,
    ) -> list[Reply]:
        """``requests`` requests, at most ``concurrency`` at a time, each on a new connection.

        Requests not started within ``deadline`` seconds fail without being sent,
        so a broken dataplane is reported quickly rather than after every timeout.
        """
        gate = asyncio.Semaphore(concurrency)
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline

        async def one() -> Reply:
            async with gate:
                if loop.time() > end:
                    return Reply(ok=False, ms=0.0, error=f"not sent: {deadline:g}s deadline")
                return await self.get(address, port, timeout=timeout)

        return list(await asyncio.gather(*(one() for _ in range(requests))))


def parse_reply(data: bytes, ms: float) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        return Reply(ok=False, ms=ms, error=f"bad response: {head[:80]!r}")
    try:
        doc = json.loads(body)
        return Reply(ok=True, ms=ms, pod=str(doc["pod"]), seen_as=str(doc["client"]))
    except (ValueError, KeyError, TypeError):
        return Reply(ok=False, ms=ms, error=f"bad body: {body[:80]!r}")


def summarize(replies: Iterable[Reply]) -> dict[str, Any]:
    """The client's side of the lab report."""
    replies = list(replies)
    good = [r for r in replies if r.ok]
    pods = Counter(r.pod for r in good if r.pod is not None)
    errors = Counter(r.error for r in replies if not r.ok and r.error is not None)
    return {
        "requests": len(replies),
        "ok": len(good),
        "pods_seen": dict(sorted(pods.items())),
        "client_seen_as": sorted({r.seen_as for r in good if r.seen_as is not None}),
        "ms_p50": round(percentile([r.ms for r in good], 50), 3) if good else None,
        "ms_p99": round(percentile([r.ms for r in good], 99), 3) if good else None,
        "errors": dict(errors.most_common(5)),
    }
