"""Which clusters ipam serves (``ipam.clusters``) and the pools it tells each one."""

from __future__ import annotations

import pytest

from vipwire.ipam import Claim, IpamConfigError, IpamSettings, PoolSettings, Sharer
from vipwire.ipam.core.served import clusters_to_tell, pools_served

POOLS = (
    PoolSettings(name="all", addresses=("198.51.100.10-198.51.100.20", "2001:db8::/120")),
    PoolSettings(name="west-only", addresses=("192.0.2.0/28",), clusters=("west",)),
)


def claim(cluster: str) -> Claim:
    return Claim(
        cluster=cluster, namespace="shop", pool="gone", sharers=(Sharer(name="w", uid="u"),)
    )


def test_clusters_unset_serves_every_cluster_set_only_those() -> None:
    """Empty ipam.clusters serves any cluster; named ones serve only themselves."""
    assert IpamSettings().serves("ghost")
    named = IpamSettings(clusters=("east", "west"))
    assert named.serves("east") and named.serves("west") and not named.serves("ghost")


def test_a_cluster_name_that_is_not_a_dns_label_is_a_config_error() -> None:
    """ipam.clusters entries must be valid cluster names (they are subject tokens)."""
    with pytest.raises(IpamConfigError, match="clusters"):
        IpamSettings(clusters=("East_1",))


def test_pools_served_are_the_cidrs_of_the_pools_allowing_the_cluster() -> None:
    """A range becomes its CIDRs; a pool for other clusters is left out; IPv6 follows IPv4."""
    east = pools_served(POOLS, "east", {})
    assert east.ranges == (
        "198.51.100.10/31",
        "198.51.100.12/30",
        "198.51.100.16/30",
        "198.51.100.20/32",
        "2001:db8::/120",
    )
    assert east.pools == ("all",) and east.cluster == "east"
    west = pools_served(POOLS, "west", {})
    assert "192.0.2.0/28" in west.ranges and west.pools == ("all", "west-only")


def test_an_address_still_held_outside_the_pools_is_served_to_its_cluster_only() -> None:
    """A VIP kept after a reload shrank its pool stays servable by its own cluster's nodes."""
    claims = {"203.0.113.5": claim("east"), "203.0.113.6": claim("west")}
    east = pools_served(POOLS, "east", claims)
    assert "203.0.113.5/32" in east.ranges and "203.0.113.6/32" not in east.ranges


def test_clusters_told_are_the_configured_ones_or_every_one_known() -> None:
    """ipam.clusters when set; else the clusters pools name and those heard from."""
    assert clusters_to_tell(("west", "east"), POOLS, ("ghost",)) == ("east", "west")
    assert clusters_to_tell((), POOLS, ("north",)) == ("north", "west")
