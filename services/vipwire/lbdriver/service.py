"""The lbdriver shell: rebuild state from the bus, program appliances, report.

State comes from two ephemeral consumers that start from the last message of
every subject: first nodes and endpoints (waited for, so that no Service is
ever programmed against a half-known cluster, which would drop members), then
VIP assignments. Every decision is in the pure core (``desired``, ``diff``,
``drift``, ``placement``, ``coalesce``, ``resilience``); this module only
loads, calls, applies and publishes.

Handlers never wait for an appliance: they update what we know and mark the
affected Services dirty. The schedule (:class:`Coalescer`) says when each one
is reconciled, so a burst of endpoint or node events becomes one write per
Service per coalescing window, and one Service never waits for another. A
reconcile is always "make the appliance hold what the Service needs now",
whatever triggered it; a failed one is retried by us with backoff and jitter
(the bus message was acknowledged long ago: state, not messages, is what we
retry, and a restart rebuilds it from the stream).

Nothing is written until the replay is complete: only then is it known which
Services exist, which appliance of each group already holds their objects,
and so what is an orphan. Afterwards one maintenance loop per appliance runs
the drift passes (list, compare, repair, remove orphans) and probes an
appliance whose circuit breaker is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Coroutine, Mapping
from typing import Any, Final, NamedTuple, Protocol

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link

from vipwire.aio import cancel_and_wait
from vipwire.bus import DONE, ConsumerSpec, Delivery, Reject, Verdict
from vipwire.contracts import (
    EndpointsSnapshot,
    LbFailed,
    LbMessage,
    LbProgrammed,
    LbRemoved,
    NodeGone,
    NodeSnapshot,
    ServicePort,
    VipAssigned,
    VipFailed,
    VipReleased,
    VipReleasing,
    encode,
    family_filter,
    service_subject,
)
from vipwire.lbdriver.core.coalesce import Coalescer, Flush
from vipwire.lbdriver.core.desired import (
    InvalidAssignment,
    desired_virtual_servers,
    members_of,
    owner_of,
)
from vipwire.lbdriver.core.diff import diff
from vipwire.lbdriver.core.drift import find_drift, held_by, owned_scope
from vipwire.lbdriver.core.listing import digest
from vipwire.lbdriver.core.placement import choose_active
from vipwire.lbdriver.core.resilience import BreakerState, CircuitBreaker, backoff_delay
from vipwire.lbdriver.core.virtual_servers import VirtualServer
from vipwire.lbdriver.io.appliance_client import ApplianceClient, CircuitOpen
from vipwire.lbdriver.io.drivers import (
    ApplianceAuthError,
    ApplianceDriver,
    ApplianceError,
    build_driver,
)
from vipwire.lbdriver.io.reports import fingerprint, last_reports
from vipwire.lbdriver.settings import LbdriverSettings
from vipwire.lbdriver.status import (
    STATUS_SUBJECT,
    ApplianceStatus,
    LbdriverStatus,
    encode_status,
    redact_address,
)
from vipwire.runtime import Runtime

log = logging.getLogger("vipwire.lbdriver")

# Handlers only note state, so nothing is ever worth redelivering forever; the
# bound is for a handler that breaks on a message (a bug), not for appliances.
_MAX_DELIVERIES: Final = 10
#: Seconds stop() lets reconciles in flight finish before cancelling them.
_STOP_GRACE_S: Final = 5.0
#: Services a drift pass or the start-up adoption handles before letting others run.
_CHUNK: Final = 256


class _Consumer(Protocol):
    """What we use of the bus's pull consumer."""

    async def start(self) -> None: ...

    async def caught_up(self, timeout: float | None = None) -> None: ...

    async def stop(self) -> None: ...


class ServiceKey(NamedTuple):
    cluster: str
    namespace: str
    name: str


Assignment = VipAssigned | VipReleasing


class _Cause(NamedTuple):
    """Why a Service is reconciled: the message it answers to and the trace to continue.

    Only what decisions and message ids need (not the delivery, whose headers
    and payload would outlive it).
    """

    #: Subject and stream sequence of the message it answers to.
    subject: str
    seq: int
    #: Its subject family (vip, node, endpoints).
    family: str
    #: The trace to join (that of the delivery's handler); None: start a new one.
    context: Context | None
    #: What happened: a subject family (vip, node, endpoints), drift, failover, recovery.
    trigger: str


def _cause(d: Delivery, trigger: str) -> _Cause:
    return _Cause(d.subject.raw, d.seq, d.subject.family, otel_context.get_current(), trigger)


