"""What to write back to a Service, given the Service and what the bus said about it.

Pure: no I/O, no clock (the shell passes the time in). The shell feeds in
the Service as the API returned it, the translated snapshot, what is wrong
with it, the last ``vip`` and ``lb`` messages of the Service and the VIP
sets the node agents reported; :func:`decide` says which merge patches to
send (the status and the finalizer), the other functions the patches of the
finalizer, the trace annotation and leftovers. Events: :mod:`.events`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping
from typing import Any, Final

import msgspec

from vipwire.contracts import (
    LbFailed,
    LbProgrammed,
    ServiceSnapshot,
    VipAssigned,
    VipFailed,
    VipReleased,
    VipReleasing,
)
from vipwire.watcher.core.bus_view import BusView
from vipwire.watcher.core.condition import (
    INVALID,
    TOO_LARGE,
    Condition,
    Gate,
    appliance_message,
    conditions_with,
    current_condition,
    gate_satisfied,
    readiness,
)
from vipwire.watcher.core.translate import (
    CLUSTER_ANNOTATION,
    FINALIZER,
    TRACE_ANNOTATION,
    Obj,
    being_deleted,
    finalizers,
    ingress,
    metadata,
    resource_version,
)

#: ``status.loadBalancer.ingress[].ports[].error`` is a CamelCase name, built-in or
#: qualified by the controller's domain (Kubernetes API: PortStatus).
PORT_ERROR_DOMAIN: Final = "vipwire.io"


def ingress_for(vips: tuple[str, ...], lb: LbProgrammed | None = None) -> list[dict[str, Any]]:
    """The ingress entries for ``vips``; with ports the appliance refused (``lb``'s
    ``port_errors``), each entry lists its ports, a refused one with its ``error``.
    Without any refusal no ``ports`` are written (there is nothing they would say)."""
    # ipMode VIP: kube-proxy accepts VIP:port on every node itself, which DSR needs.
    if lb is None or not lb.port_errors:
        return [{"ip": vip, "ipMode": "VIP"} for vip in vips]
    refused = {(e.vip, e.port, e.protocol): e.reason for e in lb.port_errors}
    entries: list[dict[str, Any]] = []
    for vip in vips:
        ports: list[dict[str, Any]] = []
        for p in lb.ports:
            status: dict[str, Any] = {"port": p.port, "protocol": p.protocol}
            reason = refused.get((vip, p.port, p.protocol))
            if reason is not None:
                status["error"] = f"{PORT_ERROR_DOMAIN}/{reason}"
            ports.append(status)
        entries.append({"ip": vip, "ipMode": "VIP", "ports": ports})
    return entries


def _ports_of(entry: Mapping[str, Any]) -> list[tuple[Any, Any, Any]]:
    raw = entry.get("ports")
    if not isinstance(raw, list):
        return []
    return [
        (p.get("port"), p.get("protocol", "TCP"), p.get("error"))
        for p in raw
        if isinstance(p, Mapping)
    ]


def same_ingress(current: list[Any], wanted: list[dict[str, Any]]) -> bool:
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
        if _ports_of(have) != _ports_of(want):
            return False
    return True


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """Writes to make: a status merge patch (or None) and whether to drop our finalizer."""

    status: dict[str, Any] | None = None
    remove_finalizer: bool = False
    #: VIPs the appliance was reported programmed with that ipam did not assign to
    #: the Service: never written to its status (the shell logs and counts them).
    unassigned: tuple[str, ...] = ()

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


def not_assigned(lb: LbProgrammed, view: BusView) -> tuple[str, ...] | None:
    """The VIPs of a programming that ipam's last assignment to the same Service
    (its ``vip`` subject's last VipAssigned, or the one a VipFailed followed) does
    not name; None when no assignment of that incarnation is known (nothing can
    be checked: nothing is written either).

    Only ipam gives addresses: a programming naming others (a forged or broken
    ``lb`` message) never reaches the Service's status. The old VIPs of a move
    (``VipAssigned.moving_from``) count as assigned while they are withdrawn.
    """
    assigned: set[str] | None = None
    for message in (view.vip, view.vip_before):
        if isinstance(message, VipAssigned | VipReleasing) and message.uid == lb.uid:
            assigned = {_canonical(v) for v in message.vips}
            if isinstance(message, VipAssigned):
                # A move's old VIPs stay assigned until the appliance has withdrawn them.
                assigned |= {_canonical(v) for v in message.moving_from}
            break
    if assigned is None:
        return None
    return tuple(v for v in lb.vips if _canonical(v) not in assigned)


def _canonical(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


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
    too_large: str | None = None,
    missing: Collection[str] = (),
    nodes_known: bool = True,
) -> Decision:
    """What to write to a Service now.

    Live: the VIPs go into status once the appliance is programmed (and the
    gate is satisfied), and never leave it because of a failure later on: a
    VIP once served keeps being served until the Service goes away. Our
    condition follows the latest outcome; ``problems`` (what is wrong with
    the Service, as a message) overrides it.
    With no member node (a Local Service whose endpoints all went away) the
    Service is not Ready (condition False, NoMembers) but its VIP is written
    and stays: the address is allocated and programmed, and the appliance
    serves it again the moment a node qualifies, with no write to wait for;
    taking it out of status would make DNS (external-dns) and clients drop
    and re-learn it at every scale-to-zero or rollout of a one-replica Service.
    A status gate (any/all) still holds a new VIP back until nodes apply it.
    ``missing``: member nodes whose agents report them without the VIP past
    their grace period (:mod:`.node_vips`); the condition says NodesMissingVip.
    During a move to other VIPs (``VipAssigned.moving_from``), status takes what the
    appliance serves only once every member node holds all of it (``nodes_known``:
    the node agents' reports are read), whatever the gate: ipam withdraws the old
    VIPs when status shows the new ones, so they must serve everywhere by then.
    Going away: once ipam says everything is released, clear what we wrote
    and drop the finalizer; while the appliance refuses to let go, the
    condition says so. A release older than our last live snapshot
    (``live_seq``) belongs to an earlier life of the Service and is ignored.
    ``too_large``: why the bus refused the Service's snapshot; its changes are not
    applied, which the condition says (after ``problems``).
    """
    if snapshot is None:
        return Decision()  # not ours: never touch it
    if not snapshot.deleting:
        wanted_ingress: Any = _KEEP
        lb = view.lb
        vip = view.vip
        moving = isinstance(vip, VipAssigned) and vip.uid == snapshot.uid and vip.moving_from
        unassigned: tuple[str, ...] | None = None
        if isinstance(lb, LbProgrammed) and lb.uid == snapshot.uid:
            unassigned = not_assigned(lb, view)
        if (
            problems is None
            and isinstance(lb, LbProgrammed)
            and lb.uid == snapshot.uid
            and unassigned == ()
            and gate_satisfied(lb, applied, "all" if moving and nodes_known else gate)
        ):
            wanted_ingress = ingress_for(lb.vips, lb)
        condition: Any = _KEEP
        if problems is not None:
            condition = Condition(status="False", reason=INVALID, message=problems)
        elif too_large is not None:
            condition = Condition(status="False", reason=TOO_LARGE, message=too_large)
        else:
            said = readiness(view, snapshot.uid, applied=applied, gate=gate, missing=missing)
            current = current_condition(service)
            if said is not None:
                condition = said
            elif current is not None and current.reason in (INVALID, TOO_LARGE):
                condition = Condition(
                    status="False", reason="Pending", message="waiting for a VIP and the appliance"
                )
        return Decision(
            status=_status_patch(service, ingress_to=wanted_ingress, condition=condition, now=now),
            # Never valid: a Service ipam refuses for good, that never held a VIP, keeps
            # no finalizer (there is nothing to clean up; a change of it asks again).
            remove_finalizer=problems is None
            and FINALIZER in finalizers(service)
            and refused_for_good(service, snapshot.uid, view, live_seq),
            unassigned=unassigned or (),
        )
    vip = view.vip
    released = isinstance(vip, VipReleased) and vip.uid == snapshot.uid and view.vip_seq > live_seq
    if not released:
        lb = view.lb
        if isinstance(lb, LbFailed) and lb.removing and lb.uid == snapshot.uid:
            blocked = Condition(
                status="False", reason="CleanupBlocked", message=appliance_message(lb)
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


def refused_for_good(service: Obj, service_uid: str, view: BusView, live_seq: int) -> bool:
    """Whether ipam refused this incarnation's last snapshot (published at ``live_seq``)
    for good (only a change of the Service can help: not waiting) and it never held a
    VIP (none programmed, none in status)."""
    vip, lb = view.vip, view.lb
    return (
        isinstance(vip, VipFailed)
        and view.vip_seq > live_seq
        and vip.uid == service_uid
        and not vip.retryable
        and not (lb is not None and lb.uid == service_uid)
        and not ingress(service)
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
