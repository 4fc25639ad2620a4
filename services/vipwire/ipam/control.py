"""What ipam answers to operators: the control contract, and ipam's values in it.

The subjects and payloads live in :mod:`vipwire.contracts` (named ``IPAM_*``
there); this module keeps their old names for ipam's callers until they import
the contract directly, and converts ipam's own KV values to the views a show
answer carries.
"""

from __future__ import annotations

import msgspec

from vipwire.contracts import (
    IPAM_QUEUE as QUEUE,
)
from vipwire.contracts import (
    IPAM_RELEASE_SUBJECT as RELEASE_SUBJECT,
)
from vipwire.contracts import (
    IPAM_RELOAD_SUBJECT as RELOAD_SUBJECT,
)
from vipwire.contracts import (
    IPAM_SHOW_SUBJECT as SHOW_SUBJECT,
)
from vipwire.contracts import (
    IPAM_STATUS_SUBJECT as STATUS_SUBJECT,
)
from vipwire.contracts import (
    AddressView,
    ClaimView,
    ClusterStatus,
    IpamStatus,
    PoolStatus,
    RecordView,
    ReleaseReply,
    ReleaseRequest,
    ReloadReply,
    ServiceRef,
    ServiceView,
    ShowReply,
    ShowRequest,
    StaleAllocation,
)
from vipwire.ipam.allocator import Claim
from vipwire.ipam.store import ServiceRecord

__all__ = [
    "QUEUE",
    "RELEASE_SUBJECT",
    "RELOAD_SUBJECT",
    "SHOW_SUBJECT",
    "STATUS_SUBJECT",
    "AddressView",
    "ClusterStatus",
    "IpamStatus",
    "PoolStatus",
    "ReleaseReply",
    "ReleaseRequest",
    "ReloadReply",
    "ServiceView",
    "ShowReply",
    "ShowRequest",
    "StaleAllocation",
    "claim_view",
    "parse_service",
    "record_view",
]


def claim_view(claim: Claim) -> ClaimView:
    """An address's claim as a show answer carries it (the same JSON)."""
    return msgspec.convert(claim, ClaimView, from_attributes=True)


def record_view(record: ServiceRecord) -> RecordView:
    """A Service's record as a show answer carries it (the same JSON)."""
    return msgspec.convert(record, RecordView, from_attributes=True)


def parse_service(text: str) -> ServiceRef:
    """``cluster/namespace/name`` → its three parts; ValueError if it is not that."""
    return ServiceRef.parse(text)
