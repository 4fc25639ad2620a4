"""The node agent: this node's share of the cluster's VIPs (on ``lo``, ARP-silent).

``desired`` and ``plan`` decide (pure), ``apply`` holds the seam to the node,
``service`` is the shell on the bus.
"""

from vipwire.nodeagent.apply import (
    Applier,
    ApplierUnavailable,
    ApplyError,
    DryRunApplier,
    make_applier,
)
from vipwire.nodeagent.desired import (
    NftBackend,
    NftRule,
    NftRuleset,
    NodeState,
    Sysctl,
    VipAddress,
    arp_sysctls,
    desired_state,
    render_nft,
)
from vipwire.nodeagent.linux import ADDRESS_PROTO, LinuxApplier
from vipwire.nodeagent.plan import (
    Action,
    AddAddress,
    AppliedState,
    DeleteNftTable,
    InterfaceAddress,
    RemoveAddress,
    ReplaceNftTable,
    SetSysctl,
    describe,
    plan,
    simulate,
)
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
    "DryRunApplier",
    "InterfaceAddress",
    "LinuxApplier",
    "NftBackend",
    "NftRule",
    "NftRuleset",
    "NodeState",
    "NodeagentService",
    "NodeagentSettings",
    "RemoveAddress",
    "ReplaceNftTable",
    "SetSysctl",
    "Sysctl",
    "VipAddress",
    "arp_sysctls",
    "describe",
    "desired_state",
    "make_applier",
    "plan",
    "render_nft",
    "simulate",
]
