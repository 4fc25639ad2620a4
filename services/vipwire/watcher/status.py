"""What to write back to a Service, given the Service and what the bus said about it.

Pure: no I/O, no clock (the shell passes the time in). The shell feeds in
the Service as the API returned it, the translated snapshot, what is wrong
with it, the last ``vip`` and ``lb`` messages of the Service and the VIP
sets the node agents reported; these functions say which merge patches to
send and which Events to emit.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, Final, Literal

import msgspec

from vipwire.contracts import (
    LbFailed,
    LbMessage,
    LbProgrammed,
    LbRemoved,
    ServiceSnapshot,
    VipAssigned,
    VipFailed,
    VipMessage,
    VipReleased,
)
from vipwire.watcher.translate import (
    CLUSTER_ANNOTATION,
    FINALIZER,
    TRACE_ANNOTATION,
    Obj,
    being_deleted,
    finalizers,
    ingress,
    metadata,
    resource_version,
    uid,
)

Gate = Literal["none", "any", "all"]

REPORTING_CONTROLLER: Final = "vipwire.io/watcher"
#: The type of our condition in ``status.conditions``.
READY: Final = "vipwire.io/Ready"
#: On an Event we wrote: the cause (bus subject and sequence) it last counted.
CAUSE_ANNOTATION: Final = "vipwire.io/cause"
INVALID: Final = "InvalidService"
_NOTE_LIMIT: Final = 1024  # events.k8s.io/v1 rejects a longer note
_FIELD_LIMIT: Final = 128  # reason, action, reportingInstance
_MESSAGE_LIMIT: Final = 32768  # metav1.Condition.message


class BusView(msgspec.Struct, frozen=True, kw_only=True):
    """The last ``vip`` and ``lb`` messages of one Service, with their stream sequences.

    ``vip_before``/``lb_before`` are what they replaced, so that a
    redelivery of the same message (same sequence) is judged against the
    same past.
    """

    vip: VipMessage | None = None
    vip_seq: int = 0
    vip_before: VipMessage | None = None
    lb: LbMessage | None = None
    lb_seq: int = 0
    lb_before: LbMessage | None = None


def observe(view: BusView, message: VipMessage | LbMessage, seq: int) -> BusView:
    """The view after a delivery; an older message than the one held changes nothing."""
    if isinstance(message, LbProgrammed | LbFailed | LbRemoved):
        if seq <= view.lb_seq:
            return view
        return msgspec.structs.replace(view, lb=message, lb_seq=seq, lb_before=view.lb)
    if seq <= view.vip_seq:
        return view
    return msgspec.structs.replace(view, vip=message, vip_seq=seq, vip_before=view.vip)


def superseded(view: BusView, message: VipMessage | LbMessage, seq: int) -> bool:
    """Whether the view already holds a newer message of the same subject (the one at
    ``seq`` is a redelivery that came after it)."""
    if isinstance(message, LbProgrammed | LbFailed | LbRemoved):
        return seq < view.lb_seq
    return seq < view.vip_seq


def before(
    view: BusView, message: VipMessage | LbMessage, seq: int
) -> VipMessage | LbMessage | None:
    """What the message's subject said before the message at ``seq``."""
    if isinstance(message, LbProgrammed | LbFailed | LbRemoved):
        return view.lb_before if seq == view.lb_seq else view.lb
    return view.vip_before if seq == view.vip_seq else view.vip


def gate_satisfied(
    programmed: LbProgrammed,
    applied: Mapping[str, frozenset[str]],
    gate: Gate,
) -> bool:
    """Whether the node agents have applied the VIPs, as the gate demands.

    The nodes that must have them are the members the appliance sends
    traffic to; without members no traffic can flow, so no gate but
    ``none`` is satisfied.
    """
    if gate == "none":
        return True
    nodes = {m.node for m in programmed.members}
    if not nodes:
        return False
    vips = set(programmed.vips)
    serving = [vips <= applied.get(node, frozenset()) for node in sorted(nodes)]
    return any(serving) if gate == "any" else all(serving)


def ingress_for(vips: tuple[str, ...]) -> list[dict[str, str]]:
    # ipMode VIP: kube-proxy accepts VIP:port on every node itself, which DSR needs.
    return [{"ip": vip, "ipMode": "VIP"} for vip in vips]


def same_ingress(current: list[Any], wanted: list[dict[str, str]]) -> bool:
    """Whether status already says ``wanted``.

    An API server without the LoadBalancerIPMode feature (1.29 unless enabled)
    drops ``ipMode`` from what we write; insisting on it would rewrite the
    status forever, so an entry without one counts as written.
    """
    if len(current) != len(wanted):
        return False
    for have, want in zip(current, wanted, strict=True):
        if not isinstance(have, Mapping) or have.get("ip") != want["ip"]:
            return False
        if have.get("ipMode") not in (None, want["ipMode"]):
            return False
    return True


