"""Which Events a Service gets, and what they say.

Pure: no I/O, no clock (the event time is passed in). An Event is named for
what it says, so that a repeat lands on the same Event and counts in its
series instead of making one more.

Over 500 lines: every Event reason and its text is here, so that the wording (tenant-
safe, saying what to do) is reviewed in one place.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final, Literal, NamedTuple

import msgspec

from vipwire.contracts import (
    LbFailed,
    LbMessage,
    LbProgrammed,
    VipAssigned,
    VipFailed,
    VipMessage,
    VipReleased,
    port_text,
)
from vipwire.watcher.core.condition import (
    DRIFT,
    INVALID,
    NO_MEMBERS,
    TOO_LARGE,
    appliance_message,
    clip,
    failed_reason,
    lacks_members,
    no_members_message,
    refused_ports_message,
)
from vipwire.watcher.core.translate import Obj, metadata, resource_version, uid

REPORTING_CONTROLLER: Final = "vipwire.io/watcher"
#: On an Event we wrote: the cause (bus subject and sequence) it last counted.
CAUSE_ANNOTATION: Final = "vipwire.io/cause"
_NOTE_LIMIT: Final = 1024  # events.k8s.io/v1 rejects a longer note
_FIELD_LIMIT: Final = 128  # reason, action, reportingInstance


class EventSpec(msgspec.Struct, frozen=True, kw_only=True):
    """An Event to emit about a Service (``note`` without the trace id)."""

    type: Literal["Normal", "Warning"]
    reason: str
    action: str
    note: str
    #: The VIPs a Normal Event announces. Such an Event is named for them instead of
    #: its note: a repeat whose note changed since (the member count of a
    #: programming) is the same news, and lands on the same Event.
    announces: tuple[str, ...] = ()


class ObjectRef(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Who a Service was: all an Event about it needs once the API server deleted it."""

    namespace: str
    name: str
    uid: str
    #: As last known ("" when unknown).
    resource_version: str = ""


def object_ref(service: Obj) -> ObjectRef:
    meta = metadata(service)
    return ObjectRef(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=uid(service),
        resource_version=resource_version(service),
    )


def ref_object(ref: ObjectRef) -> Obj:
    """A stand-in for a deleted Service, with what :func:`event_object` reads of it."""
    meta: dict[str, Any] = {"namespace": ref.namespace, "name": ref.name, "uid": ref.uid}
    if ref.resource_version:
        meta["resourceVersion"] = ref.resource_version
    return {"metadata": meta}


def released_ref(message: VipMessage | LbMessage, *, live: bool) -> ObjectRef | None:
    """Who a release seen live is about, when nothing else is known of its Service.

    The release of a Service's VIPs is its last word: once its finalizer is off,
    the API server deletes it at once, and its watch DELETED event may come before
    anything else (the reply to the finalizer write included). A live release whose
    Service the term does not hold is about a Service that is gone, told by its
    uid and name alone. A replayed one (a new term) is not: the Event was the
    previous term's to write, and telling it again would repeat old news.
    """
    if not live or not isinstance(message, VipReleased):
        return None
    return ObjectRef(namespace=message.namespace, name=message.name, uid=message.uid)


class EventSubject(NamedTuple):
    """Where an Event called for by a bus message goes."""

    #: The Service (or the stand-in of a deleted one) to write it about; None: not now.
    about: Obj | None
    #: Hold it back until the Service is known (see TermMemory.defer).
    later: bool


def event_subject(
    service: Obj | None,
    message_uid: str,
    *,
    departed: ObjectRef | None = None,
    gone: ObjectRef | None = None,
) -> EventSubject:
    """The object an Event about the Service ``message_uid`` is written about.

    ``service``: the Service as the term holds it now. ``departed``: the last
    reference the term held of a Service deleted under that key. ``gone``: a
    reference told by the message itself (:func:`released_ref`). A Service that
    is not known yet (a replay ahead of the list, a message ahead of the watch
    event that brings it) gets the Event later; another Service of the same
    name never gets it.
    """
    if service is not None:
        return EventSubject(service if uid(service) == message_uid else None, later=False)
    for ref in (departed, gone):
        if ref is not None and ref.uid == message_uid:
            return EventSubject(ref_object(ref), later=False)
    return EventSubject(None, later=True)