class _State:
    """What is kept about one Service with an assigned (or releasing) VIP.

    One object per Service rather than an entry per fact in a dict each: at
    10,000 Services every byte here is 10 KB.
    """

    __slots__ = (
        "assigned_seq",
        "assignment",
        "attempts",
        "generation",
        "healthy",
        "placed",
        "published",
        "publishes",
        "written",
    )

    def __init__(self, assignment: Assignment, seq: int) -> None:
        self.assignment = assignment
        #: Stream sequence of the assignment (names the cause of our own reconciles).
        self.assigned_seq = seq
        #: Fingerprint of the last report published (or found on the stream at start).
        self.published: bytes | None = None
        self.publishes = 0
        #: Where the last successful reconcile wrote, and whether the last one succeeded.
        self.placed: str | None = None
        self.healthy: bool | None = None
        #: Digest of the objects the last successful reconcile left on ``placed``.
        self.written: int | None = None
        self.attempts = 0  # failed reconciles in a row
        self.generation = 0  # reconciles started


# Services with the same nodes ready share one set (and its node names).
@functools.lru_cache(maxsize=1 << 12)
def _shared_nodes(nodes: frozenset[str]) -> frozenset[str]:
    return nodes


# Most Services have one of a few port lists (80, 443, ...): one tuple for each.
@functools.lru_cache(maxsize=1 << 12)
def _shared_ports(ports: tuple[ServicePort, ...]) -> tuple[ServicePort, ...]:
    return ports


