"""What a node should look like, computed from what the bus says (pure: no I/O).

Every VIP of every Service programmed on an appliance for our cluster goes on
the loopback interface as a host route (/32 or /128): the appliance sends
VIP-addressed frames to the node's MAC (L2 DSR), and the node must accept them
as local without ever answering ARP for them, hence the ARP sysctls. In
``standalone`` mode nothing else steers VIP:port to the pods, so an nftables
table does (DNAT to ready endpoints; with none, to those terminating but still
serving).

Equal inputs give equal outputs, down to the order of every tuple, so the
shell can tell "nothing changed" by comparing.

Over 500 lines: the node's desired state is one incremental structure (per Service VIPs,
ports, policy, source ranges, affinity, refused VIPs) whose methods must keep its counts
consistent; splitting it would split an invariant.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Final, Literal, NamedTuple

import msgspec

from vipwire.contracts import Endpoint, EndpointsSnapshot, FeedService, LbProgrammed, ServicePort

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Mode = Literal["kube-proxy", "standalone"]
NftFamily = Literal["ip", "ip6"]
L4Proto = Literal["tcp", "udp", "sctp"]

_L4: Final[dict[str, L4Proto]] = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}

DIGEST_PREFIX: Final = "vipwire-digest "
"""Starts the comment of the prerouting rule that carries the ruleset's digest."""

ARP_IGNORE: Final = "1"
"""Answer ARP only for addresses configured on the interface the request came in on."""
ARP_ANNOUNCE: Final = "2"
"""Never use a VIP on ``lo`` as the source of our own ARP requests."""


# --- where VIPs may be ------------------------------------------------------------


class VipRanges(NamedTuple):
    """Where this node may put VIPs: inside every range set that is known.

    ``pools``: the CIDRs ipam serves the cluster from (its last ``PoolsServed``);
    ``config``: ``nodeagent.vip_ranges``. None: not known (no message yet, not
    set). Neither known: no VIP can be verified (:attr:`known` is False).
    """

    pools: tuple[Network, ...] | None = None
    config: tuple[Network, ...] | None = None

    @property
    def known(self) -> bool:
        return self.pools is not None or self.config is not None

    def describe(self) -> str:
        """Which range sets a VIP was judged against, for log lines and reports."""
        parts = []
        if self.pools is not None:
            parts.append("the pools ipam serves this cluster")
        if self.config is not None:
            parts.append("nodeagent.vip_ranges")
        return " and ".join(parts) or "no known ranges"


def parse_ranges(texts: Iterable[str]) -> tuple[tuple[Network, ...], tuple[str, ...]]:
    """CIDRs as networks (host bits ignored), and the entries that are not CIDRs."""
    networks: list[Network] = []
    bad: list[str] = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            bad.append(text)
    return tuple(networks), tuple(bad)


def outside(vips: Iterable[str], ranges: VipRanges) -> tuple[str, ...]:
    """The VIPs (canonical text) not inside every known range set; all of them when
    none is known (nothing can be verified)."""
    found: list[str] = []
    for vip in vips:
        ip = _ip_of(vip)
        for networks in (ranges.pools, ranges.config):
            if networks is not None and not any(ip in n for n in networks):
                found.append(vip)
                break
        else:
            if not ranges.known:
                found.append(vip)
    return tuple(found)


class Judged(NamedTuple):
    """What the node does with a programmed Service's VIPs (see :func:`judge`)."""

    #: Put the Service's VIPs on the node (all inside the ranges).
    apply: bool
    #: VIPs outside the ranges: the message is refused, never applied.
    refused: tuple[str, ...] = ()


