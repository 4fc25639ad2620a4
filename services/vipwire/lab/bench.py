"""How long the Linux applier takes to put many VIPs on a node (a benchmark, not a test).

Each run gets a fresh namespace as its node and times the node agent's whole
reconcile (read the node, plan, apply) from empty to N VIPs x P ports in
standalone mode, then a reconcile with nothing to do, then the removal of
everything. There are only 768 IPv4 documentation addresses, so VIPs beyond
198.51.100.0/24 come from 2001:db8::/32, which exercises both families.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import statistics
import time
from typing import Any

from vipwire.contracts import (
    Endpoint,
    EndpointPort,
    EndpointsSnapshot,
    LbProgrammed,
    NodeEndpoints,
    ServicePort,
)
from vipwire.lab.netbuild import LabError, missing_requirements
from vipwire.lab.topology import namespace_prefix
from vipwire.netns import CommandFailed, run
from vipwire.nodeagent import LinuxApplier, desired_state, plan

NODE = "bench-node"
_V4 = ipaddress.ip_network("198.51.100.0/24")
_V6 = ipaddress.ip_network("2001:db8:5::/64")
_POD4 = ipaddress.ip_network("203.0.113.0/24")
_POD6 = ipaddress.ip_network("2001:db8:203::/64")


def bench_inputs(
    vips: int, ports: int
) -> tuple[dict[str, LbProgrammed], dict[str, EndpointsSnapshot]]:
    """``vips`` Services of one VIP and ``ports`` ports each, two local pods per Service."""
    programmed: dict[str, LbProgrammed] = {}
    endpoints: dict[str, EndpointsSnapshot] = {}
    service_ports = tuple(ServicePort(port=8000 + p, name=f"p{p}") for p in range(ports))
    pod_ports = tuple(EndpointPort(port=9000 + p, name=f"p{p}") for p in range(ports))
    for i in range(vips):
        name = f"svc-{i}"
        v4 = i < _V4.num_addresses
        vip = _V4[i] if v4 else _V6[i + 1]
        pods = (
            (_POD4[1 + i % 250], _POD4[1 + (i + 1) % 250])
            if v4
            else (_POD6[1 + i], _POD6[100_000 + i])
        )
        programmed[f"default/{name}"] = LbProgrammed(
            cluster="bench",
            namespace="default",
            name=name,
            uid=f"uid-{i}",
            appliance="bench",
            vips=(str(vip),),
            ports=service_ports,
            members=(),
        )
        endpoints[f"default/{name}"] = EndpointsSnapshot(
            cluster="bench",
            namespace="default",
            name=name,
            nodes=(
                NodeEndpoints(
                    node=NODE,
                    endpoints=tuple(Endpoint(addresses=(str(p),), ports=pod_ports) for p in pods),
                ),
            ),
        )
    return programmed, endpoints


async def bench_apply(*, vips: int = 1000, ports: int = 3, runs: int = 3) -> dict[str, Any]:
    """Time the Linux applier: median seconds to apply, re-apply (no-op) and remove."""
    problems = missing_requirements()
    if problems:
        raise LabError("; ".join(problems))
    programmed, endpoints = bench_inputs(vips, ports)
    full = desired_state(programmed, endpoints, node=NODE, mode="standalone")
    empty = desired_state({}, {}, node=NODE, mode="standalone")
    netns = f"{namespace_prefix(str(os.getpid()))}bench"
    timings: dict[str, list[float]] = {"apply": [], "noop": [], "remove": []}
    actions = 0
    for _ in range(runs):
        await run(["ip", "netns", "add", netns])
        try:
            await run(["ip", "-n", netns, "link", "set", "lo", "up"])
            applier = LinuxApplier(netns=netns)
            for phase, desired in (("apply", full), ("noop", full), ("remove", empty)):
                started = time.perf_counter()
                todo = plan(await applier.current(), desired)
                await applier.apply(todo)
                timings[phase].append(time.perf_counter() - started)
                if phase == "apply":
                    actions = len(todo)
            left = [a for a in (await applier.current()).addresses if a.owned]
            if left:
                raise LabError(f"{len(left)} VIPs were left on the node after removal")
        finally:
            with contextlib.suppress(CommandFailed):
                await run(["ip", "netns", "delete", netns])
    return {
        "scenario": "apply",
        "vips": vips,
        "ports": ports,
        "rules": len(full.nft.rules) if full.nft is not None else 0,
        "actions": actions,
        "runs": runs,
        **{f"{phase}_s_median": round(statistics.median(t), 4) for phase, t in timings.items()},
        **{f"{phase}_s_all": [round(x, 4) for x in t] for phase, t in timings.items()},
    }
