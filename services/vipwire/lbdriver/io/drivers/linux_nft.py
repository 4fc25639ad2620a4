"""The Linux appliance's nftables table: rendered from, and read back into, virtual servers.

Pure: no I/O. One ``netdev`` table per partition, hooked on the ingress of
the interface facing the nodes. For a packet to a VIP:port from an allowed
source (see "source ranges and affinity" below) it picks a member by a hash of
the client's address and port (so one connection always lands on one node; of
the address alone under ClientIP affinity), rewrites only the Ethernet header
(destination: the member's MAC; source: the appliance's own, or the switch
would learn the client's MAC on the appliance's port and send the replies
here) and sends the frame back out of the same interface. The IP header is never touched: L2 DSR.

A draining member (graceful drain, ``VirtualServer.draining``) of a TCP virtual
server takes no new connection while the established ones continue, without
conntrack (an ingress hook sees no connection state): a SYN is sent to the
enabled members only, and its flow (client address and port) is remembered in
a dynamic set; a later packet of a remembered flow goes the same way; any other
packet belongs to a connection made before the drain and is hashed over every
member as before it (enabled and draining, in the same order), so it reaches the
node it always did. The set is carried over when the table is rewritten. UDP and
SCTP have no SYN to tell new flows by: their draining members are only dropped
from the hash when removed.

The table also holds the virtual servers themselves (owner, members, monitor,
which the data path does not need), compressed, in the comments of a chain
that is never jumped to: the kernel is the only store, so a restarted driver
lists exactly what is programmed. Named counters count what each virtual
server forwarded and every packet seen coming *from* a VIP, which in DSR must
stay zero: replies go straight from the node to the client.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import zlib
from collections.abc import Iterable, Mapping
from typing import Any, Final

import msgspec

from vipwire.contracts import port_text
from vipwire.lbdriver.core.virtual_servers import VirtualServer
from vipwire.lbdriver.io.drivers.base import DestinationClash

TABLE_PREFIX: Final = "vipwire-"
STATE_CHAIN: Final = "state"
FROM_VIP: Final = "from-vip"
"""Counter of packets whose source is one of the partition's VIPs (should stay 0)."""
NO_MEMBER: Final = "no-member"
"""Counter of packets to a virtual server without a reachable member (dropped)."""
DENIED: Final = "denied-source"
"""Counter of packets from a source outside a virtual server's source ranges (dropped)."""
_CHUNK: Final = 96
_STATE_VERSION: Final = 1
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_PARTITION = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_L4: Final = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}


class Counter(msgspec.Struct, frozen=True):
    packets: int = 0
    bytes: int = 0


class Listing(msgspec.Struct, frozen=True, kw_only=True):
    """What a partition's table holds, as far as the driver reads it back."""

    servers: dict[str, VirtualServer]
    #: Named counters by counter name.
    counters: dict[str, Counter]
    #: Virtual servers whose data path is not what their record says (a chain or
    #: dispatch entry missing): listed without members, so the next diff rewrites them.
    damaged: tuple[str, ...] = ()
    #: Per drain flow set (see :func:`flow_set`): the flows it remembers, as
    #: (client address, client port, seconds left).
    flows: dict[str, tuple[tuple[str, int, int], ...]] = {}


#: How long a drain remembers a new flow (the set goes with the drain anyway).
FLOW_TIMEOUT_S: Final = 3600


class _State(msgspec.Struct, frozen=True):
    v: int
    servers: list[VirtualServer]


def table_name(partition: str) -> str:
    """The table of one partition (a cluster name, a DNS label)."""
    if not _PARTITION.match(partition):
        raise ValueError(f"partition {partition!r} is not a DNS label")
    return f"{TABLE_PREFIX}{partition}"


def object_name(server: str) -> str:
    """Chain and counter name of a virtual server: a safe nft identifier, stable per name."""
    return f"vs-{hashlib.sha256(server.encode()).hexdigest()[:16]}"


def hash_seed(server: str) -> int:
    """The jhash seed of a virtual server's member choice: stable across table rewrites."""
    return int.from_bytes(hashlib.sha256(server.encode()).digest()[:4], "big")


def flow_set(server: str) -> str:
    """The dynamic set of the flows started while a virtual server drains."""
    return f"flows-{object_name(server)[3:]}"


def destination_clash(servers: Mapping[str, VirtualServer]) -> DestinationClash | None:
    """Two virtual servers on one destination (address, port, protocol); else None."""
    seen: dict[tuple[str, int, str], str] = {}
    for name in sorted(servers):
        s = servers[name]
        key = (ipaddress.ip_address(s.address).compressed, s.port, s.protocol)
        if key in seen:
            return DestinationClash(
                f"{s.address}:{port_text(s.port, s.protocol)}", (seen[key], name)
            )
        seen[key] = name
    return None