def judge(entry: ServiceVips, ranges: VipRanges) -> Judged | None:
    """Whether a programmed Service's VIPs may go on the node; None: not known yet.

    A message naming any VIP outside the ranges is refused as a whole (a forged
    or broken message names no address this node should trust), and what the node
    served for the Service before stays. Ranges not known yet (no ``PoolsServed``
    read, no ``vip_ranges`` set): nothing is decided; the shell adds nothing and
    takes nothing off the node until they are.
    """
    if not ranges.known:
        return None
    refused = outside(entry.vips, ranges)
    return Judged(apply=not refused, refused=refused)


# --- value types --------------------------------------------------------------


class VipAddress(msgspec.Struct, frozen=True, kw_only=True):
    """One VIP as a host address (/32 or /128) on the loopback interface."""

    address: str
    prefix: int

    @property
    def version(self) -> int:
        return 6 if ":" in self.address else 4


class Sysctl(msgspec.Struct, frozen=True, kw_only=True):
    """A sysctl in ``sysctl`` notation (a dot inside an interface name is written ``/``)."""

    key: str
    value: str


class NftBackend(msgspec.Struct, frozen=True, kw_only=True):
    address: str
    port: int


class NftRule(msgspec.Struct, frozen=True, kw_only=True):
    """Steer new connections to ``vip``:``port``/``protocol`` to one of ``backends``.

    No backends: no rule, so the packet reaches the VIP on ``lo``, where nothing
    listens, and the client gets a reset (as from kube-proxy with no endpoints).
    """

    service: str
    family: NftFamily
    vip: str
    protocol: L4Proto
    port: int
    backends: tuple[NftBackend, ...]
    #: Sources allowed (CIDRs of the rule's family, overlaps merged); empty: all.
    source_ranges: tuple[str, ...] = ()
    #: ClientIP affinity: the backend is picked by the client's address alone.
    affinity_timeout_s: int | None = None


