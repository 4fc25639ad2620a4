"""Requested addresses (``loadBalancerIP`` and friends): whether a Service may have them.

A Service that names its addresses gets exactly those, or a refusal saying
which rule stands in the way; nothing else is tried.
"""

from __future__ import annotations

from vipwire.ipam.core.addresses import Family, canonical, parse_address, to_text
from vipwire.ipam.core.choices import Pick
from vipwire.ipam.core.claims import Request
from vipwire.ipam.core.holdings import Holdings
from vipwire.ipam.core.pools import Pool
from vipwire.ipam.core.refusals import (
    ADDRESS_AVOIDED,
    ADDRESS_NOT_IN_POOL,
    INVALID_REQUEST,
    POOL_NOT_ALLOWED,
    AllocationFailure,
    taken,
)
from vipwire.ipam.core.sharing import ANOTHER_SERVICE, same_tenant, share_refusal


def requested_picks(
    holdings: Holdings, request: Request
) -> tuple[Pool, list[Pick]] | AllocationFailure:
    """The pool and picks for a request that names its addresses."""
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
    picks: list[Pick] = []
    pools: set[str] = set()
    for family, value, address in parsed:
        name = holdings.pool_at(family, value)
        if name is None or holdings.pool_named(name) is None:
            return AllocationFailure(
                code=ADDRESS_NOT_IN_POOL,
                message=f"requested address {address} is in no pool",
                retryable=False,
            )
        pool = holdings.pool_named(name)
        assert pool is not None
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
        claim = holdings.claim_of(address)
        if claim is None:
            picks.append(Pick(family, address, value, "new"))
        elif claim.holds(owner):
            picks.append(Pick(family, address, value, "held"))
        else:
            refusal = share_refusal(claim, request)
            if refusal is None and holdings.is_stale(address):
                stale = "; ".join(holdings.address_stale_reasons(address))
                refusal = f"{claim.services} (stale, not shared any more: {stale})"
            if refusal is not None:
                earlier = any(o.service == request.service for o in claim.owners)
                whom = "an earlier incarnation of this Service" if earlier else refusal
                public = whom if earlier or same_tenant(claim, request) else ANOTHER_SERVICE
                return taken(address, public, detail=whom)
            picks.append(Pick(family, address, value, "joined"))
        pools.add(name)
    if len(pools) > 1:
        return AllocationFailure(
            code=INVALID_REQUEST,
            message=f"requested addresses {listed} are in different pools "
            f"({', '.join(sorted(pools))}); a Service's VIPs come from one pool",
            retryable=False,
        )
    pool = holdings.pool_named(pools.pop())
    assert pool is not None
    return pool, picks


def unlike(holdings: Holdings, request: Request) -> tuple[str, ...]:
    """How what a Service holds differs from what it asks for now (it changed its
    requested addresses, its pool or its families after it got its VIPs). Nothing
    moves for that; an operator release gives it what it asks for."""
    held = holdings.held_by(request.owner)
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
    pools = {c.pool for a in held if (c := holdings.claim_of(a)) is not None}
    if request.pool is not None and pools != {request.pool}:
        out.append(f"asks for pool {request.pool!r}, holds VIPs of {', '.join(sorted(pools))}")
    families = {parse_address(a)[0] for a in held}
    if request.ip_family_policy == "RequireDualStack" and len(families) < 2:
        out.append(f"asks for both families, holds {' '.join(sorted(families))} only")
    return tuple(out)
