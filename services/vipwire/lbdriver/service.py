"""The lbdriver shell: rebuild state from the bus, program appliances, report.

State comes from two ephemeral consumers that start from the last message of
every subject: first nodes and endpoints (waited for, so that no Service is
ever programmed against a half-known cluster, which would drop members), then
VIP assignments. Every decision is in the pure core (``desired``, ``diff``,
``placement``); this module only loads, calls, applies and publishes.

Each Service is reconciled as a whole ("make the appliance match what we know
now"), under its own lock, so any trigger (assignment, node, endpoints,
retry) converges the same way and one Service never waits for another.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Final, NamedTuple, Protocol

from vipwire.bus import DONE, ConsumerSpec, Delivery, Reject, Retry, Verdict
from vipwire.contracts import (
    EndpointsSnapshot,
    LbFailed,
    LbMessage,
    LbProgrammed,
    LbRemoved,
    NodeGone,
    NodeSnapshot,
    VipAssigned,
    VipFailed,
    VipReleased,
    VipReleasing,
    encode,
    family_filter,
)
from vipwire.lbdriver._appliance import ApplianceClient
from vipwire.lbdriver.desired import (
    InvalidAssignment,
    desired_virtual_servers,
    members_of,
    owner_of,
)
from vipwire.lbdriver.diff import diff
from vipwire.lbdriver.drivers import ApplianceDriver, ApplianceError, build_driver
from vipwire.lbdriver.model import VirtualServer
from vipwire.lbdriver.placement import pick_appliance
from vipwire.lbdriver.settings import LbdriverSettings
from vipwire.runtime import Runtime

log = logging.getLogger("vipwire.lbdriver")

# An appliance outage lasts as long as it lasts; a VIP assignment given up as
# poison would stay unprogrammed until ipam happened to republish it.
_DELIVER_FOREVER: Final = 2**31 - 1


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


class _Abandoned(Exception):
    """The reconcile this request joined was cancelled before it finished."""


class _Batch:
    """Requests to reconcile one Service that one reconcile will satisfy."""

    def __init__(self, future: asyncio.Future[BaseException | None], cause: Delivery) -> None:
        self.done = future
        self.cause = cause
        self.force = False


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
                metrics=runtime.metrics,
                tracer=runtime.tracer,
                unhealthy_cooldown_s=settings.unhealthy_cooldown_s,
            )
            for a in settings.appliances
        }
        self._incarnation = uuid.uuid4().hex[:8]
        self._window = settings.coalesce_window_ms / 1000
        self._nodes: dict[str, dict[str, NodeSnapshot]] = {}
        self._endpoints: dict[ServiceKey, EndpointsSnapshot] = {}
        self._assignments: dict[ServiceKey, Assignment] = {}
        self._published: dict[ServiceKey, LbMessage] = {}
        self._locks: dict[ServiceKey, asyncio.Lock] = {}
        self._pending: dict[ServiceKey, _Batch] = {}
        self._state_consumer: _Consumer | None = None
        self._vip_consumer: _Consumer | None = None
        self._ready_task: asyncio.Task[None] | None = None
        self._ready = False
        m = runtime.metrics
        self._m_reconciles = m.counter(
            "lbdriver_reconciles_total",
            "Service reconciles, by result (written, unchanged, failed)",
            ["result"],
        )
        m.gauge(
            "lbdriver_services",
            "Services with assigned or releasing VIPs",
            fn=lambda: float(len(self._assignments)),
        )

    @property
    def drivers(self) -> dict[str, ApplianceDriver]:
        """The driver of every appliance, by name."""
        return {name: client.driver for name, client in self._clients.items()}

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        bus = self.runtime.bus
        self._state_consumer = bus.consumer(
            ConsumerSpec(
                filters=(family_filter("node"), family_filter("endpoints")),
                deliver="last_per_subject",
                concurrency=self.settings.concurrency,
                max_deliveries=_DELIVER_FOREVER,
            ),
            self._on_state,
        )
        await self._state_consumer.start()
        await self._state_consumer.caught_up()
        self._vip_consumer = bus.consumer(
            ConsumerSpec(
                filters=(family_filter("vip"),),
                deliver="last_per_subject",
                concurrency=self.settings.concurrency,
                max_deliveries=_DELIVER_FOREVER,
            ),
            self._on_vip,
        )
        await self._vip_consumer.start()
        self._ready_task = asyncio.create_task(
            self._await_replay(self._vip_consumer), name="lbdriver-replay"
        )

    async def _await_replay(self, consumer: _Consumer) -> None:
        await consumer.caught_up()
        self._ready = True
        log.info("lbdriver caught up: %d services known", len(self._assignments))

    def readiness(self) -> str | None:
        return None if self._ready else "replaying VIP assignments"

    async def stop(self) -> None:
        for consumer in (self._vip_consumer, self._state_consumer):
            if consumer is not None:
                await consumer.stop()
        if self._ready_task is not None:
            self._ready_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ready_task
            self._ready_task = None
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
        return await self._reconcile_all(affected, d, force=False)

    async def _on_vip(self, d: Delivery) -> Verdict:
        message = d.message
        match message:
            case VipAssigned() | VipReleasing():
                key = ServiceKey(message.cluster, message.namespace, message.name)
                self._assignments[key] = message
                # Always confirm, even with nothing to write: a replay must answer.
                return await self._reconcile_all([key], d, force=True)
            case VipReleased():
                self._forget(ServiceKey(message.cluster, message.namespace, message.name))
                return DONE
            case VipFailed():
                # No VIP to serve; whatever an earlier assignment programmed stays
                # until ipam releases it (the claim still holds the address).
                return DONE
            case _:
                return Reject(f"unexpected {type(message).__name__} on {d.subject.raw}")

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
            for key, assignment in self._assignments.items()
            if key.cluster == message.cluster and isinstance(assignment, VipAssigned)
        ]

    def _note_endpoints(self, message: EndpointsSnapshot) -> list[ServiceKey]:
        key = ServiceKey(message.cluster, message.namespace, message.name)
        before = self._endpoints.get(key)
        self._endpoints[key] = message
        assignment = self._assignments.get(key)
        if not isinstance(assignment, VipAssigned):
            return []
        if assignment.external_traffic_policy != "Local":
            return []  # with Cluster every eligible node is a member, endpoints or not
        if before is not None and before.ready_nodes == message.ready_nodes:
            return []
        return [key]

    def _forget(self, key: ServiceKey) -> None:
        self._assignments.pop(key, None)
        self._published.pop(key, None)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked() and key not in self._pending:
            del self._locks[key]

    # --- reconciling -------------------------------------------------------------

    async def _reconcile_all(
        self, keys: Iterable[ServiceKey], cause: Delivery, *, force: bool
    ) -> Verdict:
        keys = list(keys)
        if not keys:
            return DONE
        outcomes = await asyncio.gather(*(self._request(k, cause, force=force) for k in keys))
        failed = [o for o in outcomes if isinstance(o, ApplianceError)]
        broken = [o for o in outcomes if o is not None and not isinstance(o, ApplianceError)]
        if broken:
            raise RuntimeError(f"reconcile failed for {len(broken)} service(s)") from broken[0]
        if failed:
            delay = min(
                self.settings.retry_initial_s * 2 ** (cause.num_delivered - 1),
                self.settings.retry_max_s,
            )
            return Retry(delay=delay, reason=str(failed[0]))
        return DONE

    async def _request(
        self, key: ServiceKey, cause: Delivery, *, force: bool
    ) -> BaseException | None:
        """Reconcile one Service soon; requests arriving meanwhile share the result.

        The first request waits out the coalescing window, then for the
        Service's lock; requests arriving until the reconcile reads the state
        join it (they only changed state it has yet to read).
        """
        batch = self._pending.get(key)
        if batch is None:
            batch = _Batch(asyncio.get_running_loop().create_future(), cause)
            self._pending[key] = batch
            leader = True
        else:
            leader = False
        if force and not batch.force:
            # The confirmation this request needs is named after its own cause.
            batch.force = True
            batch.cause = cause
        if not leader:
            return await asyncio.shield(batch.done)
        outcome: BaseException | None
        try:
            if self._window > 0:
                await asyncio.sleep(self._window)
            async with self._lock(key):
                if self._pending.get(key) is batch:
                    del self._pending[key]
                outcome = await self._reconcile(key, batch.cause, force=batch.force)
        except asyncio.CancelledError:
            if self._pending.get(key) is batch:
                del self._pending[key]
            batch.done.set_result(_Abandoned(f"reconcile of {key} was cancelled"))
            raise
        except Exception as exc:
            log.exception("reconcile of %s/%s/%s failed", *key)
            outcome = exc
        batch.done.set_result(outcome)
        return outcome

    def _lock(self, key: ServiceKey) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _reconcile(
        self, key: ServiceKey, cause: Delivery, *, force: bool
    ) -> Exception | None:
        """Make the appliance hold exactly what the Service needs now; report it.

        Returns the appliance error that stopped it (already reported as
        LbFailed), or None. Raises on anything else (a bus failure).
        """
        assignment = self._assignments.get(key)
        if assignment is None:
            return None
        group = self.settings.group(assignment.appliance_group)
        now = time.monotonic()
        unhealthy = {name for name, c in self._clients.items() if not c.healthy(now)}
        chosen = pick_appliance(group, unhealthy)
        if chosen is None:
            # Not retried: only a configuration change (and so a restart) can help.
            await self._report_failure(
                key,
                assignment,
                cause,
                appliance="",
                reason="UnknownApplianceGroup",
                message=f"no appliance is configured for group {assignment.appliance_group!r}",
            )
            return None
        client = self._clients[chosen.name]
        owner = owner_of(*key)
        desired: dict[str, VirtualServer] = {}  # releasing: nothing may remain
        if isinstance(assignment, VipAssigned):
            try:
                desired = desired_virtual_servers(
                    assignment,
                    self._nodes.get(key.cluster, {}),
                    self._endpoints.get(key),
                    prefix=self.settings.prefix,
                )
            except InvalidAssignment as exc:
                await self._report_failure(
                    key,
                    assignment,
                    cause,
                    appliance=chosen.name,
                    reason="InvalidAssignment",
                    message=str(exc),
                )
                return None
        partition = key.cluster
        try:
            actual = await client.actual(partition)
            # Ours by owner tag; a name we want but someone else's tag is taken
            # over (ipam says the VIP is this Service's now).
            scope = {n: s for n, s in actual.items() if s.owner == owner or n in desired}
            ops = diff(desired, scope, self.settings.prefix)
            if ops:
                await client.apply(partition, ops)
        except ApplianceError as exc:
            self._m_reconciles.inc(result="failed")
            log.warning("programming %s on %s failed: %s", owner, chosen.name, exc)
            await self._report_failure(
                key, assignment, cause, appliance=chosen.name, reason=exc.reason, message=str(exc)
            )
            return exc
        self._m_reconciles.inc(result="written" if ops else "unchanged")
        if ops:
            log.info("%s on %s/%s: %d operation(s)", owner, chosen.name, partition, len(ops))
        result: LbMessage
        if isinstance(assignment, VipReleasing):
            result = LbRemoved(
                cluster=key.cluster,
                namespace=key.namespace,
                name=key.name,
                uid=assignment.uid,
                appliance=chosen.name,
                vips=assignment.vips,
            )
        else:
            result = LbProgrammed(
                cluster=key.cluster,
                namespace=key.namespace,
                name=key.name,
                uid=assignment.uid,
                appliance=chosen.name,
                vips=assignment.vips,
                ports=assignment.ports,
                members=members_of(desired.values()),
                external_traffic_policy=assignment.external_traffic_policy,
            )
        if force or self._published.get(key) != result:
            await self._publish(key, result, cause)
        return None

    async def _report_failure(
        self,
        key: ServiceKey,
        assignment: Assignment,
        cause: Delivery,
        *,
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
        # Retries of the same failure are not news (each one would become an Event).
        if self._published.get(key) != failed:
            await self._publish(key, failed, cause)

    async def _publish(self, key: ServiceKey, message: LbMessage, cause: Delivery) -> None:
        await self.runtime.bus.publish(message, msg_id=self._msg_id(key, message, cause))
        self._published[key] = message

    def _msg_id(self, key: ServiceKey, message: LbMessage, cause: Delivery) -> str:
        """Named by cause, so a redelivery does not publish twice; by content, since
        one cause may lead to different results (batches join causes); and by
        incarnation, so a restart's confirmation is never taken for a duplicate."""
        digest = hashlib.sha256(encode(message)).hexdigest()[:16]
        service = "" if cause.subject.family == "vip" else f":{key.namespace}.{key.name}"
        return cause.derive_id(f"lb{service}:{self._incarnation}:{digest}")
