"""The chaos scenario's fleet: its options, and every process it runs and hurts.

Split from :mod:`vipwire.bench.chaos` (the load, the faults and the checks):
this module starts the NATS cluster, the components (``vipwire run``), the
appliance emulator and the node agents, supervises them as a Deployment would,
and kills, pauses and restarts them on request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import msgspec

from vipwire.allinone.stack import cluster_name, node_address
from vipwire.bench._common import pool_for
from vipwire.bench._fleet import KEEP_ENV, free_port
from vipwire.kubeemu import KubeEmulator
from vipwire.lbdriver.settings import ApplianceSettings, ApplianceTimeouts

log = logging.getLogger("vipwire.bench.chaos")

NAMESPACE = "default"
PASSWORD_ENV = "VIPWIRE_BENCH_APPLIANCE_PASSWORD"
PASSWORD = "chaos-bench"
GROUP = "dc1"
PORTS = (80, 443, 8080, 8443)


class ChaosOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Parameters of the chaos scenario (``--set name=value``)."""

    #: Seconds of load and faults (the convergence wait comes after).
    duration_s: Annotated[float, msgspec.Meta(gt=0)] = 120.0
    #: Seconds from the start of one fault to the start of the next.
    fault_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    #: Seed of the fault schedule and of the load.
    seed: int = 1
    #: Emulated clusters.
    clusters: Annotated[int, msgspec.Meta(ge=1, le=10)] = 2
    #: Services created over the run (all clusters; about a quarter are deleted again).
    services: Annotated[int, msgspec.Meta(ge=1, le=20000)] = 200
    #: Nodes (dry-run node agents) per cluster.
    nodes: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    ipam_replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 2
    lbdriver_replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 2
    watcher_replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 2
    #: NATS servers (3: a real cluster; 1: a single server, for a quick look).
    nats_servers: Annotated[int, msgspec.Meta(ge=1, le=5)] = 3
    #: Seconds a SIGSTOPped leader stays stopped (longer than its lease).
    sigstop_s: Annotated[float, msgspec.Meta(gt=0)] = 8.0
    #: Watchers' Lease: seconds a standby waits after the leader's last renewal.
    watcher_lease_s: Annotated[int, msgspec.Meta(ge=3)] = 6
    #: Seconds to wait for convergence after the last fault.
    converge_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 180.0
    #: Chance (0..1), per API write, that its watch events go out before its reply (as a
    #: real API server may order them).
    watch_first: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5
    #: Seconds within which writes by two lbdriver replicas count as "at once".
    writers_gap_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0


# --- processes -------------------------------------------------------------------------


def _die_with_parent() -> None:
    from vipwire.bench._fleet import _die_with_parent as die

    die()


@dataclass
class Component:
    """One child process: a replica of a service, a cluster's node agents, the appliance."""

    name: str
    kind: str  # ipam, lbdriver, watcher, nodeagents, appliance
    argv: list[str]
    port: int
    log: Path
    #: watcher: the cluster it serves; its ``instance`` names it in the Lease.
    cluster: str = ""
    proc: asyncio.subprocess.Process | None = None
    stopped: bool = False
    starts: int = 0
    #: A fault is being applied to it (the supervisor leaves it alone meanwhile).
    faulted: bool = False
    #: Times it exited on its own (restarted by the supervisor, as Kubernetes would).
    crashes: int = 0

    async def start(self, env: dict[str, str]) -> None:
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts + 1} at {time.time():.3f}\n".encode())
            out.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdout=out,
                stderr=out,
                env=env,
                preexec_fn=_die_with_parent,
                start_new_session=True,
            )
        self.starts += 1
        self.stopped = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            if sig == signal.SIGSTOP:
                self.stopped = True
            elif sig == signal.SIGCONT:
                self.stopped = False

    async def kill(self) -> None:
        """kill -9, and reap it."""
        proc = self.proc
        if proc is None:
            return
        self.signal(signal.SIGKILL)
        await proc.wait()
        self.stopped = False

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def ready(self, session: aiohttp.ClientSession) -> bool:
        if not self.alive:
            return False
        try:
            url = f"http://127.0.0.1:{self.port}/readyz"
            if self.kind == "appliance":
                url = f"http://127.0.0.1:{self.port}/mgmt/shared/echo"
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                return resp.status in (200, 401)
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def metrics(self, session: aiohttp.ClientSession) -> str:
        url = f"http://127.0.0.1:{self.port}/metrics"
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
            return await resp.text()


class _SingleNats:
    """One nats-server behind the cluster interface (``nats_servers=1``)."""

    def __init__(self, base: Path) -> None:
        from vipwire.natsserver import NatsServer

        self._server = NatsServer(base / "n0")
        self._port = 0

    @property
    def urls(self) -> tuple[str, ...]:
        return (f"nats://127.0.0.1:{self._port}",)

    async def start(self) -> None:
        await self._server.start()
        self._port = self._server.port or 0
        self._server._port_wanted = self._port

    def kill(self, index: int) -> None:
        self._server.kill()

    async def restart(self, index: int) -> None:
        await self._server.stop()
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()


