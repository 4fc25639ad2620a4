"""The whole of vipwire in one process: NATS, emulated clusters, every service.

``vipwire up``, its smoke run, the end-to-end tests and the benchmarks all
build this one stack, so what they show is what the services do. Each service
gets its own Runtime (its own NATS connection, tracer and health endpoint),
exactly as when it runs alone; only the Kubernetes API server and the
appliance are stand-ins.

Over 500 lines: the stack wires every component, its identity, TLS and telemetry in one
place so that `vipwire up`, the tests and the benches start the same thing; a split into
a settings module and a wiring module is the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
from kubernetes_asyncio.client import CoreV1Api
from nats.aio.msg import Msg
from opentelemetry.sdk.trace import SpanProcessor

from vipwire import natsauth
from vipwire.bus import BusSettings, TlsSettings, connect_client, credentials_options
from vipwire.contracts import MalformedMessage, ServiceRef, StatusWritten, decode
from vipwire.dashboard import DashboardService, DashboardSettings
from vipwire.ipam import IpamService, IpamSettings, PoolSettings
from vipwire.kube import KubeApiError, new_api_client, request_json
from vipwire.kubeemu import KubeEmulator
from vipwire.lbdriver import ApplianceSettings, LbdriverService, LbdriverSettings, SimAppliance
from vipwire.lbdriver.core.profiles import ProfileSettings
from vipwire.natsauth import Generated, generate
from vipwire.natsserver import NatsCluster, NatsServer, Pki, make_pki
from vipwire.nodeagent import Applier, DryRunApplier, NodeagentService, NodeagentSettings
from vipwire.runtime import CommonSettings, Runtime, Service, TelemetrySettings
from vipwire.watcher import WatcherService, WatcherSettings

log = logging.getLogger("vipwire.allinone")

CLUSTER_NAMES = ("east", "west", "north", "south", "central")
LB_CLASS = "vipwire.io/dsr"
FINALIZER = "service.kubernetes.io/load-balancer-cleanup"
# Documentation ranges only: these addresses never leave the emulator.
NODE_NET = ipaddress.ip_network("192.0.2.0/24")
POD_NET = ipaddress.ip_network("203.0.113.0/24")
VIP_POOL = "198.51.100.0/24"


class StackSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The shape of the all-in-one stack."""

    #: Emulated clusters (named east, west, north, south, central, then c6…).
    clusters: int = 2
    #: Real clusters to serve instead of emulated ones: cluster name -> (kubeconfig
    #: path, context or None). Their nodes get no node agents here (those run on the
    #: nodes themselves); ``clusters`` and ``nodes`` are then ignored.
    kubeconfigs: dict[str, tuple[str, str | None]] = {}
    #: Nodes per cluster.
    nodes: int = 3
    #: VIP pools handed to ipam (default: one /24 from 198.51.100.0/24).
    pools: tuple[PoolSettings, ...] = (
        PoolSettings(name="default", addresses=(VIP_POOL,), appliance_group="dc1"),
    )
    #: Simulated appliance API latency (ms).
    appliance_latency_ms: float = 0.0
    #: When the watcher writes status: after the appliance (none) or node agents too.
    status_gate: Literal["none", "any", "all"] = "none"
    #: Where JetStream keeps its store; None: a temporary directory removed on stop.
    state_dir: str | None = None
    #: NATS servers: 1, or a local JetStream cluster of that many, each with its own
    #: store under ``state_dir``; the stream and KV buckets then get up to 3 replicas
    #: (3 servers: R3, and any one server may be lost).
    nats_servers: int = 1
    #: ipam replicas (they share one KV bucket).
    ipam_replicas: int = 1
    #: The appliance the lbdriver programs (in the pools' appliance group); None: the
    #: in-process simulator ``sim-1`` (``Stack.appliance``).
    appliance: ApplianceSettings | None = None
    #: Appliance profiles by name (the config file's top-level ``profiles``), for
    #: ipam (names, pools' defaults) and the lbdriver (what they program).
    profiles: dict[str, ProfileSettings] = {}
    #: Node agents' mode: ``kube-proxy`` (VIPs only) or ``standalone`` (+ nftables DNAT).
    nodeagent_mode: Literal["kube-proxy", "standalone"] = "kube-proxy"
    #: Node agents' uplink interface (it gets the ARP sysctls too); None: ``all`` only.
    uplink_interface: str | None = None
    #: Port of the dashboard on 127.0.0.1 (0: any free port); None: no dashboard.
    dashboard_port: int | None = 0
    #: NATS over TLS with client certificates (mTLS, ``verify: true``), from a throwaway
    #: CA made with openssl in ``<state_dir>/pki``; every component and the stack's own
    #: clients connect with the CA's client certificate.
    tls: bool = False
    #: Identities and permissions on the bus (``vipwire nats config`` into
    #: ``<state_dir>/nats``): each component logs in as itself and the server holds it
    #: to its role. False: no authentication at all (``vipwire up --insecure-bus``).
    secure_bus: bool = True
    #: Namespace of the watchers' Leases; None: the kubeconfig context's namespace.
    lease_namespace: str | None = None
    #: Where every component's spans go: ``file`` (OTLP-JSON lines in
    #: ``<state_dir>/traces``, read by ``vipwire trace``), ``console`` (stderr) or
    #: ``otlp`` (to $OTEL_EXPORTER_OTLP_ENDPOINT when set).
    trace_exporter: Literal["otlp", "console", "file"] = "otlp"
    #: The dashboard links each trace id to ``{jaeger_url}/trace/{id}``; None: no links.
    jaeger_url: str | None = None