class NftRuleset(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the agent's nftables table holds (``standalone`` mode)."""

    table: str
    rules: tuple[NftRule, ...] = ()
    #: Addresses of endpoints on this node: traffic DNATed to any other endpoint
    #: is masqueraded, or its reply would leave the other node with the pod's
    #: address instead of the VIP, and the client would drop it.
    local_endpoints: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        """Names this exact ruleset; the table carries it so the applied one can be compared.

        The rendered table holds it in the comment of the prerouting chain's
        rule, after :data:`DIGEST_PREFIX`.
        """
        return hashlib.sha256(msgspec.json.encode(self)).hexdigest()[:16]


class NodeState(msgspec.Struct, frozen=True, kw_only=True):
    """The state the node agent wants on its node."""

    interface: str
    #: IPv4 first, each family in numeric order.
    addresses: tuple[VipAddress, ...]
    sysctls: tuple[Sysctl, ...]
    #: The agent's nftables table (``inet`` family), whether or not it should exist.
    nft_table: str = "vipwire"
    #: None: the agent holds no nftables table (``kube-proxy`` mode).
    nft: NftRuleset | None = None
    #: Inputs that were skipped and why, for the shell to log.
    ignored: tuple[str, ...] = ()

    @property
    def vips(self) -> tuple[str, ...]:
        """The VIPs the node serves, sorted as strings (as ``NodeApplied`` carries them)."""
        return tuple(sorted(a.address for a in self.addresses))


# --- the decision ---------------------------------------------------------------


class ServiceVips(msgspec.Struct, frozen=True, kw_only=True):
    """What the node needs of one programmed Service (not its members: the appliance's)."""

    #: Its usable VIPs (canonical text), in the order the message gave them.
    vips: tuple[str, ...]
    ports: tuple[ServicePort, ...] = ()
    policy: Literal["Cluster", "Local"] = "Cluster"
    #: Why some of its VIPs are not used.
    ignored: tuple[str, ...] = ()
    source_ranges: tuple[str, ...] = ()
    affinity_timeout_s: int | None = None


class Desired(msgspec.Struct, kw_only=True):
    """The cluster's programmed Services as the node needs them, kept up to date one at a time.

    ``refs`` counts the Services that want each address, so one change costs
    O(its VIPs): an address is wanted while its count is above zero. Change it
    only through :func:`put_service` and :func:`put_endpoints`.
    """

    services: dict[str, ServiceVips] = msgspec.field(default_factory=dict)
    refs: dict[str, int] = msgspec.field(default_factory=dict)
    #: Ready endpoints per Service (``standalone`` mode only).
    endpoints: dict[str, EndpointsSnapshot] = msgspec.field(default_factory=dict)


def service_vips(key: str, lb: LbProgrammed | FeedService) -> ServiceVips:
    """The part of an ``LbProgrammed`` or a feed entry (keyed ``ns/name``) a node acts on."""
    parsed: list[str] = []
    ignored: list[str] = []
    for raw in lb.vips:
        ip = _canonical_vip(raw)
        if ip is None:
            ignored.append(f"{key}: VIP {raw!r} is not a unicast IP address")
        else:
            parsed.append(ip)
    return ServiceVips(
        vips=tuple(parsed),
        ports=_intern_ports(lb.ports),
        policy=lb.external_traffic_policy,
        ignored=tuple(ignored),
        source_ranges=lb.source_ranges,
        affinity_timeout_s=lb.affinity_timeout_s,
    )


def put_service(state: Desired, key: str, entry: ServiceVips | None) -> tuple[list[str], list[str]]:
    """Set (``None``: remove) one Service; the addresses that became wanted and unwanted.

    Costs O(the Service's VIPs), whatever the number of Services.
    """
    old = state.services.pop(key, None)
    if entry is not None:
        state.services[key] = entry
    before = frozenset(old.vips) if old is not None else frozenset()
    after = frozenset(entry.vips) if entry is not None else frozenset()
    added: list[str] = []
    removed: list[str] = []
    refs = state.refs
    for ip in after - before:
        count = refs.get(ip, 0)
        refs[ip] = count + 1
        if count == 0:
            added.append(ip)
    for ip in before - after:
        count = refs[ip] - 1
        if count:
            refs[ip] = count
        else:
            del refs[ip]
            removed.append(ip)
    return added, removed


def put_endpoints(state: Desired, key: str, snapshot: EndpointsSnapshot | None) -> bool:
    """Set (``None``: remove) one Service's endpoints; True if that changed anything."""
    if snapshot is None:
        return state.endpoints.pop(key, None) is not None
    if state.endpoints.get(key) == snapshot:
        return False
    state.endpoints[key] = snapshot
    return True


def build(
    programmed: Mapping[str, LbProgrammed], endpoints: Mapping[str, EndpointsSnapshot]
) -> Desired:
    """A :class:`Desired` from whole maps (keyed ``ns/name``)."""
    state = Desired()
    for key, lb in programmed.items():
        put_service(state, key, service_vips(key, lb))
    for key, snapshot in endpoints.items():
        put_endpoints(state, key, snapshot)
    return state


def desired_state(
    programmed: Mapping[str, LbProgrammed],
    endpoints: Mapping[str, EndpointsSnapshot],
    *,
    node: str,
    mode: Mode,
    interface: str = "lo",
    uplink: str | None = None,
    table: str = "vipwire",
) -> NodeState:
    """The node's desired state from the cluster's programmed Services (keyed ``ns/name``).

    ``endpoints`` (same keys) matters only in ``standalone`` mode.
    """
    return node_state(
        build(programmed, endpoints if mode == "standalone" else {}),
        node=node,
        mode=mode,
        interface=interface,
        uplink=uplink,
        table=table,
    )


def node_state(
    state: Desired,
    *,
    node: str,
    mode: Mode,
    interface: str = "lo",
    uplink: str | None = None,
    table: str = "vipwire",
) -> NodeState:
    """The whole desired state of the node: O(n log n), for a first apply and resyncs."""
    ignored = [reason for key in sorted(state.services) for reason in state.services[key].ignored]
    addresses = tuple(host_address(vip) for vip in sorted(state.refs, key=vip_order))
    nft = None
    if mode == "standalone":
        nft = ruleset(state, node=node, table=table, ignored=ignored)
    return NodeState(
        interface=interface,
        addresses=addresses,
        sysctls=arp_sysctls(uplink),
        nft_table=table,
        nft=nft,
        ignored=tuple(ignored),
    )


def vip_strings(vips: Iterable[str]) -> tuple[str, ...]:
    """VIPs sorted as strings, as ``NodeApplied`` carries them (see ``NodeState.vips``)."""
    return tuple(sorted(vips))


def arp_sysctls(uplink: str | None = None) -> tuple[Sysctl, ...]:
    """The ARP settings DSR needs, on ``all`` and on the uplink if one is named.

    The kernel uses the larger of ``all`` and the interface's value, so ``all``
    alone suffices; the uplink is set too so that reading it shows the truth.
    IPv6 needs nothing: neighbour discovery answers only for addresses on the
    interface the solicitation arrived on.
    """
    scopes = ["all"] if uplink is None else ["all", uplink.replace(".", "/")]
    return tuple(
        Sysctl(key=f"net.ipv4.conf.{scope}.{name}", value=value)
        for scope in scopes
        for name, value in (("arp_ignore", ARP_IGNORE), ("arp_announce", ARP_ANNOUNCE))
    )


def serving_endpoints(candidates: list[Endpoint]) -> list[Endpoint]:
    """The endpoints that take new connections: the ready ones; with none, those
    terminating but still serving (EndpointSlice ``serving``), as kube-proxy does, so a
    node the appliance keeps as a member while its pods shut down still has somewhere
    to send the traffic."""
    ready = [ep for ep in candidates if ep.ready]
    return ready or [ep for ep in candidates if ep.terminating and ep.serving]


def ruleset(
    state: Desired, *, node: str, table: str, ignored: list[str] | None = None
) -> NftRuleset:
    """The agent's nftables table for the state (``standalone`` mode); O(rules).

    Reasons for skipped rules are appended to ``ignored``.
    """
    if ignored is None:
        ignored = []
    rules: dict[tuple[int, int, int, str], NftRule] = {}
    local: set[IPAddress] = set()
    for key in sorted(state.services):
        entry = state.services[key]
        snapshot = state.endpoints.get(key)
        per_node = snapshot.nodes if snapshot is not None else ()
        for node_endpoints in per_node:
            if node_endpoints.node == node:
                local.update(_addresses(node_endpoints.endpoints))
        # Local policy keeps the client address and skips the second hop: only
        # this node's pods may serve, exactly as the appliance only sends to
        # nodes that have one.
        chosen = serving_endpoints(
            [
                ep
                for ne in per_node
                if entry.policy == "Cluster" or ne.node == node
                for ep in ne.endpoints
            ]
        )
        for vip in map(_ip_of, entry.vips):
            for port in entry.ports:
                protocol = _L4[port.protocol]
                ident = (vip.version, int(vip), port.port, protocol)
                if ident in rules:
                    ignored.append(
                        f"{key}: {vip}:{port.port}/{protocol} is already steered "
                        f"for {rules[ident].service}"
                    )
                    continue
                rules[ident] = NftRule(
                    service=key,
                    family="ip" if vip.version == 4 else "ip6",
                    vip=str(vip),
                    protocol=protocol,
                    port=port.port,
                    backends=_backends(port, chosen, vip.version),
                    source_ranges=allowed_sources(entry.source_ranges, vip.version),
                    affinity_timeout_s=entry.affinity_timeout_s,
                )
    return NftRuleset(
        table=table,
        rules=tuple(rules[k] for k in sorted(rules)),
        local_endpoints=tuple(str(ip) for ip in sorted(local, key=_ip_key)),
    )


#: A family the Service's ranges leave out is closed (as on the appliance): the
#: unspecified address, from which no client connects.
_NO_SOURCE: Final = {4: "0.0.0.0/32", 6: "::/128"}


@functools.lru_cache(maxsize=1 << 12)
def allowed_sources(ranges: tuple[str, ...], version: int) -> tuple[str, ...]:
    """The ranges of one IP version, overlaps merged (nft refuses overlapping intervals in
    one set); empty when the Service restricts nothing; closed when it names only the
    other family."""
    if not ranges:
        return ()
    networks = []
    for text in ranges:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue
        if network.version == version:
            networks.append(network)
    if not networks:
        return (_NO_SOURCE[version],)
    return tuple(str(n) for n in ipaddress.collapse_addresses(networks))  # type: ignore[type-var]


def _backends(port: ServicePort, endpoints: list[Endpoint], version: int) -> tuple[NftBackend, ...]:
    found: set[tuple[IPAddress, int]] = set()
    for ep in endpoints:
        target = _target_port(port, ep)
        if target is None:
            continue
        found.update((ip, target) for ip in _addresses((ep,)) if ip.version == version)
    return tuple(
        NftBackend(address=str(ip), port=target)
        for ip, target in sorted(found, key=lambda b: (_ip_key(b[0]), b[1]))
    )


def _target_port(port: ServicePort, endpoint: Endpoint) -> int | None:
    """The endpoint's port for a Service port: EndpointSlices match them by name and protocol."""
    for ep_port in endpoint.ports:
        if ep_port.name == port.name and ep_port.protocol == port.protocol:
            return ep_port.port
    if endpoint.ports:
        return None
    if port.target_port is None:
        return port.port
    return port.target_port if isinstance(port.target_port, int) else None


def _addresses(endpoints: tuple[Endpoint, ...] | list[Endpoint]) -> set[IPAddress]:
    found: set[IPAddress] = set()
    for ep in endpoints:
        for raw in ep.addresses:
            try:
                found.add(ipaddress.ip_address(raw))
            except ValueError:
                continue
    return found


# Every Service's VIPs are parsed by every node agent (of a process), and the full
# path formats and sorts all of them: all pure, hence cached. VIPs are kept as
# canonical text, whose hash Python caches (an ``ipaddress`` object's is slow).
@functools.lru_cache(maxsize=1 << 16)
def _canonical_vip(raw: str) -> str | None:
    try:
        ip = ipaddress.ip_address(raw)
    except ValueError:
        return None
    # Any of these on lo would break the node, whatever a publisher says.
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_link_local:
        return None
    return str(ip)


@functools.lru_cache(maxsize=1 << 16)
def _ip_of(vip: str) -> IPAddress:
    return ipaddress.ip_address(vip)


@functools.lru_cache(maxsize=1 << 16)
def vip_order(vip: str) -> tuple[int, int]:
    """Sort key of a canonical VIP: IPv4 first, each family in numeric order."""
    return _ip_key(_ip_of(vip))


@functools.lru_cache(maxsize=1 << 16)
def host_address(vip: str) -> VipAddress:
    """A canonical VIP as it goes on the loopback interface."""
    return VipAddress(address=vip, prefix=128 if ":" in vip else 32)


# Most Services share a handful of port lists: one tuple each, not one per Service
# and node agent (memory).
@functools.lru_cache(maxsize=1 << 12)
def _intern_ports(ports: tuple[ServicePort, ...]) -> tuple[ServicePort, ...]:
    return ports


def _ip_key(ip: IPAddress) -> tuple[int, int]:
    return (ip.version, int(ip))


# --- rendering ------------------------------------------------------------------


def render_nft(ruleset: NftRuleset) -> str:
    """The ruleset as one ``nft -f`` transaction that replaces the table atomically.

    Declaring the table first makes the delete succeed when there is none yet;
    the kernel applies the file as a whole or not at all.
    """
    t = ruleset.table
    v4 = [r.vip for r in ruleset.rules if r.family == "ip"]
    v6 = [r.vip for r in ruleset.rules if r.family == "ip6"]
    local4 = [a for a in ruleset.local_endpoints if ":" not in a]
    local6 = [a for a in ruleset.local_endpoints if ":" in a]
    lines = [
        f"table inet {t}",
        f"delete table inet {t}",
        f"table inet {t} {{",
        *_set("vips4", "ipv4_addr", v4),
        *_set("vips6", "ipv6_addr", v6),
        *_set("local4", "ipv4_addr", local4),
        *_set("local6", "ipv6_addr", local6),
        "\tchain services {",
        *(f"\t\t{_rule(r)}" for r in ruleset.rules if r.backends),
        "\t}",
        *_source_filter(ruleset.rules),
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        # The digest rides on a rule: rule comments read back everywhere (also
        # in ``nft -j``), table comments need kernel 5.10 and newer nft.
        f'\t\tjump services comment "{DIGEST_PREFIX}{ruleset.digest}"',
        "\t}",
        "\tchain output {",
        # "dstnat" names a priority only on prerouting.
        "\t\ttype nat hook output priority -100; policy accept;",
        "\t\tjump services",
        "\t}",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        "\t\tct status dnat ct original ip daddr @vips4 ip daddr != @local4 masquerade",
        "\t\tct status dnat ct original ip6 daddr @vips6 ip6 daddr != @local6 masquerade",
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _set(name: str, kind: str, elements: list[str]) -> list[str]:
    unique = list(dict.fromkeys(elements))
    body = [f"\t\telements = {{ {', '.join(unique)} }}"] if unique else []
    return [f"\tset {name} {{", f"\t\ttype {kind}", *body, "\t}"]


def _rule(rule: NftRule) -> str:
    match = f"{rule.family} daddr {rule.vip} {rule.protocol} dport {rule.port}"
    comment = f'comment "{rule.service}"'
    if len(rule.backends) == 1:
        (b,) = rule.backends
        host = b.address if rule.family == "ip" else f"[{b.address}]"
        return f"{match} dnat {rule.family} to {host}:{b.port} {comment}"
    # conntrack remembers the choice, so a random pick per new connection is a
    # stable per-connection balance, with no state of our own.
    pairs = ", ".join(f"{i} : {b.address} . {b.port}" for i, b in enumerate(rule.backends))
    n = len(rule.backends)
    pick = f"numgen random mod {n}"
    if rule.affinity_timeout_s is not None:
        pick = _sticky_pick(rule, n)
    return f"{match} dnat {rule.family} addr . port to {pick} map {{ {pairs} }} {comment}"


# --- source ranges and affinity ------------------------------------------------------
#
# Source ranges: a filter chain at prerouting, before DNAT (priority mangle), drops a
# packet to a restricted VIP:port whose source is not in its ranges, so the node
# enforces them too (a packet that reached it by another path). Affinity: the backend
# is chosen by a hash of the client's address rather than at random, so every
# connection of one client goes to one endpoint while the endpoints stay the same (no
# expiry is kept: it sticks at least for the timeout).


def _sticky_pick(rule: NftRule, n: int) -> str:
    return f"jhash {rule.family} saddr mod {n}"


def _source_filter(rules: tuple[NftRule, ...]) -> list[str]:
    lines = [
        "\tchain sources {",
        "\t\ttype filter hook prerouting priority mangle; policy accept;",
    ]
    for rule in rules:
        if rule.source_ranges:
            match = f"{rule.family} daddr {rule.vip} {rule.protocol} dport {rule.port}"
            allowed = ", ".join(rule.source_ranges)
            lines.append(
                f'\t\t{match} {rule.family} saddr != {{ {allowed} }} drop comment "{rule.service}"'
            )
    return [*lines, "\t}"]
