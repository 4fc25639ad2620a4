"""Why a Service gets no address: the failure codes and the texts its Event carries.

The code is the metrics label and the ``VipFailed`` reason's detail; the
message says what an operator or the Service's owner can do about it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import msgspec

from vipwire.ipam.core.addresses import Family
from vipwire.ipam.core.claims import Request
from vipwire.ipam.core.pools import Pool

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
#: The Service names an appliance profile that is not configured.
UNKNOWN_PROFILE = "UnknownProfile"
#: A Service sharing a VIP changed so that it no longer fits with the others
#: (its ports, its traffic policy or its key): it keeps the VIP as it was.
SHARING_CONFLICT = "SharingConflict"


class AllocationFailure(msgspec.Struct, frozen=True, kw_only=True):
    """Why a request cannot be served; ``message`` is for the Service's Event."""

    code: str
    message: str
    #: True when releasing an address may let it succeed (wait for one).
    retryable: bool
    #: The full text for the log and ``vipwire ipam show``, when ``message`` (which
    #: Events carry, read by the Service's tenant) leaves out who else is involved.
    detail: str | None = None

    @property
    def full(self) -> str:
        """What operators are told: the detail, else the message."""
        return self.detail if self.detail is not None else self.message


def invalid_families(request: Request) -> AllocationFailure | None:
    families = request.ip_families
    if len(families) > 2 or len(set(families)) != len(families):
        return AllocationFailure(
            code=INVALID_REQUEST,
            message=f"ipFamilies {list(families)}: at most one of each family",
            retryable=False,
        )
    return None


def unknown_pool(request: Request, known: Sequence[str]) -> AllocationFailure:
    listed = ", ".join(repr(p) for p in known) or "none configured"
    return AllocationFailure(
        code=UNKNOWN_POOL,
        message=f"pool {request.pool!r} does not exist (pools: {listed})",
        retryable=False,
    )


def unknown_profile(asked: str, known: Sequence[str]) -> AllocationFailure:
    listed = ", ".join(known) or "none configured"
    return AllocationFailure(
        code=UNKNOWN_PROFILE,
        message=(
            f"vipwire.io/profile: profile {asked!r} is not configured (profiles: {listed}); "
            "name one of them, or remove the annotation for the pool's default"
        ),
        retryable=False,
    )


def pool_not_allowed(request: Request, why: str) -> AllocationFailure:
    return AllocationFailure(
        code=POOL_NOT_ALLOWED,
        message=f"{why}; {request.service} may not use it",
        retryable=False,
    )


def no_pool(request: Request, order: Sequence[Pool]) -> AllocationFailure:
    """No auto-assign pool serves the request: each pool's reason."""
    reasons = []
    for pool in order:
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


def no_room(
    request: Request,
    candidates: Sequence[Pool],
    families: tuple[Family, ...],
    hint: str,
    busy: Mapping[Family, Collection[int]],
) -> AllocationFailure:
    """The pools that may serve the request are full (or lack a family it needs);
    ``busy``: addresses being claimed now, counted as in use."""
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
            + ", ".join(pool.usage(f, busy.get(f, ())) for f in families)
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
        ", ".join(p.usage(f, busy.get(f, ())) for f in families)
        for p in candidates
        if all(f in p.spaces for f in families)
    )
    return AllocationFailure(
        code=POOL_EXHAUSTED,
        message=f"no free {wanted} address in the pools for {request.service}: {usage}{hint}",
        retryable=True,
    )


def taken(address: str, whom: str, *, detail: str | None = None) -> AllocationFailure:
    """``whom`` as the Service's Event may say it; ``detail``: who, for operators."""
    return AllocationFailure(
        code=ADDRESS_TAKEN,
        message=f"requested address {address} is in use by {whom}",
        retryable=True,
        detail=(
            f"requested address {address} is in use by {detail}"
            if detail is not None and detail != whom
            else None
        ),
    )


def sharing_conflict(message: str) -> AllocationFailure:
    return AllocationFailure(code=SHARING_CONFLICT, message=message, retryable=True)


def invalid(message: str) -> AllocationFailure:
    return AllocationFailure(code=INVALID_REQUEST, message=message, retryable=False)