# --- rendering ---------------------------------------------------------------------


def render_partition(
    *,
    table: str,
    device: str,
    mac: str,
    servers: Mapping[str, VirtualServer],
    macs: Mapping[str, str],
    counters: Mapping[str, Counter] | None = None,
    flows: Mapping[str, Iterable[tuple[str, int, int]]] | None = None,
) -> str:
    """One ``nft -f`` transaction replacing the partition's table atomically.

    ``servers`` are as programmed: every member (draining ones too) must have a
    MAC in ``macs`` (by member address). ``counters`` and the drains' ``flows``
    carry the previous values over.
    """
    counters = counters or {}
    flows = flows or {}
    _check_mac(mac)
    ordered = [servers[name] for name in sorted(servers)]
    by_family: dict[int, list[VirtualServer]] = {4: [], 6: []}
    for server in ordered:
        by_family[ipaddress.ip_address(server.address).version].append(server)
    lines = [
        f"table netdev {table}",
        f"delete table netdev {table}",
        f"table netdev {table} {{",
        *_counter(FROM_VIP, counters),
        *_counter(NO_MEMBER, counters),
        *_counter(DENIED, counters),
        *(line for s in ordered for line in _counter(object_name(s.name), counters)),
        *_set("vips4", "ipv4_addr", _unique(s.address for s in by_family[4])),
        *_set("vips6", "ipv6_addr", _unique(s.address for s in by_family[6])),
        *_dispatch("dispatch4", "ipv4_addr", by_family[4]),
        *_dispatch("dispatch6", "ipv6_addr", by_family[6]),
        *(line for s in ordered for line in _source_set(s)),
        *(line for s in ordered if _drains(s) for line in _flow_set(s, flows)),
        "\tchain ingress {",
        f'\t\ttype filter hook ingress device "{device}" priority filter; policy accept;',
        f'\t\tip saddr @vips4 counter name "{FROM_VIP}"',
        f'\t\tip6 saddr @vips6 counter name "{FROM_VIP}"',
        "\t\tip daddr . meta l4proto . th dport vmap @dispatch4",
        "\t\tip6 daddr . meta l4proto . th dport vmap @dispatch6",
        "\t}",
    ]
    for server in ordered:
        rules = (
            _draining_forward(server, device=device, mac=mac, macs=macs)
            if _drains(server)
            else [_forward(server, device=device, mac=mac, macs=macs)]
        )
        lines += [
            f"\tchain {object_name(server.name)} {{",
            *_source_filter(server),
            *(f"\t\t{rule}" for rule in rules),
            "\t}",
        ]
    lines += [f"\tchain {STATE_CHAIN} {{"]
    lines += [f'\t\taccept comment "{chunk}"' for chunk in encode_state(ordered)]
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


def _drains(server: VirtualServer) -> bool:
    """Drained gracefully in the data path: TCP (a SYN tells a new flow) with draining members."""
    return bool(server.draining) and server.protocol == "TCP"


def _flow_set(
    server: VirtualServer, flows: Mapping[str, Iterable[tuple[str, int, int]]]
) -> list[str]:
    kind = "ipv4_addr" if ipaddress.ip_address(server.address).version == 4 else "ipv6_addr"
    name = flow_set(server.name)
    kept = [
        f"{ipaddress.ip_address(a).compressed} . {int(p)} timeout {max(int(t), 1)}s"
        for a, p, t in flows.get(name, ())
    ]
    body = [f"\t\telements = {{ {', '.join(kept)} }}"] if kept else []
    return [
        f"\tset {name} {{",
        f"\t\ttype {kind} . inet_service",
        "\t\tflags dynamic,timeout",
        f"\t\ttimeout {FLOW_TIMEOUT_S}s",
        *body,
        "\t}",
    ]


def _draining_forward(
    server: VirtualServer, *, device: str, mac: str, macs: Mapping[str, str]
) -> list[str]:
    """A draining TCP virtual server: new flows to the enabled members (and remembered),
    every other packet hashed over all members as before the drain."""
    l3 = "ip" if ipaddress.ip_address(server.address).version == 4 else "ip6"
    flow = f"{l3} saddr . tcp sport"
    name = flow_set(server.name)
    enabled = _forward(server, device=device, mac=mac, macs=macs)
    everyone = msgspec.structs.replace(
        server, members=tuple(sorted({*server.members, *server.draining})), draining=()
    )
    return [
        f"tcp flags & (syn | ack) == syn add @{name} {{ {flow} }} {enabled}",
        f"{flow} @{name} {enabled}",
        _forward(everyone, device=device, mac=mac, macs=macs),
    ]


