"""Every component in its own process, as deployed: for figures per component.

The all-in-one :class:`~vipwire.allinone.Stack` runs every service in one
process, which is right for demos and tests but hides what each component
costs. A :class:`Fleet` runs the same services the way they are deployed,
each with ``vipwire run <service> --config <file>`` (generated configs): one
ipam, one lbdriver (the ``sim`` appliance, in its process), one watcher per
cluster. Node agents run as :mod:`vipwire.bench._agents` processes, each
hosting the agents of one cluster (a real cluster has one per node, on that
node's CPU; hundreds of Python processes would not fit this machine).

This process keeps nats-server (a child) and the emulated API servers (the
"clusters": they are not the product, so their CPU is not counted as the
product's). Memory and CPU per process come from ``/proc/<pid>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from vipwire.allinone.stack import cluster_name, node_address
from vipwire.kubeemu import KubeEmulator
from vipwire.natsserver import NatsServer

LB_CLASS = "vipwire.io/dsr"
POD_NET = "203.0.113"
#: Components (kinds or names, comma-separated) to run under ``py-spy record``.
PROFILE_ENV = "VIPWIRE_BENCH_PROFILE"
#: Where their profiles (py-spy raw format) go; default: the working directory.
PROFILE_DIR_ENV = "VIPWIRE_BENCH_PROFILE_DIR"
#: Set: keep the processes' logs and configs (the directory is named on stop).
KEEP_ENV = "VIPWIRE_BENCH_KEEP"


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the benchmark dies, however it dies
    (Linux ``PR_SET_PDEATHSIG``), so no component outlives a crashed run."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (handed to a child, which binds it at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS``, ``VmHWM`` (peak RSS) in bytes, and CPU seconds x100 (``cpu_cs``)."""
    result: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                result[key] = int(value.split()[0]) * 1024
    with contextlib.suppress(OSError, ValueError, IndexError):
        # Fields after the command name (which may hold spaces): utime, stime are 14, 15.
        stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks = os.sysconf("SC_CLK_TCK")
        result["cpu_cs"] = (int(stat[11]) + int(stat[12])) * 100 // ticks
    return result


def child_pids(name: str | None = None, parent: int | None = None) -> list[int]:
    """Pids of the children of ``parent`` (default: this process) named ``name`` (any)."""
    me, found = parent or os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            ppid = int(stat.rpartition(")")[2].split()[1])
            if ppid == me and name in (None, comm):
                found.append(int(entry.name))
    return found


@dataclass
class Process:
    """One child process running one component (or one cluster's node agents)."""

    name: str
    kind: str  # ipam, lbdriver, watcher, nodeagents
    argv: list[str]
    port: int
    log: Path
    #: Objects this process is in charge of (per Service, for bytes per Service).
    agents: int = 1
    proc: asyncio.subprocess.Process | None = None
    baseline: dict[str, int] = field(default_factory=dict)
    profiled: bool = False

    async def start(self, env: dict[str, str]) -> None:
        argv = self.argv
        profile = os.environ.get(PROFILE_ENV, "")
        if self.kind in profile.split(",") or self.name in profile.split(","):
            # py-spy (not a dependency: ``pip install py-spy``) samples this component;
            # it writes the profile once the component exits.
            out = Path(os.environ.get(PROFILE_DIR_ENV, ".")) / f"{self.name.replace(':', '-')}.txt"
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            argv = [spy, "record", "-r", "200", "-f", "raw", "--nonblocking"]
            argv += ["-o", str(out), "--", *self.argv]
            self.profiled = True
        with self.log.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdout=log, stderr=log, env=env, preexec_fn=_die_with_parent
            )

    @property
    def pid(self) -> int:
        """The component's pid (under py-spy, the profiled child's, once it runs)."""
        assert self.proc is not None
        if self.profiled:
            children = child_pids(parent=self.proc.pid)
            if children:
                return children[0]
        return self.proc.pid

    async def ready(self, session: aiohttp.ClientSession) -> bool:
        if self.proc is None or self.proc.returncode is not None:
            raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
        try:
            async with session.get(f"http://127.0.0.1:{self.port}/readyz") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            for pid in child_pids(parent=proc.pid) if self.profiled else []:
                os.kill(pid, signal.SIGTERM)  # py-spy then writes its profile and exits
            if not self.profiled:
                proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


