"""ipam: assigns VIPs to LoadBalancer Services from address pools.

One shared service for every cluster; its state is the ``vipwire-ipam`` KV
bucket (see :mod:`vipwire.ipam.store` for the layout) and every change to it
is a compare-and-set, so replicas never hand out an address twice. Operators
ask it questions on ``vipwire-ctl.ipam.*`` (see :mod:`vipwire.ipam.control`).
"""

from vipwire.ipam.allocator import (
    Allocation,
    AllocationFailure,
    Allocator,
    Claim,
    ClaimUpdate,
    ClusterUsage,
    Owner,
    PoolUsage,
    Request,
    Sharer,
)
from vipwire.ipam.cache import ClaimCache
from vipwire.ipam.control import IpamStatus, ReleaseReply, ReloadReply, ShowReply
from vipwire.ipam.service import IpamService
from vipwire.ipam.settings import IpamConfigError, IpamSettings, PoolSettings
from vipwire.ipam.store import IpamStore, ServiceRecord, addr_key, service_key

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
    "IpamStatus",
    "IpamStore",
    "Owner",
    "PoolSettings",
    "PoolUsage",
    "ReleaseReply",
    "ReloadReply",
    "Request",
    "ServiceRecord",
    "Sharer",
    "ShowReply",
    "addr_key",
    "service_key",
]
