"""How contract values read in one line: Service references, ports, whole messages.

Replay's timeline and the dashboard show the same words for the same message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from vipwire.contracts._messages import (
    EndpointsSnapshot,
    LbFailed,
    LbProgrammed,
    LbRemoved,
    Member,
    Message,
    NodeApplied,
    NodeGone,
    NodeSnapshot,
    PoolsServed,
    ServiceGone,
    ServicePort,
    ServiceRejected,
    ServiceSnapshot,
    StatusWritten,
    VipAssigned,
    VipFailed,
    VipReleased,
    VipReleasing,
)


class ServiceRef(NamedTuple):
    """One Service of one cluster; a plain tuple, so it keys dicts as the old triples did."""

    cluster: str
    namespace: str
    name: str

    @property
    def text(self) -> str:
        """``cluster/namespace/name``."""
        return f"{self.cluster}/{self.namespace}/{self.name}"

    @classmethod
    def parse(cls, text: str) -> ServiceRef:
        """``cluster/namespace/name`` → its three parts; ValueError if it is not that."""
        parts = text.strip().split("/")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"{text!r} is not CLUSTER/NAMESPACE/NAME")
        return cls(parts[0], parts[1], parts[2])


def port_text(port: int, protocol: str) -> str:
    """``80/TCP``: how a port reads everywhere (Events, status, claims, timelines)."""
    return f"{port}/{protocol}"


def ports_text(ports: Iterable[ServicePort]) -> str:
    return ",".join(port_text(p.port, p.protocol) for p in ports) or "no ports"


def members_text(members: Sequence[Member], *, limit: int | None = None) -> str:
    shown = [f"{m.node}={m.address}" for m in members]
    if limit is not None and len(shown) > limit:
        shown = [*shown[:limit], f"… {len(members) - limit} more"]
    return ", ".join(shown) or "no members"


def vips_text(vips: Sequence[str]) -> str:
    return ", ".join(vips) or "none"


def summary(message: Message) -> str:
    """One line saying what a message says."""
    match message:
        case ServiceSnapshot():
            parts = [ports_text(message.ports), message.external_traffic_policy]
            if message.pool:
                parts.append(f"pool {message.pool}")
            if message.requested_ips:
                parts.append(f"asks {vips_text(message.requested_ips)}")
            if message.sharing_key:
                parts.append(f"sharing {message.sharing_key}")
            if message.share_namespaces:
                parts.append(f"shares with {', '.join(message.share_namespaces)}")
            if message.deleting:
                parts.append("deleting")
            return " · ".join(parts)
        case ServiceGone():
            return "gone"
        case ServiceRejected():
            kept = " · keeps what it had" if message.in_force is not None else ""
            return f"rejected: {message.reason}: {message.message}{kept}"
        case EndpointsSnapshot():
            ready = sorted(message.ready_nodes)
            return f"ready on {', '.join(ready)}" if ready else "no ready endpoints"
        case NodeSnapshot():
            state = "eligible" if message.eligible else "excluded"
            if not message.ready:
                state += ", NotReady"
            return f"{vips_text(message.addresses)} · {state}"
        case NodeGone():
            return "gone"
        case VipAssigned():
            return (
                f"{vips_text(message.vips)} · pool {message.pool} → {message.appliance_group}"
                f" · {ports_text(message.ports)} {message.external_traffic_policy}"
            )
        case VipReleasing():
            return f"withdraw {vips_text(message.vips)}"
        case VipReleased():
            return f"released {vips_text(message.vips)}" if message.vips else "released (held none)"
        case VipFailed():
            return f"{message.reason}: {message.message}"
        case LbProgrammed():
            return (
                f"{vips_text(message.vips)} {ports_text(message.ports)} on {message.appliance}"
                f" · {len(message.members)} members: {members_text(message.members, limit=4)}"
            )
        case LbFailed():
            what = "removing: " if message.removing else ""
            on = f" on {message.appliance}" if message.appliance else ""
            return f"{what}{message.reason}{on}: {message.message}"
        case LbRemoved():
            return f"removed {vips_text(message.vips)} from {message.appliance}"
        case NodeApplied():
            dry = ", dry run" if message.dry_run else ""
            count = len(message.vips)
            refused = f" · refused {len(message.refused)}" if message.refused else ""
            line = f"gen {message.generation} · {count} VIPs{dry}: {vips_text(message.vips)}"
            return line + refused
        case StatusWritten():
            return f"ingress {vips_text(message.vips)}" if message.vips else "status cleared"
        case PoolsServed():
            return f"pools {', '.join(message.ranges) or 'none'}"
