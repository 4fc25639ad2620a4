"""The packet lab's shape: namespaces, links, addresses and routes (pure: no I/O).

::

                        198.51.100.0/24 via appliance
    client 192.0.2.100 ─┐
    appliance .254     ─┤  bridge br0 (namespace "seg"): one L2 segment
    node-1 .1          ─┤      node-N ──veth── pod (203.0.113.x/32)
    node-2 .2          ─┤
    node-3 .3          ─┘

The client reaches the VIPs through the appliance (its route says so); the
appliance rewrites only the destination MAC to a member node's; the node
holds the VIP on ``lo``, DNATs VIP:port to a pod (standalone node agent) and
answers the client directly on the segment. Pods hang off their node on a
veth (the node routes to them; proxy ARP on its side answers for everything
else), and every node routes to the other nodes' pods, as a flat CNI does.

Documentation ranges only. Every namespace's name starts with
``<prefix>-<tag>-`` so a later run can find and remove what a crashed one
left behind (the tag starts with the owning process id).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal

import msgspec

from vipwire.allinone.stack import cluster_name, node_address

PREFIX: Final = "vwlab"
HOST_NET: Final = ipaddress.ip_network("192.0.2.0/24")
POD_NET: Final = ipaddress.ip_network("203.0.113.0/24")
VIP_NET: Final = ipaddress.ip_network("198.51.100.0/24")
#: What ipam hands out: inside VIP_NET, which the client routes via the appliance.
VIP_RANGE: Final = "198.51.100.10-198.51.100.99"
CLIENT_ADDRESS: Final = "192.0.2.100"
APPLIANCE_ADDRESS: Final = "192.0.2.254"
POD_PORT: Final = 8080
SERVICE_PORT: Final = 80
#: Locally administered MACs, so a capture or a neighbour table reads at a glance.
_MAC_BASE: Final = 0x02_76_77_00_00_00

Role = Literal["client", "appliance", "node"]
Argv = tuple[str, ...]


class Host(msgspec.Struct, frozen=True, kw_only=True):
    """A host on the segment: one namespace, ``eth0`` plugged into the bridge."""

    role: Role
    name: str
    netns: str
    address: str
    mac: str
    #: The bridge port (in the segment namespace) its ``eth0`` is paired with.
    port: str
    interface: str = "eth0"
    prefix: int = 24


class Pod(msgspec.Struct, frozen=True, kw_only=True):
    """A pod: its own namespace behind its node, serving HTTP on ``address:port``."""

    name: str
    node: str
    netns: str
    address: str
    #: The node's end of the pod's veth (in the node's namespace).
    host_interface: str
    port: int = POD_PORT


class LabPlan(msgspec.Struct, frozen=True, kw_only=True):
    tag: str
    cluster: str
    segment: str
    bridge: str
    client: Host
    appliance: Host
    nodes: tuple[Host, ...]
    pods: tuple[Pod, ...]

    @property
    def hosts(self) -> tuple[Host, ...]:
        return (self.client, self.appliance, *self.nodes)

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace of the lab, the segment first."""
        return (self.segment, *(h.netns for h in self.hosts), *(p.netns for p in self.pods))

    def node(self, name: str) -> Host:
        for host in self.nodes:
            if host.name == name:
                return host
        raise KeyError(name)

    def pod(self, name: str) -> Pod:
        for pod in self.pods:
            if pod.name == name:
                return pod
        raise KeyError(name)

    def pods_on(self, node: str) -> tuple[Pod, ...]:
        return tuple(p for p in self.pods if p.node == node)