def _nats(servers: int, base: Path) -> Any:
    if servers == 1:
        return _SingleNats(base)
    from vipwire import natsserver

    cluster = getattr(natsserver, "NatsCluster", None)
    if cluster is None:
        raise ValueError("this build has no NatsCluster: run with nats_servers=1")
    return cluster(servers, base)


class ChaosFleet:
    """NATS cluster + emulated API servers here; every component a child process."""

    def __init__(self, options: ChaosOptions) -> None:
        self.options = options
        self.state_dir = Path(tempfile.mkdtemp(prefix="vipwire-chaos-"))
        self.nats = _nats(options.nats_servers, self.state_dir / "nats")
        self.clusters = [cluster_name(i) for i in range(options.clusters)]
        self.emulators = {
            c: KubeEmulator(
                c, bookmark_interval=5.0, watch_first=options.watch_first, seed=options.seed + i
            )
            for i, c in enumerate(self.clusters)
        }
        self.components: list[Component] = []
        self.appliance_port = free_port()
        self.env = dict(os.environ)
        self.env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        self.env[PASSWORD_ENV] = PASSWORD
        self._stop_supervising = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None

    def node_names(self, cluster: str) -> list[str]:
        return [f"{cluster}-node-{i + 1}" for i in range(self.options.nodes)]

    async def __aenter__(self) -> ChaosFleet:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def appliance_settings(self) -> ApplianceSettings:
        return ApplianceSettings(
            name="f5-1",
            driver="f5",
            group=GROUP,
            address=f"http://127.0.0.1:{self.appliance_port}",
            username="admin",
            password_file=str(self.state_dir / "appliance-password"),
            verify_tls=False,
            max_requests_per_s=0,
            timeouts=ApplianceTimeouts(login_s=5, read_s=5, write_s=5, commit_s=5),
        )

    async def start(self) -> None:
        (self.state_dir / "appliance-password").write_text(PASSWORD)
        await self.nats.start()
        for index, cluster in enumerate(self.clusters):
            emulator = self.emulators[cluster]
            await emulator.start()
            emulator.write_kubeconfig(self.state_dir / f"kubeconfig-{cluster}", cluster)
            for n, node in enumerate(self.node_names(cluster)):
                await emulator.add_node(node, node_address(index, n, self.options.nodes))
        self._define()
        for component in self.components:
            await component.start(self.env)
        self._supervisor = asyncio.create_task(self.supervise(self._stop_supervising))

    def _common(self, port: int) -> dict[str, Any]:
        return {
            "bus": {
                "servers": list(self.nats.urls),
                "reconnect_wait_s": 0.2,
                "replicas": min(3, self.options.nats_servers),
            },
            "http": {"host": "127.0.0.1", "port": port},
            "telemetry": {"log_level": "INFO"},
        }

    def _run(
        self, name: str, kind: str, service: str, section: dict[str, Any], cluster: str = ""
    ) -> Component:
        port = free_port()
        config = self.state_dir / f"{name}.yaml"
        config.write_bytes(msgspec.yaml.encode({**self._common(port), service: section}))
        argv = [sys.executable, "-m", "vipwire.cli.main", "run", service, "--config", str(config)]
        return Component(name, kind, argv, port, self.state_dir / f"{name}.log", cluster=cluster)

    def _define(self) -> None:
        o = self.options
        pool = {"name": "chaos", "addresses": [pool_for(o.services)], "appliance_group": GROUP}
        argv = [sys.executable, "-m", "vipwire.bench._appliance"]
        argv += ["--port", str(self.appliance_port), "--state", str(self.state_dir / "f5.json")]
        argv += ["--password-env", PASSWORD_ENV]
        self.components.append(
            Component(
                "appliance", "appliance", argv, self.appliance_port, self.state_dir / "f5.log"
            )
        )
        for i in range(o.ipam_replicas):
            section = {"pools": [pool], "reload_interval_s": 0}
            self.components.append(self._run(f"ipam-{i}", "ipam", "ipam", section))
        appliance = msgspec.to_builtins(self.appliance_settings)
        for i in range(o.lbdriver_replicas):
            section = {"appliances": [appliance]}
            self.components.append(self._run(f"lbdriver-{i}", "lbdriver", "lbdriver", section))
        for cluster in self.clusters:
            agents = [{"cluster": cluster, "node": node} for node in self.node_names(cluster)]
            port = free_port()
            config = self.state_dir / f"nodeagents-{cluster}.yaml"
            config.write_bytes(msgspec.yaml.encode({**self._common(port), "nodeagents": agents}))
            argv = [sys.executable, "-m", "vipwire.bench._agents", "--config", str(config)]
            self.components.append(
                Component(
                    f"nodeagents-{cluster}",
                    "nodeagents",
                    argv,
                    port,
                    self.state_dir / f"nodeagents-{cluster}.log",
                    cluster=cluster,
                )
            )
            for i in range(o.watcher_replicas):
                name = f"watcher-{cluster}-{i}"
                section = {
                    "cluster": cluster,
                    "kubeconfig": str(self.state_dir / f"kubeconfig-{cluster}"),
                    "context": cluster,
                    "instance": name,
                    "lease_duration_s": o.watcher_lease_s,
                    "renew_deadline_s": o.watcher_lease_s * 2 / 3,
                    "retry_period_s": 1.0,
                }
                self.components.append(
                    self._run(name, "watcher", "watcher", section, cluster=cluster)
                )

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart a component that exited on its own (one second later), as a
        Deployment's pod would be; its log says why it exited."""
        while not stop.is_set():
            for c in self.components:
                if c.faulted or c.proc is None or c.proc.returncode is None:
                    continue
                c.crashes += 1
                log.warning("chaos: %s exited with %s; restarting it", c.name, c.proc.returncode)
                await asyncio.sleep(1.0)
                if not c.faulted:
                    await c.start(self.env)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    def named(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)

    def of_kind(self, kind: str) -> list[Component]:
        return [c for c in self.components if c.kind == kind]

    async def wait_ready(self, timeout: float, components: list[Component] | None = None) -> None:
        pending = list(components if components is not None else self.components)
        try:
            async with aiohttp.ClientSession() as session, asyncio.timeout(timeout):
                await self._until_ready(session, pending)
        except TimeoutError:
            names = ", ".join(f"{c.name} (exits: {c.crashes})" for c in pending)
            raise RuntimeError(f"not ready after {timeout:.0f} s: {names}") from None

    async def _until_ready(self, session: aiohttp.ClientSession, pending: list[Component]) -> None:
        """Until every one of ``pending`` is ready (removing them from it as they are)."""
        while pending:
            states = await asyncio.gather(*(c.ready(session) for c in pending))
            pending[:] = [c for c, ok in zip(pending, states, strict=True) if not ok]
            if pending:
                await asyncio.sleep(0.2)

    async def stop(self) -> None:
        self._stop_supervising.set()
        if self._supervisor is not None:
            await asyncio.gather(self._supervisor, return_exceptions=True)
        await asyncio.gather(*(c.stop() for c in self.components), return_exceptions=True)
        for emulator in self.emulators.values():
            with contextlib.suppress(Exception):
                await emulator.stop()
        with contextlib.suppress(Exception):
            await self.nats.stop()
        if os.environ.get(KEEP_ENV):
            print(f"vipwire bench: logs and configs kept in {self.state_dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    # --- leaders ----------------------------------------------------------------------

    async def watcher_leader(
        self, cluster: str, session: aiohttp.ClientSession
    ) -> Component | None:
        """The watcher replica of ``cluster`` whose name holds the cluster's Lease and
        whose ``vipwire_watcher_leader`` says so (a restarted replica has the name of the
        holder it replaced, not its lease)."""
        holder = self.watcher_holder(cluster)
        for c in self.of_kind("watcher"):
            if c.cluster == cluster and c.alive and holder.startswith(c.name + "_"):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    if _says_leader(await c.metrics(session), "watcher"):
                        return c
        return None

    def watcher_holder(self, cluster: str) -> str:
        lease = self.emulators[cluster].find("leases", NAMESPACE, f"vipwire-watcher-{cluster}")
        return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")

    async def lbdriver_leader(self, session: aiohttp.ClientSession) -> Component | None:
        """The lbdriver replica that says it leads (``vipwire_lbdriver_leader`` 1).

        Every replica is asked at once, and the first to say so is the answer: asked one
        after the other, a replica still starting (slow to answer, up to the 2 s
        timeout) delayed the answer of the one that leads, and the takeover measured
        with it."""

        async def leads(c: Component) -> Component | None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                if _says_leader(await c.metrics(session)):
                    return c
            return None

        replicas = [c for c in self.of_kind("lbdriver") if c.alive and not c.stopped]
        asked = [asyncio.create_task(leads(c)) for c in replicas]
        try:
            for answer in asyncio.as_completed(asked):
                leader = await answer
                if leader is not None:
                    return leader
        finally:
            for task in asked:
                task.cancel()
            await asyncio.gather(*asked, return_exceptions=True)
        return None


def _gauge(metrics: str, name: str) -> float | None:
    """The value of an unlabelled gauge in a Prometheus exposition (with or without
    the ``vipwire_`` prefix); None if absent or unreadable."""
    for line in metrics.splitlines():
        found, _, value = line.partition(" ")
        if found in (f"vipwire_{name}", name):
            with contextlib.suppress(ValueError):
                return float(value)
    return None


def leader_since(metrics: str) -> float | None:
    """When an lbdriver replica took the lease it holds, by its own clock
    (``vipwire_lbdriver_leader_since_seconds``); None if it does not say."""
    return _gauge(metrics, "lbdriver_leader_since_seconds") or None


def _says_leader(metrics: str, kind: str = "lbdriver") -> bool:
    """Whether a replica's metrics say it leads (``vipwire_<kind>_leader 1``)."""
    return _gauge(metrics, f"{kind}_leader") == 1.0
