"""The allocator: which addresses a Service gets, as a pure function of state.

No I/O, no clock, no asyncio. The shell (``service.py``) feeds it every claim
it learns of (from the KV bucket, its own writes and other replicas' writes),
asks it for addresses, and makes every answer durable with a compare-and-set;
when the KV disagrees, the KV wins and the shell tells the allocator.

Per pool and family, free space is an :class:`IntervalSet` and a cursor:
allocation takes the first free address at or after the cursor (next fit), so
it costs a binary search however large the pool, and an address just released
is not handed out again until the pool has gone round once.

A claim (one address) has one or more *sharers*: Services of one cluster and
namespace with one sharing key, whose ports (port and protocol) are disjoint
and whose externalTrafficPolicy agrees. Services with a key are indexed by
``(cluster, namespace, key)``, so finding a VIP to share looks only at the
addresses of that key, never at a pool.

Configuration never moves a claim: an allocator built for new pools
(:meth:`Allocator.reconfigured`) takes every claim as it is, and one that the
new pools would not give out any more (address outside its pool, now avoided,
pool gone, rule no longer met) is *stale*: kept, counted and explained by
:meth:`Allocator.stale_reasons`, until its Services release it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Literal, NamedTuple, TypeVar

import msgspec

from vipwire.ipam.addresses import FAMILIES, Family, canonical, parse_address, to_text
from vipwire.ipam.intervals import IntervalSet, merge, subtract
from vipwire.ipam.settings import PoolSettings

FamilyPolicy = Literal["SingleStack", "PreferDualStack", "RequireDualStack"]
TrafficPolicy = Literal["Cluster", "Local"]

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
#: A Service sharing a VIP changed so that it no longer fits with the others
#: (its ports, its traffic policy or its key): it keeps the VIP as it was.
SHARING_CONFLICT = "SharingConflict"

_MAX = 1 << 129  # above every address: a bisect key sorting after (value, *, *)


class Owner(NamedTuple):
    """One incarnation of a Service: a re-created Service has a new uid."""

    cluster: str
    namespace: str
    name: str
    uid: str

    @property
    def service(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.name}"


class Sharer(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One Service holding an address (alone, or sharing it)."""

    name: str
    uid: str
    #: ``port/protocol`` of its ports; kept only for a claim with a sharing key
    #: (the ports of an address nobody else may use are nobody's concern).
    ports: tuple[str, ...] = ()
    external_traffic_policy: TrafficPolicy = "Cluster"
    #: The Service's labels when it last changed: a pool's selector is judged on them.
    labels: dict[str, str] = {}


