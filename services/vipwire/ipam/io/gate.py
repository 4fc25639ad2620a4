"""Which clusters ipam serves: messages from any other are refused before any decision."""

from __future__ import annotations

import logging
from collections.abc import Callable

from vipwire.contracts import Subject
from vipwire.ipam.io.metrics import IpamMetrics
from vipwire.ipam.settings import IpamSettings

log = logging.getLogger("vipwire.ipam")

#: Distinct refused clusters logged one by one; past this, one line says so and the
#: counter alone tells of the rest (a forger inventing names fills no disk).
_LOGGED_CLUSTERS_MAX = 256


class ClusterGate:
    """``ipam.clusters`` enforced: a refused message is counted, its cluster logged once."""

    def __init__(self, settings: Callable[[], IpamSettings], metrics: IpamMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._logged: set[str] = set()

    def admits(self, subject: Subject) -> bool:
        settings = self._settings()
        if settings.serves(subject.cluster):
            return True
        self._metrics.refused.inc(reason="unknown-cluster")
        cluster = subject.cluster
        if cluster in self._logged or len(self._logged) > _LOGGED_CLUSTERS_MAX:
            return False
        self._logged.add(cluster)
        if len(self._logged) > _LOGGED_CLUSTERS_MAX:
            log.warning(
                "refusing messages from more than %d unknown clusters", _LOGGED_CLUSTERS_MAX
            )
            return False
        log.warning(
            "refusing messages from cluster %r (first: %s): ipam serves only %s "
            "(ipam.clusters); nothing is allocated or published for it. If it is yours, "
            "add it to ipam.clusters and restart ipam; if not, find who publishes there",
            cluster,
            subject.raw,
            ", ".join(settings.clusters),
        )
        return False
