"""The allocator: which addresses a Service gets, as a pure function of state.

No I/O, no clock, no asyncio. The shell feeds it every claim it learns of
(from the KV bucket, its own writes and other replicas' writes) and asks it
for addresses; :meth:`Allocator.choose` reserves nothing: the ledger's
compare-and-set is the reservation, and what lands is taught back with
:meth:`Allocator.take` or :meth:`Allocator.claim`. When the KV disagrees,
the KV wins and the shell tells the allocator.

Per pool and family, free space is an interval set and a cursor (see
:mod:`~vipwire.ipam.core.pools`). Services with a sharing key are indexed by
``(cluster, namespace, key)``, so finding a VIP to share looks only at the
addresses of that key, never at a pool (the rules: :mod:`~vipwire.ipam.core.sharing`).

Configuration never moves a claim: an allocator built for new pools
(:meth:`Allocator.reconfigured`) takes every claim as it is; those the new
pools would not give are stale (:mod:`~vipwire.ipam.core.staleness`).

One module over 500 lines on purpose: :class:`Allocator` owns the claim index
every choice reads (pools, sharing keys, status VIP reservations); the rules
each choice applies already live in their own modules (``requested``,
``sharing``, ``status_vips``), and what is left here is the index and its upkeep.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Collection, Container, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

import msgspec

from vipwire.ipam.core.addresses import FAMILIES, Family, canonical, parse_address, to_text
from vipwire.ipam.core.choices import Allocation, Pick
from vipwire.ipam.core.claims import Claim, ClaimUpdate, Owner, Request, address_order
from vipwire.ipam.core.pools import ClusterUsage, Pool, PoolUsage
from vipwire.ipam.core.refusals import (
    AllocationFailure,
    invalid_families,
    no_pool,
    no_room,
    pool_not_allowed,
    unknown_pool,
    unknown_profile,
)
from vipwire.ipam.core.requested import requested_picks
from vipwire.ipam.core.sharing import claim_updates, shareable, sharing_hint, unshared
from vipwire.ipam.core.staleness import Reason, judge
from vipwire.ipam.core.status_vips import Reserved, StatusVips, honour

if TYPE_CHECKING:  # settings are handed in; the core never reads a config file
    from vipwire.ipam.settings import PoolSettings

_MAX = 1 << 129  # above every address: a bisect key sorting after (value, *, *)


class Allocator:
    """All pools and all claims known to one ipam replica."""

    def __init__(
        self,
        pools: Sequence[PoolSettings],
        claims: Mapping[str, Claim] | None = None,
        *,
        profiles: Collection[str] | None = None,
    ) -> None:
        #: The appliance profiles configured (names); None: not known here (replay,
        #: benchmarks), so no name is refused.
        self.profiles = None if profiles is None else tuple(sorted(profiles))
        self._settings = tuple(pools)
        self._pools: dict[str, Pool] = {p.name: Pool(p, i) for i, p in enumerate(pools)}
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
        self._stale: dict[str, tuple[Reason, ...]] = {}
        # (pool the address is in now, family, cluster) → addresses held
        self._used: Counter[tuple[str, Family, str]] = Counter()
        # (pool the claim was given from, family, cluster) → stale claims
        self._stale_count: Counter[tuple[str, Family, str]] = Counter()
        for address, claim in (claims or {}).items():
            self.claim(address, claim)

    def reconfigured(self, pools: Sequence[PoolSettings]) -> Allocator:
        """An allocator for new pools holding every claim of this one, unmoved."""
        return Allocator(pools, self._claims, profiles=self.profiles)

    def profile_for(self, asked: str | None, pool: str) -> str | None:
        """The appliance profile a Service gets: its own, else its pool's default
        (None: the built-in profile)."""
        if asked is not None:
            return asked
        settings = self._pools.get(pool)
        return settings.settings.profile if settings is not None else None

    def unknown_profile(self, asked: str | None) -> AllocationFailure | None:
        """The refusal of a profile that is not configured; None when it is (or
        when the profiles are not known here)."""
        if asked is None or self.profiles is None or asked in self.profiles:
            return None
        return unknown_profile(asked, self.profiles)

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
        return self.pool_at(family, value)

    def pool_named(self, name: str) -> Pool | None:
        return self._pools.get(name)

    def pool_at(self, family: Family, value: int) -> str | None:
        """The pool whose configured blocks contain the address (avoided or not)."""
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
        where = self.pool_at(family, value)
        space = self._pools[where].spaces.get(family) if where in self._pools else None
        return space is not None and value in space.universe

    def is_stale(self, address: str) -> bool:
        return address in self._stale

    def address_stale_reasons(self, address: str) -> tuple[str, ...]:
        """Why the claim on ``address`` would not be given now (empty: it would)."""
        return tuple(reason for _, reason in self._stale.get(address, ()))

    def stale_reasons(
        self, owner: Owner, changed: Mapping[str, Claim] | None = None
    ) -> tuple[str, ...]:
        """Why the addresses one Service holds would not be given to it now;
        ``changed``: claims as they will be once rewritten (judged instead)."""
        out: dict[str, None] = {}
        for address in sorted(self._held.get(owner, ())):
            if changed and address in changed:
                reasons = self._judge_claim(address, changed[address])
            else:
                reasons = self._stale.get(address, ())
            for name, reason in reasons:
                if name is None or name == owner.name:
                    out[reason] = None
        return tuple(out)

    def _judge_claim(self, address: str, claim: Claim) -> tuple[Reason, ...]:
        family, value = parse_address(address)
        where = self.pool_at(family, value)
        space = self._pools[where].spaces.get(family) if where in self._pools else None
        return judge(
            address, claim, pool=self._pools.get(claim.pool), where=where, space=space, value=value
        )

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
        where = self.pool_at(family, value)
        space = self._pools[where].spaces.get(family) if where in self._pools else None
        if space is not None and value in space.universe:
            space.free.discard(value)
            self._used[(space.pool, family, claim.cluster)] += 1
        reasons = judge(
            address, claim, pool=self._pools.get(claim.pool), where=where, space=space, value=value
        )
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
        where = self.pool_at(family, value)
        space = self._pools[where].spaces.get(family) if where in self._pools else None
        if space is not None and value in space.universe:
            space.free.add(value)
        return claim

    def scatter(self, address: str, fraction: float) -> None:
        """Move the next-fit cursor of ``address``'s pool space to ``fraction`` of the way
        through it. Called after losing ``address`` to another replica: replicas with
        the same claims would otherwise keep choosing the same next address, in step."""
        family, value = parse_address(address)
        where = self.pool_at(family, value)
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
        where = self.pool_at(family, value)
        space = self._pools[where].spaces.get(family) if where in self._pools else None
        if space is not None and value in space.universe:
            _decrement(self._used, (space.pool, family, claim.cluster))
        if self._stale.pop(address, None) is not None:
            _decrement(self._stale_count, (claim.pool, family, claim.cluster))

    # --- sharing ------------------------------------------------------------------

    def group(self, cluster: str, namespace: str, sharing_key: str) -> set[str]:
        """The addresses claimed under one sharing key (do not change the set)."""
        return self._groups.get((cluster, namespace, sharing_key), set())

    def key_namespaces(self, cluster: str, sharing_key: str) -> set[str]:
        """The namespaces whose claims carry ``sharing_key`` (for sharing across them)."""
        return {ns for (c, ns, key) in self._groups if c == cluster and key == sharing_key}

    def claim_of_held(self, address: str) -> Claim:
        """The claim on an address known to be held (by an index of this allocator)."""
        return self._claims[address]

    def refresh(self, request: Request) -> list[ClaimUpdate] | AllocationFailure:
        """How the claims a Service holds must change now that the Service changed
        (see :func:`~vipwire.ipam.core.sharing.claim_updates`)."""
        return claim_updates(self, request)

    def _share_for(self, pool: Pool, family: Family, request: Request) -> tuple[str, int] | None:
        return shareable(self, pool.name, family, request)

    # --- allocation ---------------------------------------------------------------

    def choose(
        self,
        request: Request,
        *,
        skip: Collection[str] = (),
        status: StatusVips | None = None,
        honour_status: bool = True,
    ) -> Allocation | AllocationFailure:
        """Choose addresses for ``request``, claiming nothing: the ledger's
        compare-and-set is the reservation, and :meth:`take` records it once it holds.

        ``skip``: addresses this replica is claiming right now for other Services;
        never offered as new ones. Addresses the same Service incarnation already
        holds are reused first, so a retry after a crash between claiming and
        recording adopts its claims instead of leaking them.

        A Service that holds nothing and names no addresses gets the addresses in
        its status back where it may (``honour_status``: False after an operator's
        release, which asks for new ones); ``status``: every live Service's status
        VIPs, which new addresses pass over while their Service holds no claim
        (see :mod:`~vipwire.ipam.core.status_vips`).
        """
        invalid = invalid_families(request)
        if invalid is not None:
            return invalid
        if request.requested_ips:
            picked = requested_picks(self, request)
            if isinstance(picked, AllocationFailure):
                return picked
            return self._build(request, *picked, requested=True)
        families = request.families()
        held = self._held.get(request.owner, set())
        reserved = status.reserved_for_others(self, request) if status is not None else None
        busy = _values(skip)
        avoid = {f: _Avoid(busy.get(f, set()), reserved, f) for f in FAMILIES}
        notes: list[str] = []
        if request.status_vips and honour_status and not held:
            kept = honour(self, request)
            notes = kept.notes
            if kept.pool is not None:
                done = self._complete(request, kept.pool, kept.picks, avoid)
                if done is not None:
                    return msgspec.structs.replace(done, notes=tuple(notes))
                notes.extend(
                    f"status VIP {p.address} not kept: pool {kept.pool.name!r} has no free "
                    f"{' or '.join(f for f in families if f != p.family)} address to go with it"
                    for p in kept.picks
                )
        chosen = self._fresh(request, families, held, avoid, busy)
        if notes:
            if isinstance(chosen, AllocationFailure):
                told = "; ".join(notes)
                return msgspec.structs.replace(chosen, message=f"{told}; {chosen.message}")
            return msgspec.structs.replace(chosen, notes=tuple(notes))
        return chosen

    def _complete(
        self,
        request: Request,
        pool: Pool,
        kept: Sequence[Pick],
        avoid: Mapping[Family, Container[int]],
    ) -> Allocation | None:
        """The status VIPs kept, and addresses of the same pool for the families the
        Service still needs (PreferDualStack settles for its primary family)."""
        families = request.families()
        have = {p.family: p for p in kept}
        missing = [f for f in families if f not in have]
        extra = self._picks(pool, missing, request, set(), avoid) if missing else []
        if extra is None:
            if request.ip_family_policy != "PreferDualStack" or families[0] not in have:
                return None
            extra = []
        picked = {**have, **{p.family: p for p in extra}}
        return self._build(
            request, pool, [picked[f] for f in families if f in picked], requested=True
        )

    def _fresh(
        self,
        request: Request,
        families: tuple[Family, ...],
        held: set[str],
        avoid: Mapping[Family, Container[int]],
        busy: Mapping[Family, set[int]],
    ) -> Allocation | AllocationFailure:
        if request.pool is not None:
            named = self._pools.get(request.pool)
            if named is None:
                return unknown_pool(request, list(self._pools))
            why = named.refusal(request)
            if why is not None:
                return pool_not_allowed(request, why)
            candidates = [named]
        else:
            candidates = [
                p for p in self._order if p.settings.auto_assign and p.refusal(request) is None
            ]
            if not candidates:
                return no_pool(request, self._order)
            held_pools = {self.pool_of(a) for a in held}

            def preference(pool: Pool) -> int:
                if pool.name in held_pools:
                    return 0
                if any(self._share_for(pool, f, request) for f in pool.spaces):
                    return 1
                return 2

            candidates.sort(key=preference)  # stable: priority order within each rank

        chosen: tuple[Pool, list[Pick]] | None = None
        # PreferDualStack settles for its primary family where no pool has room for both.
        attempts = [families]
        if request.ip_family_policy == "PreferDualStack":
            attempts.append(families[:1])
        for wanted in attempts:
            chosen = next(
                (
                    (pool, picks)
                    for pool in candidates
                    if (picks := self._picks(pool, wanted, request, held, avoid)) is not None
                ),
                None,
            )
            if chosen is not None:
                break
        if chosen is None:
            needed = families if request.ip_family_policy == "RequireDualStack" else families[:1]
            return no_room(request, candidates, needed, sharing_hint(self, request), busy)
        pool, picks = chosen
        built = self._build(request, pool, picks, requested=False)
        if request.sharing_key is not None and not built.joined and not built.held:
            why = unshared(self, request)
            if why is not None:
                built = msgspec.structs.replace(built, sharing_refused=why)
        return built

    def take(self, allocation: Allocation) -> None:
        """An allocation's claims are in the KV: hold them here too, and move the
        next-fit cursors past its new addresses."""
        self.advance(allocation)
        for address, claim in allocation.claims.items():
            self.claim(address, claim)

    def advance(self, allocation: Allocation) -> None:
        """Move the next-fit cursors past an allocation's new addresses (a requested
        address leaves its pool's cursor where it is)."""
        if allocation.requested:
            return
        pool = self._pools.get(allocation.pool)
        if pool is None:
            return
        for address in allocation.new:
            family, value = parse_address(address)
            space = pool.spaces.get(family)
            if space is not None:
                space.cursor = value + 1

    def _picks(
        self,
        pool: Pool,
        families: Sequence[Family],
        request: Request,
        held: set[str],
        busy: Mapping[Family, Container[int]],
    ) -> list[Pick] | None:
        picks: list[Pick] = []
        for family in families:
            space = pool.spaces.get(family)
            if space is None:
                return None
            mine = sorted(
                (a for a in held if self.pool_of(a) == pool.name and parse_address(a)[0] == family),
                key=address_order,
            )
            if mine:
                picks.append(Pick(family, mine[0], parse_address(mine[0])[1], "held"))
                continue
            shared = self._share_for(pool, family, request)
            if shared is not None:
                picks.append(Pick(family, shared[0], shared[1], "joined"))
                continue
            value = space.next_free(busy.get(family, ()))
            if value is None:
                return None
            picks.append(Pick(family, to_text(family, value), value, "new"))
        return picks

    def _build(
        self, request: Request, pool: Pool, picks: Sequence[Pick], *, requested: bool
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
                claims[pick.address] = base.with_sharer(base.entry(request))
        return Allocation(
            pool=pool.name,
            appliance_group=group,
            addresses=tuple(p.address for p in picks),
            new=tuple(p.address for p in picks if p.kind == "new"),
            held=tuple(p.address for p in picks if p.kind == "held"),
            joined=tuple(p.address for p in picks if p.kind == "joined"),
            claims=claims,
            bases=bases,
            requested=requested,
        )


class _Avoid(Container[int]):
    """What a new address of one family must not be: being claimed by this replica
    for another Service (``skip``), or reserved by another Service's status."""

    __slots__ = ("_family", "_reserved", "_skip")

    def __init__(self, skip: set[int], reserved: Reserved | None, family: Family) -> None:
        self._skip = skip
        self._reserved = reserved.family(family) if reserved is not None else None
        self._family = family

    def __contains__(self, value: object) -> bool:
        if value in self._skip:
            return True
        return self._reserved is not None and value in self._reserved


def _values(addresses: Collection[str]) -> dict[Family, set[int]]:
    out: dict[Family, set[int]] = {}
    for address in addresses:
        family, value = parse_address(address)
        out.setdefault(family, set()).add(value)
    return out


_K = TypeVar("_K", bound=Hashable)


def _decrement(counter: Counter[_K], key: _K) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