def event_for(
    message: VipMessage | LbMessage, *, before: VipMessage | LbMessage | None
) -> EventSpec | None:
    """The Event a bus message calls for, if any.

    ``before`` is what the message's subject said before it: an allocation or
    a programming is announced when it first succeeds or its VIPs change, not
    on every repetition or change of members.
    """
    if isinstance(message, VipFailed):
        return EventSpec(
            type="Warning",
            reason=message.reason or "AllocationFailed",
            action="AllocateVIP",
            note=message.message,
        )
    if isinstance(message, VipAssigned):
        if isinstance(before, VipAssigned) and (before.uid, before.vips) == (
            message.uid,
            message.vips,
        ):
            return None
        if isinstance(before, VipFailed) and before.uid == message.uid:
            return None  # ipam repeating what it keeps after refusing a change
        if message.released_by is not None:
            return released_by_operator(message)
        return EventSpec(
            type="Normal",
            reason="IPAllocated",
            action="AllocateVIP",
            note=(
                f"{', '.join(message.vips)} allocated from pool {message.pool} "
                f"(appliance group {message.appliance_group})"
            ),
            announces=message.vips,
        )
    if isinstance(message, VipReleased):
        if not message.vips:
            return None
        return EventSpec(
            type="Normal",
            reason="IPReleased",
            action="ReleaseVIP",
            note=f"{', '.join(message.vips)} released: removed from the appliance and free again",
        )
    if isinstance(message, LbFailed):
        removing = message.removing
        reason = failed_reason(message)
        if removing:
            action = "RemoveVirtualServers"
        else:
            action = "VerifyVirtualServers" if reason == DRIFT else "ProgramVirtualServers"
        return EventSpec(
            type="Warning",
            reason=reason,
            action=action,
            note=appliance_message(message)
            + ("; the finalizer stays until the appliance lets go" if removing else ""),
        )
    if isinstance(message, LbProgrammed):
        return _programmed_event(message, before)
    return None


#: The reason of the Normal Event telling who released a Service's VIPs
#: (``vipwire ipam release``) and what it got instead.
RELEASED_BY_OPERATOR: Final = "IPReleasedByOperator"


def released_by_operator(message: VipAssigned) -> EventSpec:
    """The new VIPs after an operator's release, naming the operator (the identity the
    NATS server authenticated for the request) and the old and new addresses.

    ipam carries the release on the one VipAssigned that gives the new VIPs (never on
    a republish), so the Event is told once per release; it is named for what it
    says, so a replay lands on the same Event.
    """
    old = ", ".join(message.released_vips) or "its VIPs"
    return EventSpec(
        type="Normal",
        reason=RELEASED_BY_OPERATOR,
        action="ReleaseVIP",
        note=(
            f"operator {message.released_by} released {old} (vipwire ipam release); "
            f"{', '.join(message.vips)} allocated from pool {message.pool} "
            f"(appliance group {message.appliance_group})"
        ),
    )


def _programmed_event(
    message: LbProgrammed, before: VipMessage | LbMessage | None
) -> EventSpec | None:
    """A programming: announced when new or its VIPs change; a Warning while no node can
    take its traffic (NoMembers); a Normal Event when a NoMembers or an ApplianceDrift
    clears."""
    was = before if isinstance(before, LbProgrammed) else None
    same = was is not None and was.uid == message.uid and was.vips == message.vips
    if lacks_members(message):
        if same and was is not None and lacks_members(was):
            return None  # still none: told already
        return EventSpec(
            type="Warning",
            reason=NO_MEMBERS,
            action="ProgramVirtualServers",
            note=no_members_message(message),
        )
    refused = _refused_event(message, was if same else None)
    if refused is not None:
        return refused
    if same and was is not None:
        if not lacks_members(was):
            if was.port_errors and not message.port_errors:
                return EventSpec(
                    type="Normal",
                    reason="PortsProgrammed",
                    action="ProgramVirtualServers",
                    note=(
                        f"{', '.join(message.vips)}: appliance {message.appliance} now "
                        "serves every port of the Service"
                    ),
                )
            return None
        return EventSpec(
            type="Normal",
            reason="MembersAvailable",
            action="ProgramVirtualServers",
            note=(
                f"{', '.join(message.vips)} on appliance {message.appliance} has member "
                "nodes again: traffic is served"
            ),
            announces=message.vips,
        )
    if (
        isinstance(before, LbFailed)
        and before.uid == message.uid
        and failed_reason(before) == DRIFT
    ):
        return EventSpec(
            type="Normal",
            reason="DriftRepaired",
            action="VerifyVirtualServers",
            note=(
                f"{', '.join(message.vips)} programmed again on appliance {message.appliance}: "
                "what was changed behind vipwire's back is repaired"
            ),
            announces=message.vips,
        )
    ports = ", ".join(port_text(p.port, p.protocol) for p in message.ports) or "no ports"
    return EventSpec(
        type="Normal",
        reason="LoadBalancerProgrammed",
        action="ProgramVirtualServers",
        note=(
            f"{', '.join(message.vips)} ({ports}) programmed on appliance "
            f"{message.appliance} with {len(message.members)} member node(s)"
        ),
        announces=message.vips,
    )