def _compact(message: Assignment) -> Assignment:
    """The assignment as kept for as long as the Service lives: the strings every
    Service of a cluster or pool repeats, and its ports, shared with the others."""
    shared = {
        "cluster": sys.intern(message.cluster),
        "namespace": sys.intern(message.namespace),
        "appliance_group": sys.intern(message.appliance_group),
    }
    if isinstance(message, VipAssigned):
        shared["pool"] = sys.intern(message.pool)
        return msgspec.structs.replace(message, ports=_shared_ports(message.ports), **shared)
    return msgspec.structs.replace(message, **shared)


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
            )
            for a in settings.appliances
        }
        self._incarnation = random.getrandbits(32).to_bytes(4, "big").hex()
        self._rng = random.Random()
        self._schedule: Coalescer[ServiceKey, _Cause] = Coalescer(
            settings.coalesce_window_ms / 1000, quiet=settings.coalesce_quiet_ms / 1000
        )
        # What we know, rebuilt from the stream.
        self._nodes: dict[str, dict[str, NodeSnapshot]] = {}
        # Of endpoints only the nodes holding a ready one matter here.
        self._ready_nodes: dict[ServiceKey, frozenset[str]] = {}
        self._services: dict[ServiceKey, _State] = {}
        # Services with a state, by cluster, in order of arrival (a dict as ordered set).
        self._by_cluster: dict[str, dict[ServiceKey, None]] = {}
        self._clusters: set[str] = set()  # every cluster seen in a VIP message: our partitions
        # Until the start-up is over: per Service, the fingerprint and stream sequence
        # of the last report the stream holds (read before the replay).
        self._reports: dict[ServiceKey, tuple[bytes, int]] = {}
        self._active: dict[str, str] = {}  # appliance group -> the appliance written to
        self._drift_repairs = 0
        # Machinery.
        self._state_consumer: _Consumer | None = None
        self._vip_consumer: _Consumer | None = None
        self._status_sub: Subscription | None = None
        self._wake = asyncio.Event()
        self._sweep = {name: asyncio.Event() for name in self._clients}
        self._loops: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._initial: set[ServiceKey] = set()
        self._initial_done = asyncio.Event()
        self._replayed = False
        self._ready = False
        self._started_at = time.monotonic()
        m = runtime.metrics
        self._m_reconciles = m.counter(
            "lbdriver_reconciles_total",
            "Service reconciles, by result (written, unchanged, failed)",
            ["result"],
        )
        self._m_triggers = m.counter(
            "lbdriver_reconcile_triggers_total",
            "Events that asked for a Service reconcile, by trigger (coalesced into fewer)",
            ["trigger"],
        )
        self._m_drift = m.counter(
            "lbdriver_drift_repairs_total",
            "Objects found changed out of band (repair) or left over (orphan) and fixed",
            ["appliance", "kind"],
        )
        self._m_failovers = m.counter(
            "lbdriver_failovers_total",
            "Changes of an appliance group's active appliance",
            ["group"],
        )
        m.gauge(
            "lbdriver_services",
            "Services with assigned or releasing VIPs",
            fn=lambda: float(len(self._services)),
        )
        m.gauge(
            "lbdriver_pending_services",
            "Services waiting for a reconcile (coalescing or backing off)",
            fn=lambda: float(self._schedule.pending_count()),
        )

    @property
    def drivers(self) -> dict[str, ApplianceDriver]:
        """The driver of every appliance, by name."""
        return {name: client.driver for name, client in self._clients.items()}

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        self._started_at = time.monotonic()
        bus = self.runtime.bus
        self._state_consumer = bus.consumer(
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
        # known before the first assignment is (see _State.published).
        reports, _ = await asyncio.gather(last_reports(bus), self._state_consumer.caught_up())
        self._reports = {ServiceKey(*k): v for k, v in reports.items()}
        self._vip_consumer = bus.consumer(
            ConsumerSpec(
                filters=(family_filter("vip"),),
                deliver="last_per_subject",
                concurrency=self.settings.concurrency,
                max_deliveries=_MAX_DELIVERIES,
            ),
            self._on_vip,
        )
        await self._vip_consumer.start()
        self._status_sub = await bus.nc.subscribe(STATUS_SUBJECT, cb=self._on_status_request)
        self._spawn(self._start_up(self._vip_consumer), "lbdriver-startup")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._loops.append(asyncio.create_task(coro, name=name))

    async def _start_up(self, consumer: _Consumer) -> None:
        await consumer.caught_up()
        self._replayed = True
        replayed = time.monotonic()
        await self._choose_actives()
        self._initial = {k for k in self._services if self._schedule.busy(k)}
        adopted = await self._adopt()
        compared = time.monotonic()
        if not self._initial:
            self._initial_done.set()
        self._spawn(self._flush_loop(), "lbdriver-flush")
        await self._initial_done.wait()
        self._reports.clear()
        self._ready = True
        log.info(
            "lbdriver ready in %.2fs (replay %.2fs, comparison %.2fs): %d services, %d of "
            "them already programmed and reported",
            time.monotonic() - self._started_at,
            replayed - self._started_at,
            compared - replayed,
            len(self._services),
            adopted,
        )
        for name, client in self._clients.items():
            self._spawn(self._maintain(client), f"lbdriver-maintain-{name}")

    def readiness(self) -> str | None:
        if self._ready:
            return None
        if not self._replayed:
            return "replaying VIP assignments"
        return f"reconciling {len(self._initial)} service(s) after start"

    async def stop(self) -> None:
        for consumer in (self._vip_consumer, self._state_consumer):
            if consumer is not None:
                await consumer.stop()
        if self._status_sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._status_sub.unsubscribe()
            self._status_sub = None
        await cancel_and_wait(self._loops)
        self._loops.clear()
        if self._inflight:
            # A reconcile cut short leaves nothing wrong behind (a restart redoes it),
            # but one finished is one fewer write for the next instance.
            _, late = await asyncio.wait(set(self._inflight), timeout=_STOP_GRACE_S)
            await cancel_and_wait(late)
        for name in sorted(self._built):
            try:
                await self._clients[name].close()
            except Exception:
                log.exception("closing the driver of appliance %s failed", name)

    # --- handlers ----------------------------------------------------------------

    async def _on_state(self, d: Delivery) -> Verdict:
        message = d.message
        match message:
            case NodeSnapshot() | NodeGone():
                affected = self._note_node(message)
            case EndpointsSnapshot():
                affected = self._note_endpoints(message)
            case _:
                return Reject(f"unexpected {type(message).__name__} on {d.subject.raw}")
        if affected:
            cause = _cause(d, d.subject.family)
            for key in affected:
                self._mark(key, cause)
        return DONE

    async def _on_vip(self, d: Delivery) -> Verdict:
        message = d.message
        match message:
            case VipAssigned() | VipReleasing():
                message = _compact(message)
                key = ServiceKey(message.cluster, message.namespace, message.name)
                self._clusters.add(message.cluster)
                state = self._services.get(key)
                if state is None:
                    state = self._services[key] = _State(message, d.seq)
                    self._by_cluster.setdefault(key.cluster, {})[key] = None
                    report = self._reports.get(key)
                    if report is not None:
                        state.published = report[0]
                else:
                    state.assignment, state.assigned_seq = message, d.seq
                # Always answered, even with nothing to write (unless the stream holds
                # the same answer, published after this assignment: see _reconcile).
                self._mark(key, _cause(d, "vip"), force=True, urgent=True)
            case VipReleased():
                self._clusters.add(message.cluster)
                self._forget(ServiceKey(message.cluster, message.namespace, message.name))
            case VipFailed():
                # No VIP to serve; whatever an earlier assignment programmed stays
                # until ipam releases it (the claim still holds the address).
                pass
            case _:
                return Reject(f"unexpected {type(message).__name__} on {d.subject.raw}")
        return DONE

    def _note_node(self, message: NodeSnapshot | NodeGone) -> list[ServiceKey]:
        nodes = self._nodes.setdefault(message.cluster, {})
        if isinstance(message, NodeSnapshot):
            if nodes.get(message.node) == message:
                return []
            nodes[message.node] = message
        elif nodes.pop(message.node, None) is None:
            return []
        return [
            key
            for key in self._by_cluster.get(message.cluster, ())
            if isinstance(self._services[key].assignment, VipAssigned)
        ]

    def _note_endpoints(self, message: EndpointsSnapshot) -> list[ServiceKey]:
        key = ServiceKey(message.cluster, message.namespace, message.name)
        before = self._ready_nodes.get(key)
        ready = self._ready_nodes[key] = _shared_nodes(message.ready_nodes)
        state = self._services.get(key)
        if state is None or not isinstance(state.assignment, VipAssigned):
            return []
        if state.assignment.external_traffic_policy != "Local":
            return []  # with Cluster every eligible node is a member, endpoints or not
        if before is not None and before == ready:
            return []
        return [key]

    def _forget(self, key: ServiceKey) -> None:
        if self._services.pop(key, None) is not None:
            keys = self._by_cluster[key.cluster]
            del keys[key]
            if not keys:
                del self._by_cluster[key.cluster]
        self._schedule.forget(key)
        self._initial_done_with(key)

    # --- scheduling ----------------------------------------------------------------

    def _mark(
        self, key: ServiceKey, cause: _Cause, *, force: bool = False, urgent: bool = False
    ) -> None:
        self._schedule.mark(key, time.monotonic(), cause, force=force, urgent=urgent)
        self._m_triggers.inc(trigger=cause.trigger)
        self._wake.set()

    def _mark_again(self, key: ServiceKey, trigger: str) -> None:
        """Reconcile a known Service soon for a reason of our own (a new trace), named
        after its assignment."""
        state = self._services.get(key)
        if state is not None:
            subject = service_subject("vip", *key)
            self._mark(key, _Cause(subject, state.assigned_seq, "vip", None, trigger), urgent=True)

    async def _flush_loop(self) -> None:
        while True:
            self._wake.clear()
            for key, flush in self._schedule.take_due(time.monotonic()):
                task = asyncio.create_task(self._run(key, flush), name=f"reconcile {key}")
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            due = self._schedule.next_due()
            timeout = None if due is None else max(0.0, due - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _run(self, key: ServiceKey, flush: Flush[_Cause]) -> None:
        """One reconcile of one Service, in its own span, retried by schedule if it fails."""
        cause = flush.cause
        links = [
            Link(span)
            for c in flush.causes
            if c is not cause
            and c.context is not None
            and (span := trace.get_current_span(c.context).get_span_context()).is_valid
        ]
        state = self._services.get(key)
        if state is not None:
            state.generation += 1
        outcome: BaseException | None
        try:
            with self.runtime.tracer.start_as_current_span(
                "reconcile",
                context=cause.context if cause.context is not None else Context(),
                links=links,
                attributes={
                    "vipwire.cluster": key.cluster,
                    "k8s.namespace.name": key.namespace,
                    "k8s.service.name": key.name,
                    "vipwire.trigger": cause.trigger,
                    "vipwire.coalesced_events": flush.events,
                },
            ):
                outcome = await self._reconcile(key, cause, force=flush.force)
        except Exception as exc:
            log.exception("reconcile of %s/%s/%s failed", *key)
            outcome = exc
        finally:
            now = time.monotonic()
            self._schedule.done(key, now)
            self._initial_done_with(key)
        state = self._services.get(key)
        if state is None:
            pass
        elif outcome is None:
            state.attempts = 0
        else:
            state.healthy = False
            state.attempts += 1
            attempt = state.attempts
            delay = backoff_delay(
                attempt,
                initial=self.settings.retry_initial_s,
                maximum=self.settings.retry_max_s,
                jitter=self.settings.retry_jitter,
                rand=self._rng.random(),
            )
            self._schedule.retry(key, now, delay, flush)
        self._wake.set()

    def _initial_done_with(self, key: ServiceKey) -> None:
        if self._initial:
            self._initial.discard(key)
            if not self._initial:
                self._initial_done.set()

    # --- start-up ------------------------------------------------------------------

    async def _adopt(self) -> int:
        """After the replay: take as done the Services whose objects are already on their
        appliance exactly as needed and whose report the stream already holds, published
        after their assignment. Only the others are reconciled (and reported).

        One listing per partition (kept by the appliance client) and a comparison per
        Service, instead of a reconcile each (task, span, diff, publish). Returns how
        many were adopted.
        """
        adopted = 0
        for i, key in enumerate(sorted(self._initial)):
            if i and i % _CHUNK == 0:
                await asyncio.sleep(0)  # handlers of live events run meanwhile
            state = self._services.get(key)
            if state is None or self._schedule.running(key):
                continue
            report = self._reports.get(key)
            if report is None or report[0] != state.published or report[1] <= state.assigned_seq:
                continue  # not answered yet: reconcile it
            assignment = state.assignment
            target = self._target(assignment.appliance_group)
            if target is None:
                continue
            try:
                actual = await self._clients[target].actual(key.cluster)
            except ApplianceError:
                continue  # its reconcile reports it
            # From here on nothing waits: what is compared is what holds now.
            if self._services.get(key) is not state or state.assignment is not assignment:
                continue  # changed while the appliance was listed
            try:
                desired = self._desired(key, assignment)
            except InvalidAssignment:
                continue
            owner = owner_of(*key)
            if diff(desired, owned_scope(actual, owner, desired), self.settings.prefix):
                continue
            stamp = fingerprint(encode(_outcome(key, assignment, target, desired)))
            if stamp != state.published:
                continue
            # Nothing to write and nothing to say: exactly what its reconcile would find.
            self._schedule.forget(key)
            state.placed, state.healthy = target, True
            state.written = digest(desired.values())
            self._initial.discard(key)
            adopted += 1
        self._m_reconciles.inc(adopted, result="unchanged")
        return adopted

    # --- placement -----------------------------------------------------------------

    def _partitions(self) -> set[str]:
        """Partitions that are ours: one per cluster we have VIP messages of."""
        return self._clusters | self._by_cluster.keys()

    async def _choose_actives(self) -> None:
        """Per group, the appliance to write to: where our objects already are.

        A restart after a failover must not move every Service back (that is
        a write per Service and a flap); so each appliance of a group with a
        choice is listed, and the one holding most of the group's objects wins.
        """
        now = time.monotonic()
        for group in sorted({a.group for a in self.settings.appliances}):
            names = [a.name for a in self.settings.group(group)]
            if len(names) == 1:
                self._active[group] = names[0]
                continue
            owners = {
                owner_of(*k)
                for k, state in self._services.items()
                if state.assignment.appliance_group == group
            }
            counts = await asyncio.gather(*(self._holdings(n, owners) for n in names))
            held = {n: c for n, c in zip(names, counts, strict=True) if c is not None}
            usable = set(held) or {n for n in names if self._clients[n].usable(now)}
            chosen = choose_active(names, None, usable, held)
            if chosen is not None:
                self._active[group] = chosen
                log.info("appliance group %s: writing to %s (holdings %s)", group, chosen, held)

    async def _holdings(self, appliance: str, owners: set[str]) -> int | None:
        client = self._clients[appliance]
        count = 0
        try:
            for partition in sorted(self._partitions()):
                count += held_by(await client.actual(partition), owners, self.settings.prefix)
        except ApplianceError as exc:
            log.warning("appliance %s cannot be listed at start-up: %s", appliance, exc)
            return None
        except Exception:
            log.exception("listing appliance %s at start-up failed", appliance)
            return None
        return count

    def _target(self, group: str) -> str | None:
        """The group's active appliance; fails over (and moves its Services) when needed."""
        names = [a.name for a in self.settings.group(group)]
        now = time.monotonic()
        usable = {n for n in names if self._clients[n].usable(now)}
        current = self._active.get(group)
        chosen = choose_active(names, current, usable)
        if chosen is not None and chosen != current:
            self._active[group] = chosen
            if current is not None:
                log.warning(
                    "appliance group %s: %s is failing, moving its Services to %s",
                    group,
                    current,
                    chosen,
                )
                self._m_failovers.inc(group=group)
                for key, state in list(self._services.items()):
                    if state.assignment.appliance_group == group:
                        self._mark_again(key, "failover")
        return chosen

    def _on_breaker(self, appliance: str, before: BreakerState, after: BreakerState) -> None:
        group = self.settings.appliance(appliance).group
        if after == "open":
            self._target(group)
            return
        # It answers again: its Services stop waiting out their backoff, and a pass
        # repairs what happened meanwhile (or clears what a failover left there).
        for key, state in list(self._services.items()):
            if state.assignment.appliance_group == group and state.healthy is False:
                self._mark_again(key, "recovery")
        self._sweep[appliance].set()

    # --- reconciling -------------------------------------------------------------

    def _desired(self, key: ServiceKey, assignment: Assignment) -> dict[str, VirtualServer]:
        if isinstance(assignment, VipReleasing):
            return {}  # nothing may remain
        return desired_virtual_servers(
            assignment,
            self._nodes.get(key.cluster, {}),
            self._ready_nodes.get(key),
            prefix=self.settings.prefix,
        )

    async def _reconcile(
        self, key: ServiceKey, cause: _Cause, *, force: bool
    ) -> ApplianceError | None:
        """Make the appliance hold exactly what the Service needs now; report it.

        Returns the appliance error that stopped it (already reported as
        LbFailed), or None. Raises on anything else (a bus failure).
        """
        state = self._services.get(key)
        if state is None:
            return None
        assignment = state.assignment
        target = self._target(assignment.appliance_group)
        if target is None:
            # Not retried: only a configuration change (and so a restart) can help.
            state.healthy = False
            await self._report_failure(
                key,
                assignment,
                cause,
                force=force,
                appliance="",
                reason="UnknownApplianceGroup",
                message=f"no appliance is configured for group {assignment.appliance_group!r}",
            )
            return None
        client = self._clients[target]
        owner = owner_of(*key)
        try:
            desired = self._desired(key, assignment)
        except InvalidAssignment as exc:
            state.healthy = False
            await self._report_failure(
                key,
                assignment,
                cause,
                force=force,
                appliance=target,
                reason="InvalidAssignment",
                message=str(exc),
            )
            return None
        partition = key.cluster
        try:
            # The listing is not held across the write: every write makes a new one,
            # and in a burst hundreds of writes wait, each holding its own copy.
            scope = owned_scope(await client.actual(partition), owner, desired)
            ops = diff(desired, scope, self.settings.prefix)
            if ops:
                await client.apply(partition, ops)
        except ApplianceError as exc:
            self._m_reconciles.inc(result="failed")
            reason, message = _explain(exc)
            client.note_error(f"{reason}: {message}")
            level = logging.DEBUG if isinstance(exc, CircuitOpen) else logging.WARNING
            log.log(level, "programming %s on %s failed: %s", owner, target, exc)
            await self._report_failure(
                key,
                assignment,
                cause,
                force=force,
                appliance=target,
                reason=reason,
                message=message,
            )
            return exc
        state = self._services.get(key)
        if state is None:
            return None  # released meanwhile: nothing left to report about it
        state.placed = target
        state.healthy = True
        state.written = digest(desired.values())
        self._m_reconciles.inc(result="written" if ops else "unchanged")
        if ops:
            log.info("%s on %s/%s: %d operation(s)", owner, target, partition, len(ops))
        result = _outcome(key, assignment, target, desired)
        data = encode(result)
        stamp = fingerprint(data)
        # A forced reconcile answers an assignment: unless the stream already holds this
        # very answer, published after that assignment (a restart's replay), it says so.
        answered = force and self._answered_after(key, cause.seq)
        if state.published != stamp or (force and not answered):
            await self._publish(key, result, stamp, cause)
        return None

    def _answered_after(self, key: ServiceKey, seq: int) -> bool:
        report = self._reports.get(key)
        return report is not None and report[1] > seq

    async def _report_failure(
        self,
        key: ServiceKey,
        assignment: Assignment,
        cause: _Cause,
        *,
        force: bool,
        appliance: str,
        reason: str,
        message: str,
    ) -> None:
        failed = LbFailed(
            cluster=key.cluster,
            namespace=key.namespace,
            name=key.name,
            uid=assignment.uid,
            appliance=appliance,
            reason=reason,
            message=message,
            removing=isinstance(assignment, VipReleasing),
        )
        stamp = fingerprint(encode(failed))
        state = self._services.get(key)
        # Retries of the same failure are not news (each one would become an Event);
        # but at start-up an assignment the stream holds no answer to gets one.
        unanswered = force and not self._ready and not self._answered_after(key, cause.seq)
        if state is None or state.published != stamp or unanswered:
            await self._publish(key, failed, stamp, cause)

    async def _publish(
        self, key: ServiceKey, message: LbMessage, stamp: bytes, cause: _Cause
    ) -> None:
        state = self._services.get(key)
        count = state.publishes if state is not None else 0
        seq = await self.runtime.bus.publish(message, msg_id=self._msg_id(key, stamp, cause, count))
        state = self._services.get(key)
        if state is not None:
            state.publishes = count + 1
            state.published = stamp
        if not self._ready:
            self._reports[key] = (stamp, seq)  # the stream's last word now

    def _msg_id(self, key: ServiceKey, stamp: bytes, cause: _Cause, count: int) -> str:
        """Named by cause (for the reader), by incarnation and count (so a restart's
        confirmation, or a return to an earlier outcome, is never taken for a
        duplicate) and by content (so a publish retried after a timeout that in
        fact landed is dropped as one)."""
        service = "" if cause.family == "vip" else f":{key.namespace}.{key.name}"
        return (
            f"{cause.subject}#{cause.seq}->lb{service}:{self._incarnation}.{count}:"
            f"{stamp[:8].hex()}"
        )

    # --- drift and probes ----------------------------------------------------------

    async def _maintain(self, client: ApplianceClient) -> None:
        """Per appliance: drift passes every ``drift_interval_s`` (the first at once: the
        start-up sweep) and when asked; a pass whenever an open breaker allows a probe;
        and a health probe when the appliance has not answered for ``health_interval_s``
        (every second while its calls fail), so a dead active is noticed while idle."""
        requested = self._sweep[client.name]
        interval = self.settings.drift_interval_s
        health = self.settings.health_interval_s
        next_pass = time.monotonic()
        probed: float | None = None
        last_probe = time.monotonic()
        while True:
            retry_at = client.breaker.retry_at
            due = next_pass
            if retry_at is not None and retry_at != probed:
                due = min(due, retry_at)
            next_probe = math.inf
            if health > 0 and retry_at is None:
                every = 1.0 if client.breaker.failures else health
                next_probe = max(client.last_answer, last_probe) + min(every, health)
            timeout = min(due, next_probe) - time.monotonic()
            if retry_at is not None:
                timeout = min(timeout, 1.0)  # another caller's probe may reopen it meanwhile
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if math.isinf(timeout) else max(0.0, timeout)):
                    await requested.wait()
            now = time.monotonic()
            retry_at = client.breaker.retry_at
            may_probe = retry_at is not None and retry_at != probed and now >= retry_at
            if requested.is_set() or now >= due or may_probe:
                requested.clear()
                if may_probe:
                    probed = retry_at
                await self._maintenance(client, self._drift_pass(client))
                next_pass = time.monotonic() + interval if interval > 0 else math.inf
            elif now >= next_probe:
                last_probe = now
                partitions = sorted(self._partitions() | set(client.partitions()))
                if partitions:
                    await self._maintenance(client, client.probe(partitions[0]))

    async def _maintenance(self, client: ApplianceClient, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except CircuitOpen:
            pass
        except ApplianceError as exc:
            client.note_error(f"{exc.reason}: {exc}")
            log.info("maintenance of %s failed: %s", client.name, exc)
        except Exception:
            log.exception("maintenance of %s failed", client.name)

    async def _drift_pass(self, client: ApplianceClient) -> None:
        group = client.settings.group
        active = self._target(group) == client.name
        partitions = sorted(self._partitions() | set(client.partitions()))
        if not active and not self.settings.release_standby:
            # A standby sharing the active's configuration is never written; it is
            # only probed, so that its health is known when it is needed.
            if partitions and client.state(time.monotonic()) != "closed":
                await client.refresh(partitions[0])
            return
        for partition in partitions:
            await self._drift_partition(client, partition, active)

    def _placed_here(self, appliance: str, group: str, partition: str) -> list[ServiceKey]:
        if self._active.get(group) != appliance:
            return []  # a standby holds nothing of ours
        return [
            k
            for k in self._by_cluster.get(partition, ())
            if self._services[k].assignment.appliance_group == group
        ]

    def _staying(self, appliance: str, group: str, partition: str) -> set[str]:
        """Owner tags whose objects on this appliance are no orphans: the Services placed
        here, and (make before break) those whose last write went here, until they have
        been programmed where they are going (failover, new group)."""
        owners = {owner_of(*k) for k in self._placed_here(appliance, group, partition)}
        owners.update(
            owner_of(*k)
            for k in self._by_cluster.get(partition, ())
            if self._services[k].placed == appliance
        )
        return owners

    def _settled(self, key: ServiceKey, appliance: str) -> bool:
        """Its last write here succeeded and nothing newer is pending or running."""
        state = self._services.get(key)
        return (
            state is not None
            and state.placed == appliance
            and state.healthy is True
            and not self._schedule.busy(key)
        )

    async def _drift_partition(self, client: ApplianceClient, partition: str, active: bool) -> None:
        name, group = client.name, client.settings.group
        before = {
            k: self._services[k].generation
            for k in self._placed_here(name, group, partition)
            if self._settled(k, name)
        }
        actual = await client.refresh(partition)
        if (self._active.get(group) == name) != active:
            return  # failed over while we listed: the next pass sees the new roles
        # Every Service with objects in this listing is known now (objects are
        # written only for known Services): none of theirs is an orphan.
        staying = self._staying(name, group, partition)
        # A settled Service whose objects are exactly those it last wrote (same digest)
        # has no drift; only the others are computed and diffed. The comparisons are
        # made a chunk at a time, so a large partition does not hold up the rest.
        settled: dict[str, dict[str, VirtualServer]] = {}
        keys: dict[str, ServiceKey] = {}
        for i, (key, generation) in enumerate(before.items()):
            if i and i % _CHUNK == 0:
                await asyncio.sleep(0)
                if (self._active.get(group) == name) != active:
                    return
            state = self._services.get(key)
            if (
                state is None
                or state.generation != generation
                or not self._settled(key, name)
                or state.assignment.appliance_group != group
            ):
                continue  # changed while we listed: its own reconcile is the authority
            owner = owner_of(*key)
            if state.written is not None and digest(actual.of(owner).values()) == state.written:
                continue
            with contextlib.suppress(InvalidAssignment):
                settled[owner] = self._desired(key, state.assignment)
                keys[owner] = key
        # Services placed here since the listing keep what they may have adopted.
        placed = staying | self._staying(name, group, partition)
        found = find_drift(actual, settled, placed, self.settings.prefix)
        for owner, ops in found.repairs.items():
            log.warning(
                "drift on %s/%s: %d object(s) of %s were changed out of band; repairing",
                name,
                partition,
                len(ops),
                owner,
            )
            self._count_drift(name, "repair", len(ops))
            self._mark_again(keys[owner], "drift")
        if found.orphans:
            log.warning(
                "%s/%s: removing %d object(s) of ours that no Service accounts for",
                name,
                partition,
                len(found.orphans),
            )
            await client.apply(partition, found.orphans)
            self._count_drift(name, "orphan", len(found.orphans))

    def _count_drift(self, appliance: str, kind: str, count: int) -> None:
        self._m_drift.inc(count, appliance=appliance, kind=kind)
        self._drift_repairs += count

    # --- status ----------------------------------------------------------------------

    def status(self) -> LbdriverStatus:
        """What ``vipwire lb status`` shows: appliances, health, objects, last write."""
        now = time.monotonic()
        services = Counter(s.placed for s in self._services.values() if s.placed is not None)
        appliances = []
        for a in self.settings.appliances:
            client = self._clients[a.name]
            retry_at = client.breaker.retry_at
            appliances.append(
                ApplianceStatus(
                    name=a.name,
                    driver=a.driver,
                    group=a.group,
                    address=redact_address(a.address),
                    active=self._active.get(a.group) == a.name,
                    health=client.state(now),
                    failures=client.breaker.failures,
                    retry_in_s=None if retry_at is None else max(0.0, retry_at - now),
                    virtual_servers=client.virtual_servers(),
                    services=services[a.name],
                    writes=client.writes,
                    last_write_at=client.last_write_at,
                    last_error=client.last_error,
                    last_error_at=client.last_error_at,
                )
            )
        return LbdriverStatus(
            instance=self._incarnation,
            now=time.time(),
            ready=self._ready,
            services=len(self._services),
            pending=self._schedule.pending_count(),
            failing=sum(1 for s in self._services.values() if s.healthy is False),
            drift_repairs=self._drift_repairs,
            appliances=tuple(appliances),
        )

    async def _on_status_request(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            await msg.respond(encode_status(self.status()))
        except nats.errors.Error as exc:
            log.debug("status request not answered: %r", exc)


def _outcome(
    key: ServiceKey, assignment: Assignment, appliance: str, desired: dict[str, VirtualServer]
) -> LbProgrammed | LbRemoved:
    """The report of a reconcile that succeeded."""
    if isinstance(assignment, VipReleasing):
        return LbRemoved(
            cluster=key.cluster,
            namespace=key.namespace,
            name=key.name,
            uid=assignment.uid,
            appliance=appliance,
            vips=assignment.vips,
        )
    return LbProgrammed(
        cluster=key.cluster,
        namespace=key.namespace,
        name=key.name,
        uid=assignment.uid,
        appliance=appliance,
        vips=assignment.vips,
        ports=assignment.ports,
        members=members_of(desired.values()),
        external_traffic_policy=assignment.external_traffic_policy,
    )


def _explain(exc: ApplianceError) -> tuple[str, str]:
    """The reason and message to publish for a failed call.

    A call refused by an open breaker reports the failure that opened it, so a
    Service's status keeps the appliance's own reason (and stays unchanged,
    hence is not republished, while the breaker is open).
    """
    error = exc.last if isinstance(exc, CircuitOpen) and exc.last is not None else exc
    message = str(error)
    if isinstance(error, ApplianceAuthError):
        message += f" (check the credentials configured for appliance {error.appliance})"
    return error.reason, message
