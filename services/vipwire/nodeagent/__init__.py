"""The node agent: this node's share of the cluster's VIPs (on ``lo``, ARP-silent).

``core`` decides (pure: ``desired``, ``changes``, ``plan``, ``retry``), ``io``
holds the seam to the node (``apply``, ``linux``, their ``errors``, ``writing``)
and the reports to the bus (``reporting``), ``service`` is the shell that wires
them.

The pure core and the settings are imported at once; the adapters and the service
(the bus, the runtime) on first use of one of their names, so that an operator
command (``vipwire config check``) does not load them.
"""

from typing import TYPE_CHECKING

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
from vipwire.nodeagent.settings import NODE_ENV, NodeagentSettings

if TYPE_CHECKING:
    from vipwire.nodeagent.io.apply import Applier, DryRunApplier, make_applier
    from vipwire.nodeagent.io.errors import ApplierUnavailable, ApplyError
    from vipwire.nodeagent.io.linux import ADDRESS_PROTO, LinuxApplier
    from vipwire.nodeagent.service import NodeagentService
else:
    #: Where each name imported on first use lives.
    _LAZY = {
        "Applier": "io.apply",
        "DryRunApplier": "io.apply",
        "make_applier": "io.apply",
        "ApplierUnavailable": "io.errors",
        "ApplyError": "io.errors",
        "ADDRESS_PROTO": "io.linux",
        "LinuxApplier": "io.linux",
        "NodeagentService": "service",
    }

    def __getattr__(name: str) -> object:
        """Imports the module that defines ``name`` on its first use."""
        where = _LAZY.get(name)
        if where == "io.apply":
            from vipwire.nodeagent.io import apply as module
        elif where == "io.errors":
            from vipwire.nodeagent.io import errors as module
        elif where == "io.linux":
            from vipwire.nodeagent.io import linux as module
        elif where == "service":
            from vipwire.nodeagent import service as module
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(module, name)
        globals()[name] = value
        return value


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