def _forward(server: VirtualServer, *, device: str, mac: str, macs: Mapping[str, str]) -> str:
    comment = f'comment "{_comment(server.name)}"'
    members = sorted(server.members)
    if not members:
        return f'counter name "{NO_MEMBER}" drop {comment}'
    targets = []
    for member in members:
        target = macs.get(ipaddress.ip_address(member.address).compressed)
        if target is None:
            raise ValueError(f"{server.name}: no MAC address for member {member.address}")
        targets.append(_check_mac(target))
    if len(targets) == 1:
        choose = targets[0]
    else:
        l3 = "ip" if ipaddress.ip_address(server.address).version == 4 else "ip6"
        l4 = _L4[server.protocol]
        pairs = ", ".join(f"{i} : {t}" for i, t in enumerate(targets))
        # Client address and port: every packet of a connection goes to one node. The seed
        # is fixed per virtual server: without one the kernel draws a random seed each time
        # the table is loaded, and every rewrite (of any Service of the partition) would
        # send established connections to other nodes.
        key = f"{l3} saddr . {l4} sport"
        if server.affinity_timeout_s is not None:
            key = _affinity_key(l3)
        seed = hash_seed(server.name)
        choose = f"jhash {key} mod {len(targets)} seed {seed:#010x} map {{ {pairs} }}"
    return (
        f"ether saddr set {mac} ether daddr set {choose} "
        f'counter name "{object_name(server.name)}" fwd to "{device}" {comment}'
    )


# --- source ranges and affinity ----------------------------------------------------
#
# Source ranges: a named interval set per virtual server (``src-<object name>``) of the
# VIP's family; the server's chain drops (and counts in ``denied-source``) a packet
# whose source is not in it before forwarding. Affinity: the member is chosen by a hash
# of the client's address alone, so every connection of a client lands on one node.
# The ingress hook keeps no state, so this holds for as long as the members stay the
# same rather than for exactly ``timeoutSeconds``: at least the timeout, never less
# while the member list is unchanged.


def source_set_name(server: str) -> str:
    return f"src-{object_name(server)}"


def _affinity_key(l3: str) -> str:
    return f"{l3} saddr"


def _source_set(server: VirtualServer) -> list[str]:
    if not server.source_ranges:
        return []
    kind = "ipv4_addr" if ipaddress.ip_address(server.address).version == 4 else "ipv6_addr"
    elements = [str(ipaddress.ip_network(r, strict=False)) for r in server.source_ranges]
    return [
        f"\tset {source_set_name(server.name)} {{",
        f"\t\ttype {kind}",
        "\t\tflags interval",
        "\t\tauto-merge",
        f"\t\telements = {{ {', '.join(elements)} }}",
        "\t}",
    ]


def _source_filter(server: VirtualServer) -> list[str]:
    if not server.source_ranges:
        return []
    l3 = "ip" if ipaddress.ip_address(server.address).version == 4 else "ip6"
    return [f'\t\t{l3} saddr != @{source_set_name(server.name)} counter name "{DENIED}" drop']


def _counter(name: str, counters: Mapping[str, Counter]) -> list[str]:
    c = counters.get(name, Counter())
    return [f"\tcounter {name} {{ packets {c.packets} bytes {c.bytes} }}"]


def _set(name: str, kind: str, elements: list[str]) -> list[str]:
    body = [f"\t\telements = {{ {', '.join(elements)} }}"] if elements else []
    return [f"\tset {name} {{", f"\t\ttype {kind}", *body, "\t}"]


def _dispatch(name: str, kind: str, servers: list[VirtualServer]) -> list[str]:
    elements = [
        f"{ipaddress.ip_address(s.address).compressed} . {_L4[s.protocol]} . {s.port} : "
        f"jump {object_name(s.name)}"
        for s in servers
    ]
    body = [f"\t\telements = {{ {', '.join(elements)} }}"] if elements else []
    return [
        f"\tmap {name} {{",
        f"\t\ttype {kind} . inet_proto . inet_service : verdict",
        *body,
        "\t}",
    ]


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(ipaddress.ip_address(v).compressed for v in values))


def _comment(text: str) -> str:
    # nft strings have no escapes; a comment holds at most 128 characters.
    return text.replace('"', "'").replace("\\", "/")[:128]


def _check_mac(mac: str) -> str:
    if not _MAC.match(mac):
        raise ValueError(f"{mac!r} is not a MAC address (lower-case, colon-separated)")
    return mac


