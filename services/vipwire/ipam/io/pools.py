"""ipam publishes each cluster's ``PoolsServed`` (``vipwire.<cluster>.pools.all``).

At start (once the claims are loaded), after every pool reload, for a cluster
first heard from (when ``ipam.clusters`` is not set), and once a minute (a
stream that lost the subject, a claim kept outside the pools). Only when the
subject's last message says something else: replicas and restarts do not grow
the stream. A publish that fails is tried again until it succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from vipwire.bus import Bus, BusError
from vipwire.contracts import MalformedMessage, cluster_subject, decode
from vipwire.ipam.core.allocator import Allocator
from vipwire.ipam.core.served import clusters_to_tell, pools_served
from vipwire.ipam.settings import IpamSettings

log = logging.getLogger("vipwire.ipam")

#: Seconds between attempts while publishing fails.
_RETRY_S = 2.0
#: Seconds between looks at every cluster's subject, with nothing else to prompt one.
_CHECK_S = 60.0


class PoolsPublisher:
    """Keeps every served cluster's ``pools`` subject saying what ipam would say now."""

    def __init__(
        self, bus: Bus, settings: Callable[[], IpamSettings], allocator: Callable[[], Allocator]
    ) -> None:
        self._bus = bus
        self._settings = settings
        self._allocator = allocator
        self._seen: set[str] = set()
        self._due = asyncio.Event()

    def heard_from(self, cluster: str) -> None:
        """A message from this cluster was admitted: tell it its pools if not yet."""
        if cluster not in self._seen:
            self._seen.add(cluster)
            self._due.set()

    def changed(self) -> None:
        """Pools were reloaded: publish what changed."""
        self._due.set()

    async def publish_now(self) -> None:
        """Publish every cluster whose subject does not say what it should."""
        settings = self._settings()
        claims = self._allocator().claims()
        for cluster in clusters_to_tell(settings.clusters, settings.pools, self._seen):
            wanted = pools_served(settings.pools, cluster, claims)
            subject = cluster_subject("pools", cluster)
            last = await self._bus.last_message(subject)
            current = None
            if last is not None:
                try:
                    current = decode(subject, last.data)
                except MalformedMessage:
                    current = None
            if current != wanted:
                await self._bus.publish(wanted)
                log.info(
                    "published the pools of cluster %s on %s: %s (pools %s)",
                    cluster,
                    subject,
                    ", ".join(wanted.ranges) or "none",
                    ", ".join(wanted.pools) or "none",
                )

    async def run(self) -> None:
        """Publish at once, then whenever due; retried while the bus refuses."""
        self._due.set()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), _CHECK_S)
            self._due.clear()
            try:
                await self.publish_now()
            except BusError as exc:
                log.warning("cannot publish the pools (retrying in %.0fs): %s", _RETRY_S, exc)
                await asyncio.sleep(_RETRY_S)
                self._due.set()
