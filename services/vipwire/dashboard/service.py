"""The dashboard's shell: wires the bus reader, the read model, the status poller and the web app.

On start the reader rebuilds the model from the last message of every
subject, then follows live; the poller asks ipam and the lbdriver for pools
and appliance health; the web app serves all of it. Read-only: the dashboard
never publishes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from vipwire.aio import HttpServer, cancel_and_wait, serve_http
from vipwire.dashboard.core.fold import Event, ReadModel
from vipwire.dashboard.core.views import ControlStatus
from vipwire.dashboard.io.polling import ControlPoller
from vipwire.dashboard.io.reading import BusReader
from vipwire.dashboard.io.streaming import Hub
from vipwire.dashboard.io.web import DashboardWeb
from vipwire.dashboard.settings import DashboardSettings
from vipwire.runtime import Runtime

log = logging.getLogger("vipwire.dashboard")


class DashboardService:
    """Read-only: it consumes (ephemerally) and serves; it never publishes."""

    def __init__(
        self,
        settings: DashboardSettings,
        runtime: Runtime,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        # Read now, so that a missing token file fails before anything starts.
        self._token = settings.load_token()
        self.model = ReadModel(
            timeline_events=settings.timeline_events, max_services=settings.max_services
        )
        self.hub = Hub(self.model)
        self.reader = BusReader(runtime.bus, self._on_event, clock=clock)
        self.poller = ControlPoller(
            runtime.bus,
            interval_s=settings.status_poll_s,
            timeout_s=settings.status_timeout_s,
            on_change=self.hub.mark_control,
            clock=clock,
        )
        self.web = DashboardWeb(
            settings,
            self.model,
            self.hub,
            token=self._token,
            control=lambda: self.poller.status,
            readiness=self.readiness,
            clock=clock,
        )
        self._server: HttpServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._caught_up = False
        #: The port the web UI listens on, once started.
        self.port: int | None = None
        m = runtime.metrics
        self._m_services = m.gauge("dashboard_services", "Services in the dashboard's model")
        self._m_clients = m.gauge("dashboard_event_streams", "Open Server-Sent Event streams")

    @property
    def url(self) -> str:
        host = self.settings.host
        if ":" in host:
            host = f"[{host}]"
        elif host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}/"

    @property
    def control(self) -> ControlStatus:
        """The last answers of ipam and the lbdriver."""
        return self.poller.status

    async def start(self) -> None:
        await self.reader.start()
        self._server = await serve_http(
            self.web.app(), host=self.settings.host, port=self.settings.port
        )
        self.port = self._server.port
        self._tasks = [
            asyncio.create_task(self.hub.run(), name="dashboard-hub"),
            asyncio.create_task(self._await_catch_up(), name="dashboard-catch-up"),
            asyncio.create_task(self.poller.run(), name="dashboard-control"),
        ]
        log.info("dashboard on %s", self.url)
        if self.settings.anonymous_outside:
            log.warning(
                "dashboard on %s:%d without a token (dashboard.allow_anonymous: true): anyone "
                "who reaches it reads every cluster's Services; set dashboard.token_file",
                self.settings.host,
                self.port,
            )

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        self.hub.close()
        if self._server is not None:
            await self._server.close()
            self._server = None
        await self.reader.stop()

    def readiness(self) -> str | None:
        if self._server is None:
            return "web server not started"
        if not self._caught_up:
            return "rebuilding the model from the bus"
        return None

    async def poll_control(self) -> None:
        """Ask ipam and the lbdriver for their status once."""
        await self.poller.poll()

    async def _await_catch_up(self) -> None:
        await self.reader.caught_up()
        self._caught_up = True
        log.info("dashboard caught up: %d Services", len(self.model))

    def _on_event(self, event: Event) -> None:
        self.hub.mark(self.model.apply(event))
        self._m_services.set(len(self.model))
        self._m_clients.set(self.hub.clients)
