"""What ipam tells a cluster's node agents they may serve: ``PoolsServed``.

Every pool that allows the cluster, as CIDRs; plus each address a Service of the
cluster still holds outside them (a reload that shrank a pool keeps live VIPs
where they are, flagged stale: their nodes must keep serving them).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from vipwire.contracts import PoolsServed
from vipwire.ipam.core.addresses import Block, parse_address

if TYPE_CHECKING:
    from vipwire.ipam.core.claims import Claim
    from vipwire.ipam.settings import PoolSettings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(block: Block) -> list[Network]:
    make = ipaddress.IPv4Address if block.family == "IPv4" else ipaddress.IPv6Address
    return list(ipaddress.summarize_address_range(make(block.first), make(block.last)))


def pools_served(
    pools: Iterable[PoolSettings], cluster: str, claims: Mapping[str, Claim]
) -> PoolsServed:
    """The ``PoolsServed`` of one cluster: its pools' ranges and its held addresses."""
    names: list[str] = []
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []

    def add(network: Network) -> None:
        if isinstance(network, ipaddress.IPv4Network):
            v4.append(network)
        else:
            v6.append(network)

    for pool in pools:
        if not pool.allows(cluster):
            continue
        names.append(pool.name)
        for block in pool.blocks():
            for network in _networks(block):
                add(network)
    for address, claim in claims.items():
        if claim.cluster != cluster:
            continue
        family, value = parse_address(address)
        add(_networks(Block(family, value, value))[0])
    ranges = [str(n) for n in ipaddress.collapse_addresses(v4)]
    ranges += [str(n) for n in ipaddress.collapse_addresses(v6)]
    return PoolsServed(cluster=cluster, ranges=tuple(ranges), pools=tuple(names))


def clusters_to_tell(
    configured: Iterable[str], pools: Iterable[PoolSettings], seen: Iterable[str]
) -> tuple[str, ...]:
    """Whose pools ipam publishes: ``ipam.clusters`` when set; else every cluster a
    pool names, and every cluster ipam has heard from (a pool for every cluster
    names none)."""
    named = tuple(configured)
    if named:
        return tuple(sorted(set(named)))
    found = {c for pool in pools for c in pool.clusters} | set(seen)
    return tuple(sorted(found))
