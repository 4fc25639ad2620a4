"""The node agent's shell: bus in, applier out, ``NodeApplied`` back to the bus.

State is rebuilt from the bus on every start (ephemeral consumer, last message
per subject), so the agent keeps nothing on disk. It applies nothing until it
has caught up with the stream: applying a half-read VIP set would briefly
withdraw the other VIPs on every restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

import nats.js.errors

from vipwire.bus import DONE, BusError, ConsumerSpec, Delivery, Retry, Verdict
from vipwire.contracts import (
    STREAM,
    EndpointsSnapshot,
    LbProgrammed,
    LbRemoved,
    MalformedMessage,
    Message,
    NodeApplied,
    decode,
    family_filter,
    node_subject,
)
from vipwire.nodeagent.apply import Applier, ApplyError, make_applier
from vipwire.nodeagent.desired import desired_state
from vipwire.nodeagent.plan import plan
from vipwire.nodeagent.settings import NodeagentSettings
from vipwire.runtime import ConfigError, Runtime

log = logging.getLogger("vipwire.nodeagent")


class _Consumer(Protocol):
    async def start(self) -> None: ...

    async def caught_up(self, timeout: float | None = None) -> None: ...

    async def stop(self) -> None: ...


def _backoff(attempt: int) -> float:
    return float(min(0.25 * 2 ** max(attempt - 1, 0), 30.0))


class NodeagentService:
    """Keeps this node's VIPs (and, standalone, its DNAT rules) in line with the appliance."""

    def __init__(
        self,
        settings: NodeagentSettings,
        runtime: Runtime,
        applier: Applier | None = None,
    ) -> None:
        try:
            self.settings = settings.for_this_node()
        except ValueError as exc:
            raise ConfigError(f"nodeagent: {exc}") from exc
        self._runtime = runtime
        self._applier = applier if applier is not None else make_applier(self.settings)
        self._programmed: dict[str, LbProgrammed] = {}
        self._endpoints: dict[str, EndpointsSnapshot] = {}
        # Changes recorded vs. changes applied and reported: a handler whose
        # change someone else already covered has nothing left to do.
        self._changes = 0
        self._applied = -1
        self._lock = asyncio.Lock()
        self._live = False
        self._ready = asyncio.Event()
        self._problem: str | None = None
        self._generation = 0
        self._reported: tuple[str, ...] | None = None
        self._warned: set[str] = set()
        self._consumer: _Consumer | None = None
        self._task: asyncio.Task[None] | None = None
        m = runtime.metrics
        self._m_applies = m.counter(
            "nodeagent_applies_total", "Applies that changed the node, by result", ["result"]
        )
        self._m_actions = m.counter(
            "nodeagent_actions_total", "Actions applied to the node, by kind", ["action"]
        )
        self._m_vips = m.gauge("nodeagent_vips", "VIPs this node serves now")
        self._m_generation = m.gauge("nodeagent_generation", "Generation of the last apply")

    # --- lifecycle ---------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self._generation

    async def start(self) -> None:
        s = self.settings
        self._generation = await self._last_generation()
        self._m_generation.set(self._generation)
        filters = [family_filter("lb", s.cluster)]
        if s.mode == "standalone":
            filters.append(family_filter("endpoints", s.cluster))
        spec = ConsumerSpec(filters=tuple(filters), deliver="last_per_subject")
        consumer = self._runtime.bus.consumer(spec, self._handle)
        self._consumer = consumer
        await consumer.start()
        self._task = asyncio.create_task(self._run(consumer), name=f"nodeagent-{s.node}")
        log.info(
            "node agent for %s in cluster %s started (%s mode%s)",
            s.node,
            s.cluster,
            s.mode,
            ", dry run" if self._applier.dry_run else "",
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()

    def readiness(self) -> str | None:
        if self._consumer is None:
            return "not started"
        if not self._ready.is_set():
            return self._problem or "catching up with the bus"
        return None

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the first apply after catching up is done."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def _last_generation(self) -> int:
        """Continue the generation this node last reported, so it never goes back."""
        s = self.settings
        subject = node_subject("applied", s.cluster, s.node)
        try:
            raw = await self._runtime.bus.js.get_last_msg(STREAM, subject)
        except nats.js.errors.NotFoundError:
            return 0
        try:
            last = decode(subject, raw.data or b"")
        except MalformedMessage as exc:
            log.warning("ignoring the last applied message of %s: %s", s.node, exc)
            return 0
        return last.generation if isinstance(last, NodeApplied) else 0

    async def _run(self, consumer: _Consumer) -> None:
        await consumer.caught_up()
        attempt = 0
        while True:
            attempt += 1
            self._live = True
            try:
                with self._runtime.tracer.start_as_current_span("nodeagent initial apply"):
                    async with self._lock:
                        await self._reconcile(msg_id=None)
                break
            except Exception as exc:
                self._problem = f"first apply failed: {exc}"
                log.warning("first apply failed (attempt %d): %s", attempt, exc, exc_info=exc)
                await asyncio.sleep(_backoff(attempt))
        self._problem = None
        self._ready.set()
        interval = self.settings.resync_interval
        while interval > 0:
            await asyncio.sleep(interval)
            # Repairs drift and retries what failed, without any message to prompt it.
            try:
                async with self._lock:
                    await self._reconcile(msg_id=None)
            except Exception as exc:
                log.warning("resync failed: %s", exc, exc_info=exc)

    # --- handling ----------------------------------------------------------------

    async def _handle(self, d: Delivery) -> Verdict:
        if d.subject.cluster != self.settings.cluster:
            return DONE
        if self._record(d.message):
            self._changes += 1
        mark = self._changes
        if not self._live or self._applied >= mark:
            return DONE
        if self.settings.coalesce_ms:
            await asyncio.sleep(self.settings.coalesce_ms / 1000)
        async with self._lock:
            if self._applied >= mark:
                return DONE
            try:
                await self._reconcile(msg_id=d.derive_id(f"applied:{self.settings.node}"))
            except ApplyError as exc:
                return Retry(delay=_backoff(d.num_delivered), reason=str(exc))
        return DONE

    def _record(self, message: Message) -> bool:
        """Remember what the message says; True if that differs from what we knew."""
        match message:
            case LbProgrammed():
                key = f"{message.namespace}/{message.name}"
                if self._programmed.get(key) == message:
                    return False
                self._programmed[key] = message
                return True
            case LbRemoved():
                key = f"{message.namespace}/{message.name}"
                return self._programmed.pop(key, None) is not None
            case EndpointsSnapshot() if self.settings.mode == "standalone":
                key = f"{message.namespace}/{message.name}"
                if self._endpoints.get(key) == message:
                    return False
                self._endpoints[key] = message
                return True
            case _:
                # LbFailed: the appliance may still serve the old VIPs, so the
                # node keeps them until LbProgrammed or LbRemoved says otherwise.
                return False

    async def _reconcile(self, *, msg_id: str | None) -> None:
        """Bring the node to the desired state and report it. Call with the lock held."""
        s = self.settings
        mark = self._changes
        desired = desired_state(
            self._programmed,
            self._endpoints,
            node=s.node,
            mode=s.mode,
            interface=s.loopback_interface,
            uplink=s.uplink_interface,
            table=s.nft_table,
        )
        for reason in desired.ignored:
            if reason not in self._warned:
                log.warning("ignored: %s", reason)
        # Warn once per problem while it lasts, and again if it comes back.
        self._warned = set(desired.ignored)
        current = await self._applier.current()
        actions = plan(current, desired)
        if actions:
            with self._runtime.tracer.start_as_current_span(
                "nodeagent apply",
                attributes={
                    "k8s.node.name": s.node,
                    "vipwire.cluster": s.cluster,
                    "vipwire.actions": len(actions),
                    "vipwire.dry_run": self._applier.dry_run,
                },
            ):
                try:
                    await self._applier.apply(actions)
                except ApplyError:
                    self._m_applies.inc(result="failed")
                    raise
            self._generation += 1
            self._m_applies.inc(result="applied")
            for action in actions:
                self._m_actions.inc(action=str(type(action).__struct_config__.tag))
            self._m_generation.set(self._generation)
            log.info(
                "generation %d: applied %d actions, %d VIPs%s",
                self._generation,
                len(actions),
                len(desired.addresses),
                " (dry run)" if self._applier.dry_run else "",
            )
        self._m_vips.set(len(desired.addresses))
        if desired.vips != self._reported:
            await self._report(desired.vips, msg_id)
            self._reported = desired.vips
        self._applied = mark

    async def _report(self, vips: tuple[str, ...], msg_id: str | None) -> None:
        s = self.settings
        message = NodeApplied(
            cluster=s.cluster,
            node=s.node,
            generation=self._generation,
            vips=vips,
            mode=s.mode,
            dry_run=self._applier.dry_run,
        )
        try:
            await self._runtime.bus.publish(message, msg_id=msg_id)
        except BusError:
            log.warning("could not report generation %d; will retry", self._generation)
            raise
