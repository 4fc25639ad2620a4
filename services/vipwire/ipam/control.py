"""What ipam answers to operators: subjects and payloads of its control requests.

ipam answers request/reply on core NATS, on subjects outside the ``VIPWIRE``
stream (which captures ``vipwire.>``): an answer is a moment's view, never
history to replay. Requests and answers are JSON. The dashboard reads
:data:`STATUS_SUBJECT` without importing this package, so :class:`IpamStatus`
only ever gains fields; names and meanings of existing ones stay.

==========================  =================  ====================================
subject                     request            answer
==========================  =================  ====================================
``vipwire-ctl.ipam.status``   empty              :class:`IpamStatus` (one replica)
``vipwire-ctl.ipam.show``     :class:`ShowRequest`     :class:`ShowReply` (one replica)
``vipwire-ctl.ipam.release``  :class:`ReleaseRequest`  :class:`ReleaseReply` (one replica)
``vipwire-ctl.ipam.reload``   empty              :class:`ReloadReply` (every replica)
==========================  =================  ====================================
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from vipwire.ipam.core.claims import Claim
from vipwire.ipam.core.records import ServiceRecord

STATUS_SUBJECT: Final = "vipwire-ctl.ipam.status"
SHOW_SUBJECT: Final = "vipwire-ctl.ipam.show"
RELEASE_SUBJECT: Final = "vipwire-ctl.ipam.release"
RELOAD_SUBJECT: Final = "vipwire-ctl.ipam.reload"
#: Queue group of the requests one replica answers (every replica sees the same KV).
QUEUE: Final = "ipam"


class ClusterStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One cluster's part of a pool."""

    cluster: str
    #: Addresses of the pool held by the cluster's Services.
    used: int
    #: Of the cluster's allocations recorded against the pool, those it would not give now.
    stale: int


class PoolStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One pool's addresses of one family (a dual-stack pool has two entries)."""

    name: str
    family: Literal["IPv4", "IPv6"]
    appliance_group: str
    #: False: the pool is no longer configured but still has stale allocations.
    configured: bool = True
    auto_assign: bool = True
    priority: int = 0
    #: Addresses it can hand out (avoided ones excluded).
    size: int
    #: Of those, held by a Service now.
    used: int
    free: int
    #: Allocations given from this pool that the pool as configured now would not
    #: give (outside it, avoided, rule no longer met): kept, never moved.
    stale: int
    clusters: tuple[ClusterStatus, ...] = ()


class StaleAllocation(msgspec.Struct, frozen=True, kw_only=True):
    address: str
    pool: str
    #: ``cluster/namespace/name`` of each Service holding it.
    services: tuple[str, ...]
    reasons: tuple[str, ...]


class IpamStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The answer on :data:`STATUS_SUBJECT`."""

    #: Which ipam process answered (name and a random id per start).
    instance: str
    #: Unix time the answer was made.
    now: float
    ready: bool
    #: Config file pools are reloaded from (None: fixed at start).
    config_path: str | None = None
    #: Unix time of the last successful reload (None: none since start).
    reloaded_at: float | None = None
    #: Addresses held now, and Services holding them.
    claims: int
    services: int
    #: Services waiting for an address to be released.
    waiting: int
    pools: tuple[PoolStatus, ...]
    #: The stale allocations (at most 100; ``stale_total`` counts them all).
    stale: tuple[StaleAllocation, ...] = ()
    stale_total: int = 0


class ShowRequest(msgspec.Struct, frozen=True, kw_only=True):
    #: An address (``192.0.2.7``) or a Service (``cluster/namespace/name``).
    target: str


class AddressView(msgspec.Struct, frozen=True, kw_only=True):
    address: str
    #: The configured pool whose addresses contain it (None: none).
    pool: str | None = None
    #: Whether that pool may hand it out (not avoided).
    usable: bool = False
    claim: Claim | None = None
    revision: int | None = None
    stale: tuple[str, ...] = ()


class ServiceView(msgspec.Struct, frozen=True, kw_only=True):
    service: str
    record: ServiceRecord | None = None
    revision: int | None = None
    #: Each VIP of the record with its claim (None: no claim, which is a fault).
    claims: dict[str, Claim | None] = {}
    stale: tuple[str, ...] = ()
    #: Waiting for an address, with the failure it was told (None: not waiting here).
    waiting: str | None = None


class ShowReply(msgspec.Struct, frozen=True, kw_only=True):
    instance: str
    #: ``kv``: read from the bucket directly, no ipam answered (pools unknown).
    source: Literal["ipam", "kv"] = "ipam"
    address: AddressView | None = None
    service: ServiceView | None = None
    error: str | None = None


class ReleaseRequest(msgspec.Struct, frozen=True, kw_only=True):
    #: ``cluster/namespace/name``.
    service: str


class ReleaseReply(msgspec.Struct, frozen=True, kw_only=True):
    instance: str
    service: str
    #: The VIPs being withdrawn; the Service gets new ones once the appliance is clean.
    vips: tuple[str, ...] = ()
    error: str | None = None


class ReloadReply(msgspec.Struct, frozen=True, kw_only=True):
    instance: str
    config_path: str | None = None
    #: Pool names now configured.
    pools: tuple[str, ...] = ()
    #: Allocations the new pools would not give (kept), and records newly (un)flagged.
    stale: int = 0
    flagged: int = 0
    #: Settings other than the pools that changed: they take effect on restart only.
    ignored: tuple[str, ...] = ()
    error: str | None = None


def parse_service(text: str) -> tuple[str, str, str]:
    """``cluster/namespace/name`` → its three parts; ValueError if it is not that."""
    parts = text.strip().split("/")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"{text!r} is not CLUSTER/NAMESPACE/NAME")
    return parts[0], parts[1], parts[2]
