"""What the allocator's helpers read of it: who holds which address, and where
each address belongs.

A protocol, so that the helpers (requested addresses, sharing) depend on this
narrow view and not on the allocator that calls them.
"""

from __future__ import annotations

from typing import Protocol

from vipwire.ipam.core.addresses import Family
from vipwire.ipam.core.claims import Claim, Owner
from vipwire.ipam.core.pools import Pool


class Holdings(Protocol):
    """The allocator's claims and pools, read-only."""

    def claim_of(self, address: str) -> Claim | None: ...

    def claim_of_held(self, address: str) -> Claim: ...

    def held_by(self, owner: Owner) -> tuple[str, ...]: ...

    def group(self, cluster: str, namespace: str, sharing_key: str) -> set[str]: ...

    def key_namespaces(self, cluster: str, sharing_key: str) -> set[str]: ...

    def is_stale(self, address: str) -> bool: ...

    def address_stale_reasons(self, address: str) -> tuple[str, ...]: ...

    def pool_at(self, family: Family, value: int) -> str | None: ...

    def pool_named(self, name: str) -> Pool | None: ...
