"""The ``vip`` messages ipam publishes, built from what it decided."""

from __future__ import annotations

from typing import Final

import msgspec

from vipwire.contracts import (
    ANONYMOUS,
    LbRemoved,
    Message,
    ServiceGone,
    ServicePort,
    ServiceRef,
    ServiceRejected,
    ServiceSnapshot,
    VipAssigned,
    VipFailed,
    VipReleased,
    VipReleasing,
)
from vipwire.ipam.core.allocator import Allocator
from vipwire.ipam.core.claims import request_of
from vipwire.ipam.core.moves import announced
from vipwire.ipam.core.records import ServiceRecord

FAILED_REASON: Final = "AllocationFailed"
#: The reason of a VipFailed for a Service that asks for something that cannot
#: exist (an appliance profile that is not configured): the watcher's own reason
#: for an invalid Service, so the condition and Event read the same.
INVALID_REASON: Final = "InvalidService"
#: A served Service asks for other VIPs (addresses, pool, families) than it holds, and
#: keeps what it holds: the Event's and the condition's reason.
MOVE_REFUSED: Final = "MoveRefused"


def in_force(message: Message) -> Message | None:
    """What ipam reads a message as: a ServiceRejected as the snapshot still in force.

    A rejection (the watcher refuses the Service as it is now) is not a deletion:
    the Service still exists, and whatever it holds stays as its last valid snapshot
    asked (carried as ``in_force``), so it is read as that snapshot (deciding it
    again changes nothing). One never valid asked for nothing and holds nothing:
    None, nothing to do. Only a deleting snapshot or ServiceGone releases VIPs.
    """
    if isinstance(message, ServiceRejected):
        return message.in_force
    return message


def assigned(
    snap: ServiceSnapshot,
    record: ServiceRecord,
    *,
    notes: tuple[str, ...] = (),
    released: ServiceRecord | None = None,
    profile: str | None = None,
    sharing_refused: str | None = None,
) -> VipAssigned:
    """``released``: the record an operator's release ended (the new VIPs say who
    asked and what was released, once); ``profile``: the appliance profile, resolved
    (see :meth:`Allocator.profile_for`)."""
    return VipAssigned(
        cluster=snap.cluster,
        namespace=snap.namespace,
        name=snap.name,
        uid=snap.uid,
        vips=announced(record),
        pool=record.pool,
        appliance_group=record.appliance_group,
        moving_from=record.moving_from,
        ports=snap.ports,
        external_traffic_policy=snap.external_traffic_policy,
        health_check_node_port=snap.health_check_node_port,
        source_ranges=snap.source_ranges,
        affinity_timeout_s=snap.affinity_timeout_s,
        notes=notes,
        released_by=(released.released_by or ANONYMOUS) if released is not None else None,
        released_vips=released.vips if released is not None else (),
        profile=profile,
        sharing_refused=sharing_refused,
    )


def moved(last: VipAssigned, record: ServiceRecord) -> VipAssigned:
    """The last VipAssigned said again as a move's step leaves the record."""
    return msgspec.structs.replace(
        last,
        vips=announced(record),
        moving_from=record.moving_from,
        pool=record.pool,
        notes=(),
        released_by=None,
        released_vips=(),
        sharing_refused=None,
    )


def failed(
    snap: ServiceSnapshot, message: str, reason: str = FAILED_REASON, *, retryable: bool = True
) -> VipFailed:
    return VipFailed(
        cluster=snap.cluster,
        namespace=snap.namespace,
        name=snap.name,
        uid=snap.uid,
        reason=reason,
        message=message,
        retryable=retryable,
    )


def released(
    about: ServiceSnapshot | ServiceGone | LbRemoved, vips: tuple[str, ...]
) -> VipReleased:
    return VipReleased(
        cluster=about.cluster,
        namespace=about.namespace,
        name=about.name,
        uid=about.uid,
        vips=vips,
    )


def releasing(ref: ServiceRef, record: ServiceRecord) -> VipReleasing:
    cluster, namespace, name = ref
    return VipReleasing(
        cluster=cluster,
        namespace=namespace,
        name=name,
        uid=record.uid,
        vips=record.vips,
        appliance_group=record.appliance_group,
    )


def kept_assignment(
    snap: ServiceSnapshot, record: ServiceRecord, last: Message | None, allocator: Allocator
) -> VipAssigned:
    """What the lbdriver was last told about this Service (``last``: the newest ``vip``
    message on the stream), rebuilt from the claims when the stream no longer says.

    Said again after a refused change, so that the last word on the subject still
    describes the Service's VIPs as the appliance keeps them.
    """
    if (
        isinstance(last, VipAssigned)
        and last.uid == snap.uid
        and (last.vips, last.moving_from) == (announced(record), record.moving_from)
    ):
        if last.notes or last.released_by is not None:
            return msgspec.structs.replace(last, notes=(), released_by=None, released_vips=())
        return last
    ports: dict[str, ServicePort] = {}
    owner = request_of(snap).owner
    for vip in announced(record):
        claim = allocator.claim_of(vip)
        entry = claim.sharer(owner) if claim is not None else None
        for text in entry.ports if entry is not None else ():
            port, _, protocol = text.partition("/")
            ports[text] = msgspec.convert({"port": int(port), "protocol": protocol}, ServicePort)
    previous = last if isinstance(last, VipAssigned) and last.uid == snap.uid else None
    return VipAssigned(
        cluster=snap.cluster,
        namespace=snap.namespace,
        name=snap.name,
        uid=snap.uid,
        vips=announced(record),
        moving_from=record.moving_from,
        pool=record.pool,
        appliance_group=record.appliance_group,
        ports=tuple(ports.values()) or (previous.ports if previous else snap.ports),
        external_traffic_policy=(
            previous.external_traffic_policy if previous else snap.external_traffic_policy
        ),
        health_check_node_port=(
            previous.health_check_node_port if previous else snap.health_check_node_port
        ),
        source_ranges=previous.source_ranges if previous else snap.source_ranges,
        affinity_timeout_s=previous.affinity_timeout_s if previous else snap.affinity_timeout_s,
        profile=(
            previous.profile
            if previous
            else allocator.profile_for(
                None if allocator.unknown_profile(snap.profile) else snap.profile, record.pool
            )
        ),
    )
