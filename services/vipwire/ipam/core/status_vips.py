"""The VIPs a Service's status already holds: the cluster's word when ipam's store is lost.

A Service's snapshot carries the addresses in its ``status.loadBalancer.ingress``
(``status_vips``). While ipam holds claims for the Service they are moot (live
VIPs never move, whatever the status says). When it holds none (the JetStream
store was wiped, or the Service's claims were never recorded), they are how
the Service keeps its VIPs:

* **honour**: a Service that holds nothing and names no addresses of its own
  (``vipwire.io/ips`` wins: that is a user's change) gets the addresses in its
  status, each one that is free (or its own, or shareable under its sharing
  key), of a family it asks for, in a pool it may use and not avoided. An
  address it cannot have is a *note* (why), which becomes a Warning Event;
  the families left get addresses as usual, from the same pool.

* **reserve**: every address in a live Service's status is reserved for that
  Service while the Service holds no claim. New addresses for anybody else
  pass over it, so the order the snapshots arrive in does not matter: after a
  wipe, a Service without status VIPs handled before a Service with some
  cannot take that Service's address. ipam's shell keeps this index from
  every Service snapshot on the stream and, before it chooses new addresses
  for a Service, waits until the index has read the stream up to that
  Service's own snapshot, so every snapshot published before it is known.

* **wait** (the shell's, with a clock): a snapshot not published yet cannot be
  known, e.g. that of a cluster whose watcher starts later. After a start on an
  empty store, while some Services show VIPs in their status, Services with
  none wait ``restore_grace_s`` before they get new addresses
  (``Lifecycle.restoring``), so that every watcher has published first.

Together: wipe the store, restart everything, and no live VIP moves.

An owner's reservation lapses as soon as it holds a claim (its status is then
moot), when its snapshot says it is going away, or when a newer snapshot of
the name says otherwise.
"""

from __future__ import annotations

from collections.abc import Container, Mapping

from vipwire.contracts import ServiceGone, ServiceSnapshot
from vipwire.ipam.core.addresses import Family, parse_address, to_text
from vipwire.ipam.core.choices import Pick
from vipwire.ipam.core.claims import Owner, Request
from vipwire.ipam.core.holdings import Holdings
from vipwire.ipam.core.pools import Pool
from vipwire.ipam.core.sharing import same_tenant, share_refusal

Name = tuple[str, str, str]


class StatusVips:
    """Per Service (its newest snapshot), the addresses its status holds, and the
    reverse index: who has an address in status."""

    def __init__(self) -> None:
        self._by_name: dict[Name, tuple[Owner, tuple[str, ...]]] = {}
        self._by_address: dict[str, set[Owner]] = {}

    def __len__(self) -> int:
        return len(self._by_name)

    def see(self, message: ServiceSnapshot | ServiceGone) -> None:
        """Take the newest snapshot (or deletion) of a Service."""
        name = (message.cluster, message.namespace, message.name)
        self._drop(name)
        if not isinstance(message, ServiceSnapshot) or message.deleting:
            return
        addresses: dict[str, None] = {}
        for text in message.status_vips:
            try:
                addresses.setdefault(to_text(*parse_address(text)), None)
            except ValueError:
                continue  # the watcher sends addresses only; nothing to reserve
        if not addresses:
            return
        owner = Owner(*name, message.uid)
        self._by_name[name] = (owner, tuple(addresses))
        for address in addresses:
            self._by_address.setdefault(address, set()).add(owner)

    def _drop(self, name: Name) -> None:
        known = self._by_name.pop(name, None)
        if known is None:
            return
        owner, addresses = known
        for address in addresses:
            holders = self._by_address.get(address)
            if holders is not None:
                holders.discard(owner)
                if not holders:
                    del self._by_address[address]

    def holders(self, address: str) -> frozenset[Owner]:
        return frozenset(self._by_address.get(address, ()))

    def reserved_for_others(self, holdings: Holdings, request: Request) -> Reserved:
        """The addresses new choices for ``request`` must pass over (see :class:`Reserved`)."""
        return Reserved(self, holdings, request)


