"""The node agent: this node's share of the cluster's VIPs (on ``lo``, ARP-silent).

``core`` decides (pure: ``desired``, ``changes``, ``plan``), ``io`` holds the
seam to the node (``apply``, ``linux``) and the reports to the bus
(``reporting``), ``service`` is the shell that wires them.
"""

from vipwire.nodeagent.core.desired import (
    Desired,
    NftBackend,
    NftRule,
    NftRuleset,
    NodeState,
    ServiceVips,
    Sysctl,
    VipAddress,
    arp_sysctls,
    desired_state,
    node_state,
    put_endpoints,
    put_service,
    render_nft,
    ruleset,
    service_vips,
    vip_strings,
)
from vipwire.nodeagent.core.plan import (
    Action,
    AddAddress,
    AppliedState,
    DeleteNftTable,
    InterfaceAddress,
    Known,
    RemoveAddress,
    ReplaceNftTable,
    SetSysctl,
    describe,
    known,
    note_applied,
    plan,
    plan_delta,
    simulate,
)
from vipwire.nodeagent.io.apply import (
    Applier,
    ApplierUnavailable,
    ApplyError,
    DryRunApplier,
    make_applier,
)
from vipwire.nodeagent.io.linux import ADDRESS_PROTO, LinuxApplier
from vipwire.nodeagent.service import NodeagentService
from vipwire.nodeagent.settings import NODE_ENV, NodeagentSettings

__all__ = [
    "ADDRESS_PROTO",
    "NODE_ENV",
    "Action",
    "AddAddress",
    "AppliedState",
    "Applier",
    "ApplierUnavailable",
    "ApplyError",
    "DeleteNftTable",
    "Desired",
    "DryRunApplier",
    "InterfaceAddress",
    "Known",
    "LinuxApplier",
    "NftBackend",
    "NftRule",
    "NftRuleset",
    "NodeState",
    "NodeagentService",
    "NodeagentSettings",
    "RemoveAddress",
    "ReplaceNftTable",
    "ServiceVips",
    "SetSysctl",
    "Sysctl",
    "VipAddress",
    "arp_sysctls",
    "describe",
    "desired_state",
    "known",
    "make_applier",
    "node_state",
    "note_applied",
    "plan",
    "plan_delta",
    "put_endpoints",
    "put_service",
    "render_nft",
    "ruleset",
    "service_vips",
    "simulate",
    "vip_strings",
]
