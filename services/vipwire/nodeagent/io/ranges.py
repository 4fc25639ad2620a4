"""Where this node's VIPs may be: the pools ipam publishes, read; refusals told.

The pools come from ``vipwire.<cluster>.pools.all`` (a consumer of their own:
one filter per consumer), read before the first apply so that no VIP waits for
them on a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from vipwire.bus import DONE, ConsumerSpec, Delivery, Listening, PullConsumer, Verdict
from vipwire.contracts import (
    MalformedMessage,
    PoolsServed,
    cluster_subject,
    decode,
    family_filter,
)
from vipwire.nodeagent.core.desired import Network, VipRanges, parse_ranges
from vipwire.runtime import Runtime

log = logging.getLogger("vipwire.nodeagent")


class PoolsReader:
    """Hands every new ``PoolsServed`` of the cluster to ``on_pools`` as networks."""

    def __init__(
        self,
        runtime: Runtime,
        cluster: str,
        on_pools: Callable[[tuple[Network, ...], str], None],
        *,
        live: bool = False,
    ) -> None:
        self._runtime = runtime
        self._cluster = cluster
        self._on_pools = on_pools
        #: Without a consumer: the subject's last message, then a core subscription.
        self._live = live
        self._listening: Listening | None = None
        #: Messages that came while the last one was read (None: that read is done).
        self._early: list[tuple[str, bytes]] | None = []
        self._consumer: PullConsumer | None = None
        self._last: tuple[str, ...] | None = None

    async def start(self) -> None:
        if self._live:
            await self._start_live()
            return
        spec = ConsumerSpec(
            filters=(family_filter("pools", self._cluster),),
            deliver="last_per_subject",
            ack="none",
            traced=False,
        )
        self._consumer = self._runtime.bus.consumer(spec, self._handle)
        await self._consumer.start()

    async def _start_live(self) -> None:
        bus = self._runtime.bus
        subject = cluster_subject("pools", self._cluster)
        # Subscribed first: what ipam publishes while the last one is read is kept.
        self._listening = await bus.listen(subject, self._on_core)
        stored = await bus.last_message(subject)
        early, self._early = self._early or [], None
        if stored is not None:
            self._take(stored.subject, stored.data)
        for raw_subject, data in early:
            self._take(raw_subject, data)

    async def _on_core(self, subject: str, data: bytes, headers: Mapping[str, str]) -> None:
        if self._early is not None:
            self._early.append((subject, data))
        else:
            self._take(subject, data)

    def _take(self, subject: str, data: bytes) -> None:
        try:
            message = decode(subject, data)
        except MalformedMessage as exc:
            log.warning("%s: ignored; the pools before it stay in force", exc)
            return
        self._pools(message, subject)

    async def caught_up(self) -> None:
        if self._consumer is not None:
            await self._consumer.caught_up()

    async def stop(self) -> None:
        if self._listening is not None:
            await self._listening.stop()
            self._listening = None
        if self._consumer is not None:
            await self._consumer.stop()

    async def _handle(self, d: Delivery) -> Verdict:
        self._pools(d.message, d.subject.raw)
        return DONE

    def _pools(self, message: object, subject: str) -> None:
        if not isinstance(message, PoolsServed) or message.cluster != self._cluster:
            return
        if message.ranges != self._last:
            self._last = message.ranges
            log.info("pools of cluster %s: %s", self._cluster, ", ".join(message.ranges) or "none")
        networks, bad = parse_ranges(message.ranges)
        if bad:
            log.warning("%s: ignoring entries that are not CIDRs: %s", subject, bad)
        self._on_pools(networks, subject)


class Refusals:
    """Tells of each refused VIP once per refusal (``ns/name vip``), and counts them."""

    def __init__(self, runtime: Runtime, cluster: str) -> None:
        self._cluster = cluster
        self._m_refused = runtime.metrics.counter(
            "nodeagent_rejected_vips_total",
            "VIPs of programmed Services this node refused to serve: outside the pools "
            "ipam serves its cluster, or outside nodeagent.vip_ranges",
        )

    def refused(self, entries: tuple[str, ...], ranges: VipRanges, subject_of: str) -> None:
        """``entries``: newly refused ``ns/name vip``; ``subject_of``: what said so."""
        for entry in entries:
            key, _, vip = entry.partition(" ")
            self._m_refused.inc()
            log.warning(
                "refusing VIP %s of Service %s/%s (%s): outside %s; not put on this node, "
                "what it served for the Service before stays. Check who published it, "
                "or the pools (vipwire ipam status) and nodeagent.vip_ranges",
                vip,
                self._cluster,
                key,
                subject_of,
                ranges.describe(),
            )

    def unknown(self) -> None:
        """No range known after catching up: say why nothing is added."""
        log.warning(
            "no pools published for cluster %s yet (%s) and no nodeagent.vip_ranges: no VIP "
            "is added to this node, and none taken off, until ipam publishes them",
            self._cluster,
            cluster_subject("pools", self._cluster),
        )
