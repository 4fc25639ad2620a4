"""Run a local JetStream cluster: N nats-server processes routed to each other.

Each server listens on loopback ports chosen once at start (client, cluster route,
monitoring), so a killed server comes back on the same addresses with the same
store, as a crashed pod would. Used by ``vipwire up --nats-cluster N``, the
chaos bench and the tests that take one server away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient

from vipwire.natsserver._server import NatsServerError, find_binary


def _free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports free on ``host`` now (held together while chosen)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


async def _http_get(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """A bare HTTP/1.0 GET of a monitoring endpoint: (status, body)."""

    async def get() -> tuple[int, str]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head, _, body = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
        return status, body.decode(errors="replace")

    return await asyncio.wait_for(get(), timeout)


class ClusterServer:
    """One server of a :class:`NatsCluster`: its name, ports, store and process."""

    def __init__(self, index: int, name: str, host: str, ports: Sequence[int], home: Path) -> None:
        self.index = index
        self.name = name
        self.host = host
        self.port, self.cluster_port, self.http_port = ports
        self.home = home
        self.store_dir = home / "store"
        self.config = home / "nats.conf"
        self.proc: asyncio.subprocess.Process | None = None
        self.log_tail: list[str] = []
        self._drain: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.alive and self.proc is not None else None

    def __repr__(self) -> str:
        state = "alive" if self.alive else "down"
        return f"<ClusterServer {self.name} {self.url} {state}>"


class NatsCluster:
    """``size`` nats-servers with JetStream, a cluster block and routes to each other.

    Use as ``async with NatsCluster(3) as cluster: cluster.urls``. ``start``
    returns once every server answers and the JetStream meta group has a leader.
    With no ``base_dir`` a temporary one is made and removed on stop. Each server
    runs in a process group of its own (a Ctrl-C in the terminal does not reach
    it; we stop it last).
    """

    def __init__(
        self,
        size: int = 3,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        name: str = "vipwire",
        binary: str | None = None,
        extra_config: str = "",
        client_tls: tuple[Path, Path, Path] | None = None,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        """``extra_config``: nats-server configuration text (authorization, TLS) appended
        to each server's own configuration. ``client_tls``: (CA, certificate, key) files
        its own readiness client shows a server that verifies clients (mTLS).
        ``client_options``: nats-py connect options of that client (its login, when the
        configuration requires one)."""
        self.client_options = dict(client_options or {})
        if size < 1:
            raise ValueError("a NATS cluster needs at least one server")
        self.size = size
        self.cluster_name = name
        self.host = host
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="vipwire-natscluster-"))
        self._binary = binary or find_binary()
        self.extra_config = extra_config
        self.client_tls = client_tls
        self.servers: list[ClusterServer] = []
        self._killed: set[int] = set()  # down on purpose (kill), not by a failure

    @property
    def urls(self) -> tuple[str, ...]:
        """Every server's client URL (for ``BusSettings.servers``)."""
        return tuple(s.url for s in self.servers)

    @property
    def url(self) -> str:
        """Every server's URL, comma-separated (for display; a client takes ``urls``)."""
        return ",".join(self.urls)

    # --- lifecycle -------------------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
        ports = _free_ports(self.host, 3 * self.size)
        self.servers = [
            ClusterServer(
                i,
                f"n{i}",
                self.host,
                ports[3 * i : 3 * i + 3],
                self.base_dir / f"n{i}",
            )
            for i in range(self.size)
        ]
        try:
            for server in self.servers:
                self._write_config(server)
                await self._spawn(server)
            await self.wait_ready(timeout)
        except BaseException:
            await self.stop()
            raise

    def kill(self, index: int) -> None:
        """SIGKILL server ``index`` (as a crash would); its ports and store are kept."""
        server = self.servers[index]
        self._killed.add(index)
        if server.proc is not None and server.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGKILL)

    def pause(self, index: int) -> None:
        """SIGSTOP server ``index`` (a hung server); :meth:`resume` continues it."""
        server = self.servers[index]
        if server.alive and server.proc is not None:
            os.killpg(server.proc.pid, signal.SIGSTOP)

    def resume(self, index: int) -> None:
        server = self.servers[index]
        if server.alive and server.proc is not None:
            os.killpg(server.proc.pid, signal.SIGCONT)

    async def restart(self, index: int, *, timeout: float = 30.0, wait: bool = True) -> None:
        """Start server ``index`` again on its ports and store (killing it first if alive).

        ``wait``: return once the cluster is ready again (that server included).
        """
        server = self.servers[index]
        if server.alive:
            self.kill(index)
        await self._reap(server)
        self._killed.discard(index)
        await self._spawn(server)
        if wait:
            await self.wait_ready(timeout)

    async def stop(self) -> None:
        """Stop every server (SIGTERM, then SIGKILL after 10 s) and remove a temporary dir."""
        self._killed.update(s.index for s in self.servers)
        for server in self.servers:
            if server.alive and server.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.proc.pid, signal.SIGCONT)
                    os.killpg(server.proc.pid, signal.SIGTERM)
        for server in self.servers:
            proc = server.proc
            if proc is not None and proc.returncode is None:
                try:
                    await asyncio.wait_for(proc.wait(), 10.0)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
            await self._reap(server)
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    async def __aenter__(self) -> NatsCluster:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- readiness -------------------------------------------------------------------

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every live server is healthy (JetStream current) and agrees on a meta leader."""
        deadline = time.monotonic() + timeout
        problem: str | None = "not checked yet"
        while time.monotonic() < deadline:
            problem = await self.problem()
            if problem is None:
                return
            await asyncio.sleep(0.1)  # polling the servers' monitoring endpoint
        tails = "\n".join(f"--- {s.name}:\n" + "\n".join(s.log_tail[-10:]) for s in self.servers)
        raise NatsServerError(f"NATS cluster not ready after {timeout:.0f}s: {problem}\n{tails}")

    async def problem(self) -> str | None:
        """Why the cluster is not ready now; None: ready.

        Raises NatsServerError (with its last log lines) if a server that was not
        killed on purpose has exited: waiting would not bring it back.
        """
        leaders: set[str] = set()
        for server in self.servers:
            if server.index not in self._killed and server.proc is not None and not server.alive:
                tail = "\n".join(server.log_tail[-10:])
                raise NatsServerError(
                    f"nats-server {server.name} exited with code {server.proc.returncode}:\n{tail}"
                )
        live = [s for s in self.servers if s.alive]
        if not live:
            return "no server is running"
        for server in live:
            try:
                status, body = await _http_get(server.host, server.http_port, "/healthz")
                if status != 200:
                    return f"{server.name} /healthz: {status} {body.strip()}"
                leader = await self.meta_leader(server.index)
            except (OSError, TimeoutError, ValueError) as exc:
                return f"{server.name} does not answer: {exc!r}"
            if not leader:
                return f"{server.name} knows no JetStream meta leader"
            leaders.add(leader)
        if len(leaders) > 1:
            return f"servers disagree on the meta leader: {sorted(leaders)}"
        return await self._streams_problem(live)

    async def _streams_problem(self, live: Sequence[ClusterServer]) -> str | None:
        """Whether every stream (KV buckets included) and durable consumer answers a
        client, through each live server: after a restart of the whole cluster, they
        elect their leaders after the servers call themselves healthy."""
        for server in live:
            nc = NatsClient()
            try:
                await nc.connect(
                    servers=[server.url],
                    connect_timeout=1,
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                    tls=self._client_context(),
                    **self.client_options,
                )
                js = nc.jetstream(timeout=1.0)
                for stream in await js.streams_info():
                    name = stream.config.name or ""
                    await js.stream_info(name)
                    for consumer in await js.consumers_info(name):
                        if consumer.config.durable_name:  # ephemeral ones of a past run expire
                            await js.consumer_info(name, consumer.name)
            except (OSError, TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
                return f"{server.name}: a stream or consumer does not answer yet ({exc!r})"
            finally:
                with contextlib.suppress(Exception):
                    await nc.close()
        return None

    def _client_context(self) -> ssl.SSLContext | None:
        if self.client_tls is None:
            return None
        ca, cert, key = self.client_tls
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
        return context

    async def jsz(self, index: int, query: str = "") -> dict[str, Any]:
        """Server ``index``'s ``/jsz`` monitoring document."""
        server = self.servers[index]
        status, body = await _http_get(server.host, server.http_port, f"/jsz{query}")
        if status != 200:
            raise ValueError(f"{server.name} /jsz answered {status}")
        doc: dict[str, Any] = json.loads(body)
        return doc

    async def meta_leader(self, index: int) -> str | None:
        """The meta leader's server name as server ``index`` sees it."""
        doc = await self.jsz(index)
        meta = doc.get("meta_cluster") or {}
        leader = meta.get("leader")
        return str(leader) if leader else None

    def index_of(self, server_name: str) -> int:
        """The index of the server named ``server_name`` (as JetStream cluster info names it)."""
        for server in self.servers:
            if server.name == server_name:
                return server.index
        raise KeyError(f"no server named {server_name!r} in this cluster")

    # --- processes -------------------------------------------------------------------

    def _write_config(self, server: ClusterServer) -> None:
        server.store_dir.mkdir(parents=True, exist_ok=True)
        routes = ", ".join(
            f'"nats-route://{other.host}:{other.cluster_port}"'
            for other in self.servers
            if other is not server
        )
        server.config.write_text(
            f'server_name: "{server.name}"\n'
            f'listen: "{server.host}:{server.port}"\n'
            f'http: "{server.host}:{server.http_port}"\n'
            f'jetstream {{ store_dir: "{server.store_dir}" }}\n'
            f"cluster {{\n"
            f'  name: "{self.cluster_name}"\n'
            f'  listen: "{server.host}:{server.cluster_port}"\n'
            f"  routes: [{routes}]\n"
            f"}}\n" + self.extra_config
        )

    async def _spawn(self, server: ClusterServer) -> None:
        server.proc = await asyncio.create_subprocess_exec(
            self._binary,
            "-c",
            str(server.config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            process_group=0,
        )
        server._drain = asyncio.create_task(self._drain_log(server), name=f"nats-{server.name}-log")

    @staticmethod
    async def _drain_log(server: ClusterServer) -> None:
        # Keep reading so a chatty server never blocks on a full pipe.
        proc = server.proc
        assert proc is not None and proc.stderr is not None
        while line := await proc.stderr.readline():
            server.log_tail.append(line.decode(errors="replace").rstrip())
            del server.log_tail[:-200]

    @staticmethod
    async def _reap(server: ClusterServer) -> None:
        proc = server.proc
        if proc is not None:
            await proc.wait()
        if server._drain is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(server._drain, 2.0)
            server._drain = None
