"""The allocator: which addresses a Service gets, as a pure function of state.

No I/O, no clock, no asyncio. The shell (``service.py``) feeds it every claim
it learns of (from the KV bucket, its own writes and other replicas' writes),
asks it for addresses, and makes every answer durable with a compare-and-set;
when the KV disagrees, the KV wins and the shell tells the allocator.

Per pool and family, free space is an :class:`IntervalSet` and a cursor:
allocation takes the first free address at or after the cursor (next fit), so
it costs a binary search however large the pool, and an address just released
is not handed out again until the pool has gone round once.

Sharing (issue 4) fits here: a claim would gain a sharing key and a set of
owners, and :meth:`Allocator.allocate` would look for a claim with the
request's key before taking a free address.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple

import msgspec

from vipwire.ipam.addresses import FAMILIES, Family, canonical, parse_address, to_text
from vipwire.ipam.intervals import IntervalSet, merge, subtract
from vipwire.ipam.settings import PoolSettings

FamilyPolicy = Literal["SingleStack", "PreferDualStack", "RequireDualStack"]

#: Failure codes (``AllocationFailure.code``), also the metrics label.
POOL_EXHAUSTED = "PoolExhausted"
ADDRESS_TAKEN = "AddressTaken"
UNKNOWN_POOL = "UnknownPool"
POOL_NOT_ALLOWED = "PoolNotAllowed"
NO_POOL = "NoPool"
FAMILY_NOT_IN_POOL = "FamilyNotInPool"
ADDRESS_NOT_IN_POOL = "AddressNotInPool"
ADDRESS_AVOIDED = "AddressAvoided"
INVALID_REQUEST = "InvalidRequest"

_MAX = 1 << 129  # above every address: a bisect key sorting after (value, *, *)


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """Who owns one address: the JSON value of its ``addr.<ip>`` KV key."""

    cluster: str
    namespace: str
    name: str
    uid: str
    pool: str

    @property
    def service(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.name}"

    @property
    def owner(self) -> Owner:
        return Owner(self.cluster, self.namespace, self.name, self.uid)


class Owner(NamedTuple):
    """One incarnation of a Service: a re-created Service has a new uid."""

    cluster: str
    namespace: str
    name: str
    uid: str


class Request(msgspec.Struct, frozen=True, kw_only=True):
    """What a Service asks for (the allocation-relevant part of its snapshot)."""

    cluster: str
    namespace: str
    name: str
    uid: str
    #: Pool named by the Service's annotation; None: any auto-assign pool.
    pool: str | None = None
    #: Exact addresses asked for; when set they are the VIPs (one per family).
    requested_ips: tuple[str, ...] = ()
    ip_families: tuple[Family, ...] = ("IPv4",)
    ip_family_policy: FamilyPolicy = "SingleStack"
    #: Not used yet (issue 4: Services with one key share an address).
    sharing_key: str | None = None

    @property
    def owner(self) -> Owner:
        return Owner(self.cluster, self.namespace, self.name, self.uid)

    @property
    def service(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.name}"

    def claim(self, pool: str) -> Claim:
        return Claim(
            cluster=self.cluster, namespace=self.namespace, name=self.name, uid=self.uid, pool=pool
        )

    def families(self) -> tuple[Family, ...]:
        """The families wanted, primary first, as the policy asks."""
        primary: Family = self.ip_families[0] if self.ip_families else "IPv4"
        if self.ip_family_policy == "SingleStack":
            return (primary,)
        other: Family = "IPv6" if primary == "IPv4" else "IPv4"
        return (primary, other)


class Allocation(msgspec.Struct, frozen=True, kw_only=True):
    """Addresses chosen for a request (primary family first)."""

    pool: str
    appliance_group: str
    addresses: tuple[str, ...]
    #: Addresses reserved by this call: the shell must create their claims.
    new: tuple[str, ...]
    #: Addresses this very Service (same uid) already held: the shell adopts them.
    held: tuple[str, ...]


class AllocationFailure(msgspec.Struct, frozen=True, kw_only=True):
    """Why a request cannot be served; ``message`` is for the Service's Event."""

    code: str
    message: str
    #: True when releasing an address may let it succeed (wait for one).
    retryable: bool