#: The operator and reader identities the stack generates (besides the components').
OPERATOR = "admin"
READER = "stack"


def component_identity(name: str) -> str:
    """The bus identity of a stack component (``watcher:east`` -> ``watcher-east``)."""
    kind, _, rest = name.partition(":")
    if kind == "watcher":
        return natsauth.watcher(rest).name
    if kind == "nodeagent":
        cluster, _, node = rest.partition("/")
        return natsauth.nodeagent(cluster, node).name
    return kind  # ipam (every replica), lbdriver, dashboard


def cluster_name(index: int) -> str:
    return CLUSTER_NAMES[index] if index < len(CLUSTER_NAMES) else f"c{index + 1}"


def node_address(cluster_index: int, node_index: int, nodes: int) -> str:
    offset = 1 + cluster_index * nodes + node_index
    if offset >= NODE_NET.num_addresses - 1:
        raise ValueError("too many emulated nodes for 192.0.2.0/24 (at most 253)")
    return str(NODE_NET[offset])


class _Component:
    """A service and the runtime it runs in, restartable."""

    def __init__(self, name: str, build: Any, runtime_factory: Any) -> None:
        self.name = name
        self._build = build
        self._runtime_factory = runtime_factory
        self.runtime: Runtime | None = None
        self.service: Service | None = None

    async def start(self) -> None:
        self.runtime = self._runtime_factory(self.name)
        await self.runtime.start()
        self.service = self._build(self.runtime)
        self.runtime.set_readiness(self.service.readiness)
        await self.service.start()

    async def stop(self) -> None:
        service, runtime = self.service, self.runtime
        self.service = self.runtime = None
        if service is not None:
            try:
                await service.stop()
            except Exception:
                log.exception("%s did not stop cleanly", self.name)
        if runtime is not None:
            await runtime.stop()

    def readiness(self) -> str | None:
        if self.service is None:
            return "stopped"
        return self.service.readiness()


