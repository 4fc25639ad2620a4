"""The lbdriver shell: rebuild state from the bus, program appliances, report.

State comes from two ephemeral consumers that start from the last message of
every subject: first nodes and endpoints (waited for, so that no Service is
ever programmed against a half-known cluster, which would drop members), then
VIP assignments. This module only wires the parts:

- ``core.inventory`` keeps what the stream says; handlers note each message there
  and mark the Services it affects on the schedule (``io.schedule``). They
  never wait for an appliance.
- ``io.reconciler`` runs each Service's reconcile when it falls due, writes
  through its appliance's client (``io.appliance_client``: breaker, rate
  limit, timeout) and publishes the outcome.
- ``io.failover`` keeps each appliance group's active appliance.
- ``io.adoption`` takes as done, after a restart, what needs no write; only
  then is anything written, and the lbdriver ready.
- ``io.maintenance`` runs the drift passes and probes of every appliance.
- ``io.status_server`` answers ``vipwire lb status``.
- ``io.election`` elects the one replica that writes (a KV lease); the others
  consume and keep the same state, write nothing, and take over at once when
  elected. Every write passes its fence (``io.fencing``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Coroutine, Mapping
from typing import Any, Final

from vipwire.aio import cancel_and_wait
from vipwire.bus import (
    DONE,
    ConsumerGroup,
    ConsumerSpec,
    Delivery,
    PullConsumer,
    Reject,
    Unreadable,
    Verdict,
)
from vipwire.contracts import (
    EndpointsSnapshot,
    LbdriverStatus,
    NodeGone,
    NodeSnapshot,
    ServiceRef,
    VipAssigned,
    VipFailed,
    VipReleased,
    VipReleasing,
    family_filter,
)
from vipwire.lbdriver.core.inventory import Inventory
from vipwire.lbdriver.core.profiles import ProfileSettings
from vipwire.lbdriver.core.resilience import BreakerState, CircuitBreaker
from vipwire.lbdriver.io.adoption import StartUp
from vipwire.lbdriver.io.appliance_client import ApplianceClient
from vipwire.lbdriver.io.drivers import ApplianceDriver, build_driver
from vipwire.lbdriver.io.election import Election
from vipwire.lbdriver.io.failover import Failover
from vipwire.lbdriver.io.feed import FeedPublisher
from vipwire.lbdriver.io.fencing import NotLeader
from vipwire.lbdriver.io.last_reports import last_reports
from vipwire.lbdriver.io.maintenance import Maintenance
from vipwire.lbdriver.io.node_gate import NodeGate
from vipwire.lbdriver.io.reconciler import Reconciler
from vipwire.lbdriver.io.schedule import Schedule, cause_of
from vipwire.lbdriver.io.status_server import StatusServer, appliance_statuses
from vipwire.lbdriver.io.terms import Terms
from vipwire.lbdriver.settings import LbdriverSettings
from vipwire.runtime import Runtime

log = logging.getLogger("vipwire.lbdriver")

# Handlers only note state, so nothing is ever worth redelivering forever; the
# bound is for a handler that breaks on a message (a bug), not for appliances.
_MAX_DELIVERIES: Final = 10
#: Seconds stop() lets reconciles in flight finish before cancelling them.
_STOP_GRACE_S: Final = 5.0


class LbdriverService:
    """Programs virtual servers for assigned VIPs and publishes the outcome.

    ``drivers`` supplies ready-made drivers by appliance name (kept, and not
    closed, by the caller: a simulator can so outlive a restart); the others
    are built from settings and closed on stop.
    """

    def __init__(
        self,
        settings: LbdriverSettings,
        runtime: Runtime,
        drivers: Mapping[str, ApplianceDriver] | None = None,
        *,
        profiles: Mapping[str, ProfileSettings] | None = None,
    ) -> None:
        given = dict(drivers or {})
        configured = {a.name for a in settings.appliances}
        unknown = sorted(set(given) - configured)
        if unknown:
            raise ValueError(f"drivers given for unconfigured appliances: {', '.join(unknown)}")
        self.settings = settings
        self.runtime = runtime
        self._built = {a.name for a in settings.appliances if a.name not in given}
        self._clients: dict[str, ApplianceClient] = {
            a.name: ApplianceClient(
                a,
                given[a.name] if a.name in given else build_driver(a),
                prefix=settings.prefix,
                breaker=CircuitBreaker(
                    threshold=settings.breaker_failures,
                    open_s=settings.unhealthy_cooldown_s,
                    max_open_s=settings.unhealthy_max_cooldown_s,
                ),
                metrics=runtime.metrics,
                tracer=runtime.tracer,
                on_breaker=self._on_breaker,
                fence=self._fence,
            )
            for a in settings.appliances
        }
        self._incarnation = random.getrandbits(32).to_bytes(4, "big").hex()
        m = runtime.metrics
        # The top-level profiles section (ipam reads the names from the same file).
        self._inventory = Inventory(
            settings.prefix,
            profiles=dict(profiles or {}),
            drain_on_cordon=settings.drain_on_cordon,
        )
        self._node_gate = NodeGate(settings, m)
        self._start_up = StartUp()
        self._schedule = Schedule(settings, self._inventory, m)
        self._failover = Failover(settings, self._clients, self._inventory, self._schedule, m)
        self._reconciler = Reconciler(
            settings,
            runtime,
            inventory=self._inventory,
            schedule=self._schedule,
            clients=self._clients,
            failover=self._failover,
            start_up=self._start_up,
            incarnation=self._incarnation,
        )
        self._maintenance = Maintenance(
            settings,
            clients=self._clients,
            inventory=self._inventory,
            schedule=self._schedule,
            failover=self._failover,
            metrics=m,
        )
        self._feed = FeedPublisher(
            runtime,
            window_ms=settings.feed_window_ms,
            window_max_ms=settings.feed_window_max_ms,
            table_interval_s=settings.feed_table_interval_s,
            is_leader=lambda: self.role == "leader",
        )
        self._state_consumer: ConsumerGroup | None = None
        self._vip_consumer: PullConsumer | None = None
        self._status_server: StatusServer | None = None
        self._loops: list[asyncio.Task[None]] = []
        # --- leader election: one replica writes, the others stand by warm -----------
        self._me = f"{socket.gethostname()}-{self._incarnation}"
        self._election: Election | None = None  # made in start(), with the bus
        self._terms = Terms(
            settings,
            runtime,
            inventory=self._inventory,
            schedule=self._schedule,
            start_up=self._start_up,
            clients=self._clients,
            failover=self._failover,
            reconciler=self._reconciler,
            maintenance=self._maintenance,
        )
        runtime.set_role(lambda: self.role)
        m.gauge(
            "lbdriver_services",
            "Services with assigned or releasing VIPs",
            fn=lambda: float(len(self._inventory)),
        )
        m.gauge(
            "lbdriver_pending_services",
            "Services waiting for a reconcile (coalescing or backing off)",
            # A standby's Services all wait, for whoever leads: not a backlog to alert on.
            fn=lambda: float(self._schedule.pending_count()) if self.role == "leader" else 0.0,
        )

    @property
    def idle(self) -> bool:
        """No Service waits for a reconcile or is in one: a fence for tests."""
        coalescer = self._schedule.coalescer
        return coalescer.pending_count() == 0 and coalescer.running_count() == 0

    @property
    def drivers(self) -> dict[str, ApplianceDriver]:
        """The driver of every appliance, by name."""
        return {name: client.driver for name, client in self._clients.items()}

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        self._terms.started_at = time.monotonic()
        bus = self.runtime.bus
        self._state_consumer = bus.consumer_group(
            ConsumerSpec(
                filters=(family_filter("node"), family_filter("endpoints")),
                deliver="last_per_subject",
                concurrency=self.settings.concurrency,
                max_deliveries=_MAX_DELIVERIES,
            ),
            self._on_state,
        )
        await self._state_consumer.start()
        # What the stream already reports is read while the state replays: it must be
        # known before the first assignment is (see ServiceState.published).
        reports, _ = await asyncio.gather(last_reports(bus), self._state_consumer.caught_up())
        self._inventory.reports = reports
        self._vip_consumer = bus.consumer(
            ConsumerSpec(
                filters=(family_filter("vip"),),
                deliver="last_per_subject",
                concurrency=self.settings.concurrency,
                max_deliveries=_MAX_DELIVERIES,
            ),
            self._on_vip,
            on_unreadable=self._on_unreadable_vip,
        )
        await self._vip_consumer.start()
        self._status_server = StatusServer(bus, self.status)
        await self._status_server.start()
        await self._feed.start()
        self._election = Election(
            bus,
            self.settings,
            me=self._me,
            metrics=self.runtime.metrics,
            on_elected=self._terms.begin,
            on_deposed=self._terms.end,
        )
        self._spawn(self._start(self._vip_consumer), "lbdriver-startup")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._loops.append(asyncio.create_task(coro, name=name))

    async def _start(self, consumer: PullConsumer | ConsumerGroup) -> None:
        await consumer.caught_up()
        self._start_up.replayed = True
        self._terms.replayed_at = time.monotonic()
        # Warm before it competes: a replica that is still replaying never takes the lease.
        assert self._election is not None
        await self._election.start()

    def _fence(self) -> Mapping[str, str]:
        if self._election is None:
            raise NotLeader("the lbdriver election has not started")
        return self._election.fence()

    @property
    def elected_or_standing_by(self) -> bool:
        """Replayed, and the first election decision made: a fence for tests."""
        return self._election is not None and self._election.decided.is_set()

    @property
    def role(self) -> str:
        """``leader`` (holds the lease, may write) or ``standby``."""
        return "leader" if self._election is not None and self._election.leader else "standby"

    def readiness(self) -> str | None:
        # A standby is ready once replayed and told who leads: it is what takes over.
        if self._start_up.replayed and not self.elected_or_standing_by:
            return "electing the lbdriver leader"
        return None if self.role == "standby" else self._start_up.readiness()

    async def stop(self) -> None:
        await self._feed.stop()
        for consumer in (self._vip_consumer, self._state_consumer):
            if consumer is not None:
                await consumer.stop()
        if self._status_server is not None:
            await self._status_server.stop()
            self._status_server = None
        await cancel_and_wait(self._loops)
        self._loops.clear()
        await self._terms.cancel()
        # Still the leader (renewing) while the reconciles in flight finish.
        await self._reconciler.drain(_STOP_GRACE_S)
        if self._election is not None:
            await self._election.stop()  # released: a standby takes over at once
        for name in sorted(self._built):
            try:
                await self._clients[name].close()
            except Exception:
                log.exception("closing the driver of appliance %s failed", name)

    # --- handlers ----------------------------------------------------------------

    async def _on_state(self, d: Delivery) -> Verdict:
        message = d.message
        match message:
            case NodeSnapshot():
                self._feed.serve(message.cluster)
                admitted = self._node_gate.admit(message)
                if admitted is None:
                    return DONE  # every address refused: the node stays as it was
                affected = self._inventory.note_node(admitted)
            case NodeGone():
                affected = self._inventory.note_node(message)
            case EndpointsSnapshot():
                affected = self._inventory.note_endpoints(message)
            case _:
                return Reject(f"unexpected {type(message).__name__} on {d.subject.raw}")
        if affected:
            cause = cause_of(d, d.subject.family)
            for key in affected:
                self._schedule.mark(key, cause)
        return DONE

    async def _on_vip(self, d: Delivery) -> Verdict:
        message = d.message
        match message:
            case VipAssigned() | VipReleasing():
                key = self._inventory.note_assignment(message, d.seq)
                # Always answered, even with nothing to write (unless the stream holds
                # the same answer, published after this assignment: see core.outcomes).
                self._schedule.mark(key, cause_of(d, "vip"), force=True, urgent=True)
            case VipReleased():
                key = ServiceRef(message.cluster, message.namespace, message.name)
                self._inventory.note_cluster(message.cluster)
                self._inventory.forget(key)
                self._schedule.forget(key)
                self._start_up.finished(key)
            case VipFailed():
                # No VIP to serve; whatever an earlier assignment programmed stays
                # until ipam releases it (the claim still holds the address).
                pass
            case _:
                return Reject(f"unexpected {type(message).__name__} on {d.subject.raw}")
        return DONE

    async def _on_unreadable_vip(self, u: Unreadable) -> None:
        # The consumer logged and counted it, and handed us the last valid message
        # (which stays in force) if there is one; with none, the Service is unknown.
        subject = u.subject
        if not u.in_force and subject.namespace is not None and subject.name is not None:
            self._inventory.note_unknown(
                ServiceRef(subject.cluster, subject.namespace, subject.name)
            )

    def _on_breaker(self, appliance: str, before: BreakerState, after: BreakerState) -> None:
        group = self.settings.appliance(appliance).group
        if after == "open":
            self._failover.target(group)
            return
        # It answers again: its Services stop waiting out their backoff, and a pass
        # repairs what happened meanwhile (or clears what a failover left there).
        self._failover.recovered(group)
        self._maintenance.request_pass(appliance)

    # --- status ----------------------------------------------------------------------

    def status(self) -> LbdriverStatus:
        """What ``vipwire lb status`` shows: appliances, health, objects, last write."""
        return LbdriverStatus(
            instance=self._incarnation,
            now=time.time(),
            ready=self._start_up.ready,
            services=len(self._inventory),
            pending=self._schedule.pending_count() if self.role == "leader" else 0,
            failing=self._inventory.failing(),
            drift_repairs=self._maintenance.drift_repairs,
            appliances=appliance_statuses(
                self.settings, self._clients, self._inventory, self._failover
            ),
            role=self.role,
            leader=self._election.holder if self._election is not None else "",
        )
