"""A configured pool as the allocator holds it: per family, its free space and cursor.

Per pool and family, free space is an :class:`IntervalSet` and a cursor:
allocation takes the first free address at or after the cursor (next fit), so
it costs a binary search however large the pool, and an address just released
is not handed out again until the pool has gone round once.
"""

from __future__ import annotations

from collections.abc import Collection, Container, Iterable
from typing import TYPE_CHECKING, Final, NamedTuple

from vipwire.ipam.core.addresses import FAMILIES, Family
from vipwire.ipam.core.claims import Request
from vipwire.ipam.core.intervals import IntervalSet, merge, subtract

if TYPE_CHECKING:  # settings are handed in; the core never reads a config file
    from vipwire.ipam.settings import PoolSettings


class ClusterUsage(NamedTuple):
    cluster: str
    #: Addresses of the pool held by the cluster's Services.
    used: int
    #: Stale allocations of the cluster's Services recorded against the pool.
    stale: int


class PoolUsage(NamedTuple):
    """One pool's addresses of one family, as configured now."""

    pool: str
    family: Family
    size: int
    in_use: int
    #: Allocations given from this pool that it would not give now.
    stale: int = 0
    clusters: tuple[ClusterUsage, ...] = ()
    #: False for a pool no longer configured that still has stale allocations.
    configured: bool = True
    appliance_group: str = ""


class Space:
    """One pool's addresses of one family."""

    __slots__ = ("cursor", "free", "pool", "universe")

    def __init__(self, pool: str, runs: list[tuple[int, int]]) -> None:
        self.pool = pool
        self.universe = IntervalSet(runs)
        self.free = IntervalSet(runs)
        self.cursor = runs[0][0] if runs else 0

    @property
    def size(self) -> int:
        return self.universe.count

    @property
    def in_use(self) -> int:
        return self.universe.count - self.free.count

    def next_free(self, skip: Container[int]) -> int | None:
        """The first free address at or after the cursor (wrapping), passing over
        ``skip`` (addresses this replica is claiming right now); None: full."""
        first = self.free.next_from(self.cursor)
        value = first
        while value is not None and value in skip:
            value = self.free.next_from(value + 1)
            if value == first:
                return None  # gone round: everything free is being claimed
        return value


class Pool:
    __slots__ = ("index", "settings", "spaces")

    def __init__(self, settings: PoolSettings, index: int) -> None:
        self.settings = settings
        self.index = index
        self.spaces: dict[Family, Space] = {}
        blocks = settings.blocks()
        holes = settings.avoided()
        for family in FAMILIES:
            runs = [(b.first, b.last) for b in blocks if b.family == family]
            if not runs:
                continue
            cut = [(h.first, h.last) for h in holes if h.family == family]
            if family == "IPv4" and settings.avoid_buggy_ips:
                cut.extend(_buggy(runs))
            if family == "IPv6" and settings.avoid_buggy_ips:
                prefixes = [
                    b.first
                    for text, b in zip(settings.addresses, blocks, strict=True)
                    if b.family == family and "/" in text
                ]
                cut.extend(_subnet_router_anycast(runs, prefixes))
            self.spaces[family] = Space(settings.name, subtract(runs, cut))

    @property
    def name(self) -> str:
        return self.settings.name

    def refusal(self, request: Request) -> str | None:
        return self.settings.refusal(request.cluster, request.namespace, request.labels)

    def usage(self, family: Family, busy: Collection[int] = ()) -> str:
        """``busy``: addresses being claimed now, counted as in use."""
        space = self.spaces.get(family)
        if space is None:
            return f"{self.name!r} (no {family} addresses)"
        in_use = space.in_use + sum(1 for value in busy if value in space.free)
        return f"{self.name!r} ({in_use}/{space.size} in use)"


#: An IPv6 subnet prefix is 64 bits (RFC 4291 2.5.1): its all-zeros interface identifier.
_V6_SUBNET: Final = 1 << 64
#: Subnet prefixes looked at per pool at most (a pool wider than that many /64s has its
#: anycast addresses avoided in the first ones only: the allocator starts there).
_V6_SUBNETS_MAX: Final = 1 << 16


def _subnet_router_anycast(
    runs: Iterable[tuple[int, int]], prefixes: Iterable[int]
) -> list[tuple[int, int]]:
    """The IPv6 subnet-router anycast addresses inside ``runs`` (RFC 4291 2.6.1: the
    subnet prefix with an all-zeros interface identifier, which routers answer as
    anycast): the all-zeros host of every /64, and of each configured CIDR
    (``prefixes``: their first addresses; ``2001:db8::/120`` → ``2001:db8::``)."""
    out = [(first, first) for first in prefixes]
    for lo, hi in merge(runs):
        boundary = -(-lo // _V6_SUBNET) * _V6_SUBNET
        for _ in range(_V6_SUBNETS_MAX):
            if boundary > hi:
                break
            out.append((boundary, boundary))
            boundary += _V6_SUBNET
    return out


def _buggy(runs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The .0 and .255 addresses inside ``runs``."""
    out: list[tuple[int, int]] = []
    for lo, hi in merge(runs):
        block = lo - lo % 256
        while block <= hi:
            for value in (block, block + 255):
                if lo <= value <= hi:
                    out.append((value, value))
            block += 256
    return out