class PoolUsage(NamedTuple):
    pool: str
    family: Family
    size: int
    in_use: int


class _Space:
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


class _Pool:
    __slots__ = ("settings", "spaces")

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self.spaces: dict[Family, _Space] = {}
        blocks = settings.blocks()
        holes = settings.avoided()
        for family in FAMILIES:
            runs = [(b.first, b.last) for b in blocks if b.family == family]
            if not runs:
                continue
            cut = [(h.first, h.last) for h in holes if h.family == family]
            if family == "IPv4" and settings.avoid_buggy_ips:
                cut.extend(_buggy(runs))
            self.spaces[family] = _Space(settings.name, subtract(runs, cut))

    def usage(self, family: Family) -> str:
        space = self.spaces.get(family)
        if space is None:
            return f"{self.settings.name!r} (no {family} addresses)"
        return f"{self.settings.name!r} ({space.in_use}/{space.size} in use)"


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


class Allocator:
    """All pools and all claims known to one ipam replica."""

    def __init__(self, pools: Sequence[PoolSettings]) -> None:
        self._pools: dict[str, _Pool] = {p.name: _Pool(p) for p in pools}
        # Every configured block, per family, sorted, for address → pool lookups.
        self._blocks: dict[Family, list[tuple[int, int, str]]] = {f: [] for f in FAMILIES}
        for pool in pools:
            for block in pool.blocks():
                self._blocks[block.family].append((block.first, block.last, pool.name))
        for blocks in self._blocks.values():
            blocks.sort()
        self._claims: dict[str, Claim] = {}
        self._held: dict[Owner, set[str]] = {}

    # --- what is known --------------------------------------------------------

    def claim_of(self, address: str) -> Claim | None:
        return self._claims.get(address)

    def claims(self) -> dict[str, Claim]:
        return dict(self._claims)

    def held_by(self, owner: Owner) -> tuple[str, ...]:
        """Addresses claimed by one Service incarnation."""
        return tuple(sorted(self._held.get(owner, ())))

    def pool_of(self, address: str) -> str | None:
        """The pool whose configured addresses contain ``address`` (avoided or not)."""
        family, value = parse_address(address)
        blocks = self._blocks[family]
        i = bisect_right(blocks, (value, _MAX, "")) - 1
        if i >= 0 and blocks[i][0] <= value <= blocks[i][1]:
            return blocks[i][2]
        return None

    def usage(self) -> list[PoolUsage]:
        return [
            PoolUsage(name, family, space.size, space.in_use)
            for name, pool in self._pools.items()
            for family, space in pool.spaces.items()
        ]

    # --- state changes ----------------------------------------------------------

    def claim(self, address: str, claim: Claim) -> None:
        """Record that ``claim`` owns ``address`` (replacing any previous owner)."""
        address = canonical(address)
        previous = self._claims.get(address)
        if previous is not None:
            self._forget(address, previous)
        self._claims[address] = claim
        self._held.setdefault(claim.owner, set()).add(address)
        space, value = self._space(address)
        if space is not None:
            space.free.discard(value)

    def release(self, address: str, *, uid: str | None = None) -> Claim | None:
        """Free ``address``; with ``uid``, only if that Service incarnation owns it."""
        address = canonical(address)
        claim = self._claims.get(address)
        if claim is None or (uid is not None and claim.uid != uid):
            return None
        del self._claims[address]
        self._forget(address, claim)
        space, value = self._space(address)
        if space is not None and value in space.universe:
            space.free.add(value)
        return claim

    def _forget(self, address: str, claim: Claim) -> None:
        held = self._held.get(claim.owner)
        if held is not None:
            held.discard(address)
            if not held:
                del self._held[claim.owner]

    def _space(self, address: str) -> tuple[_Space | None, int]:
        family, value = parse_address(address)
        pool = self.pool_of(address)
        if pool is None or pool not in self._pools:
            return None, value
        return self._pools[pool].spaces.get(family), value

    # --- allocation ---------------------------------------------------------------

    def allocate(self, request: Request, *, reserve: bool = True) -> Allocation | AllocationFailure:
        """Choose addresses for ``request``; with ``reserve``, claim the new ones for it.

        Addresses the same Service incarnation already holds are reused first, so
        a retry after a crash between claiming and recording adopts its claims
        instead of leaking them.
        """
        if request.requested_ips:
            return self._allocate_requested(request, reserve)
        families = request.families()
        held = self._held.get(request.owner, set())
        if request.pool is not None:
            pool = self._pools.get(request.pool)
            if pool is None:
                known = ", ".join(repr(p) for p in self._pools) or "none configured"
                return AllocationFailure(
                    code=UNKNOWN_POOL,
                    message=f"pool {request.pool!r} does not exist (pools: {known})",
                    retryable=False,
                )
            if not pool.settings.allows(request.cluster):
                return AllocationFailure(
                    code=POOL_NOT_ALLOWED,
                    message=f"pool {request.pool!r} does not allow cluster {request.cluster!r}",
                    retryable=False,
                )
            candidates = [pool]
        else:
            candidates = [
                p
                for p in self._pools.values()
                if p.settings.auto_assign and p.settings.allows(request.cluster)
            ]
            if not candidates:
                return AllocationFailure(
                    code=NO_POOL,
                    message=f"no auto-assign pool allows cluster {request.cluster!r}",
                    retryable=False,
                )
            held_pools = {self.pool_of(a) for a in held}
            candidates.sort(key=lambda p: p.settings.name not in held_pools)

        def has_room(pool: _Pool, family: Family) -> bool:
            space = pool.spaces.get(family)
            if space is None:
                return False
            return bool(space.free) or any(
                self.pool_of(a) == pool.settings.name and parse_address(a)[0] == family
                for a in held
            )

        chosen: tuple[_Pool, tuple[Family, ...]] | None = None
        for pool in candidates:
            if all(has_room(pool, f) for f in families):
                chosen = (pool, families)
                break
        if chosen is None and request.ip_family_policy == "PreferDualStack":
            for pool in candidates:
                if has_room(pool, families[0]):
                    chosen = (pool, families[:1])
                    break
        if chosen is None:
            needed = families if request.ip_family_policy == "RequireDualStack" else families[:1]
            return self._no_room(request, candidates, needed)
        pool, families = chosen
        addresses: list[str] = []
        new: list[str] = []
        adopted: list[str] = []
        for family in families:
            mine = sorted(
                a
                for a in held
                if self.pool_of(a) == pool.settings.name and parse_address(a)[0] == family
            )
            if mine:
                addresses.append(mine[0])
                adopted.append(mine[0])
                continue
            space = pool.spaces[family]
            value = space.free.next_from(space.cursor)
            assert value is not None  # has_room said so
            address = to_text(family, value)
            addresses.append(address)
            new.append(address)
            if reserve:
                space.cursor = value + 1
                self.claim(address, request.claim(pool.settings.name))
        return Allocation(
            pool=pool.settings.name,
            appliance_group=pool.settings.appliance_group,
            addresses=tuple(addresses),
            new=tuple(new),
            held=tuple(adopted),
        )

    def _no_room(
        self, request: Request, candidates: list[_Pool], families: tuple[Family, ...]
    ) -> AllocationFailure:
        wanted = " and ".join(families)
        if request.pool is not None:
            pool = candidates[0]
            missing = [f for f in families if f not in pool.spaces]
            if missing:
                return AllocationFailure(
                    code=FAMILY_NOT_IN_POOL,
                    message=f"pool {request.pool!r} has no {' or '.join(missing)} addresses",
                    retryable=False,
                )
            return AllocationFailure(
                code=POOL_EXHAUSTED,
                message=f"no free {wanted} address in pool "
                + ", ".join(pool.usage(f) for f in families),
                retryable=True,
            )
        if not any(all(f in p.spaces for f in families) for p in candidates):
            return AllocationFailure(
                code=FAMILY_NOT_IN_POOL,
                message=f"no auto-assign pool for cluster {request.cluster!r} has {wanted} "
                "addresses",
                retryable=False,
            )
        usage = "; ".join(
            ", ".join(p.usage(f) for f in families)
            for p in candidates
            if all(f in p.spaces for f in families)
        )
        return AllocationFailure(
            code=POOL_EXHAUSTED,
            message=f"no free {wanted} address in the pools for cluster "
            f"{request.cluster!r}: {usage}",
            retryable=True,
        )

    def _allocate_requested(
        self, request: Request, reserve: bool
    ) -> Allocation | AllocationFailure:
        addresses: list[str] = []
        for text in request.requested_ips:
            try:
                addresses.append(canonical(text))
            except ValueError as exc:
                return AllocationFailure(code=INVALID_REQUEST, message=str(exc), retryable=False)
        families = [parse_address(a)[0] for a in addresses]
        if len(set(families)) != len(families):
            return AllocationFailure(
                code=INVALID_REQUEST,
                message=f"requested addresses {', '.join(addresses)}: at most one per family",
                retryable=False,
            )
        pools: set[str] = set()
        for address in addresses:
            name = self.pool_of(address)
            if name is None or name not in self._pools:
                return AllocationFailure(
                    code=ADDRESS_NOT_IN_POOL,
                    message=f"requested address {address} is in no pool",
                    retryable=False,
                )
            pool = self._pools[name]
            if request.pool is not None and name != request.pool:
                return AllocationFailure(
                    code=ADDRESS_NOT_IN_POOL,
                    message=f"requested address {address} is in pool {name!r}, "
                    f"not in the requested pool {request.pool!r}",
                    retryable=False,
                )
            if not pool.settings.allows(request.cluster):
                return AllocationFailure(
                    code=POOL_NOT_ALLOWED,
                    message=f"requested address {address} is in pool {name!r}, which does not "
                    f"allow cluster {request.cluster!r}",
                    retryable=False,
                )
            space, value = self._space(address)
            if space is None or value not in space.universe:
                return AllocationFailure(
                    code=ADDRESS_AVOIDED,
                    message=f"requested address {address} is on pool {name!r}'s avoid list",
                    retryable=False,
                )
            owner = self._claims.get(address)
            if owner is not None and owner.owner != request.owner:
                whom = (
                    "an earlier incarnation of this Service"
                    if owner.service == request.service
                    else owner.service
                )
                return AllocationFailure(
                    code=ADDRESS_TAKEN,
                    message=f"requested address {address} is in use by {whom}",
                    retryable=True,
                )
            pools.add(name)
        if len(pools) > 1:
            return AllocationFailure(
                code=INVALID_REQUEST,
                message=f"requested addresses {', '.join(addresses)} are in different pools "
                f"({', '.join(sorted(pools))}); a Service's VIPs come from one pool",
                retryable=False,
            )
        pool = self._pools[pools.pop()]
        held = self._held.get(request.owner, set())
        new = tuple(a for a in addresses if a not in held)
        if reserve:
            for address in new:
                self.claim(address, request.claim(pool.settings.name))
        return Allocation(
            pool=pool.settings.name,
            appliance_group=pool.settings.appliance_group,
            addresses=tuple(addresses),
            new=new,
            held=tuple(a for a in addresses if a in held),
        )
