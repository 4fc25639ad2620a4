"""The thin shell every service runs in: bus, tracing, metrics, health, signals."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import platform
import signal
from collections.abc import Callable, Sequence
from typing import Protocol

from aiohttp import web
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.trace import Tracer

from vipwire.aio import HttpServer, serve_http, unless_set
from vipwire.bus import Bus, connect, connected_gauge, redacted_all
from vipwire.metrics import Registry
from vipwire.runtime._settings import CommonSettings
from vipwire.telemetry import make_tracer_provider

log = logging.getLogger("vipwire.runtime")


def version() -> str:
    """The installed vipwire's version ("unknown" when run from a tree never installed)."""
    try:
        return importlib.metadata.version("vipwire")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_info(metrics: Registry, component: str) -> None:
    """``vipwire_build_info{component, version, python} 1``: which build answers a scrape
    (an alert or a dashboard joins on it to tell versions apart during an upgrade)."""
    metrics.gauge(
        "build_info",
        "Always 1; the labels say which component and which build of vipwire this is",
        ["component", "version", "python"],
    ).set(1.0, component=component, version=version(), python=platform.python_version())


class Service(Protocol):
    """What the runtime drives. Services keep their decisions elsewhere (pure cores)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def readiness(self) -> str | None:
        """None when ready; otherwise why not (shown by /readyz)."""
        ...


class Runtime:
    """One service's connection to the world: its bus, tracer, metrics and HTTP endpoint."""

    def __init__(
        self,
        name: str,
        settings: CommonSettings,
        *,
        span_processors: Sequence[SpanProcessor] = (),
        connect_attempts: int | None = None,
        instance: str | None = None,
    ) -> None:
        self.name = name
        #: What tells this process apart from others of its kind (a node agent's node).
        self.instance = instance
        self.settings = settings
        self.metrics = Registry()
        attributes = {"service.instance.id": instance} if instance else None
        self.tracer_provider: TracerProvider = make_tracer_provider(
            f"vipwire-{name}",
            processors=span_processors,
            otlp_endpoint=settings.telemetry.otlp_endpoint,
            attributes=attributes,
            exporter=settings.telemetry.exporter,
            file_dir=settings.telemetry.file_dir,
        )
        self.tracer: Tracer = self.tracer_provider.get_tracer("vipwire")
        self._connect_attempts = connect_attempts
        self._bus: Bus | None = None
        self._http: HttpServer | None = None
        self.http_port: int | None = None
        self._readiness: Callable[[], str | None] = lambda: "starting"
        #: Shown on /readyz when set (the lbdriver's "leader" or "standby").
        self._role: Callable[[], str] | None = None
        build_info(self.metrics, name)
        connected_gauge(self.metrics)  # 0 until the bus is up: scraped before NATS answers

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise RuntimeError("the runtime is not started")
        return self._bus

    async def start(self) -> None:
        """Serve health and metrics, then connect to NATS (waiting for it as long as it takes,
        unless ``connect_attempts`` bounds that), then declare the stream.

        Health first: a service waiting for NATS is alive, says why it is not ready,
        and shows ``vipwire_bus_connected 0``.
        """
        await self._start_http()
        log.info(
            "%s: health on %s:%s; connecting to NATS at %s",
            self.name,
            self.settings.http.host,
            self.http_port,
            redacted_all(self.settings.bus.servers),
        )
        self._bus = await connect(
            self.settings.bus,
            # By instance too: a cluster's node agents are otherwise a thousand
            # connections of one name in the server's connection list (/connz).
            name=f"vipwire-{self.name}" + (f"/{self.instance}" if self.instance else ""),
            tracer=self.tracer,
            metrics=self.metrics,
            attempts=self._connect_attempts,
        )
        await self._bus.ensure_stream()

    def set_readiness(self, probe: Callable[[], str | None]) -> None:
        self._readiness = probe

    def set_role(self, role: Callable[[], str]) -> None:
        """Name the replica's role on /readyz (``ready (standby)``)."""
        self._role = role

    async def _start_http(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        # Probes and scrapes in flight at stop may finish, briefly: a service stops within 2 s.
        self._http = await serve_http(
            app, host=self.settings.http.host, port=self.settings.http.port, shutdown_timeout_s=1.0
        )
        self.http_port = self._http.port

    async def _healthz(self, _: web.Request) -> web.Response:
        # Alive means the event loop answers and the bus client has not given up.
        if self._bus is not None and self._bus.nc.is_closed:
            return web.Response(status=503, text="nats connection closed\n")
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._bus is None:
            servers = redacted_all(self.settings.bus.servers)
            return web.Response(status=503, text=f"not ready: connecting to NATS at {servers}\n")
        reason = self._readiness() or self._bus.consumer_problem()
        if not self._bus.nc.is_connected:
            reason = reason or "not connected to NATS"
        # A full store: nothing anyone publishes is kept, whoever is refused (limits).
        reason = reason or self._bus.store_problem()
        if reason:
            return web.Response(status=503, text=f"not ready: {reason}\n")
        return web.Response(text=f"ready ({self._role()})\n" if self._role else "ready\n")

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            text=self.metrics.expose(), content_type="text/plain", charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )  # fmt: skip

    async def stop(self) -> None:
        if self._bus is not None:
            await self._bus.close()
            self._bus = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        self.tracer_provider.shutdown()


async def run_until_signalled(runtime: Runtime, service: Service) -> None:
    """Start, serve until SIGTERM or SIGINT, then stop gracefully (finishing in-flight work).

    A signal is honoured at any moment: one that arrives while starting (waiting
    for NATS, loading state) abandons the start and stops at once.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if not stop.is_set():
            log.info("%s: %s received; stopping", runtime.name, sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    began: list[bool] = []

    async def start() -> None:
        await runtime.start()
        runtime.set_readiness(service.readiness)
        began.append(True)
        await service.start()

    try:
        finished, _ = await unless_set(stop, start())
        if finished:
            log.info("%s started; health on :%s", runtime.name, runtime.http_port)
            await stop.wait()
        log.info("%s stopping", runtime.name)
    finally:
        if began:
            with contextlib.suppress(Exception):
                await service.stop()
        await runtime.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
