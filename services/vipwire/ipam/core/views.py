"""What operators (and the dashboard) see: ipam's status and its KV values as views."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import msgspec

from vipwire.contracts import (
    ClaimView,
    ClusterStatus,
    IpamStatus,
    PoolStatus,
    RecordView,
    StaleAllocation,
)
from vipwire.ipam.core.allocator import Allocator
from vipwire.ipam.core.claims import Claim
from vipwire.ipam.core.records import ServiceRecord

if TYPE_CHECKING:
    from vipwire.ipam.settings import PoolSettings

#: Stale allocations listed by name in a status answer (all are counted).
STATUS_STALE_LIMIT: Final = 100


def ipam_status(
    allocator: Allocator,
    pools: Sequence[PoolSettings],
    *,
    instance: str,
    now: float,
    ready: bool,
    config_path: str | None,
    reloaded_at: float | None,
    waiting: int,
) -> IpamStatus:
    by_name = {p.name: p for p in pools}
    entries = []
    for usage in allocator.usage():
        pool = by_name.get(usage.pool)
        entries.append(
            PoolStatus(
                name=usage.pool,
                family=usage.family,
                appliance_group=usage.appliance_group,
                configured=usage.configured,
                auto_assign=pool.auto_assign if pool else False,
                priority=pool.priority if pool else 0,
                size=usage.size,
                used=usage.in_use,
                free=usage.size - usage.in_use,
                stale=usage.stale,
                clusters=tuple(
                    ClusterStatus(cluster=c.cluster, used=c.used, stale=c.stale)
                    for c in usage.clusters
                ),
            )
        )
    claims = allocator.claims()
    stale = [a for a in claims if allocator.is_stale(a)]
    listed = tuple(
        StaleAllocation(
            address=address,
            pool=claims[address].pool,
            services=tuple(o.service for o in claims[address].owners),
            reasons=allocator.address_stale_reasons(address),
        )
        for address in sorted(stale)[:STATUS_STALE_LIMIT]
    )
    return IpamStatus(
        instance=instance,
        now=now,
        ready=ready,
        config_path=config_path,
        reloaded_at=reloaded_at,
        claims=len(claims),
        services=len(allocator.owners()),
        waiting=waiting,
        pools=tuple(entries),
        stale=listed,
        stale_total=len(stale),
    )


def claim_view(claim: Claim) -> ClaimView:
    """An address's claim as a show answer carries it (the same JSON)."""
    return msgspec.convert(claim, ClaimView, from_attributes=True)


def record_view(record: ServiceRecord) -> RecordView:
    """A Service's record as a show answer carries it (the same JSON)."""
    return msgspec.convert(record, RecordView, from_attributes=True)