class Claim(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who holds one address: the JSON value of its ``addr.<ip>`` KV key."""

    cluster: str
    namespace: str
    #: The pool it was given from, and that pool's appliance group at the time.
    pool: str
    appliance_group: str = ""
    #: None: the address is not shared, whatever the Service's ports.
    sharing_key: str | None = None
    #: Sorted by name; at least one.
    sharers: tuple[Sharer, ...]

    @property
    def owners(self) -> tuple[Owner, ...]:
        return tuple(Owner(self.cluster, self.namespace, s.name, s.uid) for s in self.sharers)

    @property
    def services(self) -> str:
        """``east/shop/web`` or ``east/shop/web, east/shop/dns`` (for messages)."""
        return ", ".join(o.service for o in self.owners)

    def sharer(self, owner: Owner) -> Sharer | None:
        if (owner.cluster, owner.namespace) != (self.cluster, self.namespace):
            return None
        for sharer in self.sharers:
            if sharer.name == owner.name and sharer.uid == owner.uid:
                return sharer
        return None

    def holds(self, owner: Owner) -> bool:
        return self.sharer(owner) is not None

    def others(self, owner: Owner) -> tuple[Sharer, ...]:
        """The sharers other than ``owner`` (any incarnation of its name counts as it)."""
        return tuple(s for s in self.sharers if s.name != owner.name)

    def with_sharer(self, sharer: Sharer) -> Claim:
        """The claim with ``sharer`` added (or its entry replaced)."""
        rest = [s for s in self.sharers if (s.name, s.uid) != (sharer.name, sharer.uid)]
        rest.append(sharer)
        return msgspec.structs.replace(self, sharers=tuple(sorted(rest, key=_sharer_order)))

    def without(self, owner: Owner) -> Claim | None:
        """The claim once ``owner`` leaves; None when nobody is left (delete it)."""
        rest = tuple(s for s in self.sharers if (s.name, s.uid) != (owner.name, owner.uid))
        if not rest:
            return None
        return msgspec.structs.replace(self, sharers=rest)


def _sharer_order(sharer: Sharer) -> tuple[str, str]:
    return (sharer.name, sharer.uid)


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
    #: Services of one cluster and namespace with one key may share a VIP.
    sharing_key: str | None = None
    #: ``port/protocol`` of each Service port (``80/TCP``).
    ports: tuple[str, ...] = ()
    external_traffic_policy: TrafficPolicy = "Cluster"
    labels: dict[str, str] = {}

    @property
    def owner(self) -> Owner:
        return Owner(self.cluster, self.namespace, self.name, self.uid)

    @property
    def service(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.name}"

    def sharer(self) -> Sharer:
        """This Service's entry in a claim."""
        if self.sharing_key is None:
            return Sharer(name=self.name, uid=self.uid, labels=dict(self.labels))
        return Sharer(
            name=self.name,
            uid=self.uid,
            ports=tuple(sorted(set(self.ports))),
            external_traffic_policy=self.external_traffic_policy,
            labels=dict(self.labels),
        )

    def claim(self, pool: str, appliance_group: str = "") -> Claim:
        """A new claim held by this Service alone."""
        return Claim(
            cluster=self.cluster,
            namespace=self.namespace,
            pool=pool,
            appliance_group=appliance_group,
            sharing_key=self.sharing_key,
            sharers=(self.sharer(),),
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
    #: Shared addresses this Service joins: the shell rewrites their claims.
    joined: tuple[str, ...] = ()
    #: The claim each new or joined address must have once committed.
    claims: dict[str, Claim] = {}
    #: For a joined address, the claim it was joined from (what the KV must still hold).
    bases: dict[str, Claim] = {}


class AllocationFailure(msgspec.Struct, frozen=True, kw_only=True):
    """Why a request cannot be served; ``message`` is for the Service's Event."""

    code: str
    message: str
    #: True when releasing an address may let it succeed (wait for one).
    retryable: bool


class ClaimUpdate(NamedTuple):
    """A claim of a Service's that must change because the Service did."""

    address: str
    before: Claim
    after: Claim


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
    __slots__ = ("index", "settings", "spaces")

    def __init__(self, settings: PoolSettings, index: int) -> None:
        self.settings = settings
        self.index = index
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

    @property
    def name(self) -> str:
        return self.settings.name

    def refusal(self, request: Request) -> str | None:
        return self.settings.refusal(request.cluster, request.namespace, request.labels)

    def usage(self, family: Family) -> str:
        space = self.spaces.get(family)
        if space is None:
            return f"{self.name!r} (no {family} addresses)"
        return f"{self.name!r} ({space.in_use}/{space.size} in use)"


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


class _Pick(NamedTuple):
    family: Family
    address: str
    value: int
    kind: Literal["new", "held", "joined"]


# (sharer name or None for the address as a whole, reason)
_Reason = tuple[str | None, str]


class Allocator:
    """All pools and all claims known to one ipam replica."""

    def __init__(
        self, pools: Sequence[PoolSettings], claims: Mapping[str, Claim] | None = None
    ) -> None:
        self._settings = tuple(pools)
        self._pools: dict[str, _Pool] = {p.name: _Pool(p, i) for i, p in enumerate(pools)}
        self._order = sorted(self._pools.values(), key=lambda p: (p.settings.priority, p.index))
        # Every configured block, per family, sorted, for address → pool lookups.
        self._blocks: dict[Family, list[tuple[int, int, str]]] = {f: [] for f in FAMILIES}
        for pool in pools:
            for block in pool.blocks():
                self._blocks[block.family].append((block.first, block.last, pool.name))
        for blocks in self._blocks.values():
            blocks.sort()
        self._claims: dict[str, Claim] = {}
        self._held: dict[Owner, set[str]] = {}
        # (cluster, namespace, name) → incarnations of that Service in _held
        self._named: Counter[tuple[str, str, str]] = Counter()
        self._groups: dict[tuple[str, str, str], set[str]] = {}
        self._stale: dict[str, tuple[_Reason, ...]] = {}
        # (pool the address is in now, family, cluster) → addresses held
        self._used: Counter[tuple[str, Family, str]] = Counter()
        # (pool the claim was given from, family, cluster) → stale claims
        self._stale_count: Counter[tuple[str, Family, str]] = Counter()
        for address, claim in (claims or {}).items():
            self.claim(address, claim)

    def reconfigured(self, pools: Sequence[PoolSettings]) -> Allocator:
        """An allocator for new pools holding every claim of this one, unmoved."""
        return Allocator(pools, self._claims)

    @property
    def pools(self) -> tuple[PoolSettings, ...]:
        return self._settings

    # --- what is known --------------------------------------------------------

    def claim_of(self, address: str) -> Claim | None:
        return self._claims.get(address)

    def claims(self) -> dict[str, Claim]:
        return dict(self._claims)

    def held_by(self, owner: Owner) -> tuple[str, ...]:
        """Addresses claimed by one Service incarnation (alone or shared)."""
        return tuple(sorted(self._held.get(owner, ())))

    def names(self, cluster: str, namespace: str, name: str) -> bool:
        """Whether any incarnation of this Service (whatever its uid) holds an address."""
        return (cluster, namespace, name) in self._named

    def owners(self) -> list[Owner]:
        """Every Service incarnation holding an address."""
        return list(self._held)

    def pool_of(self, address: str) -> str | None:
        """The pool whose configured addresses contain ``address`` (avoided or not)."""
        family, value = parse_address(address)
        return self._pool_at(family, value)

    def _pool_at(self, family: Family, value: int) -> str | None:
        blocks = self._blocks[family]
        i = bisect_right(blocks, (value, _MAX, "")) - 1
        if i >= 0 and blocks[i][0] <= value <= blocks[i][1]:
            return blocks[i][2]
        return None

    def usable(self, address: str) -> bool:
        """Whether the pool containing ``address`` may hand it out (not avoided)."""
        family, value = parse_address(address)
        where = self._pool_at(family, value)
        space = self._pools[where].spaces.get(family) if where in self._pools else None
        return space is not None and value in space.universe

    def is_stale(self, address: str) -> bool:
        return address in self._stale

    def address_stale_reasons(self, address: str) -> tuple[str, ...]:
        """Why the claim on ``address`` would not be given now (empty: it would)."""
        return tuple(reason for _, reason in self._stale.get(address, ()))

    def stale_reasons(self, owner: Owner) -> tuple[str, ...]:
        """Why the addresses one Service holds would not be given to it now."""
        out: dict[str, None] = {}
        for address in sorted(self._held.get(owner, ())):
            for name, reason in self._stale.get(address, ()):
                if name is None or name == owner.name:
                    out[reason] = None
        return tuple(out)

    def unlike(self, request: Request) -> tuple[str, ...]:
        """How what a Service holds differs from what it asks for now (it changed its
        requested addresses, its pool or its families after it got its VIPs). Nothing
        moves for that; an operator release gives it what it asks for."""
        held = self.held_by(request.owner)
        if not held:
            return ()
        out: list[str] = []
        if request.requested_ips:
            try:
                wanted = {canonical(a) for a in request.requested_ips}
            except ValueError:
                wanted = set(request.requested_ips)
            if wanted != set(held):
                out.append(f"asks for {', '.join(sorted(wanted))}, holds {', '.join(held)}")
        pools = {c.pool for a in held if (c := self._claims.get(a)) is not None}
        if request.pool is not None and pools != {request.pool}:
            out.append(f"asks for pool {request.pool!r}, holds VIPs of {', '.join(sorted(pools))}")
        families = {parse_address(a)[0] for a in held}
        if request.ip_family_policy == "RequireDualStack" and len(families) < 2:
            out.append(f"asks for both families, holds {' '.join(sorted(families))} only")
        return tuple(out)

    def stale_owners(self) -> set[Owner]:
        return {o for address in self._stale for o in self._claims[address].owners}

    def usage(self) -> list[PoolUsage]:
        """Per configured pool and family (then per pool gone but still holding stale claims)."""
        clusters: dict[tuple[str, Family], dict[str, list[int]]] = {}
        for (name, family, cluster), count in self._used.items():
            clusters.setdefault((name, family), {}).setdefault(cluster, [0, 0])[0] += count
        for (name, family, cluster), count in self._stale_count.items():
            clusters.setdefault((name, family), {}).setdefault(cluster, [0, 0])[1] += count

        def per_cluster(name: str, family: Family) -> tuple[ClusterUsage, ...]:
            found = clusters.get((name, family), {})
            return tuple(ClusterUsage(c, u, s) for c, (u, s) in sorted(found.items()))

        out: list[PoolUsage] = []
        for pool in self._order:
            for family, space in pool.spaces.items():
                by_cluster = per_cluster(pool.name, family)
                out.append(
                    PoolUsage(
                        pool.name,
                        family,
                        space.size,
                        space.in_use,
                        sum(c.stale for c in by_cluster),
                        by_cluster,
                        appliance_group=pool.settings.appliance_group,
                    )
                )
        known = {(u.pool, u.family) for u in out}
        for name, family in sorted(clusters):
            if (name, family) not in known:
                by_cluster = per_cluster(name, family)
                out.append(
                    PoolUsage(
                        name,
                        family,
                        0,
                        0,
                        sum(c.stale for c in by_cluster),
                        tuple(c._replace(used=0) for c in by_cluster),
                        configured=name in self._pools,
                    )
                )
        return out

    # --- state changes ----------------------------------------------------------

    def claim(self, address: str, claim: Claim) -> None:
        """Record that ``claim`` holds ``address`` (replacing whatever held it)."""
        family, value = parse_address(address)
        address = to_text(family, value)
        previous = self._claims.get(address)
        if previous is not None:
            self._forget(address, family, value, previous)
        self._claims[address] = claim
        for owner in claim.owners:
            held = self._held.get(owner)
            if held is None:
                held = self._held[owner] = set()
                self._named[(owner.cluster, owner.namespace, owner.name)] += 1
            held.add(address)
        if claim.sharing_key is not None:
            group = (claim.cluster, claim.namespace, claim.sharing_key)
            self._groups.setdefault(group, set()).add(address)
        where = self._pool_at(family, value)
        space = self._pools[where].spaces.get(family) if where in self._pools else None
        if space is not None and value in space.universe:
            space.free.discard(value)
            self._used[(space.pool, family, claim.cluster)] += 1
        reasons = self._judge(address, claim, where, space, value)
        if reasons:
            self._stale[address] = reasons
            self._stale_count[(claim.pool, family, claim.cluster)] += 1

    def release(self, address: str, *, uid: str | None = None) -> Claim | None:
        """Free ``address``; with ``uid``, only if that Service incarnation holds it."""
        family, value = parse_address(address)
        address = to_text(family, value)
        claim = self._claims.get(address)
        if claim is None or (uid is not None and all(s.uid != uid for s in claim.sharers)):
            return None
        del self._claims[address]
        self._forget(address, family, value, claim)
        where = self._pool_at(family, value)
        space = self._pools[where].spaces.get(family) if where in self._pools else None
        if space is not None and value in space.universe:
            space.free.add(value)
        return claim

    def scatter(self, address: str, fraction: float) -> None:
        """Move the next-fit cursor of ``address``'s pool space to ``fraction`` of the way
        through it. Called after losing ``address`` to another replica: replicas with
        the same claims would otherwise keep choosing the same next address, in step."""
        family, value = parse_address(address)
        where = self._pool_at(family, value)
        space = self._pools[where].spaces.get(family) if where in self._pools else None
        if space is None or not space.universe:
            return
        runs = list(space.universe.runs())
        low, high = runs[0][0], runs[-1][1]
        space.cursor = low + int(min(max(fraction, 0.0), 1.0) * (high - low))

    def leave(self, address: str, owner: Owner) -> Claim | None:
        """``owner`` gives up its share of ``address``; returns what remains (None: freed)."""
        claim = self._claims.get(canonical(address))
        if claim is None or not claim.holds(owner):
            return claim
        rest = claim.without(owner)
        if rest is None:
            self.release(address)
        else:
            self.claim(address, rest)
        return rest

    def _forget(self, address: str, family: Family, value: int, claim: Claim) -> None:
        for owner in claim.owners:
            held = self._held.get(owner)
            if held is not None:
                held.discard(address)
                if not held:
                    del self._held[owner]
                    _decrement(self._named, (owner.cluster, owner.namespace, owner.name))
        if claim.sharing_key is not None:
            group = (claim.cluster, claim.namespace, claim.sharing_key)
            members = self._groups.get(group)
            if members is not None:
                members.discard(address)
                if not members:
                    del self._groups[group]
        where = self._pool_at(family, value)
        space = self._pools[where].spaces.get(family) if where in self._pools else None
        if space is not None and value in space.universe:
            _decrement(self._used, (space.pool, family, claim.cluster))
        if self._stale.pop(address, None) is not None:
            _decrement(self._stale_count, (claim.pool, family, claim.cluster))

    def _judge(
        self, address: str, claim: Claim, where: str | None, space: _Space | None, value: int
    ) -> tuple[_Reason, ...]:
        """Why this claim would not be given now; empty when it would."""
        pool = self._pools.get(claim.pool)
        if pool is None:
            if claim.pool == "?":
                return ()  # unreadable in the KV: held, but judged by nobody
            return ((None, f"pool {claim.pool!r} is no longer configured"),)
        if where != claim.pool:
            now = f" (it is in pool {where!r} now)" if where else ""
            return ((None, f"{address} is no longer in pool {claim.pool!r}{now}"),)
        if space is None or value not in space.universe:
            return ((None, f"{address} is excluded from pool {claim.pool!r} now (avoid list)"),)
        reasons: list[_Reason] = []
        group = pool.settings.appliance_group
        if claim.appliance_group and claim.appliance_group != group:
            reasons.append(
                (
                    None,
                    f"pool {claim.pool!r} maps to appliance group {group!r} now; "
                    f"{address} stays on {claim.appliance_group!r}",
                )
            )
        for sharer in claim.sharers:
            why = pool.settings.refusal(claim.cluster, claim.namespace, sharer.labels)
            if why is not None:
                who = f"{claim.cluster}/{claim.namespace}/{sharer.name}"
                reasons.append((sharer.name, f"{why}, which {who} is not"))
        return tuple(reasons)

    # --- sharing ------------------------------------------------------------------

    def _share_refusal(self, claim: Claim, request: Request) -> str | None:
        """Why ``request`` may not share ``claim``'s address (None: it may)."""
        owner = claim.services
        if claim.cluster != request.cluster:
            return f"{owner} (another cluster: VIPs are never shared across clusters)"
        if claim.namespace != request.namespace:
            return f"{owner} (another namespace: only Services of one namespace share a VIP)"
        if request.sharing_key is None:
            return owner
        if claim.sharing_key is None:
            return f"{owner}, which does not share it (no sharing key)"
        if claim.sharing_key != request.sharing_key:
            return f"{owner}, under sharing key {claim.sharing_key!r}"
        return self._fit(claim.others(request.owner), request.sharer())

    def _fit(self, others: Sequence[Sharer], sharer: Sharer) -> str | None:
        """Why ``sharer`` cannot sit next to ``others`` on one address (None: it can)."""
        mine = set(sharer.ports)
        for other in others:
            who = other.name
            clash = sorted(mine.intersection(other.ports))
            if clash:
                return f"{who}, which uses port {', '.join(clash)} on it"
            if other.external_traffic_policy != sharer.external_traffic_policy:
                return (
                    f"{who}, whose externalTrafficPolicy is {other.external_traffic_policy} "
                    f"(this Service: {sharer.external_traffic_policy})"
                )
        return None

    def _share_for(self, pool: _Pool, family: Family, request: Request) -> tuple[str, int] | None:
        """An address of ``pool`` that ``request`` may share (its key's group), lowest first."""
        if request.sharing_key is None:
            return None
        group = self._groups.get((request.cluster, request.namespace, request.sharing_key))
        if not group:
            return None
        for address in sorted(group, key=_address_order):
            claim = self._claims[address]
            if claim.pool != pool.name or address in self._stale or claim.holds(request.owner):
                continue
            fam, value = parse_address(address)
            if fam == family and self._share_refusal(claim, request) is None:
                return address, value
        return None

    def refresh(self, request: Request) -> list[ClaimUpdate] | AllocationFailure:
        """How the claims a Service holds must change now that the Service changed.

        Its entry (ports, policy, labels) is rewritten; a claim held alone also
        takes the Service's sharing key. A change that no longer fits the other
        sharers is refused (the Service keeps its VIP as it was).
        """
        owner = request.owner
        want = request.sharer()
        updates: list[ClaimUpdate] = []
        for address in sorted(self._held.get(owner, ()), key=_address_order):
            claim = self._claims[address]
            if claim.sharer(owner) == want and claim.sharing_key == request.sharing_key:
                continue
            others = claim.others(owner)
            if others and claim.sharing_key != request.sharing_key:
                return AllocationFailure(
                    code=SHARING_CONFLICT,
                    message=f"{request.service} shares {address} with "
                    f"{', '.join(s.name for s in others)} under sharing key "
                    f"{claim.sharing_key!r}; it keeps that VIP until it is released "
                    f"(vipwire ipam release {request.service})",
                    retryable=True,
                )
            clash = self._fit(others, want)
            if clash is not None:
                return AllocationFailure(
                    code=SHARING_CONFLICT,
                    message=f"{request.service} cannot change as asked: it shares {address} "
                    f"with {clash}; it keeps its VIP and its previous ports",
                    retryable=True,
                )
            after = claim.with_sharer(want)
            after = msgspec.structs.replace(after, sharing_key=request.sharing_key)
            updates.append(ClaimUpdate(address, claim, after))
        return updates

    # --- allocation ---------------------------------------------------------------

    def allocate(self, request: Request, *, reserve: bool = True) -> Allocation | AllocationFailure:
        """Choose addresses for ``request``; with ``reserve``, claim them for it.

        Addresses the same Service incarnation already holds are reused first, so
        a retry after a crash between claiming and recording adopts its claims
        instead of leaking them.
        """
        invalid = _invalid(request)
        if invalid is not None:
            return invalid
        if request.requested_ips:
            return self._allocate_requested(request, reserve)
        families = request.families()
        held = self._held.get(request.owner, set())
        if request.pool is not None:
            named = self._pools.get(request.pool)
            if named is None:
                known = ", ".join(repr(p) for p in self._pools) or "none configured"
                return AllocationFailure(
                    code=UNKNOWN_POOL,
                    message=f"pool {request.pool!r} does not exist (pools: {known})",
                    retryable=False,
                )
            why = named.refusal(request)
            if why is not None:
                return AllocationFailure(
                    code=POOL_NOT_ALLOWED,
                    message=f"{why}; {request.service} may not use it",
                    retryable=False,
                )
            candidates = [named]
        else:
            candidates = [
                p for p in self._order if p.settings.auto_assign and p.refusal(request) is None
            ]
            if not candidates:
                return self._no_pool(request)
            held_pools = {self.pool_of(a) for a in held}

            def preference(pool: _Pool) -> int:
                if pool.name in held_pools:
                    return 0
                if any(self._share_for(pool, f, request) for f in pool.spaces):
                    return 1
                return 2

            candidates.sort(key=preference)  # stable: priority order within each rank

        chosen: tuple[_Pool, list[_Pick]] | None = None
        # PreferDualStack settles for its primary family where no pool has room for both.
        attempts = [families]
        if request.ip_family_policy == "PreferDualStack":
            attempts.append(families[:1])
        for wanted in attempts:
            chosen = next(
                (
                    (pool, picks)
                    for pool in candidates
                    if (picks := self._picks(pool, wanted, request, held)) is not None
                ),
                None,
            )
            if chosen is not None:
                break
        if chosen is None:
            needed = families if request.ip_family_policy == "RequireDualStack" else families[:1]
            return self._no_room(request, candidates, needed)
        pool, picks = chosen
        return self._take(request, pool, picks, reserve)

    def _picks(
        self, pool: _Pool, families: Sequence[Family], request: Request, held: set[str]
    ) -> list[_Pick] | None:
        picks: list[_Pick] = []
        for family in families:
            space = pool.spaces.get(family)
            if space is None:
                return None
            mine = sorted(
                (a for a in held if self.pool_of(a) == pool.name and parse_address(a)[0] == family),
                key=_address_order,
            )
            if mine:
                picks.append(_Pick(family, mine[0], parse_address(mine[0])[1], "held"))
                continue
            shared = self._share_for(pool, family, request)
            if shared is not None:
                picks.append(_Pick(family, shared[0], shared[1], "joined"))
                continue
            value = space.free.next_from(space.cursor)
            if value is None:
                return None
            picks.append(_Pick(family, to_text(family, value), value, "new"))
        return picks

    def _take(
        self,
        request: Request,
        pool: _Pool,
        picks: Sequence[_Pick],
        reserve: bool,
        *,
        advance: bool = True,
    ) -> Allocation:
        group = pool.settings.appliance_group
        claims: dict[str, Claim] = {}
        bases: dict[str, Claim] = {}
        for pick in picks:
            if pick.kind == "new":
                claims[pick.address] = request.claim(pool.name, group)
            elif pick.kind == "joined":
                base = self._claims[pick.address]
                bases[pick.address] = base
                claims[pick.address] = base.with_sharer(request.sharer())
        if reserve:
            for pick in picks:
                if pick.kind == "new" and advance:
                    pool.spaces[pick.family].cursor = pick.value + 1
                if pick.address in claims:
                    self.claim(pick.address, claims[pick.address])
        return Allocation(
            pool=pool.name,
            appliance_group=group,
            addresses=tuple(p.address for p in picks),
            new=tuple(p.address for p in picks if p.kind == "new"),
            held=tuple(p.address for p in picks if p.kind == "held"),
            joined=tuple(p.address for p in picks if p.kind == "joined"),
            claims=claims,
            bases=bases,
        )

    def _no_pool(self, request: Request) -> AllocationFailure:
        reasons = []
        for pool in self._order:
            if not pool.settings.auto_assign:
                reasons.append(f"{pool.name!r} assigns only on request")
            else:
                reasons.append(pool.refusal(request) or f"{pool.name!r}")
        detail = "; ".join(reasons) if reasons else "no pools are configured"
        return AllocationFailure(
            code=NO_POOL,
            message=f"no auto-assign pool serves {request.service}: {detail}",
            retryable=False,
        )

    def _no_room(
        self, request: Request, candidates: list[_Pool], families: tuple[Family, ...]
    ) -> AllocationFailure:
        wanted = " and ".join(families)
        hint = self._sharing_hint(request)
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
                + ", ".join(pool.usage(f) for f in families)
                + hint,
                retryable=True,
            )
        if not any(all(f in p.spaces for f in families) for p in candidates):
            return AllocationFailure(
                code=FAMILY_NOT_IN_POOL,
                message=f"no auto-assign pool for {request.service} has {wanted} addresses",
                retryable=False,
            )
        usage = "; ".join(
            ", ".join(p.usage(f) for f in families)
            for p in candidates
            if all(f in p.spaces for f in families)
        )
        return AllocationFailure(
            code=POOL_EXHAUSTED,
            message=f"no free {wanted} address in the pools for {request.service}: {usage}{hint}",
            retryable=True,
        )

    def _sharing_hint(self, request: Request) -> str:
        """Why the VIPs of the request's sharing key could not be shared, if it has one."""
        if request.sharing_key is None:
            return ""
        group = self._groups.get((request.cluster, request.namespace, request.sharing_key))
        why = []
        for address in sorted(group or (), key=_address_order):
            claim = self._claims[address]
            if claim.holds(request.owner):
                continue
            if address in self._stale:
                why.append(f"{address} is stale")
                continue
            refusal = self._share_refusal(claim, request)
            if refusal is not None:
                why.append(f"{address} is held by {refusal}")
        return f" (sharing key {request.sharing_key!r}: {'; '.join(why)})" if why else ""

    def _allocate_requested(
        self, request: Request, reserve: bool
    ) -> Allocation | AllocationFailure:
        parsed: list[tuple[Family, int, str]] = []
        for text in request.requested_ips:
            try:
                family, value = parse_address(text)
            except ValueError as exc:
                return AllocationFailure(code=INVALID_REQUEST, message=str(exc), retryable=False)
            parsed.append((family, value, to_text(family, value)))
        families = [f for f, _, _ in parsed]
        listed = ", ".join(a for _, _, a in parsed)
        if len(set(families)) != len(families):
            return AllocationFailure(
                code=INVALID_REQUEST,
                message=f"requested addresses {listed}: at most one per family",
                retryable=False,
            )
        wanted = request.families()
        if request.ip_family_policy == "SingleStack" and families != [wanted[0]]:
            return AllocationFailure(
                code=INVALID_REQUEST,
                message=f"requested addresses {listed}: a SingleStack {wanted[0]} Service "
                f"takes one {wanted[0]} address",
                retryable=False,
            )
        if request.ip_family_policy == "RequireDualStack" and len(families) != 2:
            return AllocationFailure(
                code=INVALID_REQUEST,
                message=f"requested addresses {listed}: a RequireDualStack Service needs one "
                "address of each family",
                retryable=False,
            )
        parsed.sort(key=lambda item: wanted.index(item[0]))
        owner = request.owner
        picks: list[_Pick] = []
        pools: set[str] = set()
        for family, value, address in parsed:
            name = self._pool_at(family, value)
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
            why = pool.refusal(request)
            if why is not None:
                return AllocationFailure(
                    code=POOL_NOT_ALLOWED,
                    message=f"requested address {address}: {why}; {request.service} may not use it",
                    retryable=False,
                )
            space = pool.spaces.get(family)
            if space is None or value not in space.universe:
                return AllocationFailure(
                    code=ADDRESS_AVOIDED,
                    message=f"requested address {address} is on pool {name!r}'s avoid list",
                    retryable=False,
                )
            claim = self._claims.get(address)
            if claim is None:
                picks.append(_Pick(family, address, value, "new"))
            elif claim.holds(owner):
                picks.append(_Pick(family, address, value, "held"))
            else:
                refusal = self._share_refusal(claim, request)
                if refusal is None and address in self._stale:
                    stale = "; ".join(self.address_stale_reasons(address))
                    refusal = f"{claim.services} (stale, not shared any more: {stale})"
                if refusal is not None:
                    earlier = any(o.service == request.service for o in claim.owners)
                    whom = "an earlier incarnation of this Service" if earlier else refusal
                    return AllocationFailure(
                        code=ADDRESS_TAKEN,
                        message=f"requested address {address} is in use by {whom}",
                        retryable=True,
                    )
                picks.append(_Pick(family, address, value, "joined"))
            pools.add(name)
        if len(pools) > 1:
            return AllocationFailure(
                code=INVALID_REQUEST,
                message=f"requested addresses {listed} are in different pools "
                f"({', '.join(sorted(pools))}); a Service's VIPs come from one pool",
                retryable=False,
            )
        pool = self._pools[pools.pop()]
        # A requested address leaves the pool's next-fit cursor where it is.
        return self._take(request, pool, picks, reserve, advance=False)


def _invalid(request: Request) -> AllocationFailure | None:
    families = request.ip_families
    if len(families) > 2 or len(set(families)) != len(families):
        return AllocationFailure(
            code=INVALID_REQUEST,
            message=f"ipFamilies {list(families)}: at most one of each family",
            retryable=False,
        )
    return None


def _address_order(address: str) -> tuple[str, int]:
    return parse_address(address)


_K = TypeVar("_K", bound=Hashable)


def _decrement(counter: Counter[_K], key: _K) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
