"""ipam's metrics: what it hands out, refuses and loses, and how full its pools are."""

from __future__ import annotations

from collections.abc import Callable

from vipwire.ipam.core.allocator import Allocator
from vipwire.metrics import Registry


class IpamMetrics:
    """Counters bumped by the shell; pool gauges computed per scrape."""

    def __init__(
        self, registry: Registry, allocator: Callable[[], Allocator], waiting: Callable[[], int]
    ) -> None:
        m = registry
        self._allocator = allocator
        self.allocations = m.counter(
            "ipam_allocations_total", "Services given addresses, by pool", ["pool"]
        )
        self.releases = m.counter(
            "ipam_releases_total", "Services whose addresses were released, by pool", ["pool"]
        )
        self.failures = m.counter(
            "ipam_allocation_failures_total", "Allocations refused, by reason", ["reason"]
        )
        self.conflicts = m.counter(
            "ipam_conflicts_total", "Compare-and-set writes lost to another writer"
        )
        self.size = m.gauge(
            "ipam_pool_addresses", "Addresses a pool can hand out", ["pool", "family"]
        )
        self.in_use = m.gauge(
            "ipam_pool_addresses_in_use", "Addresses of a pool owned now", ["pool", "family"]
        )
        self.stale = m.gauge(
            "ipam_stale_allocations",
            "Addresses given from a pool that it would not give now (kept, never moved)",
            ["pool", "family"],
        )
        self.reloads = m.counter(
            "ipam_reloads_total", "Pool configuration reloads, by result", ["result"]
        )
        self.operator_releases = m.counter(
            "ipam_operator_releases_total", "Allocations released by an operator"
        )
        self.markers = m.counter(
            "ipam_kv_markers_dropped_total", "Old delete markers dropped from the bucket"
        )
        self.ended = m.counter(
            "ipam_stream_ended_subjects_purged_total",
            "Subjects of long-ended Services and Nodes purged from the stream",
        )
        self.status_vips = m.counter(
            "ipam_status_vips_total",
            "Addresses in the status of a Service ipam held nothing for (its store was "
            "lost): given back (kept) or not (not_kept: a StatusVIPNotKept Warning Event)",
            ["outcome"],
        )
        self.refused = m.counter(
            "ipam_refused_total",
            "Messages refused before any decision, by reason (unknown-cluster: from a "
            "cluster not named in ipam.clusters)",
            ["reason"],
        )
        self._stale_gauges = True
        m.on_collect(self._collect)
        m.gauge(
            "ipam_waiting_services",
            "Services waiting for an address to be released",
            fn=lambda: float(waiting()),
        )

    def changed(self) -> None:
        """Claims changed: recompute the pool gauges at the next scrape.

        Per scrape, not per change: usage() walks every pool, family and cluster,
        and claims change on every allocation of every replica.
        """
        self._stale_gauges = True

    def _collect(self) -> None:
        if not self._stale_gauges:
            return
        self._stale_gauges = False
        for usage in self._allocator().usage():
            self.size.set(usage.size, pool=usage.pool, family=usage.family)
            self.in_use.set(usage.in_use, pool=usage.pool, family=usage.family)
            self.stale.set(usage.stale, pool=usage.pool, family=usage.family)
