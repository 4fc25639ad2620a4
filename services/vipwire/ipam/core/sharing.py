"""The rules of sharing one VIP: who may sit next to whom on one address.

Services of one cluster and namespace with one sharing key may share a VIP
when their ports (port and protocol) are disjoint and their
externalTrafficPolicy agrees. Services of different namespaces (of one
cluster: never across clusters) may too when both opt in: each names the
other's namespace (or ``*``) in ``vipwire.io/share-with-namespaces``. Each
function answers with the reason a Service may not share (for its Event), or
None when it may.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from vipwire.ipam.core.addresses import Family, parse_address
from vipwire.ipam.core.claims import Claim, ClaimUpdate, Request, Sharer, address_order
from vipwire.ipam.core.holdings import Holdings
from vipwire.ipam.core.refusals import AllocationFailure, sharing_conflict

#: Who holds an address, as an Event of a Service of another tenant says it.
ANOTHER_SERVICE = "another Service"


def same_tenant(claim: Claim, request: Request) -> bool:
    """Whether the holders of ``claim`` may be named in ``request``'s Events: only
    Services of the same cluster and namespace (Events never disclose other tenants;
    the log and ``vipwire ipam show`` have the full detail)."""
    return (claim.cluster, claim.namespace) == (request.cluster, request.namespace)


def public_share_refusal(claim: Claim, request: Request) -> str | None:
    """:func:`share_refusal` as ``request``'s Event may say it (no other tenant named)."""
    refusal = share_refusal(claim, request)
    if refusal is None or same_tenant(claim, request):
        return refusal
    return ANOTHER_SERVICE


def accepts(share_namespaces: Sequence[str], namespace: str) -> bool:
    """Whether a Service that names ``share_namespaces`` accepts to share with ``namespace``."""
    return "*" in share_namespaces or namespace in share_namespaces


def namespace_refusal(claim: Claim, request: Request) -> str | None:
    """Why ``request`` may not share with ``claim``'s sharers of other namespaces (None:
    there are none, or each side names the other's namespace)."""
    for sharer in claim.others(request.owner):
        theirs = claim.namespace_of(sharer)
        if theirs == request.namespace:
            continue
        who = f"{claim.cluster}/{theirs}/{sharer.name}"
        if not accepts(request.share_namespaces, theirs):
            return (
                f"{who} (another namespace: {request.service} does not name {theirs!r} in "
                "vipwire.io/share-with-namespaces)"
            )
        if not accepts(sharer.share_namespaces, request.namespace):
            return (
                f"{who} (another namespace: it does not name {request.namespace!r} in "
                "vipwire.io/share-with-namespaces)"
            )
    return None


def share_refusal(claim: Claim, request: Request) -> str | None:
    """Why ``request`` may not share ``claim``'s address (None: it may). Names the
    holders wherever they are: for logs (see :func:`public_share_refusal`)."""
    owner = claim.services
    if claim.cluster != request.cluster:
        return f"{owner} (another cluster: VIPs are never shared across clusters)"
    crosses = any(o.namespace != request.namespace for o in claim.owners)
    if crosses and not request.share_namespaces:
        return (
            f"{owner} (another namespace: Services of different namespaces share a VIP only "
            "when both name each other's namespace in vipwire.io/share-with-namespaces)"
        )
    if request.sharing_key is None:
        return owner
    if claim.sharing_key is None:
        return f"{owner}, which does not share it (no sharing key)"
    if claim.sharing_key != request.sharing_key:
        return f"{owner}, under sharing key {claim.sharing_key!r}"
    return namespace_refusal(claim, request) or fit(claim.others(request.owner), request.sharer())


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
    group = _candidates(holdings, request)
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


def _candidates(holdings: Holdings, request: Request) -> set[str]:
    """The addresses claimed under the request's sharing key that it may look at: its own
    namespace's, and those of the namespaces it accepts to share with."""
    if request.sharing_key is None:
        return set()
    found = set(holdings.group(request.cluster, request.namespace, request.sharing_key))
    if request.share_namespaces:
        for namespace in holdings.key_namespaces(request.cluster, request.sharing_key):
            if namespace != request.namespace and accepts(request.share_namespaces, namespace):
                found |= holdings.group(request.cluster, namespace, request.sharing_key)
    return found


def claim_updates(holdings: Holdings, request: Request) -> list[ClaimUpdate] | AllocationFailure:
    """How the claims a Service holds must change now that the Service changed.

    Its entry (ports, policy, labels) is rewritten; a claim held alone also
    takes the Service's sharing key. A change that no longer fits the other
    sharers is refused (the Service keeps its VIP as it was).
    """
    owner = request.owner
    updates: list[ClaimUpdate] = []
    for address in sorted(holdings.held_by(owner), key=address_order):
        claim = holdings.claim_of_held(address)
        want = claim.entry(request)
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
        apart = namespace_refusal(claim, request)
        if apart is not None:
            return sharing_conflict(
                f"{request.service} cannot change as asked: it shares {address} with "
                f"{apart}; it keeps its VIP as it was until it is released "
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
    group = _candidates(holdings, request)
    why = []
    for address in sorted(group, key=address_order):
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
