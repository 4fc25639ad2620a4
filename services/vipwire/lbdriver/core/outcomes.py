"""What the lbdriver says about a Service: its ``lb`` messages, their reasons and
texts, and when one is news.

A Service's report is published only when it differs from the last one (a
retry of the same failure would become one more Kubernetes Event each time),
except that an assignment is always answered: unless the stream already holds
this very answer, published after that assignment (a restart's replay).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import NamedTuple

from vipwire.contracts import (
    LbFailed,
    LbProgrammed,
    LbRemoved,
    PortError,
    ServiceRef,
    VipAssigned,
    VipReleasing,
)
from vipwire.lbdriver.core.desired import InvalidAssignment, members_of
from vipwire.lbdriver.core.drain import draining_members
from vipwire.lbdriver.core.virtual_servers import VirtualServer

Assignment = VipAssigned | VipReleasing


class Explanation(NamedTuple):
    """The reason (CamelCase) and message an LbFailed carries."""

    reason: str
    message: str


def fingerprint(data: bytes) -> bytes:
    """What identifies a report's content (16 bytes of its SHA-256)."""
    return hashlib.sha256(data).digest()[:16]


def outcome(
    key: ServiceRef,
    assignment: Assignment,
    appliance: str,
    desired: Mapping[str, VirtualServer],
    port_errors: tuple[PortError, ...] = (),
) -> LbProgrammed | LbRemoved:
    """The report of a reconcile that succeeded (``port_errors``: in part)."""
    if isinstance(assignment, VipReleasing):
        return LbRemoved(
            cluster=key.cluster,
            namespace=key.namespace,
            name=key.name,
            uid=assignment.uid,
            appliance=appliance,
            vips=assignment.vips,
        )
    return LbProgrammed(
        cluster=key.cluster,
        namespace=key.namespace,
        name=key.name,
        uid=assignment.uid,
        appliance=appliance,
        vips=assignment.vips,
        ports=assignment.ports,
        members=members_of(desired.values()),
        external_traffic_policy=assignment.external_traffic_policy,
        source_ranges=assignment.source_ranges,
        affinity_timeout_s=assignment.affinity_timeout_s,
        draining=draining_members(desired),
        port_errors=port_errors,
    )


def failure(key: ServiceRef, assignment: Assignment, appliance: str, why: Explanation) -> LbFailed:
    """The report of a reconcile that failed (or could not be tried)."""
    return LbFailed(
        cluster=key.cluster,
        namespace=key.namespace,
        name=key.name,
        uid=assignment.uid,
        appliance=appliance,
        reason=why.reason,
        message=why.message,
        removing=isinstance(assignment, VipReleasing),
    )


def unknown_group(group: str) -> Explanation:
    """No appliance is configured for the Service's group (only a restart can help)."""
    return Explanation("UnknownApplianceGroup", f"no appliance is configured for group {group!r}")


def invalid_assignment(error: InvalidAssignment) -> Explanation:
    """The assignment cannot be turned into virtual servers."""
    return Explanation("InvalidAssignment", str(error))


def appliance_failure(
    reason: str, message: str, *, credentials_of: str | None = None
) -> Explanation:
    """A failed appliance call, as reported; ``credentials_of`` names the appliance
    whose credentials were refused (the operator's next step is to check them)."""
    if credentials_of is not None:
        message += (
            f": check the credentials of appliance {credentials_of} "
            f"(lbdriver.appliances[{credentials_of}].username and its password_file or "
            "password_env)"
        )
    return Explanation(reason, message)


def success_is_news(published: bytes | None, stamp: bytes, *, force: bool, answered: bool) -> bool:
    """Whether a success report is published.

    ``force``: the reconcile answers an assignment; ``answered``: the stream
    already holds this answer, published after that assignment.
    """
    return published != stamp or (force and not answered)


def failure_is_news(
    published: bytes | None,
    stamp: bytes,
    *,
    known: bool,
    force: bool,
    ready: bool,
    answered: bool,
) -> bool:
    """Whether a failure report is published.

    Retries of the same failure are not news (each one would become an Event);
    but at start-up (not ``ready``) an assignment the stream holds no answer to
    gets one. ``known``: the Service is still known (not released meanwhile).
    """
    unanswered = force and not ready and not answered
    return not known or published != stamp or unanswered


def message_id(
    key: ServiceRef,
    *,
    cause_subject: str,
    cause_seq: int,
    cause_family: str,
    incarnation: str,
    count: int,
    stamp: bytes,
) -> str:
    """The ``Nats-Msg-Id`` of a report.

    Named by cause (for the reader), by incarnation and count (so a restart's
    confirmation, or a return to an earlier outcome, is never taken for a
    duplicate) and by content (so a publish retried after a timeout that in
    fact landed is dropped as one).
    """
    service = "" if cause_family == "vip" else f":{key.namespace}.{key.name}"
    return f"{cause_subject}#{cause_seq}->lb{service}:{incarnation}.{count}:{stamp[:8].hex()}"
