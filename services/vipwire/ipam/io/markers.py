"""The sweeps of what deleted objects leave behind: every released Service and
address leaves a delete marker in the bucket, and every deleted Service or Node
its subjects in the stream; old ones are dropped now and then."""

from __future__ import annotations

import asyncio
import logging

from vipwire.bus import Bus, BusError
from vipwire.ipam.io.bucket import StoreError
from vipwire.ipam.io.claim_cache import ClaimCache
from vipwire.ipam.io.metrics import IpamMetrics

log = logging.getLogger("vipwire.ipam")


async def sweep_markers(
    cache: ClaimCache, metrics: IpamMetrics, *, interval_s: float, max_age_s: float
) -> None:
    """Now and then, drop the bucket's old delete markers (see IpamSettings)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            count = await cache.store.purge_markers(max_age_s)
        except StoreError as exc:
            log.warning(
                "could not drop old delete markers (%s); next try in %.0fs", exc, interval_s
            )
            continue
        if count:
            metrics.markers.inc(count)
            log.info("dropped %d delete markers older than %.0fs", count, max_age_s)


async def sweep_ended(
    bus: Bus, metrics: IpamMetrics, *, interval_s: float, max_age_s: float
) -> None:
    """Now and then, purge the subjects of Services and Nodes that ended long ago
    (every replica may: a purge below a read sequence is idempotent)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            purged = await bus.purge_ended(max_age_s=max_age_s)
        except BusError as exc:
            log.warning("could not purge ended subjects (%s); next try in %.0fs", exc, interval_s)
            continue
        if purged:
            metrics.ended.inc(len(purged))
            log.info(
                "purged %d subjects of Services and Nodes ended over %.0fs ago",
                len(purged),
                max_age_s,
            )
