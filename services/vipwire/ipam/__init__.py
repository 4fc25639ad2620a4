"""ipam: assigns VIPs to LoadBalancer Services from address pools.

One shared service for every cluster; its state is the ``vipwire-ipam`` KV
bucket (see :mod:`vipwire.ipam.store` for the layout) and every change to it
is a compare-and-set, so replicas never hand out an address twice.
"""

from vipwire.ipam.allocator import (
    Allocation,
    AllocationFailure,
    Allocator,
    Claim,
    Owner,
    PoolUsage,
    Request,
)
from vipwire.ipam.service import IpamService
from vipwire.ipam.settings import IpamConfigError, IpamSettings, PoolSettings
from vipwire.ipam.store import ServiceRecord, addr_key, service_key

__all__ = [
    "Allocation",
    "AllocationFailure",
    "Allocator",
    "Claim",
    "IpamConfigError",
    "IpamService",
    "IpamSettings",
    "Owner",
    "PoolSettings",
    "PoolUsage",
    "Request",
    "ServiceRecord",
    "addr_key",
    "service_key",
]
