"""What the allocator chose for a request: an :class:`Allocation`, made of picks."""

from __future__ import annotations

from typing import Literal, NamedTuple

import msgspec

from vipwire.ipam.core.addresses import Family
from vipwire.ipam.core.claims import Claim


class Pick(NamedTuple):
    family: Family
    address: str
    value: int
    kind: Literal["new", "held", "joined"]


class Allocation(msgspec.Struct, frozen=True, kw_only=True):
    """Addresses chosen for a request (primary family first); nothing is claimed yet."""

    pool: str
    appliance_group: str
    addresses: tuple[str, ...]
    #: Addresses nobody holds: the ledger must create their claims.
    new: tuple[str, ...]
    #: Addresses this very Service (same uid) already held: the ledger adopts them.
    held: tuple[str, ...]
    #: Shared addresses this Service joins: the ledger rewrites their claims.
    joined: tuple[str, ...] = ()
    #: The claim each new or joined address must have once committed.
    claims: dict[str, Claim] = {}
    #: For a joined address, the claim it was joined from (what the KV must still hold).
    bases: dict[str, Claim] = {}
    #: Chosen because the Service asked for these addresses, or its status held
    #: them (next fit left alone).
    requested: bool = False
    #: Why addresses in the Service's status were not kept (a Warning Event each).
    notes: tuple[str, ...] = ()
    #: The Service names a sharing key whose VIPs it could not share: why (it got
    #: addresses of its own; a Warning Event).
    sharing_refused: str | None = None
