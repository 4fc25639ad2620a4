"""The rules of sharing one VIP: who may sit next to whom on one address.

Services of one cluster and namespace with one sharing key may share a VIP
when their ports (port and protocol) are disjoint and their
externalTrafficPolicy agrees. Each function answers with the reason a
Service may not share (for its Event), or None when it may.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from vipwire.ipam.core.addresses import Family, parse_address
from vipwire.ipam.core.claims import Claim, ClaimUpdate, Request, Sharer, address_order
from vipwire.ipam.core.holdings import Holdings
from vipwire.ipam.core.refusals import AllocationFailure, sharing_conflict


def share_refusal(claim: Claim, request: Request) -> str | None:
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
    return fit(claim.others(request.owner), request.sharer())


def fit(others: Sequence[Sharer], sharer: Sharer) -> str | None:
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


def shareable(
    holdings: Holdings, pool: str, family: Family, request: Request
) -> tuple[str, int] | None:
    """An address of ``pool`` that ``request`` may share (its key's group), lowest first."""
    if request.sharing_key is None:
        return None
    group = holdings.group(request.cluster, request.namespace, request.sharing_key)
    if not group:
        return None
    for address in sorted(group, key=address_order):
        claim = holdings.claim_of_held(address)
        if claim.pool != pool or holdings.is_stale(address) or claim.holds(request.owner):
            continue
        fam, value = parse_address(address)
        if fam == family and share_refusal(claim, request) is None:
            return address, value
    return None


def claim_updates(holdings: Holdings, request: Request) -> list[ClaimUpdate] | AllocationFailure:
    """How the claims a Service holds must change now that the Service changed.

    Its entry (ports, policy, labels) is rewritten; a claim held alone also
    takes the Service's sharing key. A change that no longer fits the other
    sharers is refused (the Service keeps its VIP as it was).
    """
    owner = request.owner
    want = request.sharer()
    updates: list[ClaimUpdate] = []
    for address in sorted(holdings.held_by(owner), key=address_order):
        claim = holdings.claim_of_held(address)
        if claim.sharer(owner) == want and claim.sharing_key == request.sharing_key:
            continue
        others = claim.others(owner)
        if others and claim.sharing_key != request.sharing_key:
            return sharing_conflict(
                f"{request.service} shares {address} with "
                f"{', '.join(s.name for s in others)} under sharing key "
                f"{claim.sharing_key!r}; it keeps that VIP until it is released "
                f"(vipwire ipam release {request.service})"
            )
        clash = fit(others, want)
        if clash is not None:
            return sharing_conflict(
                f"{request.service} cannot change as asked: it shares {address} "
                f"with {clash}; it keeps its VIP and its previous ports"
            )
        after = claim.with_sharer(want)
        after = msgspec.structs.replace(after, sharing_key=request.sharing_key)
        updates.append(ClaimUpdate(address, claim, after))
    return updates


def unshared(holdings: Holdings, request: Request) -> str | None:
    """Why a Service with a sharing key got VIPs of its own although its key's group
    holds some (None: there were none to share, or it has no key)."""
    hint = sharing_hint(holdings, request)
    if not hint:
        return None
    return (
        f"{request.service} could not share a VIP{hint}, so it got one of its own; "
        "to share, make the ports disjoint and the externalTrafficPolicy the same"
    )


def sharing_hint(holdings: Holdings, request: Request) -> str:
    """Why the VIPs of the request's sharing key could not be shared, if it has one."""
    if request.sharing_key is None:
        return ""
    group = holdings.group(request.cluster, request.namespace, request.sharing_key)
    why = []
    for address in sorted(group or (), key=address_order):
        claim = holdings.claim_of_held(address)
        if claim.holds(request.owner):
            continue
        if holdings.is_stale(address):
            why.append(f"{address} is stale")
            continue
        refusal = share_refusal(claim, request)
        if refusal is not None:
            why.append(f"{address} is held by {refusal}")
    return f" (sharing key {request.sharing_key!r}: {'; '.join(why)})" if why else ""
