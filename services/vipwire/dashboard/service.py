"""The dashboard's shell: feeds the read model from the bus and serves it over HTTP.

On start an ephemeral consumer reads the last message of every subject of
the Service, VIP, appliance, node-apply, status and node families (which
rebuilds the model), then follows live. Pools and appliance health come from
ipam's and the lbdriver's status endpoints, polled; a service that does not
answer is shown as unknown, never as an error of the dashboard.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final, TypeVar

import nats.errors
from aiohttp import web

from vipwire.aio import cancel_and_wait
from vipwire.bus import DONE, ConsumerSpec, Delivery, PullConsumer, Verdict
from vipwire.contracts import family_filter
from vipwire.dashboard.control import (
    IPAM_STATUS,
    LBDRIVER_STATUS,
    ControlStatus,
    parse_ipam,
    parse_lbdriver,
)
from vipwire.dashboard.model import Event, ReadModel, trace_id_from
from vipwire.dashboard.settings import DashboardSettings
from vipwire.dashboard.web import DashboardWeb, Hub
from vipwire.runtime import Runtime

log = logging.getLogger("vipwire.dashboard")

FAMILIES: Final = ("service", "vip", "lb", "applied", "status", "node")

T = TypeVar("T")


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
        self._clock = clock
        self.model = ReadModel(
            timeline_events=settings.timeline_events, max_services=settings.max_services
        )
        self.hub = Hub(self.model)
        self.control = ControlStatus()
        self.web = DashboardWeb(
            settings,
            self.model,
            self.hub,
            token=self._token,
            control=lambda: self.control,
            readiness=self.readiness,
            clock=clock,
        )
        self._consumer: PullConsumer | None = None
        self._runner: web.AppRunner | None = None
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

    async def start(self) -> None:
        spec = ConsumerSpec(
            filters=tuple(family_filter(f) for f in FAMILIES),
            deliver="last_per_subject",
            # One lane: the model then sees messages in stream order across subjects.
            concurrency=1,
            batch=512,
            max_deliveries=3,
            traced=False,
        )
        self._consumer = self.runtime.bus.consumer(spec, self._on_delivery)
        await self._consumer.start()
        self._runner = web.AppRunner(self.web.app(), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else self.settings.port
        self._tasks = [
            asyncio.create_task(self.hub.run(), name="dashboard-hub"),
            asyncio.create_task(self._await_catch_up(), name="dashboard-catch-up"),
            asyncio.create_task(self._poll_control(), name="dashboard-control"),
        ]
        log.info("dashboard on %s", self.url)

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        self.hub.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    def readiness(self) -> str | None:
        if self._runner is None:
            return "web server not started"
        if not self._caught_up:
            return "rebuilding the model from the bus"
        return None

    async def _await_catch_up(self) -> None:
        assert self._consumer is not None
        await self._consumer.caught_up()
        self._caught_up = True
        log.info("dashboard caught up: %d Services", len(self.model))

    async def _on_delivery(self, d: Delivery) -> Verdict:
        event = Event(
            message=d.message,
            time=d.timestamp or self._clock(),
            seq=d.seq,
            trace_id=trace_id_from(d.headers),
        )
        self.hub.mark(self.model.apply(event))
        self._m_services.set(len(self.model))
        self._m_clients.set(self.hub.clients)
        return DONE

    # --- pools and appliances ------------------------------------------------------

    async def _poll_control(self) -> None:
        while True:
            await self.poll_control()
            await asyncio.sleep(self.settings.status_poll_s)

    async def poll_control(self) -> None:
        """Ask ipam and the lbdriver for their status once."""
        (pools, ipam_error), (appliances, lb_error) = await asyncio.gather(
            self._ask(IPAM_STATUS, parse_ipam), self._ask(LBDRIVER_STATUS, parse_lbdriver)
        )
        before = self.control
        self.control = ControlStatus(
            pools=pools,
            appliances=appliances,
            ipam_error=ipam_error,
            lbdriver_error=lb_error,
            polled_at=self._clock(),
        )
        if (before.pools, before.appliances, before.ipam_error, before.lbdriver_error) != (
            pools,
            appliances,
            ipam_error,
            lb_error,
        ):
            self.hub.mark_control()

    async def _ask(self, subject: str, parse: Callable[[bytes], T]) -> tuple[T | None, str | None]:
        service = subject.split(".")[1]
        try:
            reply = await self.runtime.bus.nc.request(
                subject, b"", timeout=self.settings.status_timeout_s
            )
        except nats.errors.NoRespondersError:
            return None, f"{service} does not answer on {subject} (no responders)"
        except (TimeoutError, nats.errors.TimeoutError):
            return None, f"{service} did not answer within {self.settings.status_timeout_s:g}s"
        except nats.errors.Error as exc:
            return None, f"asking {service} failed: {exc!r}"
        try:
            return parse(reply.data), None
        except ValueError as exc:
            return None, str(exc)