#: The Warning Event of a programming whose ports the appliance refused in part.
PORT_REFUSED: Final = "PortRefused"


def _refused_event(message: LbProgrammed, was: LbProgrammed | None) -> EventSpec | None:
    """A Warning when the appliance refuses some of the Service's ports (once per set of
    refusals; the condition message and status ports keep saying it)."""
    if not message.port_errors:
        return None
    if was is not None and was.port_errors == message.port_errors:
        return None
    return EventSpec(
        type="Warning",
        reason=PORT_REFUSED,
        action="ProgramVirtualServers",
        note=f"{', '.join(message.vips)} programmed, but {refused_ports_message(message)}",
    )


#: The reason of the Warning Event telling why an address in a Service's status was
#: not given back to it (ipam's store was lost, and the address could not be kept).
STATUS_VIP_NOT_KEPT: Final = "StatusVIPNotKept"


def status_vip_event(
    message: VipMessage | LbMessage, *, before: VipMessage | LbMessage | None
) -> EventSpec | None:
    """The Warning Event for an assignment that could not keep what the Service's
    status held (``VipAssigned.notes``: why, per address), saying what it got instead."""
    if not isinstance(message, VipAssigned) or not message.notes:
        return None
    if isinstance(before, VipAssigned) and (before.uid, before.vips, before.notes) == (
        message.uid,
        message.vips,
        message.notes,
    ):
        return None
    got = ", ".join(message.vips) or "nothing"
    return EventSpec(
        type="Warning",
        reason=STATUS_VIP_NOT_KEPT,
        action="AllocateVIP",
        note=f"{'; '.join(message.notes)}; assigned {got}",
    )


SHARING_REFUSED: Final = "SharingRefused"


def sharing_event(
    message: VipMessage | LbMessage, *, before: VipMessage | LbMessage | None
) -> EventSpec | None:
    """The Warning Event for an assignment that could not share its sharing key's VIP
    (``VipAssigned.sharing_refused``: why), so the Service got a VIP of its own."""
    if not isinstance(message, VipAssigned) or not message.sharing_refused:
        return None
    if isinstance(before, VipAssigned) and (before.uid, before.sharing_refused) == (
        message.uid,
        message.sharing_refused,
    ):
        return None
    got = ", ".join(message.vips) or "nothing"
    return EventSpec(
        type="Warning",
        reason=SHARING_REFUSED,
        action="AllocateVIP",
        note=f"{message.sharing_refused}: {got}",
    )


def invalid_event(note: str) -> EventSpec:
    return EventSpec(type="Warning", reason=INVALID, action="ValidateService", note=note)


def too_large_note(size: int, limit: int | None, labels: int, label_bytes: int) -> str:
    """What to tell about a Service whose snapshot the bus refused as too large."""
    over = f"over the bus limit of {limit} bytes" if limit else "over the bus limit"
    return (
        f"this Service is {size} bytes as vipwire sends it, {over}: its changes are not "
        f"applied (a VIP it already has keeps serving). Its {labels} label(s) take "
        f"{label_bytes} bytes: use fewer or smaller labels (annotations other than "
        f"vipwire's are not sent), or raise bus.stream_max_msg_size together with the "
        f"NATS server's max_payload. Deleting it works as usual."
    )


def too_large_event(note: str) -> EventSpec:
    return EventSpec(type="Warning", reason=TOO_LARGE, action="PublishService", note=note)