def endpoint_slice(name: str, pods: Iterable[Pod], ports: list[dict[str, Any]]) -> dict[str, Any]:
    """The EndpointSlice a Service's controller would write for ``pods`` (all ready and
    serving), named ``<name>-lab``, in the lab's namespace ``default``."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-lab",
            "namespace": "default",
            "labels": {
                "kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [pod.address],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": pod.node,
                "targetRef": {"kind": "Pod", "namespace": "default", "name": pod.name},
            }
            for pod in pods
        ],
        "ports": ports,
    }


def namespace_prefix(tag: str) -> str:
    return f"{PREFIX}-{tag}-"


def plan_lab(tag: str, *, nodes: int = 3, pods: int = 4) -> LabPlan:
    """The lab for one run: ``nodes`` nodes (named as the all-in-one stack names them,
    with its addresses), ``pods`` pods ``web-1…`` spread round-robin over them."""
    if not tag.isalnum():
        raise ValueError(f"tag {tag!r} must be letters and digits")
    if not 1 <= nodes <= 50 or not 1 <= pods <= 200:
        raise ValueError("1-50 nodes and 1-200 pods")
    ns = namespace_prefix(tag)
    cluster = cluster_name(0)
    mac_index = iter(range(1, 256))

    def mac() -> str:
        value = _MAC_BASE + next(mac_index)
        return ":".join(f"{(value >> shift) & 0xFF:02x}" for shift in range(40, -1, -8))

    client = Host(
        role="client",
        name="client",
        netns=f"{ns}client",
        address=CLIENT_ADDRESS,
        mac=mac(),
        port="client",
    )
    appliance = Host(
        role="appliance",
        name="appliance",
        netns=f"{ns}appliance",
        address=APPLIANCE_ADDRESS,
        mac=mac(),
        port="appliance",
    )
    node_hosts = tuple(
        Host(
            role="node",
            name=f"{cluster}-node-{i + 1}",
            netns=f"{ns}node-{i + 1}",
            address=node_address(0, i, nodes),
            mac=mac(),
            port=f"node-{i + 1}",
        )
        for i in range(nodes)
    )
    pod_list = tuple(
        Pod(
            name=f"web-{i + 1}",
            node=node_hosts[i % nodes].name,
            netns=f"{ns}web-{i + 1}",
            address=str(POD_NET[11 + i]),
            host_interface=f"web-{i + 1}",
        )
        for i in range(pods)
    )
    plan = LabPlan(
        tag=tag,
        cluster=cluster,
        segment=f"{ns}seg",
        bridge="br0",
        client=client,
        appliance=appliance,
        nodes=node_hosts,
        pods=pod_list,
    )
    _check(plan)
    return plan


def _check(plan: LabPlan) -> None:
    addresses = [h.address for h in plan.hosts] + [p.address for p in plan.pods]
    if len(set(addresses)) != len(addresses):
        raise ValueError("lab addresses collide")
    for host in plan.hosts:
        if ipaddress.ip_address(host.address) not in HOST_NET:
            raise ValueError(f"{host.name}: {host.address} is outside {HOST_NET}")
    for pod in plan.pods:
        if ipaddress.ip_address(pod.address) not in POD_NET:
            raise ValueError(f"{pod.name}: {pod.address} is outside {POD_NET}")
    names = [h.port for h in plan.hosts] + [p.host_interface for p in plan.pods]
    too_long = [n for n in names if len(n) > 15]
    if too_long:
        raise ValueError(f"interface names longer than 15 characters: {too_long}")


# --- commands ------------------------------------------------------------------------


def _ip(netns: str, *args: str) -> Argv:
    return ("ip", "-n", netns, *args)


def _sysctl(netns: str, *settings: str) -> Argv:
    return ("ip", "netns", "exec", netns, "sysctl", "-q", "-w", *settings)


def build_commands(plan: LabPlan) -> list[Argv]:
    """Every command that builds the lab, in order (each one ``ip`` or ``sysctl``)."""
    cmds: list[Argv] = [("ip", "netns", "add", ns) for ns in plan.namespaces]
    cmds += [_ip(ns, "link", "set", "lo", "up") for ns in plan.namespaces]
    seg = plan.segment
    cmds += [
        _ip(seg, "link", "add", plan.bridge, "type", "bridge"),
        _ip(seg, "link", "set", plan.bridge, "up"),
    ]
    for host in plan.hosts:
        cmds += [
            # Made inside the host's namespace, its peer moved straight into the
            # segment's: nothing of the lab ever appears in the caller's namespace.
            _ip(
                host.netns,
                *f"link add {host.interface} address {host.mac} type veth".split(),
                *f"peer name {host.port} netns {seg}".split(),
            ),
            _ip(seg, "link", "set", host.port, "master", plan.bridge, "up"),
            _ip(host.netns, "addr", "add", f"{host.address}/{host.prefix}", "dev", host.interface),
            _ip(host.netns, "link", "set", host.interface, "up"),
            _sysctl(
                host.netns,
                "net.ipv4.conf.all.rp_filter=0",
                f"net.ipv4.conf.{host.interface}.rp_filter=0",
            ),
        ]
    cmds += [
        _ip(plan.client.netns, "route", "add", str(VIP_NET), "via", plan.appliance.address),
        # The appliance forwards only what its nftables table sends on; anything
        # else for a VIP dies here instead of being routed.
        _sysctl(plan.appliance.netns, "net.ipv4.ip_forward=0"),
    ]
    for node in plan.nodes:
        cmds.append(_sysctl(node.netns, "net.ipv4.ip_forward=1"))
        for pod in plan.pods_on(node.name):
            cmds += [
                _ip(
                    node.netns,
                    *f"link add {pod.host_interface} type veth".split(),
                    *f"peer name eth0 netns {pod.netns}".split(),
                ),
                _ip(node.netns, "link", "set", pod.host_interface, "up"),
                _sysctl(
                    node.netns,
                    f"net.ipv4.conf.{pod.host_interface}.proxy_arp=1",
                    # Proxy ARP answers after a random delay of up to 0.8 s by default.
                    f"net.ipv4.neigh.{pod.host_interface}.proxy_delay=0",
                    f"net.ipv4.conf.{pod.host_interface}.rp_filter=0",
                ),
                _ip(pod.netns, "addr", "add", f"{pod.address}/32", "dev", "eth0"),
                _ip(pod.netns, "link", "set", "eth0", "up"),
                _ip(pod.netns, "route", "add", "default", "dev", "eth0"),
                _ip(node.netns, "route", "add", f"{pod.address}/32", "dev", pod.host_interface),
            ]
        for pod in plan.pods:
            if pod.node != node.name:
                other = plan.node(pod.node)
                cmds.append(
                    _ip(node.netns, "route", "add", f"{pod.address}/32", "via", other.address)
                )
    return cmds


def teardown_commands(namespaces: Iterable[str]) -> list[Argv]:
    """Deleting a namespace deletes its links (and so their peers): that is all it takes."""
    return [("ip", "netns", "delete", ns) for ns in namespaces]


def stale_namespaces(existing: Iterable[str], alive: Callable[[int], bool]) -> list[str]:
    """Lab namespaces whose owning process (the tag's leading digits) is gone."""
    stale = []
    for name in existing:
        parts = name.split("-", 2)
        owner = re.match(r"\d+", parts[1]) if len(parts) == 3 and parts[0] == PREFIX else None
        if owner is not None and not alive(int(owner.group())):
            stale.append(name)
    return sorted(stale)
