"""What ipam and the lbdriver answer about pools and appliances, read as the contracts say.

Both answer request/reply on their status subjects with the payloads of
:mod:`vipwire.contracts` (:class:`~vipwire.contracts.IpamStatus`,
:class:`~vipwire.contracts.LbdriverStatus`); an answer that is not one is
reported (and shown as unknown), never guessed at.
"""

from __future__ import annotations

import msgspec

from vipwire.contracts import ApplianceStatus, IpamStatus, LbdriverStatus
from vipwire.dashboard.core.views import PoolCapacity


def pool_capacity(status: IpamStatus) -> tuple[PoolCapacity, ...]:
    """One entry per pool, in ipam's order: a dual-stack pool's two families added up."""
    merged: dict[str, PoolCapacity] = {}
    for pool in status.pools:
        old = merged.get(pool.name)
        if old is None:
            merged[pool.name] = PoolCapacity(
                name=pool.name,
                appliance_group=pool.appliance_group,
                size=pool.size,
                in_use=pool.used,
                families=(pool.family,),
            )
        else:
            merged[pool.name] = PoolCapacity(
                name=pool.name,
                appliance_group=old.appliance_group,
                size=old.size + pool.size,
                in_use=old.in_use + pool.used,
                families=(*old.families, pool.family),
            )
    return tuple(merged.values())


def parse_ipam(data: bytes) -> tuple[PoolCapacity, ...]:
    """Pools from ipam's answer; ValueError if it is not an :class:`IpamStatus`."""
    try:
        status = msgspec.json.decode(data, type=IpamStatus)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise ValueError(f"ipam's status answer is not an IpamStatus: {exc}") from exc
    return pool_capacity(status)


def parse_lbdriver(data: bytes) -> tuple[ApplianceStatus, ...]:
    """Appliances from the lbdriver's answer; ValueError if it is not an :class:`LbdriverStatus`."""
    try:
        status = msgspec.json.decode(data, type=LbdriverStatus)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise ValueError(f"the lbdriver's status answer is not an LbdriverStatus: {exc}") from exc
    return status.appliances
