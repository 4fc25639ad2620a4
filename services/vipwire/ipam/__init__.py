"""ipam: assigns VIPs to LoadBalancer Services from address pools.

One shared service for every cluster; its state is the ``vipwire-ipam`` KV
bucket (see :mod:`vipwire.ipam.core.records` for the layout) and every change
to it is a compare-and-set, so replicas never hand out an address twice.
Decisions are the pure core's (:mod:`vipwire.ipam.core`); the adapters are in
:mod:`vipwire.ipam.io`. Operators ask it questions on ``vipwire-ctl.ipam.<verb>.<caller>``
(subjects and payloads: :mod:`vipwire.contracts`; answered by
:mod:`vipwire.ipam.io.control`).

The pure core and the settings are imported at once; the adapters and the service
(the bus, the runtime) on first use of one of their names, so that an operator
command (``vipwire ipam show``, ``vipwire config check``) does not load them.
"""

from typing import TYPE_CHECKING

from vipwire.ipam.core.allocator import Allocator
from vipwire.ipam.core.choices import Allocation
from vipwire.ipam.core.claims import Claim, ClaimUpdate, Owner, Request, Sharer
from vipwire.ipam.core.pools import ClusterUsage, PoolUsage
from vipwire.ipam.core.records import ServiceRecord, addr_key, service_key
from vipwire.ipam.core.refusals import AllocationFailure
from vipwire.ipam.settings import IpamConfigError, IpamSettings, PoolSettings

if TYPE_CHECKING:
    from vipwire.ipam.io.bucket import IpamStore
    from vipwire.ipam.io.claim_cache import ClaimCache
    from vipwire.ipam.service import IpamService
else:
    #: Where each name imported on first use lives.
    _LAZY = {
        "IpamStore": "io.bucket",
        "ClaimCache": "io.claim_cache",
        "IpamService": "service",
    }

    def __getattr__(name: str) -> object:
        """Imports the module that defines ``name`` on its first use."""
        where = _LAZY.get(name)
        if where == "io.bucket":
            from vipwire.ipam.io import bucket as module
        elif where == "io.claim_cache":
            from vipwire.ipam.io import claim_cache as module
        elif where == "service":
            from vipwire.ipam import service as module
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(module, name)
        globals()[name] = value
        return value


__all__ = [
    "Allocation",
    "AllocationFailure",
    "Allocator",
    "Claim",
    "ClaimCache",
    "ClaimUpdate",
    "ClusterUsage",
    "IpamConfigError",
    "IpamService",
    "IpamSettings",
    "IpamStore",
    "Owner",
    "PoolSettings",
    "PoolUsage",
    "Request",
    "ServiceRecord",
    "Sharer",
    "addr_key",
    "service_key",
]
