"""The L2 DSR packet lab: real namespaces, the real pipeline, real TCP.

:class:`DsrLab` builds the topology of :mod:`vipwire.lab.topology`, starts
an HTTP server in every pod, and runs the all-in-one stack on it: emulated
Kubernetes API, real NATS, watcher, ipam, lbdriver with the ``linux`` driver
programming the appliance namespace, and one standalone node agent per node
namespace with the Linux applier. Services are created as a user would
(Service + EndpointSlice); the lab then waits until the kernel state, not
just the status, says traffic can flow, and sends it.

Over 500 lines: one scenario that builds the hosts, carries each protocol and checks
each property in order; the drain scenario already lives in ``drain.py``. The shared TCP
client code of the two (``drain.py`` repeats a part) is the next thing to fold.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Literal

from opentelemetry.sdk.trace import SpanProcessor

from vipwire.allinone import Stack, StackSettings
from vipwire.allinone.stack import LB_CLASS
from vipwire.ipam import PoolSettings
from vipwire.lab.drain import drain_report
from vipwire.lab.netbuild import LabError, build, destroy, sweep_stale
from vipwire.lab.topology import (
    CLIENT_ADDRESS,
    SERVICE_PORT,
    VIP_NET,
    VIP_RANGE,
    LabPlan,
    Pod,
    endpoint_slice,
    plan_lab,
)
from vipwire.lab.traffic import Client, PodServer, sctp_problem, summarize
from vipwire.lbdriver import ApplianceSettings, VirtualServer
from vipwire.lbdriver.io.drivers.linux import LinuxAppliance
from vipwire.lbdriver.io.drivers.linux_nft import DENIED, FROM_VIP, object_name
from vipwire.netns import CommandFailed, run
from vipwire.nodeagent import LinuxApplier

log = logging.getLogger("vipwire.lab")

APPLIANCE: Final = "linux-1"
GROUP: Final = "dc1"
#: Planted on every node before any agent starts: the agent must never touch them.
PLANTED_ADDRESS: Final = "203.0.113.250"
PLANTED_TABLE: Final = "operator"
#: Counters in the client namespace: frames from a VIP, by who sent them.
CLIENT_TABLE: Final = "vwlab"
#: A second address of the client's, outside the source ranges the lab allows.
OTHER_CLIENT_ADDRESS: Final = "192.0.2.101"
#: Each protocol's Service port name (also the EndpointSlice's, and the pods' target).
PORT_NAMES: Final = {"TCP": "http", "UDP": "udp", "SCTP": "sctp"}

Policy = Literal["Cluster", "Local"]
Protocol = Literal["TCP", "UDP", "SCTP"]


class DsrLab:
    """One lab run; ``async with DsrLab() as lab`` builds it and always tears it down."""

    def __init__(
        self,
        *,
        tag: str | None = None,
        nodes: int = 3,
        pods: int = 4,
        span_processors: Sequence[SpanProcessor] = (),
    ) -> None:
        self.plan: LabPlan = plan_lab(tag or str(os.getpid()), nodes=nodes, pods=pods)
        self._span_processors = tuple(span_processors)
        #: Why SCTP cannot be carried here (the namespaces share the host's kernel), or None.
        self.sctp_skip_reason = sctp_problem()
        sctp = self.sctp_skip_reason is None
        self.pods: dict[str, PodServer] = {p.name: PodServer(p, sctp=sctp) for p in self.plan.pods}
        self.client = Client(self.plan.client.netns)
        # Reads the same kernel state the lbdriver's driver writes (the driver keeps none).
        self.appliance = LinuxAppliance(
            APPLIANCE, interface=self.plan.appliance.interface, netns=self.plan.appliance.netns
        )
        self._stack: Stack | None = None
        self._built = False

    # --- lifecycle -----------------------------------------------------------------

    @property
    def stack(self) -> Stack:
        if self._stack is None:
            raise LabError("the lab is not running")
        return self._stack

    async def start(self) -> None:
        swept = await sweep_stale()
        if swept:
            log.info("removed %d namespaces left by earlier lab runs", len(swept))
        try:
            await build(self.plan)
            self._built = True
            await self._plant()
            await self._client_counters()
            client = self.plan.client
            second = f"{OTHER_CLIENT_ADDRESS}/24"
            await run(["ip", "-n", client.netns, "addr", "add", second, "dev", client.interface])
            for server in self.pods.values():
                await server.start()
                if server.sctp_error is not None and self.sctp_skip_reason is None:
                    self.sctp_skip_reason = (
                        f"pod {server.pod.name} cannot listen on SCTP: {server.sctp_error}"
                    )
            plan = self.plan
            settings = StackSettings(
                clusters=1,
                nodes=len(plan.nodes),
                pools=(
                    PoolSettings(name="default", addresses=(VIP_RANGE,), appliance_group=GROUP),
                ),
                status_gate="all",
                appliance=ApplianceSettings(
                    name=APPLIANCE,
                    driver="linux",
                    group=GROUP,
                    interface=plan.appliance.interface,
                    netns=plan.appliance.netns,
                    # A local nft call, not a management API to protect: no rate limit.
                    max_requests_per_s=0,
                ),
                nodeagent_mode="standalone",
                uplink_interface="eth0",
                dashboard_port=None,
            )
            self._stack = Stack(
                settings, span_processors=self._span_processors, applier_factory=self._applier
            )
            await self._stack.start()
            await self._stack.wait_ready(30.0)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop everything and delete every namespace; safe to call more than once."""
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                await stack.stop()
        finally:
            for server in self.pods.values():
                try:
                    await server.stop()
                except Exception:
                    log.exception("pod server %s did not stop cleanly", server.pod.name)
            if self._built:
                self._built = False
                await destroy(self.plan)

    async def __aenter__(self) -> DsrLab:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _applier(self, cluster: str, node: str) -> LinuxApplier:
        host = self.plan.node(node)
        return LinuxApplier(uplink=host.interface, netns=host.netns)

    def applier(self, node: str) -> LinuxApplier:
        applier = self.stack.appliers[(self.plan.cluster, node)]
        assert isinstance(applier, LinuxApplier)
        return applier

    async def _plant(self) -> None:
        """Things an operator put on the nodes, which the agents must leave alone."""
        for node in self.plan.nodes:
            await run(["ip", "-n", node.netns, "addr", "add", f"{PLANTED_ADDRESS}/32", "dev", "lo"])
            await run(
                ["nft", "-f", "-"],
                netns=node.netns,
                stdin=f"table inet {PLANTED_TABLE} {{\n\tchain keep {{\n\t}}\n}}\n",
            )

    async def _client_counters(self) -> None:
        """Count, at the client's door, frames from a VIP: via the appliance's MAC, or not."""
        c, a = self.plan.client, self.plan.appliance
        script = (
            f"table netdev {CLIENT_TABLE} {{\n"
            "\tcounter via-appliance { }\n\tcounter direct { }\n"
            "\tchain ingress {\n"
            f'\t\ttype filter hook ingress device "{c.interface}" priority filter; policy accept;\n'
            f'\t\tip saddr {VIP_NET} ether saddr {a.mac} counter name "via-appliance"\n'
            f'\t\tip saddr {VIP_NET} ether saddr != {a.mac} counter name "direct"\n'
            "\t}\n}\n"
        )
        await run(["nft", "-f", "-"], netns=c.netns, stdin=script)

    # --- the user's side -------------------------------------------------------------

    async def create_service(
        self,
        name: str,
        *,
        pods: Sequence[str],
        policy: Policy = "Cluster",
        timeout: float = 20.0,
        protocols: Sequence[Protocol] = ("TCP",),
        source_ranges: Sequence[str] = (),
        affinity_timeout_s: int | None = None,
    ) -> str:
        """A LoadBalancer Service over these pods; returns its VIP once packets can flow.

        ``protocols``: one Service port (80) per protocol; ``source_ranges``: its
        ``spec.loadBalancerSourceRanges``; ``affinity_timeout_s``: ``sessionAffinity:
        ClientIP`` with this timeout.
        """
        emulator = self.stack.emulators[self.plan.cluster]
        spec: dict[str, Any] = {
            "type": "LoadBalancer",
            "loadBalancerClass": LB_CLASS,
            "selector": {"app": name},
            "externalTrafficPolicy": policy,
            "ports": [
                {
                    "name": PORT_NAMES[protocol],
                    "port": SERVICE_PORT,
                    "targetPort": PORT_NAMES[protocol],
                    "protocol": protocol,
                }
                for protocol in protocols
            ],
        }
        if source_ranges:
            spec["loadBalancerSourceRanges"] = list(source_ranges)
        if affinity_timeout_s is not None:
            spec["sessionAffinity"] = "ClientIP"
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": affinity_timeout_s}}
        await emulator.create(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": "default"},
                "spec": spec,
            }
        )
        slice_ = self._endpoint_slice(name, [self.plan.pod(p) for p in pods], protocols)
        await emulator.create(slice_)
        vip = await self._until(
            lambda: _first(self.stack.ingress_ips(self.plan.cluster, name)),
            timeout,
            f"Service {name} got no VIP in status",
        )
        await self.wait_dataplane(vip, pods=pods, policy=policy, timeout=timeout)
        await self._wait_access(vip, source_ranges, affinity_timeout_s, timeout)
        return vip

    async def _wait_access(
        self, vip: str, ranges: Sequence[str], affinity: int | None, timeout: float
    ) -> None:
        """Until the appliance's virtual servers for ``vip`` carry these ranges and affinity."""
        wanted = {str(ipaddress.ip_network(r, strict=False)) for r in ranges}

        async def ready() -> bool:
            servers = [s for s in (await self.appliance_servers()).values() if s.address == vip]
            return bool(servers) and all(
                set(s.source_ranges) == wanted and s.affinity_timeout_s == affinity for s in servers
            )

        await self._until_async(ready, timeout, f"{vip}: source ranges or affinity not programmed")

    async def set_endpoints(
        self,
        name: str,
        *,
        pods: Sequence[str],
        vip: str,
        policy: Policy = "Cluster",
        timeout: float = 20.0,
    ) -> None:
        """Scale: the Service's EndpointSlice now lists these pods; waits for the dataplane."""
        emulator = self.stack.emulators[self.plan.cluster]
        current = emulator.get("endpointslices", "default", f"{name}-lab")
        updated = self._endpoint_slice(name, [self.plan.pod(p) for p in pods])
        updated["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        await emulator.replace(updated)
        await self.wait_dataplane(vip, pods=pods, policy=policy, timeout=timeout)

    async def delete_service(self, name: str, *, vip: str, timeout: float = 20.0) -> None:
        """Delete the Service (and its slice, as the garbage collector would); waits until
        no node and not the appliance holds anything of it."""
        emulator = self.stack.emulators[self.plan.cluster]
        await emulator.delete("services", "default", name)
        await emulator.delete("endpointslices", "default", f"{name}-lab")
        await self._until_async(
            lambda: self._gone(vip), timeout, f"VIP {vip} is still programmed somewhere"
        )

    def _endpoint_slice(
        self, name: str, pods: Sequence[Pod], protocols: Sequence[Protocol] = ("TCP",)
    ) -> dict[str, Any]:
        ports = [
            {
                "name": PORT_NAMES[protocol],
                "port": pods[0].port if pods else 8080,
                "protocol": protocol,
            }
            for protocol in protocols
        ]
        return endpoint_slice(name, pods, ports)

    # --- what the kernel says ----------------------------------------------------------

    async def appliance_servers(self) -> dict[str, VirtualServer]:
        return (await self.appliance.read(self.plan.cluster)).servers

    async def appliance_counters(self) -> dict[str, int]:
        """Packets the appliance forwarded, by VIP; ``from-vip`` (replies it saw) and
        ``denied-source`` (packets from outside a server's source ranges, dropped)."""
        listing = await self.appliance.read(self.plan.cluster)
        counts = {FROM_VIP: 0, DENIED: 0}
        for name in (FROM_VIP, DENIED):
            if name in listing.counters:
                counts[name] = listing.counters[name].packets
        for server in listing.servers.values():
            counter = listing.counters.get(object_name(server.name))
            key = f"{server.address}:{server.port}"
            counts[key] = counts.get(key, 0) + (counter.packets if counter else 0)
        return counts

    async def client_counters(self) -> dict[str, int]:
        """Frames from a VIP that reached the client: ``via-appliance`` and ``direct``."""
        out = await run(["nft", "-j", "list", "counters"], netns=self.plan.client.netns)
        found: dict[str, int] = {}
        for item in json.loads(out)["nftables"]:
            counter = item.get("counter")
            if counter and counter.get("table") == CLIENT_TABLE:
                found[counter["name"]] = int(counter["packets"])
        return found

    async def node_vips(self, node: str) -> list[str]:
        """Addresses on the node's ``lo`` inside the VIP range, owned or not."""
        state = await self.applier(node).current()
        return sorted(
            a.address for a in state.addresses if ipaddress.ip_address(a.address) in VIP_NET
        )

    async def node_addresses(self, node: str) -> list[str]:
        state = await self.applier(node).current()
        return sorted(a.address for a in state.addresses)

    async def node_tables(self, node: str) -> list[str]:
        out = await run(["nft", "-j", "list", "tables"], netns=self.plan.node(node).netns)
        return sorted(
            f"{t['table']['family']} {t['table']['name']}"
            for t in json.loads(out)["nftables"]
            if "table" in t
        )

    async def node_steering(self, node: str) -> dict[str, set[str]]:
        """VIP → pod addresses this node's agent DNATs it to (from the kernel's ruleset)."""
        try:
            out = await run(
                ["nft", "list", "chain", "inet", "vipwire", "services"],
                netns=self.plan.node(node).netns,
            )
        except CommandFailed:
            return {}
        steering: dict[str, set[str]] = {}
        for line in out.splitlines():
            match = re.search(r"ip daddr (\S+) tcp dport \d+ dnat", line)
            if match:
                targets = set(
                    re.findall(r"(\d+\.\d+\.\d+\.\d+) \. \d+|to (\d+\.\d+\.\d+\.\d+):", line)
                )
                steering[match.group(1)] = {a or b for a, b in targets}
        return steering

    async def node_source_filter(self, node: str) -> str:
        """The node agent's ``sources`` chain as ``nft`` lists it (empty when there is none)."""
        try:
            return await run(
                ["nft", "list", "chain", "inet", "vipwire", "sources"],
                netns=self.plan.node(node).netns,
            )
        except CommandFailed:
            return ""

    async def nft_handles(self, node: str) -> list[int]:
        """Handles of every rule of the node's vipwire table: a rewrite changes them all."""
        out = await run(
            ["nft", "-j", "-a", "list", "table", "inet", "vipwire"],
            netns=self.plan.node(node).netns,
        )
        return sorted(
            int(item["rule"]["handle"]) for item in json.loads(out)["nftables"] if "rule" in item
        )

    def members(self, pods: Sequence[str], policy: Policy) -> list[str]:
        """The nodes the appliance should send a Service's traffic to."""
        if policy == "Cluster":
            return [n.name for n in self.plan.nodes]
        hosting = {self.plan.pod(p).node for p in pods}
        return [n.name for n in self.plan.nodes if n.name in hosting]

    async def wait_dataplane(
        self, vip: str, *, pods: Sequence[str], policy: Policy, timeout: float = 20.0
    ) -> None:
        """Until the appliance forwards ``vip`` to the right nodes and each node steers it to
        the right pods (as read from the kernels, not from any service's memory)."""
        members = set(self.members(pods, policy))
        addresses = {self.plan.pod(p).address for p in pods}

        async def ready() -> bool:
            servers = [s for s in (await self.appliance_servers()).values() if s.address == vip]
            if not servers or any({m.node for m in s.members} != members for s in servers):
                return False
            for node in self.plan.nodes:
                if node.name in members and vip not in await self.node_vips(node.name):
                    return False
                local = {
                    self.plan.pod(p).address for p in pods if self.plan.pod(p).node == node.name
                }
                want = addresses if policy == "Cluster" else local
                have = (await self.node_steering(node.name)).get(vip, set())
                if node.name in members and have != want:
                    return False
            return True

        await self._until_async(ready, timeout, f"dataplane for {vip} did not converge")

    async def _gone(self, vip: str) -> bool:
        if any(s.address == vip for s in (await self.appliance_servers()).values()):
            return False
        for node in self.plan.nodes:
            if vip in await self.node_vips(node.name) or vip in await self.node_steering(node.name):
                return False
        return True

    # --- the run that ``vipwire lab dsr`` reports -------------------------------------

    async def measure(
        self, vip: str, *, requests: int, concurrency: int = 8, deadline: float = 20.0
    ) -> dict[str, Any]:
        """Send ``requests`` HTTP requests to ``vip``:80 and report what happened, end to end."""
        appliance_before = await self.appliance_counters()
        client_before = await self.client_counters()
        served_before = {name: s.served for name, s in self.pods.items()}
        replies = await self.client.many(
            vip, SERVICE_PORT, requests=requests, concurrency=concurrency, deadline=deadline
        )
        appliance_after = await self.appliance_counters()
        client_after = await self.client_counters()
        key = f"{vip}:{SERVICE_PORT}"
        report = summarize(replies)
        report.update(
            {
                "vip": vip,
                "forwarded_packets": appliance_after.get(key, 0) - appliance_before.get(key, 0),
                "replies_via_appliance": appliance_after[FROM_VIP] - appliance_before[FROM_VIP],
                "client_frames_from_appliance_mac": client_after["via-appliance"]
                - client_before["via-appliance"],
                "client_frames_direct_from_nodes": client_after["direct"] - client_before["direct"],
                "served_by_pod": {
                    name: s.served - served_before[name] for name, s in sorted(self.pods.items())
                },
            }
        )
        return report

    # --- more than HTTP: UDP, SCTP, source ranges, affinity -----------------------------

    async def udp_ok(self, vip: str, *, requests: int = 20) -> bool:
        """Every one of ``requests`` datagrams to ``vip``:80/udp was answered by a pod."""
        replies = [await self.client.udp(vip, SERVICE_PORT) for _ in range(requests)]
        return all(r.ok for r in replies)

    async def sctp_ok(self, vip: str, *, requests: int = 10) -> bool | None:
        """Every HTTP request over SCTP succeeded; None when the kernel has no SCTP."""
        if self.sctp_skip_reason is not None:
            return None
        replies = [
            await self.client.get(vip, SERVICE_PORT, protocol="SCTP") for _ in range(requests)
        ]
        return all(r.ok for r in replies)

    async def source_ranges_check(self, vip: str, *, requests: int = 5) -> dict[str, bool]:
        """From the client's address (allowed) every request succeeds; from its other
        address (outside the ranges) none does."""
        allowed = [
            await self.client.get(vip, SERVICE_PORT, source=CLIENT_ADDRESS) for _ in range(requests)
        ]
        denied = [
            await self.client.get(vip, SERVICE_PORT, source=OTHER_CLIENT_ADDRESS, timeout=0.5)
            for _ in range(requests)
        ]
        return {
            "allowed_ok": all(r.ok for r in allowed),
            "denied_blocked": not any(r.ok for r in denied),
        }

    async def same_node_ratio(self, vip: str, *, requests: int = 30) -> float:
        """The share of one client's connections that landed on its most frequent node
        (the node of the pod that answered): 1.0 when every one did."""
        replies = [await self.client.get(vip, SERVICE_PORT) for _ in range(requests)]
        nodes = Counter(self.plan.pod(r.pod).node for r in replies if r.ok and r.pod)
        if not nodes:
            return 0.0
        return round(max(nodes.values()) / requests, 3)

    async def _until(self, check: Callable[[], str | None], timeout: float, what: str) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (value := check()):
            if loop.time() > deadline:
                raise LabError(what)
            await asyncio.sleep(0.05)
        return value

    async def _until_async(
        self, check: Callable[[], Awaitable[bool]], timeout: float, what: str
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await check():
            if loop.time() > deadline:
                raise LabError(what)
            await asyncio.sleep(0.05)


def _first(values: Sequence[str]) -> str | None:
    return values[0] if values else None


async def run_dsr(
    *, requests: int = 200, concurrency: int = 8, tag: str | None = None
) -> dict[str, Any]:
    """The whole lab run behind ``vipwire lab dsr``: build, serve, measure, tear down."""
    async with DsrLab(tag=tag) as lab:
        pods = [p.name for p in lab.plan.pods[:3]]
        protocols: list[Protocol] = ["TCP", "UDP"]
        if lab.sctp_skip_reason is None:
            protocols.append("SCTP")
        vip = await lab.create_service("web", pods=pods, protocols=protocols)
        report = await lab.measure(vip, requests=requests, concurrency=concurrency)
        report["udp_ok"] = await lab.udp_ok(vip)
        report["sctp_ok"] = await lab.sctp_ok(vip)
        if lab.sctp_skip_reason is not None:
            report["sctp_skip_reason"] = lab.sctp_skip_reason
        restricted = await lab.create_service(
            "restricted", pods=pods, source_ranges=[f"{CLIENT_ADDRESS}/32"]
        )
        report["source_ranges"] = await lab.source_ranges_check(restricted)
        sticky = await lab.create_service("sticky", pods=pods, affinity_timeout_s=600)
        report["affinity_same_node_ratio"] = await lab.same_node_ratio(sticky)
        servers = [s for s in (await lab.appliance_servers()).values() if s.address == vip]
        report["appliance_members"] = sorted({m.node for s in servers for m in s.members})
        report.update(await drain_report(lab))
        report["topology"] = {
            "client": lab.plan.client.address,
            "appliance": lab.plan.appliance.address,
            "nodes": {n.name: n.address for n in lab.plan.nodes},
            "pods": {p.name: f"{p.address} on {p.node}" for p in lab.plan.pods},
        }
        return report
