"""VIPs the node refuses to serve: logged with their Service, counted."""

from __future__ import annotations

import logging

from vipwire.nodeagent.core.desired import VipRanges
from vipwire.runtime import Runtime

log = logging.getLogger("vipwire.nodeagent")


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