class Stack:
    """NATS + N emulated clusters + ipam + lbdriver (sim appliance) + watchers + node agents."""

    def __init__(
        self,
        settings: StackSettings | None = None,
        *,
        span_processors: Sequence[SpanProcessor] = (),
        applier_factory: Callable[[str, str], Applier] | None = None,
    ) -> None:
        """``applier_factory(cluster, node)`` makes a node's applier (default: a dry run)."""
        self.settings = settings or StackSettings()
        self._applier_factory = applier_factory
        self._span_processors = tuple(span_processors)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if self.settings.state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="vipwire-up-")
            self.state_dir = Path(self._tmp.name)
        else:
            self.state_dir = Path(self.settings.state_dir)
        real = self.settings.kubeconfigs
        self.clusters = list(real) or [cluster_name(i) for i in range(self.settings.clusters)]
        self.emulators = {
            c: KubeEmulator(c, bookmark_interval=5.0) for c in self.clusters if c not in real
        }
        #: The identities on the bus (None: ``secure_bus`` off).
        self.auth: Generated | None = None
        if self.settings.secure_bus:
            self.auth = generate(
                self.state_dir / "nats",
                self.clusters,
                nodes={c: self.node_names(c) for c in self.emulators},
                operators=[OPERATOR],
                readers=[READER],
            )
        # TLS: the CA's files are made on start, before the server reads them.
        self.pki: Pki | None = Pki(self.state_dir / "pki") if self.settings.tls else None
        extra = self.auth.config_text if self.auth is not None else ""
        if self.pki is not None:
            extra += self.pki.server_config(verify=True)
        # Its own process group: a Ctrl-C in the terminal stops the services first, then it.
        self.nats: NatsServer | NatsCluster = (
            NatsCluster(
                self.settings.nats_servers,
                self.state_dir / "jetstream",
                extra_config=extra,
                client_options=self.nats_login(),
                client_tls=self.pki.client_files() if self.pki is not None else None,
            )
            if self.settings.nats_servers > 1
            else NatsServer(
                self.state_dir / "jetstream", own_process_group=True, extra_config=extra
            )
        )
        # API clients of the real clusters, and what the watchers last wrote into status there.
        self.kube: dict[str, Any] = {}
        self._statuses: dict[ServiceRef, list[str]] = {}
        self._status_nc: Any = None
        self.appliance = SimAppliance("sim-1", api_latency_ms=self.settings.appliance_latency_ms)
        # One applier per node outlives agent restarts, as a node's kernel does.
        self.appliers: dict[tuple[str, str], Applier] = {}
        self.components: dict[str, _Component] = {}
        self._started = False

    # --- lifecycle -----------------------------------------------------------------

    def client_tls(self) -> TlsSettings:
        """``bus.tls`` of every client of the stack (empty without ``tls``)."""
        if self.pki is None:
            return TlsSettings()
        return TlsSettings(
            ca_file=str(self.pki.ca_file),
            cert_file=str(self.pki.client_cert_file),
            key_file=str(self.pki.client_key_file),
        )

    def client_settings(self, identity: str = f"reader-{READER}") -> BusSettings:
        """How a client of ours connects as ``identity`` (by default the stack's reader:
        its status follower, the ``up`` view): servers, credentials and TLS."""
        creds = self.creds(identity)
        return BusSettings(
            servers=self.nats.urls,
            credentials=None if creds is None else str(creds),
            tls=self.client_tls(),
        )

    def creds(self, identity: str) -> Path | None:
        """The credentials file of ``identity`` (None: the bus is insecure)."""
        return None if self.auth is None else self.auth.creds(identity)

    @property
    def operator_creds(self) -> Path | None:
        """The operator's credentials (for ``vipwire ipam ... --creds``)."""
        return self.creds(f"operator-{OPERATOR}")

    def nats_login(self, identity: str = f"reader-{READER}") -> dict[str, Any]:
        """nats-py connect options logging a client of ours in as ``identity`` (by
        default the stack's reader: its status follower, the ``up`` view)."""
        path = self.creds(identity)
        return credentials_options(None if path is None else str(path)).options

    def _runtime(self, name: str) -> Runtime:
        creds = self.creds(component_identity(name))
        bus = BusSettings(
            servers=self.nats.urls,
            reconnect_wait_s=0.2,
            replicas=min(3, max(1, self.settings.nats_servers)),
            credentials=None if creds is None else str(creds),
            tls=self.client_tls(),
        )
        service_name, _, instance = name.partition(":")
        return Runtime(
            service_name,
            CommonSettings(bus=bus, telemetry=self.telemetry()),
            span_processors=self._span_processors,
            connect_attempts=20,
            instance=instance or None,
        )

    @property
    def trace_dir(self) -> Path | None:
        """Where the components' span files go (None: not the file exporter)."""
        if self.settings.trace_exporter != "file":
            return None
        return self.state_dir / "traces"

    def telemetry(self) -> TelemetrySettings:
        """Every component's ``telemetry`` section."""
        trace_dir = self.trace_dir
        return TelemetrySettings(
            exporter=self.settings.trace_exporter,
            file_dir=None if trace_dir is None else str(trace_dir),
        )

    def node_names(self, cluster: str) -> list[str]:
        if cluster not in self.emulators:
            return []  # a real cluster's node agents run on its nodes
        return [f"{cluster}-node-{i + 1}" for i in range(self.settings.nodes)]

    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.pki is not None:
            await asyncio.to_thread(make_pki, self.pki.directory)
        await self.nats.start()
        for cluster, (path, context) in self.settings.kubeconfigs.items():
            self.kube[cluster] = await new_api_client(path, context)
        if self.kube:
            await self._follow_statuses()
        for index, cluster in enumerate(self.clusters):
            if cluster not in self.emulators:
                continue
            emulator = self.emulators[cluster]
            await emulator.start()
            emulator.write_kubeconfig(self.state_dir / f"kubeconfig-{cluster}", cluster)
            for n, node in enumerate(self.node_names(cluster)):
                address = node_address(index, n, self.settings.nodes)
                await emulator.add_node(node, address)
        self._define_components()
        # Bottom-up, so nothing a service publishes on start waits for a consumer.
        for name in self.components:
            await self.components[name].start()
        self._started = True

    def _define_components(self) -> None:
        s = self.settings
        # ipam serves only the stack's clusters (and tells each its pools).
        ipam_settings = IpamSettings(pools=s.pools, clusters=tuple(self.clusters))
        for i in range(s.ipam_replicas):
            name = "ipam" if s.ipam_replicas == 1 else f"ipam:{i + 1}"
            self._add(name, lambda rt: IpamService(ipam_settings, rt, profiles=list(s.profiles)))
        # The simulator has no management plane to protect: no rate limit.
        appliance = s.appliance or ApplianceSettings(
            name="sim-1", driver="sim", group="dc1", max_requests_per_s=0
        )
        lb_settings = LbdriverSettings(appliances=(appliance,))
        drivers = {"sim-1": self.appliance} if s.appliance is None else None
        self._add(
            "lbdriver",
            lambda rt: LbdriverService(lb_settings, rt, drivers=drivers, profiles=s.profiles),
        )
        for cluster in self.clusters:
            for node in self.node_names(cluster):
                applier = self.appliers.get((cluster, node))
                if applier is None:
                    make = self._applier_factory
                    applier = make(cluster, node) if make is not None else DryRunApplier()
                    self.appliers[(cluster, node)] = applier
                na_settings = NodeagentSettings(
                    cluster=cluster,
                    node=node,
                    mode=s.nodeagent_mode,
                    uplink_interface=s.uplink_interface,
                )
                self._add(
                    f"nodeagent:{cluster}/{node}",
                    lambda rt, st=na_settings, ap=applier: NodeagentService(st, rt, applier=ap),
                )
        for cluster in self.clusters:
            path, context = s.kubeconfigs.get(
                cluster, (str(self.state_dir / f"kubeconfig-{cluster}"), cluster)
            )
            w_settings = WatcherSettings(
                cluster=cluster,
                kubeconfig=path,
                context=context,
                status_gate=s.status_gate,
                lease_namespace=s.lease_namespace,
            )
            self._add(f"watcher:{cluster}", lambda rt, st=w_settings: WatcherService(st, rt))
        if s.dashboard_port is not None:
            d_settings = DashboardSettings(port=s.dashboard_port, jaeger_url=s.jaeger_url)
            self._add("dashboard", lambda rt: DashboardService(d_settings, rt))

    def _add(self, name: str, build: Any) -> None:
        self.components[name] = _Component(name, build, self._runtime)

    async def stop(self) -> None:
        for component in reversed(list(self.components.values())):
            await component.stop()
        for emulator in self.emulators.values():
            with contextlib.suppress(Exception):
                await emulator.stop()
        for client in self.kube.values():
            await client.close()
        self.kube.clear()
        if self._status_nc is not None:
            with contextlib.suppress(Exception):
                await self._status_nc.close()
            self._status_nc = None
        await self.nats.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
        self._started = False

    async def __aenter__(self) -> Stack:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def restart(self, name: str) -> None:
        """Stop a component and start a fresh one in its place (state only from the bus/KV)."""
        component = self.components[name]
        await component.stop()
        await component.start()

    @property
    def dashboard_url(self) -> str | None:
        """Where the dashboard serves, once started (None: not started or disabled)."""
        component = self.components.get("dashboard")
        service = component.service if component is not None else None
        if isinstance(service, DashboardService) and service.port is not None:
            return service.url
        return None

    def readiness(self) -> dict[str, str]:
        """Components that are not ready, with why."""
        return {
            name: reason
            for name, c in self.components.items()
            if (reason := c.readiness()) is not None
        }

    def refused(self) -> dict[str, str]:
        """Components the Kubernetes API refuses a permission they need (a 403), with it:
        nothing waits them out, the RBAC has to change."""
        found: dict[str, str] = {}
        for name, c in self.components.items():
            problem = getattr(c.service, "permission_problem", None)
            reason = problem() if callable(problem) else None
            if isinstance(reason, str):
                found[name] = reason
        return found

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every component is ready; raises :class:`PermissionError` at once when a
        component is refused a permission (waiting would not help)."""
        async with asyncio.timeout(timeout):
            # Polled: readiness has no event to await.
            while self.readiness():
                if refused := self.refused():
                    raise PermissionError(
                        "; ".join(f"{name}: {reason}" for name, reason in refused.items())
                    )
                await asyncio.sleep(0.05)

    # --- the user's side: Services in clusters ------------------------------------

    async def create_service(
        self,
        cluster: str,
        name: str,
        *,
        namespace: str = "default",
        ports: Sequence[tuple[int, str]] = ((80, "TCP"),),
        external_traffic_policy: Literal["Cluster", "Local"] = "Cluster",
        annotations: dict[str, str] | None = None,
        load_balancer_class: str | None = LB_CLASS,
        endpoints_on: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """Create a LoadBalancer Service (and its EndpointSlice) as a user would."""
        spec: dict[str, Any] = {
            "type": "LoadBalancer",
            "ports": [
                {"name": f"p{port}-{proto.lower()}", "port": port, "protocol": proto}
                for port, proto in ports
            ],
            "selector": {"app": name},
            "externalTrafficPolicy": external_traffic_policy,
        }
        if load_balancer_class is not None:
            spec["loadBalancerClass"] = load_balancer_class
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
            "spec": spec,
        }
        if cluster not in self.emulators:
            # A real cluster: its EndpointSlice controller makes the slices.
            core = CoreV1Api(self.kube[cluster])
            return await request_json(core.create_namespaced_service, namespace, service)
        emulator = self.emulators[cluster]
        created = await emulator.create(service)
        nodes = self.node_names(cluster)
        on = list(endpoints_on) if endpoints_on is not None else list(range(len(nodes)))
        await emulator.create(
            self._endpoint_slice(
                cluster=cluster, namespace=namespace, name=name, ports=ports, nodes=nodes, on=on
            )
        )
        return created

    def _endpoint_slice(
        self,
        *,
        cluster: str,
        namespace: str,
        name: str,
        ports: Sequence[tuple[int, str]],
        nodes: Sequence[str],
        on: Sequence[int],
    ) -> dict[str, Any]:
        cluster_index = self.clusters.index(cluster)
        base = (cluster_index * 31 + len(name) * 7) % 200
        endpoints = [
            {
                "addresses": [str(POD_NET[1 + (base + i) % 250])],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": nodes[i],
            }
            for i in on
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
            "ports": [
                {"name": f"p{port}-{proto.lower()}", "port": port, "protocol": proto}
                for port, proto in ports
            ],
        }

    async def set_endpoints(
        self,
        cluster: str,
        name: str,
        on: Sequence[int],
        *,
        namespace: str = "default",
        ports: Sequence[tuple[int, str]] = ((80, "TCP"),),
    ) -> None:
        """Replace the endpoints of a Service's EndpointSlice: one ready pod on each node
        of ``on`` (node indices), as the EndpointSlice controller would in a rollout."""
        slice_ = self._endpoint_slice(
            cluster=cluster,
            namespace=namespace,
            name=name,
            ports=ports,
            nodes=self.node_names(cluster),
            on=on,
        )
        await self.emulators[cluster].patch(
            "endpointslices",
            namespace,
            slice_["metadata"]["name"],
            {"endpoints": slice_["endpoints"]},
        )

    async def delete_service(self, cluster: str, name: str, namespace: str = "default") -> None:
        if cluster not in self.emulators:
            core = CoreV1Api(self.kube[cluster])
            await request_json(core.delete_namespaced_service, name, namespace)
            return
        await self.emulators[cluster].delete("services", namespace, name)

    async def service_exists(self, cluster: str, name: str, namespace: str = "default") -> bool:
        """Whether the Service is still there (a real cluster is asked)."""
        if cluster in self.emulators:
            return self.service(cluster, name, namespace) is not None
        try:
            core = CoreV1Api(self.kube[cluster])
            await request_json(core.read_namespaced_service, name, namespace)
        except KubeApiError as exc:
            if exc.not_found:
                return False
            raise
        return True

    async def _follow_statuses(self) -> None:
        """Keep what the watchers write into real clusters' status (from the bus), so
        ``ingress_ips`` answers without asking those API servers every time."""
        self._status_nc = await connect_client(
            self.client_settings(), name="vipwire-up-status", timeout=5.0
        )

        async def on_msg(msg: Msg) -> None:
            try:
                written = decode(msg.subject, msg.data)
            except MalformedMessage:
                return
            if isinstance(written, StatusWritten):
                key = ServiceRef(written.cluster, written.namespace, written.name)
                self._statuses[key] = list(written.vips)

        await self._status_nc.subscribe("vipwire.*.status.>", cb=on_msg)

    def service(self, cluster: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.emulators[cluster].find("services", namespace, name)
        return found

    def ingress_ips(self, cluster: str, name: str, namespace: str = "default") -> list[str]:
        if cluster not in self.emulators:
            return list(self._statuses.get(ServiceRef(cluster, namespace, name), []))
        svc = self.service(cluster, name, namespace)
        if svc is None:
            return []
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        return [entry["ip"] for entry in ingress if "ip" in entry]
