"""The ``nodeagent`` section of the config file."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import ClassVar, Final, Literal

import msgspec

from vipwire.contracts import validate_cluster, validate_node_name
from vipwire.netns import validate_netns_name

NODE_ENV: Final = "VIPWIRE_NODE"
"""Environment variable naming the node; a DaemonSet sets it from ``spec.nodeName``."""

Mode = Literal["kube-proxy", "standalone"]

# What the kernel accepts as a device name (dev_valid_name): below IFNAMSIZ,
# no '/', ':' or whitespace. Checked here because names end up in sysctl paths
# and in commands.
_IFNAME = re.compile(r"^[^/:\s]{1,15}$")
_NFT_TABLE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def _check_interface(field: str, name: str) -> None:
    if not _IFNAME.match(name) or name in (".", ".."):
        raise ValueError(f"{field}: {name!r} is not a valid network interface name")


class NodeagentSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One node agent: which cluster's VIPs it serves on which node, and how."""

    # Old names, accepted with a warning until the next release.
    __renamed__: ClassVar[Mapping[str, str]] = {
        "resync_interval": "resync_interval_s",
        "report_interval": "report_interval_s",
    }

    #: Cluster whose programmed VIPs this node serves (a DNS label). Required.
    cluster: str
    #: Kubernetes name of this node. $VIPWIRE_NODE, when set, overrides it (one
    #: ConfigMap serves a whole DaemonSet); one of the two is required.
    node: str = ""
    #: ``kube-proxy``: kube-proxy steers VIP:port to pods (``ipMode: VIP``), we only hold
    #: the VIPs; ``standalone``: we also write nftables DNAT rules to the endpoints.
    mode: Mode = "kube-proxy"
    #: Record what would be done instead of doing it; false: change the node (Linux, root).
    dry_run: bool = True
    #: Network namespace (as named by ``ip netns``) that is the node; None: this host's own.
    #: For labs and tests that build nodes out of namespaces.
    netns: str | None = None
    #: Interface that holds the VIPs (/32, /128) so the node accepts them without ARP.
    loopback_interface: str = "lo"
    #: Uplink interface that also gets the ARP sysctls (besides ``all``); None: only ``all``.
    uplink_interface: str | None = None
    #: nftables table (family ``inet``) owned by the agent in ``standalone`` mode.
    nft_table: str = "vipwire"
    #: Milliseconds to wait after a change before applying, so a burst is applied once.
    coalesce_ms: int = 20
    #: Seconds between full reads and plans of the node, which repair drift (in between,
    #: changes are planned from what the agent applied); 0 disables them.
    resync_interval_s: float = 60.0
    #: Least seconds between two ``NodeApplied`` reports of this node: a burst of changes
    #: is reported once per interval, and its last state always (at the interval's end).
    #: Each report carries every VIP of the node; 0 reports after every apply.
    report_interval_s: float = 0.5
    #: CIDRs the node may serve VIPs from, besides the pools ipam publishes for the
    #: cluster (``vipwire.<cluster>.pools.all``): a VIP must be inside both when both
    #: are known. Empty: only ipam's pools. Set it to have the node serve before ipam
    #: has published (a VIP is put on the node only once it can be checked against
    #: one of the two), and to bound what a compromised ipam could make nodes serve.
    #: A programmed Service with any VIP outside is refused (logged with the Service,
    #: counted in ``vipwire_nodeagent_rejected_vips_total``, carried in the node's
    #: ``NodeApplied.refused``); what the node served for it before stays.
    vip_ranges: tuple[str, ...] = ()
    #: Where the agent learns its cluster's VIPs. ``table``: the node feed (one delta per
    #: window on ``vipwire-feed.<cluster>.delta``, the table in KV ``vipwire-feed`` at
    #: start and on a gap; no JetStream consumer per node; needs an lbdriver that
    #: publishes it). ``lb``: every ``LbProgrammed`` of the cluster from the stream (one
    #: consumer per node): for lbdrivers older than the feed, during an upgrade.
    feed: Literal["lb", "table"] = "table"

    def __post_init__(self) -> None:
        validate_cluster(self.cluster)
        if self.node:
            validate_node_name(self.node)
        _check_interface("loopback_interface", self.loopback_interface)
        if self.uplink_interface is not None:
            _check_interface("uplink_interface", self.uplink_interface)
        if self.netns is not None:
            validate_netns_name(self.netns)
        if not _NFT_TABLE.match(self.nft_table):
            raise ValueError(f"nft_table: {self.nft_table!r} is not a plain nftables name")
        if not 0 <= self.coalesce_ms <= 10_000:
            raise ValueError(f"coalesce_ms: {self.coalesce_ms} is not within 0..10000")
        if self.resync_interval_s < 0:
            raise ValueError(f"resync_interval_s: {self.resync_interval_s} is negative")
        for text in self.vip_ranges:
            try:
                ipaddress.ip_network(text)
            except ValueError as exc:
                raise ValueError(f"vip_ranges: {text!r} is not a CIDR ({exc})") from None
        if not 0 <= self.report_interval_s <= 60:
            raise ValueError(f"report_interval_s: {self.report_interval_s} is not within 0..60")

    def for_this_node(self, environ: Mapping[str, str] = os.environ) -> NodeagentSettings:
        """These settings with ``node`` resolved from $VIPWIRE_NODE when set."""
        node = environ.get(NODE_ENV) or self.node
        if not node:
            raise ValueError(f"no node name: set nodeagent.node or ${NODE_ENV}")
        return msgspec.structs.replace(self, node=validate_node_name(node))