class FleetSettings(msgspec.Struct, frozen=True, kw_only=True):
    clusters: int = 1
    nodes: int = 3
    #: ipam pools, as the ``ipam.pools`` section of a config file.
    pools: tuple[dict[str, Any], ...] = ()
    appliance_latency_ms: float = 0.0
    #: Niceness of the node agent processes (0: as the rest).
    agents_nice: int = 0
    #: Node agent coalescing (``nodeagent.coalesce_ms``); None: the default.
    agents_coalesce_ms: int | None = None
    #: Node agents per process (0: all of a cluster's in one process).
    agents_per_process: int = 0
    #: Extra ``nodeagent`` settings for every agent (e.g. ``{"feed": "table"}``).
    agents_extra: dict[str, Any] = {}
    #: nats-server serves its monitoring endpoints (``Fleet.nats.monitor_port``).
    nats_monitor: bool = False
    #: Extra ``lbdriver`` settings (e.g. ``{"lease_ttl_s": 15}``).
    lbdriver_extra: dict[str, Any] = {}
    #: Extra ``watcher`` settings for every watcher (e.g. ``{"node_vip_grace_s": 5}``).
    watcher_extra: dict[str, Any] = {}


class Fleet:
    """NATS + emulated clusters here; ipam, lbdriver, watchers, node agents as processes."""

    def __init__(self, settings: FleetSettings) -> None:
        self.settings = settings
        self.state_dir = Path(tempfile.mkdtemp(prefix="vipwire-fleet-"))
        self.nats = NatsServer(self.state_dir / "jetstream", monitor=settings.nats_monitor)
        self.clusters = [cluster_name(i) for i in range(settings.clusters)]
        self.emulators = {c: KubeEmulator(c, bookmark_interval=5.0) for c in self.clusters}
        self.processes: list[Process] = []

    def node_names(self, cluster: str) -> list[str]:
        return [f"{cluster}-node-{i + 1}" for i in range(self.settings.nodes)]

    def node_address(self, cluster_index: int, node_index: int) -> str:
        """The Stack's addresses (192.0.2.0/24) while they fit; beyond, 10.64.0.0/10."""
        if self.settings.clusters * self.settings.nodes <= 253:
            return node_address(cluster_index, node_index, self.settings.nodes)
        return f"10.{64 + cluster_index}.{node_index // 250}.{node_index % 250 + 1}"

    async def __aenter__(self) -> Fleet:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await self.nats.start()
        for index, cluster in enumerate(self.clusters):
            emulator = self.emulators[cluster]
            await emulator.start()
            emulator.write_kubeconfig(self.state_dir / f"kubeconfig-{cluster}", cluster)
            for n, node in enumerate(self.node_names(cluster)):
                await emulator.add_node(node, self.node_address(index, n))
        self._define()
        env = dict(os.environ)
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)  # a collector would change what we measure
        # Bottom-up, as the Stack does: nothing waits on a consumer that is not there yet.
        for process in self.processes:
            await process.start(env)
            if process.kind == "nodeagents" and self.settings.agents_nice:
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, process.pid, self.settings.agents_nice)

    def _common(self, port: int) -> dict[str, Any]:
        return {
            "bus": {"servers": [self.nats.url], "reconnect_wait_s": 0.2},
            "http": {"host": "127.0.0.1", "port": port},
            "telemetry": {"log_level": "WARNING"},
        }

    def _config(self, name: str, data: dict[str, Any]) -> Path:
        path = self.state_dir / f"{name}.yaml"
        path.write_bytes(msgspec.yaml.encode(data))
        return path

    def _run(self, name: str, kind: str, service: str, section: dict[str, Any]) -> Process:
        port = free_port()
        config = self._config(name, {**self._common(port), service: section})
        argv = [sys.executable, "-m", "vipwire.cli.main", "run", service, "--config", str(config)]
        return Process(name, kind, argv, port, self.state_dir / f"{name}.log")

    def _define(self) -> None:
        s = self.settings
        self.processes.append(
            self._run("ipam", "ipam", "ipam", {"pools": list(s.pools), "reload_interval_s": 0})
        )
        appliance = {
            "name": "sim-1",
            "driver": "sim",
            "group": "dc1",
            "max_requests_per_s": 0,
            "api_latency_ms": s.appliance_latency_ms,
        }
        self.processes.append(
            self._run(
                "lbdriver",
                "lbdriver",
                "lbdriver",
                {"appliances": [appliance], **self.settings.lbdriver_extra},
            )
        )
        for cluster in self.clusters:
            agents = []
            for node in self.node_names(cluster):
                agent: dict[str, Any] = {"cluster": cluster, "node": node, **s.agents_extra}
                if s.agents_coalesce_ms is not None:
                    agent["coalesce_ms"] = s.agents_coalesce_ms
                agents.append(agent)
            size = s.agents_per_process or len(agents) or 1
            groups = [agents[i : i + size] for i in range(0, len(agents), size)]
            for k, group in enumerate(groups):
                name = f"nodeagents:{cluster}" + (f":{k + 1}" if len(groups) > 1 else "")
                port = free_port()
                stem = name.replace(":", "-")
                config = self._config(stem, {**self._common(port), "nodeagents": group})
                argv = [sys.executable, "-m", "vipwire.bench._agents", "--config", str(config)]
                self.processes.append(
                    Process(
                        name,
                        "nodeagents",
                        argv,
                        port,
                        self.state_dir / f"{stem}.log",
                        agents=len(group),
                    )
                )
        for cluster in self.clusters:
            watcher = {
                "cluster": cluster,
                "kubeconfig": str(self.state_dir / f"kubeconfig-{cluster}"),
                "context": cluster,
                **self.settings.watcher_extra,
            }
            self.processes.append(self._run(f"watcher:{cluster}", "watcher", "watcher", watcher))

    async def wait_ready(self, timeout: float) -> None:
        async with aiohttp.ClientSession() as session, asyncio.timeout(timeout):
            pending = list(self.processes)
            while pending:
                states = await asyncio.gather(*(p.ready(session) for p in pending))
                pending = [p for p, ok in zip(pending, states, strict=True) if not ok]
                if pending:
                    await asyncio.sleep(0.1)

    def not_ready(self) -> list[str]:
        return [p.name for p in self.processes if p.proc is None]

    def mark_baseline(self) -> None:
        """Remember each process's memory and CPU now (before the work measured)."""
        for process in self.processes:
            process.baseline = proc_status(process.pid)

    def nats_pid(self) -> int | None:
        pids = child_pids("nats-server")
        return pids[0] if pids else None

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.processes), return_exceptions=True)
        for emulator in self.emulators.values():
            with contextlib.suppress(Exception):
                await emulator.stop()
        await self.nats.stop()
        if os.environ.get(KEEP_ENV):
            print(f"vipwire bench: logs and configs kept in {self.state_dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.state_dir, ignore_errors=True)


def service_body(
    name: str, namespace: str = "default", port: int = 80, *, node_ports: bool = True
) -> dict[str, Any]:
    """A LoadBalancer Service of our class, as ``Stack.create_service`` makes it;
    ``node_ports=False``: without node ports (``allocateLoadBalancerNodePorts: false``),
    so a cluster holds more than the emulator's node port range (2,768)."""
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": LB_CLASS,
            "ports": [{"name": f"p{port}-tcp", "port": port, "protocol": "TCP"}],
            "selector": {"app": name},
            "externalTrafficPolicy": "Cluster",
        },
    }
    if not node_ports:
        body["spec"]["allocateLoadBalancerNodePorts"] = False
    return body


def endpoint_slice(
    name: str, nodes: list[str], first: int, count: int, namespace: str = "default"
) -> dict[str, Any]:
    """An EndpointSlice of ``count`` ready pods on consecutive nodes from ``first`` on."""
    endpoints = [
        {
            "addresses": [f"{POD_NET}.{1 + (first + i) % 250}"],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "nodeName": nodes[(first + i) % len(nodes)],
        }
        for i in range(count)
    ]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-abc12",
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "p80-tcp", "port": 80, "protocol": "TCP"}],
    }