def encode_state(servers: Iterable[VirtualServer]) -> list[str]:
    """The virtual servers as comment-sized chunks, numbered so their order is checked."""
    state = _State(v=_STATE_VERSION, servers=sorted(servers, key=lambda s: s.name))
    blob = base64.b64encode(zlib.compress(msgspec.json.encode(state), 9)).decode()
    return [f"{i:05d} {blob[at : at + _CHUNK]}" for i, at in enumerate(range(0, len(blob), _CHUNK))]


def decode_state(chunks: Iterable[str]) -> dict[str, VirtualServer]:
    """Inverse of :func:`encode_state`; ValueError if chunks are missing or garbled."""
    parts: list[tuple[int, str]] = []
    for chunk in chunks:
        seq, _, data = chunk.partition(" ")
        parts.append((int(seq), data))
    parts.sort()
    if [seq for seq, _ in parts] != list(range(len(parts))):
        raise ValueError("state chunks are missing")
    if not parts:
        return {}
    try:
        raw = zlib.decompress(base64.b64decode("".join(data for _, data in parts)))
        state = msgspec.json.decode(raw, type=_State)
    except (zlib.error, msgspec.DecodeError, ValueError) as exc:
        raise ValueError(f"state is garbled: {exc}") from exc
    if state.v != _STATE_VERSION:
        raise ValueError(f"state version {state.v} is not {_STATE_VERSION}")
    return {s.name: s for s in state.servers}


# --- reading back ------------------------------------------------------------------


def parse_listing(document: Any, table: str) -> Listing:
    """``nft -j list table netdev <table>`` output as a :class:`Listing`; ValueError if garbled."""
    try:
        items = document["nftables"]
    except (KeyError, TypeError) as exc:
        raise ValueError("not an nft JSON listing") from exc
    chunks: list[str] = []
    counters: dict[str, Counter] = {}
    chains: set[str] = set()
    dispatch: dict[tuple[str, str, int], str] = {}
    flows: dict[str, tuple[tuple[str, int, int], ...]] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        if "set" in item:
            found = _flow_elements(item["set"], table)
            if found is not None:
                flows[found[0]] = found[1]
            continue
        if "counter" in item:
            c = item["counter"]
            if c.get("table") == table:
                counters[c["name"]] = Counter(int(c.get("packets", 0)), int(c.get("bytes", 0)))
        elif "chain" in item:
            if item["chain"].get("table") == table:
                chains.add(item["chain"]["name"])
        elif "map" in item:
            m = item["map"]
            if m.get("table") == table and m.get("name") in ("dispatch4", "dispatch6"):
                dispatch.update(_dispatch_elements(m.get("elem") or []))
        elif "rule" in item:
            r = item["rule"]
            if r.get("table") == table and r.get("chain") == STATE_CHAIN and "comment" in r:
                chunks.append(str(r["comment"]))
    servers = decode_state(chunks)
    damaged = []
    for name, server in servers.items():
        key = (
            ipaddress.ip_address(server.address).compressed,
            _L4[server.protocol],
            server.port,
        )
        if object_name(name) not in chains or dispatch.get(key) != object_name(name):
            damaged.append(name)
            servers[name] = msgspec.structs.replace(server, members=())
    return Listing(servers=servers, counters=counters, damaged=tuple(sorted(damaged)), flows=flows)


def _flow_elements(data: Any, table: str) -> tuple[str, tuple[tuple[str, int, int], ...]] | None:
    """A drain's flow set: its name and (address, port, seconds left) per flow."""
    if not isinstance(data, dict) or data.get("table") != table:
        return None
    name = str(data.get("name", ""))
    if not name.startswith("flows-"):
        return None
    kept: list[tuple[str, int, int]] = []
    for element in data.get("elem") or []:
        try:
            entry = element["elem"] if isinstance(element, dict) and "elem" in element else element
            address, port = entry["val"]["concat"]
            left = int(entry.get("expires", entry.get("timeout", FLOW_TIMEOUT_S)))
            kept.append((ipaddress.ip_address(address).compressed, int(port), left))
        except (KeyError, TypeError, ValueError):
            continue
    return name, tuple(kept)


def _dispatch_elements(elements: list[Any]) -> dict[tuple[str, str, int], str]:
    found: dict[tuple[str, str, int], str] = {}
    for element in elements:
        try:
            key, verdict = element
            address, proto, port = key["concat"]
            target = verdict["jump"]["target"]
            found[(ipaddress.ip_address(address).compressed, str(proto), int(port))] = target
        except (KeyError, TypeError, ValueError):
            continue
    return found
