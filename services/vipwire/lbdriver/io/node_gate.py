"""``lbdriver.node_networks`` enforced on every NodeSnapshot: refusals logged, counted."""

from __future__ import annotations

import logging

from vipwire.contracts import NodeSnapshot
from vipwire.lbdriver.core.networks import Network, admit, networks_of
from vipwire.lbdriver.settings import LbdriverSettings
from vipwire.metrics import Registry

log = logging.getLogger("vipwire.lbdriver")


class NodeGate:
    """The node addresses that may become members (see :mod:`~vipwire.lbdriver.core.networks`)."""

    def __init__(self, settings: LbdriverSettings, metrics: Registry) -> None:
        self._setting = settings.node_networks
        self._networks: dict[str, tuple[Network, ...] | None] = {}
        self._m_refused = metrics.counter(
            "lbdriver_refused_node_addresses_total",
            "Node addresses refused as members: outside lbdriver.node_networks",
            ["cluster"],
        )
        #: (cluster, node, address) refused now: logged once while it lasts.
        self._told: set[tuple[str, str, str]] = set()

    def admit(self, node: NodeSnapshot) -> NodeSnapshot | None:
        """The snapshot with its admitted addresses; None: keep the node as it was."""
        cluster = node.cluster
        if cluster not in self._networks:
            self._networks[cluster] = networks_of(self._setting, cluster)
        admitted = admit(node, self._networks[cluster])
        told = {t for t in self._told if t[:2] != (cluster, node.node)}
        for address in admitted.refused:
            self._m_refused.inc(cluster=cluster)
            told.add((cluster, node.node, address))
            if (cluster, node.node, address) in self._told:
                continue
            log.warning(
                "refusing address %s of node %s/%s as a member: outside lbdriver.node_networks "
                "(%s)%s. Check who publishes vipwire.%s.node.*, or the setting",
                address,
                cluster,
                node.node,
                ", ".join(str(n) for n in self._networks[cluster] or ()),
                "; the node keeps the addresses it had" if admitted.node is None else "",
                cluster,
            )
        self._told = told
        return admitted.node
