"""Staleness: a claim the pools as configured now would not give.

Configuration never moves a claim: an allocator built for new pools takes
every claim as it is, and one that the new pools would not give out any more
(address outside its pool, now avoided, pool gone, rule no longer met) is
*stale*: kept, counted and explained, until its Services release it.
"""

from __future__ import annotations

from vipwire.ipam.core.claims import Claim
from vipwire.ipam.core.pools import Pool, Space

#: (sharer name, or None for the address as a whole; the reason)
Reason = tuple[str | None, str]


def judge(
    address: str,
    claim: Claim,
    *,
    pool: Pool | None,
    where: str | None,
    space: Space | None,
    value: int,
) -> tuple[Reason, ...]:
    """Why this claim would not be given now; empty when it would.

    ``pool``: the pool the claim was given from, as configured now (None: gone);
    ``where``: the pool whose addresses contain it now; ``space``: that pool's
    space of the address's family.
    """
    if pool is None:
        if claim.pool == "?":
            return ()  # unreadable in the KV: held, but judged by nobody
        return ((None, f"pool {claim.pool!r} is no longer configured"),)
    if where != claim.pool:
        now = f" (it is in pool {where!r} now)" if where else ""
        return ((None, f"{address} is no longer in pool {claim.pool!r}{now}"),)
    if space is None or value not in space.universe:
        return ((None, f"{address} is excluded from pool {claim.pool!r} now (avoid list)"),)
    reasons: list[Reason] = []
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
        why = pool.settings.refusal(claim.cluster, claim.namespace_of(sharer), sharer.labels)
        if why is not None:
            who = f"{claim.cluster}/{claim.namespace_of(sharer)}/{sharer.name}"
            reasons.append((sharer.name, f"{why}, which {who} is not"))
    return tuple(reasons)
