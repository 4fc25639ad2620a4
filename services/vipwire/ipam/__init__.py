"""ipam: assigns VIPs to LoadBalancer Services from address pools.

One shared service for every cluster; its state is the ``vipwire-ipam`` KV
bucket (see :mod:`vipwire.ipam.core.records` for the layout) and every change
to it is a compare-and-set, so replicas never hand out an address twice.
Decisions are the pure core's (:mod:`vipwire.ipam.core`); the adapters are in
:mod:`vipwire.ipam.io`. Operators ask it questions on ``vipwire-ctl.ipam.<verb>.<caller>``
(subjects and payloads: :mod:`vipwire.contracts`; answered by
:mod:`vipwire.ipam.io.control`).
"""

from vipwire.ipam.core.allocator import Allocator
from vipwire.ipam.core.choices import Allocation
from vipwire.ipam.core.claims import Claim, ClaimUpdate, Owner, Request, Sharer
from vipwire.ipam.core.pools import ClusterUsage, PoolUsage
from vipwire.ipam.core.records import ServiceRecord, addr_key, service_key
from vipwire.ipam.core.refusals import AllocationFailure
from vipwire.ipam.io.bucket import IpamStore
from vipwire.ipam.io.claim_cache import ClaimCache
from vipwire.ipam.service import IpamService
from vipwire.ipam.settings import IpamConfigError, IpamSettings, PoolSettings

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
