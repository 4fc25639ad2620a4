"""What the appliance should hold for one Service: a pure function of plain data.

One virtual server per (VIP, port, protocol). In L2 DSR the appliance only
rewrites the destination MAC, so members are node addresses of the VIP's
family on the Service port itself (no NodePort, no translation).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Set
from typing import Final

import msgspec

from vipwire.contracts import EndpointsSnapshot, Member, NodeSnapshot, VipAssigned
from vipwire.lbdriver.core.profiles import ProfileSettings, UnknownProfile, resolve_profile
from vipwire.lbdriver.core.virtual_servers import L4Protocol, Monitor, VirtualServer

#: kube-proxy's health endpoint; with externalTrafficPolicy Cluster any node with
#: a healthy kube-proxy can forward to every endpoint.
KUBE_PROXY_HEALTH_PORT: Final = 10256
#: Longest object name we emit (A10 allows 127; F5 more).
MAX_NAME_LENGTH: Final = 127

_UNSAFE = re.compile(r"[^a-z0-9._-]")


class InvalidAssignment(ValueError):
    """A VipAssigned that cannot be turned into virtual servers (bad address or port)."""


def owner_of(cluster: str, namespace: str, name: str) -> str:
    """The owner tag stored on every virtual server of a Service."""
    return f"{cluster}/{namespace}/{name}"


def virtual_server_name(
    prefix: str,
    *,
    cluster: str,
    namespace: str,
    name: str,
    vip: str,
    port: int,
    protocol: str,
) -> str:
    """``<prefix>-<cluster>-<ns>-<name>-<vip>-<port>-<proto>``, safe for every vendor.

    Characters outside ``[a-z0-9._-]`` (the colons of IPv6) become ``_``; a name
    too long keeps its start (and so the prefix) and ends in a hash of the whole,
    so it stays unique.
    """
    raw = f"{prefix}-{cluster}-{namespace}-{name}-{vip}-{port}-{protocol}".lower()
    safe = _UNSAFE.sub("_", raw)
    if len(safe) <= MAX_NAME_LENGTH:
        return safe
    digest = hashlib.sha256(raw.encode()).hexdigest()[:10]
    return f"{safe[: MAX_NAME_LENGTH - len(digest) - 1]}-{digest}"


def node_address(node: NodeSnapshot, version: int) -> str | None:
    """The node's first InternalIP of one IP version, canonical; None if it has none."""
    for raw in node.addresses:
        parsed = _parse_address(raw)
        if parsed is None:
            continue  # a malformed address must not hide the node's good ones
        if parsed[0] == version:
            return parsed[1]
    return None


# Every reconcile parses every member's address; with 50 nodes that was most of
# a reconcile's CPU in the burst benchmark. Parsing is pure, hence cached.
@functools.lru_cache(maxsize=1 << 14)
def _parse_address(raw: str) -> tuple[int, str] | None:
    """(IP version, canonical text) of an address; None if it is not one."""
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return None
    return address.version, address.compressed


def is_eligible(node: NodeSnapshot, *, drain_on_cordon: bool = False) -> bool:
    """May carry traffic: not excluded from load balancers, Ready, and (with
    ``drain_on_cordon``) not cordoned.

    A NotReady node is left out rather than left to the health monitor: it is
    usually on its way to being drained, and the monitor only notices after
    its own timeout.
    """
    return node.eligible and node.ready and not (drain_on_cordon and node.cordoned)


def member_nodes(
    assignment: VipAssigned,
    nodes: Mapping[str, NodeSnapshot],
    endpoints: EndpointsSnapshot | Set[str] | None,
    *,
    drain_on_cordon: bool = False,
) -> list[NodeSnapshot]:
    """Nodes that should receive the Service's traffic, sorted by name.

    ``endpoints``: the Service's endpoints, or just the names of the nodes
    that hold a serving one (what the lbdriver keeps of them).
    """
    eligible = [n for n in nodes.values() if is_eligible(n, drain_on_cordon=drain_on_cordon)]
    if assignment.external_traffic_policy == "Local":
        # Only nodes with a serving local endpoint: the packet must not leave the node.
        ready = ready_nodes(endpoints)
        eligible = [n for n in eligible if n.node in ready]
    return sorted(eligible, key=lambda n: n.node)


def ready_nodes(endpoints: EndpointsSnapshot | Set[str] | None) -> Set[str]:
    """The nodes holding a serving endpoint of the Service: ready, or terminating but
    still serving (EndpointSlice ``serving``), so that a pod shutting down gracefully
    keeps its node a member until it stops serving (none when unknown)."""
    if endpoints is None:
        return frozenset()
    if isinstance(endpoints, EndpointsSnapshot):
        return endpoints.serving_nodes
    return endpoints


def health_monitor(assignment: VipAssigned, profile: ProfileSettings | None = None) -> Monitor:
    """The members' health check: the profile's kind and timing, on kube-proxy's port."""
    settings = (profile or _BUILTIN).monitor
    port = KUBE_PROXY_HEALTH_PORT
    if assignment.external_traffic_policy == "Local" and assignment.health_check_node_port:
        # kube-proxy answers 200 on this port only where the Service has a local endpoint.
        port = assignment.health_check_node_port
    return _monitor(port, settings.kind, settings.path, settings.interval_s, settings.timeout_s)


_BUILTIN: Final = resolve_profile(None, None)


