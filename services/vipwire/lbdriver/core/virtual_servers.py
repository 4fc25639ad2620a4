"""What an appliance holds, in vendor-neutral terms, and the writes that change it.

Plain frozen data shared by the pure core (desired state, diff) and the
drivers, which translate it to and from their vendor's objects.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from vipwire.contracts import Member
from vipwire.lbdriver.core.profiles import AllDownAction, LbMethod, MonitorKind

L4Protocol = Literal["TCP", "UDP", "SCTP"]


class Monitor(msgspec.Struct, frozen=True, kw_only=True):
    """A health check sent to each member's node address (never to the VIP).

    The defaults are the built-in profile's (HTTP GET /healthz every 5 s, down
    after 16 s). ``kind`` ``none``: no health check (port and path unused).
    """

    port: int
    path: str = "/healthz"
    method: Literal["GET"] = "GET"
    kind: MonitorKind = "http"
    interval_s: int = 5
    timeout_s: int = 16


class VirtualServer(msgspec.Struct, frozen=True, kw_only=True):
    """One VIP:port/protocol forwarded, in L2 DSR, to member nodes on the same port.

    ``owner`` (``<cluster>/<namespace>/<name>``) is stored on the appliance (a
    description or tag field) so the objects of one Service can be found
    without parsing names, which are not unambiguous once sanitised.
    """

    name: str
    owner: str
    address: str
    port: int
    protocol: L4Protocol
    members: tuple[Member, ...]
    monitor: Monitor
    #: Sources allowed to connect, CIDRs of the VIP's family; empty: every source.
    #: See :func:`vipwire.lbdriver.core.desired.family_ranges` for a family left out.
    source_ranges: tuple[str, ...] = ()
    #: Source-address persistence (a client sticks to one member) for this long; None: off.
    affinity_timeout_s: int | None = None
    # --- from the Service's appliance profile (see core.profiles); defaults: built-in
    #: Seconds an idle connection is kept; None: the appliance's default.
    idle_timeout_s: int | None = None
    #: Concurrent connections accepted; None: no limit.
    connection_limit: int | None = None
    lb_method: LbMethod = "round-robin"
    all_members_down: AllDownAction = "none"
    #: Members being drained: on the appliance but disabled (no new connections,
    #: established ones continue), never also in ``members``. See ``core.drain``.
    draining: tuple[Member, ...] = ()


class CreateVirtualServer(msgspec.Struct, frozen=True, kw_only=True, tag="create"):
    server: VirtualServer


class UpdateMembers(msgspec.Struct, frozen=True, kw_only=True, tag="update-members"):
    """Only the pool changed (members, or which are draining): the cheapest write most
    appliances offer."""

    name: str
    members: tuple[Member, ...]
    draining: tuple[Member, ...] = ()


class UpdateVirtualServer(msgspec.Struct, frozen=True, kw_only=True, tag="update"):
    """Replace everything but the name and destination (monitor, profile options,
    owner, members, source ranges, affinity): one write however many of them changed."""

    server: VirtualServer


class DeleteVirtualServer(msgspec.Struct, frozen=True, kw_only=True, tag="delete"):
    name: str


Operation = CreateVirtualServer | UpdateMembers | UpdateVirtualServer | DeleteVirtualServer


def op_kind(op: Operation) -> str:
    """``create``, ``update-members``, ``update`` or ``delete`` (for metrics and logs)."""
    return str(type(op).__struct_config__.tag)


def op_name(op: Operation) -> str:
    """The virtual server an operation writes."""
    match op:
        case CreateVirtualServer(server=server) | UpdateVirtualServer(server=server):
            return server.name
        case UpdateMembers(name=name) | DeleteVirtualServer(name=name):
            return name