class Reserved:
    """Per family, a container of address values reserved for Services other than
    ``request``'s: in another live Service's status while that Service holds no
    claim. Asked address by address (no set is built: after a wipe thousands of
    Services may be reserving)."""

    def __init__(self, status: StatusVips, holdings: Holdings, request: Request) -> None:
        self._status = status
        self._holdings = holdings
        self._name = (request.cluster, request.namespace, request.name)

    def holder(self, address: str) -> Owner | None:
        """The Service ``address`` is reserved for (None: it is for nobody else)."""
        for owner in sorted(self._status.holders(address)):
            if (owner.cluster, owner.namespace, owner.name) == self._name:
                continue
            if not self._holdings.held_by(owner):
                return owner
        return None

    def family(self, family: Family) -> Container[int]:
        return _FamilyView(self, family)


class _FamilyView(Container[int]):
    __slots__ = ("_family", "_reserved")

    def __init__(self, reserved: Reserved, family: Family) -> None:
        self._reserved = reserved
        self._family = family

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        return self._reserved.holder(to_text(self._family, value)) is not None


class Honoured:
    """What a Service can keep of its status VIPs: the pool they fix, one pick per
    family kept, and why each other address cannot be kept."""

    __slots__ = ("notes", "picks", "pool")

    def __init__(self, pool: Pool | None, picks: list[Pick], notes: list[str]) -> None:
        self.pool = pool
        self.picks = picks
        self.notes = notes


def honour(holdings: Holdings, request: Request) -> Honoured:
    """Which of ``request.status_vips`` the Service can have (it holds nothing).

    Reservations are not asked: two Services with one address in status are
    either sharing it (both get it, by the rules of sharing) or one of them was
    edited by hand (the first handled keeps it, the other is told why not)."""
    wanted = request.families()
    owner = request.owner
    picks: dict[Family, Pick] = {}
    notes: list[str] = []
    chosen: Pool | None = None
    for text in request.status_vips:
        try:
            family, value = parse_address(text)
        except ValueError:
            notes.append(f"status VIP {text!r} not kept: not an IP address")
            continue
        address = to_text(family, value)
        why = _refusal(holdings, request, family, value, address)
        if why is None and family not in wanted:
            policy = request.ip_family_policy
            why = f"an {family} address, and the Service is {policy} {wanted[0]}"
        if why is None and family in picks:
            why = f"the Service keeps {picks[family].address} for {family} already"
        name = holdings.pool_at(family, value)
        if why is None and chosen is not None and name != chosen.name:
            why = (
                f"in pool {name!r}, and the Service's other VIP {_first(picks)} "
                f"is in pool {chosen.name!r} (a Service's VIPs come from one pool)"
            )
        if why is not None:
            notes.append(f"status VIP {address} not kept: {why}")
            continue
        pool = holdings.pool_named(name) if name is not None else None
        assert pool is not None  # _refusal checked it
        chosen = pool
        claim = holdings.claim_of(address)
        if claim is None:
            picks[family] = Pick(family, address, value, "new")
        elif claim.holds(owner):
            picks[family] = Pick(family, address, value, "held")
        else:
            picks[family] = Pick(family, address, value, "joined")
    ordered = [picks[f] for f in wanted if f in picks]
    return Honoured(chosen, ordered, notes)


def _first(picks: Mapping[Family, Pick]) -> str:
    return next(iter(picks.values())).address


def _refusal(
    holdings: Holdings,
    request: Request,
    family: Family,
    value: int,
    address: str,
) -> str | None:
    """Why the Service cannot have ``address`` back (None: it can)."""
    name = holdings.pool_at(family, value)
    pool = holdings.pool_named(name) if name is not None else None
    if pool is None:
        return "in no configured pool"
    if request.pool is not None and name != request.pool:
        return f"in pool {name!r}, not in the Service's pool {request.pool!r}"
    rule = pool.refusal(request)
    if rule is not None:
        return rule
    space = pool.spaces.get(family)
    if space is None or value not in space.universe:
        return f"on pool {name!r}'s avoid list"
    claim = holdings.claim_of(address)
    if claim is not None and not claim.holds(request.owner):
        refusal = share_refusal(claim, request)
        if refusal is None and holdings.is_stale(address):
            refusal = f"{claim.services} (stale, not shared any more)"
        if refusal is not None:
            if not same_tenant(claim, request):
                return "held by another Service"  # of another tenant: not named in Events
            return f"held by another Service ({refusal})"
    return None