def event_name(service_name: str, service_uid: str, spec: EventSpec) -> str:
    """Fixed by what the Event says, so repeats of it land on one Event as a series.

    What a Normal Event announces says it, when set: a new term replaying the last
    programming of a Service whose members changed since its Event finds that Event
    (and takes it as told) instead of announcing the same VIPs anew.
    """
    said = ",".join(spec.announces) if spec.announces else spec.note
    what = "\x00".join((service_uid, spec.type, spec.reason, spec.action, said))
    return f"{service_name}.{hashlib.sha256(what.encode()).hexdigest()[:16]}"


def _note(spec: EventSpec, trace_id: str | None) -> str:
    suffix = f" (trace {trace_id})" if trace_id else ""
    return clip(spec.note, _NOTE_LIMIT - len(suffix.encode())) + suffix


#: What an Event can be about.
Regarding = Literal["Service", "Node"]

#: Where Events about cluster-scoped objects live (``kubectl describe node`` looks there).
NODE_EVENT_NAMESPACE = "default"


def event_namespace(about: Obj, kind: Regarding) -> str:
    """The namespace an Event about ``about`` is created in."""
    if kind == "Node":
        return NODE_EVENT_NAMESPACE
    return str(metadata(about).get("namespace") or "")


def event_object(
    spec: EventSpec,
    service: Obj,
    *,
    name: str,
    event_time: str,
    instance: str,
    cause: str,
    trace_id: str | None = None,
    kind: Regarding = "Service",
) -> dict[str, Any]:
    """An events.k8s.io/v1 Event about ``service`` (or a Node), with every field the
    API requires.

    ``event_time`` is a MicroTime (RFC 3339 with microseconds). The note
    ends with the trace id of the change, so the Event leads to its trace.
    """
    meta = metadata(service)
    namespace = event_namespace(service, kind)
    regarding = {
        "apiVersion": "v1",
        "kind": kind,
        "name": str(meta.get("name") or ""),
        "uid": uid(service),
    }
    if kind == "Service":
        regarding["namespace"] = namespace
    rv = resource_version(service)
    if rv:
        regarding["resourceVersion"] = rv
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {CAUSE_ANNOTATION: cause},
        },
        "eventTime": event_time,
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": clip(instance, _FIELD_LIMIT),
        "action": clip(spec.action, _FIELD_LIMIT),
        "reason": clip(spec.reason, _FIELD_LIMIT),
        "regarding": regarding,
        "note": _note(spec, trace_id),
        "type": spec.type,
    }


def series_patch(existing: Obj, *, cause: str, now: str) -> dict[str, Any] | None:
    """Merge patch counting one more occurrence of an Event; None if ``cause`` was counted.

    The API wants ``series.count`` to be at least 2 (the first occurrence is
    the Event itself) and every other field left as created. The cause
    recorded on the Event makes a redelivery (or a new leader replaying
    the bus) count nothing twice.
    """
    meta = metadata(existing)
    annotations = meta.get("annotations") or {}
    if isinstance(annotations, dict) and annotations.get(CAUSE_ANNOTATION) == cause:
        return None
    series = existing.get("series")
    count = series.get("count") if isinstance(series, dict) else None
    next_count = count + 1 if isinstance(count, int) and count >= 2 else 2
    return {
        "metadata": {
            "annotations": {CAUSE_ANNOTATION: cause},
            "resourceVersion": resource_version(existing),
        },
        "series": {"count": next_count, "lastObservedTime": now},
    }


def unreadable_event(
    subject: str, seq: int, reason: str, *, in_force: int, kind: Regarding = "Service"
) -> EventSpec:
    """The Warning Event for a message about the Service (or Node) that cannot be read:
    nothing is removed because of it, and the note says what stays in force."""
    kept = (
        f"its last valid message (seq {in_force}) stays in force"
        if in_force
        else f"no valid message precedes it, so vipwire removes nothing of this {kind} "
        "until a valid one arrives"
    )
    return EventSpec(
        type="Warning",
        reason="UnreadableMessage",
        action="ReadBus",
        note=f"the message on {subject} (stream seq {seq}) cannot be read ({reason}); {kept}",
    )


def refused_event(reason_text: str) -> EventSpec:
    """The Warning Event for a status write the API server refused as invalid."""
    return EventSpec(
        type="Warning",
        reason="StatusWriteRefused",
        action="WriteStatus",
        note=f"the API server refused the status vipwire wrote: {reason_text}",
    )
