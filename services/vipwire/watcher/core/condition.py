"""The ``vipwire.io/Ready`` condition: what it says, given what the bus said.

Pure: no I/O, no clock (the time of a transition is passed in).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Collection, Mapping
from typing import Any, Final, Literal

import msgspec

from vipwire.contracts import (
    APPLIANCE_DRIFT,
    LbFailed,
    LbMessage,
    LbProgrammed,
    VipAssigned,
    VipFailed,
    VipMessage,
)
from vipwire.watcher.core.bus_view import BusView
from vipwire.watcher.core.translate import Obj

Gate = Literal["none", "any", "all"]

#: The type of our condition in ``status.conditions``.
READY: Final = "vipwire.io/Ready"
INVALID: Final = "InvalidService"
#: The bus refused the Service's snapshot as larger than it stores.
TOO_LARGE: Final = "TooLarge"
#: Reasons of a programmed Service that is not serving: the appliance no longer holds
#: what was programmed (the lbdriver's verification), and no node can take its traffic.
DRIFT: Final = APPLIANCE_DRIFT
NO_MEMBERS: Final = "NoMembers"
#: Member nodes whose agents report them without the VIP (past a grace period).
NODES_MISSING: Final = "NodesMissingVip"
#: Nodes named in a message; the rest are counted.
_NAMED: Final = 5
_MESSAGE_LIMIT: Final = 32768  # metav1.Condition.message


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
    said = f"{', '.join(lb.vips)} programmed on appliance {lb.appliance}"
    if lb.port_errors:
        said += f"; {refused_ports_message(lb)}"
    return said


def refused_ports_message(lb: LbProgrammed) -> str:
    """Which ports the appliance refused (the others are served), and its answers."""
    refused = "; ".join(
        f"{e.vip} port {e.port}/{e.protocol}: {e.reason}: {e.error}" for e in lb.port_errors
    )
    return (
        f"appliance {lb.appliance} refused {len(lb.port_errors)} port(s), not served "
        f"(status.loadBalancer.ingress[].ports says which): {refused}"
    )


def appliance_message(lb: LbFailed) -> str:
    where = f"appliance {lb.appliance}: " if lb.appliance else ""
    if lb.reason == APPLIANCE_DRIFT:
        return f"{where}{lb.message}"  # the reason is the condition's and the Event's
    return f"{where}{lb.reason}: {lb.message}"


def failed_reason(lb: LbFailed) -> str:
    """The condition (and Event) reason of an LbFailed."""
    if lb.removing:
        return "CleanupBlocked"
    return DRIFT if lb.reason == APPLIANCE_DRIFT else "ApplianceFailed"


@functools.lru_cache(maxsize=65536)
def _family(address: str) -> str | None:
    # Cached: asked for every member of every programmed Service on each status check,
    # and the addresses are few (the cluster's nodes and VIPs); parsing each was the
    # watcher's largest cost in the burst.
    try:
        return f"IPv{ipaddress.ip_address(address).version}"
    except ValueError:
        return None


def families_without_members(lb: LbProgrammed) -> list[str]:
    """The IP families (``IPv4``, ``IPv6``) of the Service's VIPs that no member node can
    serve: a dual-stack Service on IPv4-only nodes has an IPv6 virtual server with no
    member (members are node addresses of the VIP's family)."""
    wanted = {f for f in map(_family, lb.vips) if f is not None}
    for member in lb.members:  # usually the first members already serve every family
        wanted.discard(_family(member.address))
        if not wanted:
            return []
    return sorted(wanted)


def lacks_members(lb: LbProgrammed) -> bool:
    """No member at all, or a VIP family without one: NoMembers."""
    return not lb.members or bool(families_without_members(lb))


def no_members_message(lb: LbProgrammed) -> str:
    """Why a programmed Service with no member node (for a VIP family) serves nothing."""
    why = (
        "no node holds a ready endpoint of the Service (externalTrafficPolicy: Local)"
        if lb.external_traffic_policy == "Local"
        else "no node of the cluster is eligible (ready, and not excluded from load balancers)"
    )
    missing = families_without_members(lb)
    if lb.members and missing:
        family = " and ".join(missing)
        vips = [v for v in lb.vips if _family(v) in missing]
        return (
            f"{', '.join(vips)} programmed on appliance {lb.appliance} with no {family} member "
            f"node, so no traffic to {'them' if len(vips) > 1 else 'it'} can be served: no "
            f"member node has an {family} InternalIP (the Service's other VIPs are served); "
            f"give the nodes {family} addresses, or make the Service single-stack"
        )
    return (
        f"{', '.join(lb.vips)} programmed on appliance {lb.appliance} with no member node, "
        f"so no traffic can be served: {why}"
    )


def missing_message(lb: LbProgrammed, nodes: Collection[str]) -> str:
    """Why a programmed Service some of whose member nodes lack its VIP is not Ready."""
    names = sorted(nodes)
    shown = ", ".join(names[:_NAMED])
    more = f" and {len(names) - _NAMED} more" if len(names) > _NAMED else ""
    return (
        f"{', '.join(lb.vips)} programmed on appliance {lb.appliance}, but the node agents "
        f"of {shown}{more} report their node without it: the traffic the appliance sends "
        "there is dropped (check those node agents)"
    )


def _serving(
    lb: LbProgrammed,
    applied: Mapping[str, frozenset[str]],
    gate: Gate,
    missing: Collection[str] = (),
) -> Condition | None:
    """The condition of a programming that stands: True once the gate is satisfied;
    False while no node can take the traffic (NoMembers) or while member nodes report
    themselves without the VIP past their grace period (``missing``: NodesMissingVip)."""
    if lacks_members(lb):
        return Condition(status="False", reason=NO_MEMBERS, message=no_members_message(lb))
    if missing:
        return Condition(status="False", reason=NODES_MISSING, message=missing_message(lb, missing))
    if gate_satisfied(lb, applied, gate):
        return Condition(
            status="True", reason="LoadBalancerProgrammed", message=_programmed_message(lb)
        )
    return None


def readiness(
    view: BusView,
    service_uid: str,
    *,
    applied: Mapping[str, frozenset[str]],
    gate: Gate,
    missing: Collection[str] = (),
) -> Condition | None:
    """The condition the latest outcome calls for; None: it says nothing new.

    The later (by stream sequence) of the Service's ``vip`` and ``lb``
    messages decides. ipam answers a refused change with VipFailed and then
    repeats the VipAssigned it keeps serving: that failure still stands.
    A programming with no member node is not Ready (NoMembers), whatever the
    gate; an appliance that no longer holds what was programmed (the
    lbdriver's verification) is ApplianceDrift until the repair is reported;
    ``missing``: the member nodes found without the VIP past their grace period
    (:mod:`.node_vips`), NodesMissingVip.
    """
    vip = view.vip if view.vip is not None and view.vip.uid == service_uid else None
    lb = view.lb if view.lb is not None and view.lb.uid == service_uid else None
    latest: VipMessage | LbMessage | None = lb if view.lb_seq > view.vip_seq else vip
    if latest is None:
        latest = vip or lb
    match latest:
        case LbProgrammed():
            return _serving(latest, applied, gate, missing)
        case LbFailed():
            return Condition(
                status="False", reason=failed_reason(latest), message=appliance_message(latest)
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
            if isinstance(lb, LbProgrammed) and set(lb.vips) == set(latest.vips):
                return _serving(lb, applied, gate, missing)
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


def clip(text: str, limit: int) -> str:
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
        "message": clip(condition.message, _MESSAGE_LIMIT),
        "lastTransitionTime": since,
    }