# One (immutable) Monitor per port and profile, shared by every virtual server that uses it.
@functools.lru_cache(maxsize=1 << 12)
def _monitor(port: int, kind: str, path: str, interval_s: int, timeout_s: int) -> Monitor:
    if kind == "none":
        # Nothing is probed: port and path mean nothing, so they differ in nothing.
        return Monitor(port=0, path="", kind="none", interval_s=0, timeout_s=0)
    return Monitor(
        port=port,
        path=path if kind != "tcp" else "",
        kind=kind,  # type: ignore[arg-type]
        interval_s=interval_s,
        timeout_s=timeout_s,
    )


#: What a VIP's family gets when the Service restricts sources but names none of its
#: family: a range no real client can send from (the unspecified address), so the
#: family is closed rather than open (fail closed), by the same mechanism as the others.
NO_SOURCE: Final = {4: "0.0.0.0/32", 6: "::/128"}


def family_ranges(source_ranges: tuple[str, ...], version: int) -> tuple[str, ...]:
    """The Service's source ranges of one IP version; empty (open) only when the Service
    restricts nothing, :data:`NO_SOURCE` of that version when it restricts the other
    family only."""
    if not source_ranges:
        return ()
    mine = tuple(r for r in source_ranges if _range_version(r) == version)
    return mine or (NO_SOURCE[version],)


def _range_version(text: str) -> int:
    return 6 if ":" in text else 4


def desired_virtual_servers(
    assignment: VipAssigned,
    nodes: Mapping[str, NodeSnapshot],
    endpoints: EndpointsSnapshot | Set[str] | None,
    *,
    prefix: str,
    profiles: Mapping[str, ProfileSettings] | None = None,
    drain_on_cordon: bool = False,
) -> dict[str, VirtualServer]:
    """The virtual servers a Service needs, by name.

    ``nodes`` are the cluster's nodes by name; ``endpoints`` the Service's
    endpoints or the names of the nodes with a ready one (only used for
    externalTrafficPolicy Local; None when unknown, which for Local means no
    member); ``profiles``: the configured appliance profiles (None: every
    Service gets the built-in one). Raises :class:`InvalidAssignment`, also
    for a profile that is not configured.
    """
    owner = owner_of(assignment.cluster, assignment.namespace, assignment.name)
    try:
        profile = resolve_profile(assignment.profile, profiles)
    except UnknownProfile as exc:
        raise InvalidAssignment(str(exc)) from exc
    monitor = health_monitor(assignment, profile)
    candidates = member_nodes(assignment, nodes, endpoints, drain_on_cordon=drain_on_cordon)
    servers: dict[str, VirtualServer] = {}
    for raw_vip in assignment.vips:
        try:
            vip = ipaddress.ip_address(raw_vip)
        except ValueError as exc:
            raise InvalidAssignment(f"VIP {raw_vip!r} is not an IP address") from exc
        members = _members(candidates, vip.version)
        ranges = family_ranges(assignment.source_ranges, vip.version)
        for service_port in assignment.ports:
            if not 0 < service_port.port < 65536:
                raise InvalidAssignment(f"port {service_port.port} is out of range")
            protocol: L4Protocol = service_port.protocol
            name = virtual_server_name(
                prefix,
                cluster=assignment.cluster,
                namespace=assignment.namespace,
                name=assignment.name,
                vip=vip.compressed,
                port=service_port.port,
                protocol=protocol,
            )
            servers[name] = VirtualServer(
                name=name,
                owner=owner,
                address=vip.compressed,
                port=service_port.port,
                protocol=protocol,
                members=members,
                monitor=monitor,
                source_ranges=ranges,
                affinity_timeout_s=assignment.affinity_timeout_s,
                idle_timeout_s=profile.idle_timeout_s,
                connection_limit=profile.connection_limit,
                lb_method=profile.lb_method,
                all_members_down=profile.all_members_down,
            )
    return servers


def with_profile(server: VirtualServer, profile: ProfileSettings) -> VirtualServer:
    """``server`` as ``profile`` shapes it: its monitor (on the same health port)
    and its options; what :func:`desired_virtual_servers` gives a Service."""
    m = profile.monitor
    return msgspec.structs.replace(
        server,
        monitor=_monitor(server.monitor.port, m.kind, m.path, m.interval_s, m.timeout_s),
        idle_timeout_s=profile.idle_timeout_s,
        connection_limit=profile.connection_limit,
        lb_method=profile.lb_method,
        all_members_down=profile.all_members_down,
    )


def _members(candidates: Iterable[NodeSnapshot], version: int) -> tuple[Member, ...]:
    members = []
    for node in candidates:
        address = node_address(node, version)
        if address is not None:
            members.append(_member(node.node, address))
    return _shared(tuple(sorted(members)))


# Services of a cluster mostly have the same members (every eligible node, or the
# same few with endpoints): one tuple for all of them, not one per virtual server.
@functools.lru_cache(maxsize=1 << 12)
def _shared(members: tuple[Member, ...]) -> tuple[Member, ...]:
    return members


# Every virtual server of a cluster lists the same nodes: one shared (immutable)
# Member each, instead of one per server, is most of the lbdriver's memory per
# Service with 50 nodes (burst benchmark).
@functools.lru_cache(maxsize=1 << 14)
def _member(node: str, address: str) -> Member:
    return Member(node=node, address=address)


def members_of(servers: Iterable[VirtualServer]) -> tuple[Member, ...]:
    """Every (node, address) that serves any of these virtual servers, sorted."""
    return tuple(sorted({m for s in servers for m in s.members}))
