"""``chaos``: random faults under continuous load; then every invariant is checked.

Set-up: a 3-server NATS JetStream cluster (stream and KV replicated 3 times);
every component in its own process (``vipwire run <service>``): ``ipam``
replicas, ``lbdriver`` replicas, two watchers per cluster (leader-elected
through a Lease), one node-agent process per cluster (dry-run agents, one per
node); an F5 emulator in its own process as the appliance (its configuration
outlives every lbdriver and survives its own restarts); one emulated API
server per cluster in this process (the load goes through it).

Load: Services are created, updated (ports, endpoints, node readiness) and
deleted continuously through the API servers, ``services`` creates spread over
``duration_s``. Faults, one every ``fault_interval_s`` (from
:func:`~vipwire.bench.chaoscore.plan_faults` with ``seed``): kill -9 a
component and restart it, kill -9 a NATS server and restart it (never two at
once), SIGSTOP a leader (lbdriver or watcher) for ``sigstop_s`` then SIGCONT,
restart the appliance emulator.

After the last fault the load stops and the run waits for convergence (every
state invariant holding) up to ``converge_timeout_s``; then it checks every
invariant (:func:`~vipwire.bench.chaoscore.check_invariants`). Result fields:
``faults``, ``faults_by_kind``, ``services_created``, ``services_deleted``,
``violations`` (each names the invariant and the Service),
``converged_after_last_fault_s`` (None: did not converge) and
``max_takeover_s`` (the longest an lbdriver leader fault left no leader, from
the kill or SIGSTOP to the moment the next leader took the lease by its own
clock (``vipwire_lbdriver_leader_since_seconds``), when a standby was ready at
that moment; every takeover, per component, in ``takeover_s``; in the fault
log, ``seen_after_s`` is when the harness's polling saw it, and
``leader_wait_s`` how long the fault first waited for a leader to hit).
``VIPWIRE_BENCH_KEEP=1`` keeps the logs.

The fleet (options, processes, supervision) is :mod:`vipwire.bench._chaos_fleet`.
This module is over 500 lines on purpose: :class:`_Run` is one run's state
(the load, the fault schedule, the observation and the checks share it), and
splitting it would pass that state between modules instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import nats
from nats.js.errors import NoKeysError, NotFoundError

from vipwire.applianceemu import fetch_writes
from vipwire.bench._chaos_fleet import (
    NAMESPACE,
    PORTS,
    ChaosFleet,
    ChaosOptions,
    Component,
    leader_since,
)
from vipwire.bench._common import load_average
from vipwire.bench._fleet import LB_CLASS, POD_NET
from vipwire.bench._result import BenchResult, convert_params
from vipwire.bench.chaoscore import (
    LBDRIVER_LEADER,
    WATCHER_LEADER,
    ApplianceObject,
    Fault,
    LiveService,
    Observation,
    Violation,
    Write,
    check_invariants,
    eligible_members,
    faults_by_kind,
    kinds_text,
    plan_faults,
    record_vips,
    summarise,
)
from vipwire.contracts import (
    IPAM_BUCKET,
    STREAM,
    ClaimView,
    MalformedMessage,
    NodeApplied,
    RecordView,
    decode,
    node_subject,
)
from vipwire.kubeemu import Change
from vipwire.lbdriver.io.drivers.f5 import F5Driver

log = logging.getLogger("vipwire.bench.chaos")


async def run_chaos(params: Mapping[str, str]) -> BenchResult:
    return await chaos(convert_params(params, ChaosOptions))


async def chaos(options: ChaosOptions) -> BenchResult:
    async with ChaosFleet(options) as fleet:
        await fleet.wait_ready(timeout=120.0)
        return await _Run(fleet, options).run()


# --- the run ---------------------------------------------------------------------------


@dataclass
class _Svc:
    cluster: str
    name: str
    policy: str
    ports: list[int]
    endpoints: list[int]

    @property
    def key(self) -> str:
        return f"{self.cluster}/{NAMESPACE}/{self.name}"


@dataclass
class _Run:
    fleet: ChaosFleet
    options: ChaosOptions
    rng: random.Random = field(init=False)
    live: dict[str, _Svc] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    created: int = 0
    updates: dict[str, int] = field(default_factory=dict)
    history: dict[str, tuple[str, list[tuple[str, ...]]]] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    done_faults: list[Fault] = field(default_factory=list)
    fault_log: list[dict[str, Any]] = field(default_factory=list)
    takeovers: dict[str, list[float]] = field(default_factory=dict)
    not_ready: dict[str, list[str]] = field(default_factory=dict)
    load_errors: int = 0
    _writes_seen: int = 0
    _watches: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.options.seed * 7919 + 1)

    # --- orchestration ----------------------------------------------------------------

    async def run(self) -> BenchResult:
        o = self.options
        unsubscribe = [
            e.store.subscribe(functools.partial(self._on_change, c))
            for c, e in self.fleet.emulators.items()
        ]
        components = [
            c.name for c in self.fleet.components if c.kind not in ("appliance", "watcher")
        ] + [WATCHER_LEADER, *(c.name for c in self.fleet.of_kind("watcher"))]
        count = max(1, int(o.duration_s // o.fault_interval_s))
        plan = plan_faults(
            o.seed, count, components, nats_servers=o.nats_servers, sigstop_s=o.sigstop_s
        )
        session = aiohttp.ClientSession()
        started = time.monotonic()
        stop_load = asyncio.Event()
        load = asyncio.create_task(self._load(stop_load, started))
        last_fault_end = started
        try:
            for i, fault in enumerate(plan):
                at = started + (i + 0.5) * o.fault_interval_s
                if max(at, time.monotonic()) > started + o.duration_s:
                    break  # the faults fell behind (each waits for the one before): done
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                await self._inject(fault, session, started)
                last_fault_end = time.monotonic()
            await asyncio.sleep(max(0.0, started + o.duration_s - time.monotonic()))
            stop_load.set()
            await load
            await self._heal()
            converged = await self._converge(session, last_fault_end)
            await self._collect_writes(session)
            observation = await self._observe()
            violations = check_invariants(observation, writers_gap_s=o.writers_gap_s)
        finally:
            stop_load.set()
            if not load.done():
                load.cancel()
            await asyncio.gather(load, return_exceptions=True)
            for task in self._watches:
                task.cancel()
            await asyncio.gather(*self._watches, return_exceptions=True)
            for undo in unsubscribe:
                undo()
            await session.close()
        return self._result(plan, violations, converged, time.monotonic() - started)

    def _on_change(self, cluster: str, change: Change) -> None:
        if change.resource.plural != "services":
            return
        meta = change.object.get("metadata") or {}
        status = change.object.get("status") or {}
        ingress = (status.get("loadBalancer") or {}).get("ingress") or []
        key = f"{cluster}/{meta.get('namespace')}/{meta.get('name')}"
        vips = [entry["ip"] for entry in ingress if "ip" in entry]
        record_vips(self.history, str(meta.get("uid")), key, vips)

    # --- load ---------------------------------------------------------------------------

    async def _load(self, stop: asyncio.Event, started: float) -> None:
        """Creates, updates and deletes at a steady pace until ``stop``."""
        o = self.options
        # Half of the operations create: ``services`` creates over about 90% of the run.
        interval = (0.9 * o.duration_s) / (2 * o.services)
        tick = started
        while not stop.is_set():
            tick += interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, tick - time.monotonic()))
            if stop.is_set():
                return
            roll = self.rng.random()
            try:
                if roll < 0.5 and self.created < o.services:
                    await self._create()
                elif 0.5 <= roll < 0.62 and self.live:
                    await self._delete()
                elif self.live:
                    await self._update()
            except Exception as exc:  # the API server refused: counted, the load goes on
                self.load_errors += 1
                log.info("chaos load: %s", exc)

    def _slice(self, svc: _Svc) -> dict[str, Any]:
        nodes = self.fleet.node_names(svc.cluster)
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{svc.name}-abc12",
                "namespace": NAMESPACE,
                "labels": {
                    "kubernetes.io/service-name": svc.name,
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                },
            },
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": [f"{POD_NET}.{1 + (i * 37 + len(svc.name)) % 250}"],
                    "conditions": {"ready": True, "serving": True, "terminating": False},
                    "nodeName": nodes[i],
                }
                for i in svc.endpoints
            ],
            "ports": _ports(svc.ports),
        }

    async def _create(self) -> None:
        cluster = self.rng.choice(self.fleet.clusters)
        nodes = self.options.nodes
        svc = _Svc(
            cluster=cluster,
            name=f"chaos-{self.created:05d}",
            policy="Local" if self.rng.random() < 0.25 else "Cluster",
            ports=self.rng.sample(PORTS, 1 if self.rng.random() < 0.8 else 2),
            endpoints=sorted(self.rng.sample(range(nodes), self.rng.randint(1, nodes))),
        )
        self.created += 1
        emulator = self.fleet.emulators[cluster]
        await emulator.create(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": svc.name, "namespace": NAMESPACE},
                "spec": {
                    "type": "LoadBalancer",
                    "loadBalancerClass": LB_CLASS,
                    "ports": _ports(svc.ports),
                    "selector": {"app": svc.name},
                    "externalTrafficPolicy": svc.policy,
                },
            }
        )
        self.live[svc.key] = svc
        await emulator.create(self._slice(svc))

    async def _delete(self) -> None:
        key = self.rng.choice(sorted(self.live))
        svc = self.live.pop(key)
        self.deleted.add(key)
        emulator = self.fleet.emulators[svc.cluster]
        await emulator.delete("services", NAMESPACE, svc.name)
        with contextlib.suppress(Exception):
            await emulator.delete("endpointslices", NAMESPACE, f"{svc.name}-abc12")

    async def _update(self) -> None:
        svc = self.live[self.rng.choice(sorted(self.live))]
        emulator = self.fleet.emulators[svc.cluster]
        what = self.rng.choice(("ports", "endpoints", "endpoints", "node"))
        self.updates[what] = self.updates.get(what, 0) + 1
        if what == "ports":
            svc.ports = self.rng.sample(PORTS, 1 if self.rng.random() < 0.8 else 2)
            await emulator.patch(
                "services", NAMESPACE, svc.name, {"spec": {"ports": _ports(svc.ports)}}
            )
            await emulator.patch(
                "endpointslices", NAMESPACE, f"{svc.name}-abc12", {"ports": _ports(svc.ports)}
            )
        elif what == "endpoints":
            nodes = self.options.nodes
            svc.endpoints = sorted(self.rng.sample(range(nodes), self.rng.randint(1, nodes)))
            await emulator.patch(
                "endpointslices",
                NAMESPACE,
                f"{svc.name}-abc12",
                {"endpoints": self._slice(svc)["endpoints"]},
            )
        else:
            # A node goes NotReady, or comes back: at most one per cluster is away.
            away = [
                n for n in self.fleet.node_names(svc.cluster) if not self._ready(svc.cluster, n)
            ]
            if away:
                await emulator.set_node_ready(away[0], True)
            else:
                node = self.rng.choice(self.fleet.node_names(svc.cluster))
                await emulator.set_node_ready(node, False)

    def _ready(self, cluster: str, node: str) -> bool:
        obj = self.fleet.emulators[cluster].find("nodes", None, node) or {}
        conditions = (obj.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    async def _heal(self) -> None:
        """Every node Ready again (the end state the invariants are judged on)."""
        for cluster in self.fleet.clusters:
            for node in self.fleet.node_names(cluster):
                if not self._ready(cluster, node):
                    await self.fleet.emulators[cluster].set_node_ready(node, True)

    # --- faults -------------------------------------------------------------------------

    async def _target(self, fault: Fault, session: aiohttp.ClientSession) -> Component:
        fleet = self.fleet
        # A fault meant for a leader waits (up to 15 s) for there to be one: right after
        # another fault an election may still be under way.
        deadline = time.monotonic() + 15.0
        if fault.target == LBDRIVER_LEADER:
            leader = await fleet.lbdriver_leader(session)
            while leader is None and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                leader = await fleet.lbdriver_leader(session)
            return leader or self.rng.choice(fleet.of_kind("lbdriver"))
        if fault.target == WATCHER_LEADER:
            cluster = self.rng.choice(fleet.clusters)
            leader = await fleet.watcher_leader(cluster, session)
            while leader is None and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                leader = await fleet.watcher_leader(cluster, session)
            watchers = [c for c in fleet.of_kind("watcher") if c.cluster == cluster]
            return leader or self.rng.choice(watchers)
        return fleet.named(fault.target)

    async def _inject(self, fault: Fault, session: aiohttp.ClientSession, t0: float) -> None:
        fleet = self.fleet
        begun = time.monotonic()
        entry: dict[str, Any] = {"at_s": round(begun - t0, 2), "kind": fault.kind}
        watch: asyncio.Task[None] | None = None
        try:
            if fault.kind == "nats-kill":
                index = int(fault.target)
                entry["target"] = f"nats-{index}"
                fleet.nats.kill(index)
                await asyncio.sleep(fault.hold_s)
                await fleet.nats.restart(index)
            elif fault.kind == "appliance-restart":
                entry["target"] = "appliance"
                appliance = fleet.named("appliance")
                await self._collect_writes(session)
                appliance.faulted = True
                try:
                    await appliance.stop()
                    self._writes_seen = 0
                    await asyncio.sleep(fault.hold_s)
                    await appliance.start(fleet.env)
                    await fleet.wait_ready(30.0, [appliance])
                finally:
                    appliance.faulted = False
            else:
                target = await self._target(fault, session)
                entry["target"] = target.name
                if await self._leads(target, session):
                    entry["leader"] = True
                    entry["standby_ready"] = await self._standby_ready(target, session)
                    # The takeover counts from the blow: the wait for there to be a
                    # leader to hit (an election after the fault before) is not one.
                    hit = time.monotonic()
                    entry["leader_wait_s"] = round(hit - begun, 2)
                    entry["hit_at"] = round(time.time(), 3)
                    watch = asyncio.create_task(self._takeover(target, fault, session, hit, entry))
                target.faulted = True
                try:
                    if fault.kind == "kill":
                        await target.kill()
                        await asyncio.sleep(fault.hold_s)
                        await target.start(fleet.env)
                    else:
                        target.signal(signal.SIGSTOP)
                        await asyncio.sleep(fault.hold_s)
                        target.signal(signal.SIGCONT)
                finally:
                    target.faulted = False
        except Exception as exc:
            entry["error"] = repr(exc)
            log.warning("chaos: fault %s failed: %r", fault, exc)
        entry["took_s"] = round(time.monotonic() - begun, 2)
        self.done_faults.append(fault)
        self.fault_log.append(entry)
        log.info("chaos fault: %s", entry)
        if watch is not None:
            # The takeover is measured in the background: the next fault does not wait.
            self._watches.append(watch)

    async def _standby_ready(self, target: Component, session: aiohttp.ClientSession) -> bool:
        """Whether another replica of the target's kind (and cluster) is up and ready."""
        others = [
            c
            for c in self.fleet.of_kind(target.kind)
            if c is not target and c.cluster == target.cluster and not c.stopped
        ]
        states = await asyncio.gather(*(c.ready(session) for c in others))
        return any(states)

    async def _leads(self, target: Component, session: aiohttp.ClientSession) -> bool:
        if target.kind == "watcher":
            return await self.fleet.watcher_leader(target.cluster, session) is target
        if target.kind == "lbdriver":
            return await self.fleet.lbdriver_leader(session) is target
        return False

    async def _takeover(
        self,
        target: Component,
        fault: Fault,
        session: aiohttp.ClientSession,
        hit: float,
        entry: dict[str, Any],
    ) -> None:
        """How long from the moment the leader was killed or stopped (``hit``) until
        another replica leads (or the target leads again, restarted or continued): the
        time without a leader. Only for leader kinds."""
        starts = target.starts
        holder = self.fleet.watcher_holder(target.cluster) if target.kind == "watcher" else ""
        deadline = hit + 120.0
        await asyncio.sleep(0.05)
        leader: Component | None = None
        while time.monotonic() < deadline:
            if target.kind == "lbdriver":
                leader = await self.fleet.lbdriver_leader(session)
                if leader is not None and (
                    leader is not target or target.starts > starts or not target.stopped
                ):
                    break
            else:
                now = self.fleet.watcher_holder(target.cluster)
                if now and now != holder:
                    break
                if fault.kind == "sigstop" and not target.stopped and now == holder:
                    # Continued before anyone took over: still the leader, nothing lost
                    # beyond the stop itself.
                    break
            await asyncio.sleep(0.1)
        else:
            log.warning("chaos: no leader after %s of %s for 120 s", fault.kind, target.name)
            self.takeovers.setdefault(target.kind, []).append(120.0)
            entry["takeover_s"] = None
            return
        took = round(time.monotonic() - hit, 2)
        entry["seen_after_s"] = took
        if leader is not None:
            # The new term's start by the replica's own clock: the harness's polling (a
            # scrape every 0.1 s of processes a loaded machine answers late) is not part
            # of the failover. A leader whose term began before the blow (continued after
            # a SIGSTOP) keeps the polled figure.
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                since = leader_since(await leader.metrics(session))
                if since is not None and since > entry["hit_at"]:
                    took = round(min(took, since - entry["hit_at"]), 2)
        self.takeovers.setdefault(target.kind, []).append(took)
        entry["takeover_s"] = took

    # --- convergence and observation -----------------------------------------------------

    async def _converge(self, session: aiohttp.ClientSession, since: float) -> float | None:
        """Seconds from the end of the last fault until every state invariant holds."""
        deadline = time.monotonic() + self.options.converge_timeout_s
        while True:
            try:
                observation = await self._observe(with_history=False)
            except Exception as exc:  # a NATS server or the appliance still coming back
                log.info("chaos: cannot observe yet: %r", exc)
                if time.monotonic() > deadline:
                    return None
                await asyncio.sleep(2.0)
                continue
            problems = check_invariants(observation)
            if not problems:
                return round(time.monotonic() - since, 2)
            if time.monotonic() > deadline:
                log.warning("chaos: not converged: %s", summarise(problems))
                return None
            log.info("chaos: converging: %s", summarise(problems))
            await asyncio.sleep(2.0)

    async def _collect_writes(self, session: aiohttp.ClientSession) -> None:
        """Add the appliance's write log (it starts empty again when it restarts)."""
        del session
        url = f"http://127.0.0.1:{self.fleet.appliance_port}"
        try:
            records = await fetch_writes(url, self._writes_seen)
        except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError) as exc:
            log.warning("chaos: cannot read the appliance's write log: %r", exc)
            return
        self._writes_seen = records[-1].index + 1 if records else self._writes_seen
        self.writes += [
            Write(
                at=r.started_ns / 1e9,
                end=r.ended_ns / 1e9,
                writer=r.writer,
                lease=r.lease,
                method=r.method,
                path=r.path,
            )
            for r in records
        ]

    async def _observe(self, *, with_history: bool = True) -> Observation:
        fleet = self.fleet
        obs = Observation()
        ready_nodes = {
            c: [n for n in fleet.node_names(c) if self._ready(c, n)] for c in fleet.clusters
        }
        for key, svc in self.live.items():
            obj = fleet.emulators[svc.cluster].find("services", NAMESPACE, svc.name) or {}
            ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
            nodes = fleet.node_names(svc.cluster)
            obs.live[key] = LiveService(
                uid=str((obj.get("metadata") or {}).get("uid")),
                status_vips=tuple(sorted(e["ip"] for e in ingress if "ip" in e)),
                ports=tuple(f"{p}/TCP" for p in svc.ports),
                members=eligible_members(
                    svc.policy, ready_nodes[svc.cluster], [nodes[i] for i in svc.endpoints]
                ),
            )
        for key in self.deleted:
            cluster, _, name = key.split("/")
            found = fleet.emulators[cluster].find("services", NAMESPACE, name)
            if found is not None:
                obs.deleted_present[key] = tuple(found["metadata"].get("finalizers") or ())
        obs.eligible_nodes = {c: tuple(n) for c, n in ready_nodes.items()}
        await self._observe_bus(obs)
        obs.appliance = await self._observe_appliance()
        if with_history:
            obs.vip_history = self.history
            obs.writes = self.writes
        return obs

    async def _observe_bus(self, obs: Observation) -> None:
        nc = await nats.connect(servers=list(self.fleet.nats.urls), name="vipwire-bench-chaos")
        try:
            js = nc.jetstream()
            kv = await js.key_value(IPAM_BUCKET)
            try:
                keys = await kv.keys()
            except NoKeysError:
                keys = []
            for key in keys:
                try:
                    entry = await kv.get(key)
                except Exception:  # deleted since it was listed
                    continue
                if entry.value is None:
                    continue
                with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                    if key.startswith("svc."):
                        record = msgspec.json.decode(entry.value, type=RecordView)
                        _, cluster, namespace, name = key.split(".", 3)
                        obs.kv_records[f"{cluster}/{namespace}/{name}"] = record.vips
                    elif key.startswith("addr."):
                        claim = msgspec.json.decode(entry.value, type=ClaimView)
                        obs.kv_claims[key.removeprefix("addr.")] = tuple(
                            f"{claim.cluster}/{claim.namespace}/{s.name}" for s in claim.sharers
                        )
            for cluster in self.fleet.clusters:
                for node in self.fleet.node_names(cluster):
                    subject = node_subject("applied", cluster, node)
                    try:
                        raw = await js.get_last_msg(STREAM, subject)
                        message = decode(subject, raw.data or b"")
                    except (NotFoundError, MalformedMessage):
                        continue
                    if isinstance(message, NodeApplied):
                        obs.applied[f"{cluster}/{node}"] = message.vips
        finally:
            await nc.close()

    async def _observe_appliance(self) -> list[ApplianceObject]:
        driver = F5Driver.from_settings(self.fleet.appliance_settings)
        found: list[ApplianceObject] = []
        try:
            for cluster in self.fleet.clusters:
                try:
                    servers = await driver.list_virtual_servers(driver.partition_of(cluster))
                except Exception as exc:
                    log.warning("chaos: cannot list the appliance's %s: %r", cluster, exc)
                    continue
                found += [
                    ApplianceObject(
                        owner=s.owner,
                        address=s.address,
                        port=f"{s.port}/{s.protocol}",
                        members=tuple(m.node for m in s.members),
                    )
                    for s in servers.values()
                ]
        finally:
            await driver.close()
        return found

    # --- result ---------------------------------------------------------------------------

    def _result(
        self,
        plan: list[Fault],
        violations: list[Violation],
        converged: float | None,
        took_s: float,
    ) -> BenchResult:
        o = self.options
        by_kind = faults_by_kind(self.done_faults)
        leaders = sum(1 for e in self.fault_log if e.get("leader"))
        # A takeover needs a standby: those with one ready when the fault hit are what
        # the HA promise is about (the others waited for a replica to come back).
        lbdriver_takeovers = [
            e["takeover_s"]
            for e in self.fault_log
            if e.get("standby_ready")
            and e.get("target", "").startswith("lbdriver")
            and e.get("takeover_s") is not None
        ]
        data: dict[str, Any] = {
            "scenario": "chaos",
            "seed": o.seed,
            "duration_s": o.duration_s,
            "fault_interval_s": o.fault_interval_s,
            "clusters": o.clusters,
            "nodes_per_cluster": o.nodes,
            "replicas": {
                "ipam": o.ipam_replicas,
                "lbdriver": o.lbdriver_replicas,
                "watcher": o.watcher_replicas,
                "nats": o.nats_servers,
            },
            "faults": len(self.done_faults),
            "faults_by_kind": by_kind,
            "faults_on_leaders": leaders,
            "fault_errors": sum(1 for e in self.fault_log if "error" in e),
            "services_created": self.created,
            "services_deleted": len(self.deleted),
            "services_live": len(self.live),
            "updates": dict(sorted(self.updates.items())),
            "load_errors": self.load_errors,
            "violations": [msgspec.to_builtins(v) for v in violations],
            "violations_by_invariant": summarise(violations),
            "converged_after_last_fault_s": converged,
            "max_takeover_s": max(lbdriver_takeovers, default=None),
            "takeover_s": {k: sorted(v) for k, v in sorted(self.takeovers.items())},
            "appliance_writes_logged": len(self.writes),
            "crashes": {c.name: c.crashes for c in self.fleet.components if c.crashes},
            "took_s": round(took_s, 1),
            "load_average": load_average(),
            "fault_log": self.fault_log,
        }
        shown = violations[:20]
        rows: list[tuple[str, str]] = [
            (
                "set-up",
                f"{o.clusters} clusters x {o.nodes} nodes; NATS {o.nats_servers} servers; "
                f"replicas ipam {o.ipam_replicas}, lbdriver {o.lbdriver_replicas}, "
                f"watcher {o.watcher_replicas}; F5 emulator",
            ),
            ("run", f"{o.duration_s:g} s, a fault every {o.fault_interval_s:g} s, seed {o.seed}"),
            ("faults", f"{len(self.done_faults)} ({kinds_text(by_kind)}); on leaders {leaders}"),
            (
                "services",
                f"created {self.created}, deleted {len(self.deleted)}, "
                f"live {len(self.live)}; updates {sum(self.updates.values())}",
            ),
            ("converged after last fault", "never" if converged is None else f"{converged} s"),
            ("max takeover (lbdriver)", f"{data['max_takeover_s']} s (with a standby ready)"),
            ("takeovers", "; ".join(f"{k} {v}" for k, v in data["takeover_s"].items()) or "-"),
            ("appliance writes logged", str(len(self.writes))),
            (
                "crashes (restarted)",
                ", ".join(f"{k} {v}" for k, v in data["crashes"].items()) or "none",
            ),
            ("violations", str(len(violations))),
        ]
        rows += [(f"  {v.invariant}", f"{v.service}: {v.detail}") for v in shown]
        if len(violations) > len(shown):
            rows.append(("  ...", f"{len(violations) - len(shown)} more in the JSON"))
        return BenchResult(scenario="chaos", rows=tuple(rows), data=data)


def _ports(ports: list[int]) -> list[dict[str, Any]]:
    return [{"name": f"p{p}-tcp", "port": p, "protocol": "TCP"} for p in ports]