# --- the vipwire.io/Ready condition ----------------------------------------------


_REASON: Final = re.compile(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?")


def _reason(text: str, default: str) -> str:
    """A condition reason the API accepts (CamelCase, at most 1024), else ``default``."""
    return text if len(text) <= 1024 and _REASON.fullmatch(text) else default


class Condition(msgspec.Struct, frozen=True, kw_only=True):
    """Our condition, without its transition time."""

    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str


def _programmed_message(lb: LbProgrammed) -> str:
    # No member count: it changes with every endpoint move, and each change
    # would cost a status write.
    return f"{', '.join(lb.vips)} programmed on appliance {lb.appliance}"


def _appliance_message(lb: LbFailed) -> str:
    where = f"appliance {lb.appliance}: " if lb.appliance else ""
    return f"{where}{lb.reason}: {lb.message}"


def readiness(
    view: BusView,
    service_uid: str,
    *,
    applied: Mapping[str, frozenset[str]],
    gate: Gate,
) -> Condition | None:
    """The condition the latest outcome calls for; None: it says nothing new.

    The later (by stream sequence) of the Service's ``vip`` and ``lb``
    messages decides. ipam answers a refused change with VipFailed and then
    repeats the VipAssigned it keeps serving: that failure still stands.
    """
    vip = view.vip if view.vip is not None and view.vip.uid == service_uid else None
    lb = view.lb if view.lb is not None and view.lb.uid == service_uid else None
    latest: VipMessage | LbMessage | None = lb if view.lb_seq > view.vip_seq else vip
    if latest is None:
        latest = vip or lb
    match latest:
        case LbProgrammed():
            if gate_satisfied(latest, applied, gate):
                return Condition(
                    status="True",
                    reason="LoadBalancerProgrammed",
                    message=_programmed_message(latest),
                )
            return None
        case LbFailed(removing=False):
            return Condition(
                status="False", reason="ApplianceFailed", message=_appliance_message(latest)
            )
        case LbFailed(removing=True):
            return Condition(
                status="False", reason="CleanupBlocked", message=_appliance_message(latest)
            )
        case VipFailed():
            return Condition(
                status="False",
                reason=_reason(latest.reason, "AllocationFailed"),
                message=latest.message,
            )
        case VipAssigned():
            kept = view.vip_before
            if isinstance(kept, VipFailed) and kept.uid == service_uid:
                return Condition(
                    status="False",
                    reason=_reason(kept.reason, "AllocationFailed"),
                    message=kept.message,
                )
            if (
                isinstance(lb, LbProgrammed)
                and set(lb.vips) == set(latest.vips)
                and gate_satisfied(lb, applied, gate)
            ):
                return Condition(
                    status="True", reason="LoadBalancerProgrammed", message=_programmed_message(lb)
                )
            return None
        case _:
            return None


def _conditions(service: Obj) -> list[dict[str, Any]]:
    raw = (service.get("status") or {}).get("conditions")
    return [c for c in raw if isinstance(c, dict)] if isinstance(raw, list) else []


def current_condition(service: Obj) -> Condition | None:
    for entry in _conditions(service):
        if entry.get("type") == READY:
            status = entry.get("status")
            return Condition(
                status=status if status in ("True", "False") else "Unknown",
                reason=str(entry.get("reason") or ""),
                message=str(entry.get("message") or ""),
            )
    return None


def _clip(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", "ignore") + "..."


def conditions_with(service: Obj, wanted: Condition | None, now: str) -> list[dict[str, Any]]:
    """``status.conditions`` with ours set to ``wanted`` (None: removed), others untouched.

    ``lastTransitionTime`` moves only when the status does, as the API's
    conventions ask.
    """
    out: list[dict[str, Any]] = []
    placed = False
    for entry in _conditions(service):
        if entry.get("type") != READY:
            out.append(entry)
            continue
        if wanted is None or placed:
            continue
        placed = True
        moved = entry.get("status") != wanted.status or not entry.get("lastTransitionTime")
        out.append(_condition_entry(wanted, now if moved else str(entry["lastTransitionTime"])))
    if wanted is not None and not placed:
        out.append(_condition_entry(wanted, now))
    return out


def _condition_entry(condition: Condition, since: str) -> dict[str, Any]:
    return {
        "type": READY,
        "status": condition.status,
        "reason": condition.reason,
        "message": _clip(condition.message, _MESSAGE_LIMIT),
        "lastTransitionTime": since,
    }


# --- what to write ----------------------------------------------------------------


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """Writes to make: a status merge patch (or None) and whether to drop our finalizer."""

    status: dict[str, Any] | None = None
    remove_finalizer: bool = False

    @property
    def nothing(self) -> bool:
        return self.status is None and not self.remove_finalizer

    @property
    def ingress(self) -> list[Any] | None:
        """The ingress the status patch writes (None: it clears it, or writes none)."""
        if self.status is None:
            return None
        value = self.status["status"].get("loadBalancer", {}).get("ingress")
        return value if isinstance(value, list) else None


_KEEP: Final = object()


def _status_patch(
    service: Obj, *, ingress_to: Any = _KEEP, condition: Any = _KEEP, now: str
) -> dict[str, Any] | None:
    """A merge patch for the status subresource, or None when nothing would change.

    It carries the resourceVersion the decision was made on: a merge patch
    replaces the whole conditions list, so another controller's condition
    written meanwhile must make it fail (409) rather than be lost.
    """
    body: dict[str, Any] = {}
    if ingress_to is not _KEEP and not same_ingress(ingress(service), ingress_to or []):
        body["loadBalancer"] = {"ingress": ingress_to or None}
    if condition is not _KEEP and current_condition(service) != condition:
        conditions = conditions_with(service, condition, now)
        body["conditions"] = conditions or None
    if not body:
        return None
    return {"metadata": {"resourceVersion": resource_version(service)}, "status": body}


def decide(
    service: Obj,
    snapshot: ServiceSnapshot | None,
    view: BusView,
    *,
    applied: Mapping[str, frozenset[str]],
    gate: Gate,
    now: str,
    problems: str | None = None,
    live_seq: int = 0,
) -> Decision:
    """What to write to a Service now.

    Live: the VIPs go into status once the appliance is programmed (and the
    gate is satisfied), and never leave it because of a failure later on: a
    VIP once served keeps being served until the Service goes away. Our
    condition follows the latest outcome; ``problems`` (what is wrong with
    the Service, as a message) overrides it.
    Going away: once ipam says everything is released, clear what we wrote
    and drop the finalizer; while the appliance refuses to let go, the
    condition says so. A release older than our last live snapshot
    (``live_seq``) belongs to an earlier life of the Service and is ignored.
    """
    if snapshot is None:
        return Decision()  # not ours: never touch it
    if not snapshot.deleting:
        wanted_ingress: Any = _KEEP
        lb = view.lb
        if (
            problems is None
            and isinstance(lb, LbProgrammed)
            and lb.uid == snapshot.uid
            and gate_satisfied(lb, applied, gate)
        ):
            wanted_ingress = ingress_for(lb.vips)
        condition: Any = _KEEP
        if problems is not None:
            condition = Condition(status="False", reason=INVALID, message=problems)
        else:
            said = readiness(view, snapshot.uid, applied=applied, gate=gate)
            current = current_condition(service)
            if said is not None:
                condition = said
            elif current is not None and current.reason == INVALID:
                condition = Condition(
                    status="False", reason="Pending", message="waiting for a VIP and the appliance"
                )
        return Decision(
            status=_status_patch(service, ingress_to=wanted_ingress, condition=condition, now=now)
        )
    vip = view.vip
    released = isinstance(vip, VipReleased) and vip.uid == snapshot.uid and view.vip_seq > live_seq
    if not released:
        lb = view.lb
        if isinstance(lb, LbFailed) and lb.removing and lb.uid == snapshot.uid:
            blocked = Condition(
                status="False", reason="CleanupBlocked", message=_appliance_message(lb)
            )
            return Decision(status=_status_patch(service, condition=blocked, now=now))
        return Decision()
    if being_deleted(service):
        # The object goes away with the finalizer: its status is not worth a write.
        return Decision(remove_finalizer=FINALIZER in finalizers(service))
    return Decision(
        status=_status_patch(service, ingress_to=None, condition=None, now=now),
        remove_finalizer=FINALIZER in finalizers(service),
    )


def finalizer_patch(
    service: Obj, *, present: bool, cluster: str, trace_id: str | None = None
) -> dict[str, Any] | None:
    """Merge patch that adds or removes our finalizer, guarded by the resourceVersion.

    A merge patch replaces the whole list, so the precondition is what keeps
    another controller's finalizer, added meanwhile, from being lost: a
    stale write fails with 409 and is retried on the fresh object. Our
    cluster annotation comes and goes with the finalizer (added to a
    finalizer that is already there, too); ``trace_id`` is recorded with
    either, when the patch is written anyway (one write instead of two).
    """
    current = finalizers(service)
    raw = metadata(service).get("annotations")
    annotations: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    has = FINALIZER in current
    if present:
        if has and annotations.get(CLUSTER_ANNOTATION) == cluster:
            return None
        added: dict[str, Any] = {CLUSTER_ANNOTATION: cluster}
        if trace_id and annotations.get(TRACE_ANNOTATION) != trace_id:
            added[TRACE_ANNOTATION] = trace_id
        meta: dict[str, Any] = {"annotations": added}
        if not has:
            meta["finalizers"] = [*current, FINALIZER]
    else:
        if not has and CLUSTER_ANNOTATION not in annotations:
            return None
        changes: dict[str, Any] = {CLUSTER_ANNOTATION: None}
        if trace_id:
            changes[TRACE_ANNOTATION] = trace_id
        meta = {"annotations": changes}
        if has:
            meta["finalizers"] = [f for f in current if f != FINALIZER] or None
    meta["resourceVersion"] = resource_version(service)
    return {"metadata": meta}


def leftover_patch(service: Obj, *, now: str) -> dict[str, Any] | None:
    """Status patch that removes our condition from a Service no load balancer serves.

    Once a Service is no LoadBalancer and no load-balancer controller's
    finalizer is left on it, whatever vipwire wrote there (a complaint about
    an invalid Service it never served, say) is stale.
    """
    spec = service.get("spec")
    kind = spec.get("type") if isinstance(spec, Mapping) else None
    if kind == "LoadBalancer" or FINALIZER in finalizers(service):
        return None
    if current_condition(service) is None:
        return None
    return _status_patch(service, condition=None, now=now)


def trace_patch(service: Obj, trace_id: str) -> dict[str, Any] | None:
    """Merge patch that records the trace of what we just wrote (None: already recorded)."""
    annotations = metadata(service).get("annotations") or {}
    if isinstance(annotations, dict) and annotations.get(TRACE_ANNOTATION) == trace_id:
        return None
    return {"metadata": {"annotations": {TRACE_ANNOTATION: trace_id}}}


# --- Events ---------------------------------------------------------------------


class EventSpec(msgspec.Struct, frozen=True, kw_only=True):
    """An Event to emit about a Service (``note`` without the trace id)."""

    type: Literal["Normal", "Warning"]
    reason: str
    action: str
    note: str


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
        return EventSpec(
            type="Normal",
            reason="IPAllocated",
            action="AllocateVIP",
            note=(
                f"{', '.join(message.vips)} allocated from pool {message.pool} "
                f"(appliance group {message.appliance_group})"
            ),
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
        return EventSpec(
            type="Warning",
            reason="CleanupBlocked" if removing else "ApplianceFailed",
            action="RemoveVirtualServers" if removing else "ProgramVirtualServers",
            note=_appliance_message(message)
            + ("; the finalizer stays until the appliance lets go" if removing else ""),
        )
    if isinstance(message, LbProgrammed):
        if (
            isinstance(before, LbProgrammed)
            and before.uid == message.uid
            and before.vips == message.vips
        ):
            return None
        ports = ", ".join(f"{p.port}/{p.protocol}" for p in message.ports) or "no ports"
        return EventSpec(
            type="Normal",
            reason="LoadBalancerProgrammed",
            action="ProgramVirtualServers",
            note=(
                f"{', '.join(message.vips)} ({ports}) programmed on appliance "
                f"{message.appliance} with {len(message.members)} member node(s)"
            ),
        )
    return None


def invalid_event(note: str) -> EventSpec:
    return EventSpec(type="Warning", reason=INVALID, action="ValidateService", note=note)


def event_name(service_name: str, service_uid: str, spec: EventSpec) -> str:
    """Fixed by what the Event says, so repeats of it land on one Event as a series."""
    what = "\x00".join((service_uid, spec.type, spec.reason, spec.action, spec.note))
    return f"{service_name}.{hashlib.sha256(what.encode()).hexdigest()[:16]}"


def _note(spec: EventSpec, trace_id: str | None) -> str:
    suffix = f" (trace {trace_id})" if trace_id else ""
    return _clip(spec.note, _NOTE_LIMIT - len(suffix.encode())) + suffix


def event_object(
    spec: EventSpec,
    service: Obj,
    *,
    name: str,
    event_time: str,
    instance: str,
    cause: str,
    trace_id: str | None = None,
) -> dict[str, Any]:
    """An events.k8s.io/v1 Event about ``service``, with every field the API requires.

    ``event_time`` is a MicroTime (RFC 3339 with microseconds). The note
    ends with the trace id of the change, so the Event leads to its trace.
    """
    meta = metadata(service)
    namespace = str(meta.get("namespace") or "")
    regarding = {
        "apiVersion": "v1",
        "kind": "Service",
        "namespace": namespace,
        "name": str(meta.get("name") or ""),
        "uid": uid(service),
    }
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
        "reportingInstance": _clip(instance, _FIELD_LIMIT),
        "action": _clip(spec.action, _FIELD_LIMIT),
        "reason": _clip(spec.reason, _FIELD_LIMIT),
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
