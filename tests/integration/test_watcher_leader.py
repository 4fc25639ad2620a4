"""Lease leader election against the API emulator, alone and driving two watchers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from vipwire.contracts import ServiceSnapshot, decode
from vipwire.kube import LeaderElector, new_api_client
from vipwire.kubeemu import KubeEmulator
from vipwire.runtime import Runtime
from vipwire.testing import eventually
from vipwire.watcher import WatcherService, WatcherSettings

RuntimeFactory = Callable[[str], Awaitable[Runtime]]
TIMING: dict[str, Any] = {"lease_duration_s": 1, "renew_deadline_s": 0.6, "retry_period_s": 0.1}
LEASE = "vipwire-watcher-east"


@pytest.fixture
async def emu() -> AsyncIterator[KubeEmulator]:
    async with KubeEmulator("east", bookmark_interval=0.5) as e:
        yield e


@pytest.fixture
async def kubeconfig(emu: KubeEmulator, tmp_path: Path) -> Path:
    return emu.write_kubeconfig(tmp_path / "kubeconfig", context_name="east")


@pytest.fixture
async def api(kubeconfig: Path) -> AsyncIterator[ApiClient]:
    client = await new_api_client(kubeconfig, "east")
    try:
        yield client
    finally:
        await client.close()


def elector(api: ApiClient, identity: str, **kwargs: Any) -> LeaderElector:
    return LeaderElector(
        api,
        name=LEASE,
        namespace="default",
        identity=identity,
        lease_duration_s=1,
        renew_deadline_s=0.6,
        retry_period_s=0.1,
        request_timeout=2.0,
        **kwargs,
    )


async def steal(emu: KubeEmulator, holder: str = "intruder", duration: int = 30) -> None:
    lease = emu.get("leases", "default", LEASE)
    lease["spec"].update(holderIdentity=holder, leaseDurationSeconds=duration)
    await emu.replace(lease)


class TestElection:
    async def test_one_leads_and_a_release_hands_over_at_once(self, api: ApiClient) -> None:
        """Of two candidates exactly one leads; when it stops it gives the Lease up and the
        other leads within a retry period, not a lease duration."""
        a, b = elector(api, "a"), elector(api, "b")
        a.start()
        await eventually(lambda: a.is_leader)
        b.start()
        await eventually(lambda: b.attempted)
        assert not b.is_leader and b.holder == "a"
        loop = asyncio.get_running_loop()
        stopped = loop.time()
        await a.stop()
        await eventually(lambda: b.is_leader, timeout=2)
        assert loop.time() - stopped < 0.5
        await b.stop()

    async def test_a_leader_renews_with_one_write_and_reads_only_when_refused(
        self, api: ApiClient, emu: KubeEmulator
    ) -> None:
        """Renewals are one update each (no read first); once someone else wrote the Lease
        the refused update is followed by a read, which shows the new holder."""
        a = elector(api, "a")
        a.start()
        await eventually(lambda: a.is_leader)
        audit = emu.record_requests()
        await asyncio.sleep(0.5)
        verbs = {e.verb for e in audit if e.resource == "leases"}
        assert verbs == {"update"}
        await steal(emu)
        await eventually(lambda: not a.is_leader, timeout=1)
        assert any(e.verb == "get" and e.resource == "leases" for e in audit)
        assert a.holder == "intruder"
        await a.stop()

    async def test_a_crashed_leader_is_replaced_within_the_lease_duration(
        self, api: ApiClient, emu: KubeEmulator
    ) -> None:
        """A leader that stops without releasing: the standby waits the lease out, no more."""
        a, b = elector(api, "a", release_on_stop=False), elector(api, "b")
        a.start()
        await eventually(lambda: a.is_leader)
        b.start()
        await eventually(lambda: b.attempted)
        loop = asyncio.get_running_loop()
        crashed = loop.time()
        await a.stop()
        await eventually(lambda: b.is_leader, timeout=3)
        took = loop.time() - crashed
        assert 0.7 < took < 1.0 + 0.5  # waited for the lease, then a retry or so
        spec = emu.get("leases", "default", LEASE)["spec"]
        assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("b", 1)
        await b.stop()

    async def test_a_leader_whose_lease_is_taken_steps_down_at_once(
        self, api: ApiClient, emu: KubeEmulator
    ) -> None:
        """Someone else holds the Lease now: the leader stops being leader on its next
        renewal, without waiting for its renew deadline."""
        changes: list[bool] = []
        a = elector(api, "a", on_change=changes.append)
        a.start()
        await eventually(lambda: a.is_leader)
        loop = asyncio.get_running_loop()
        taken = loop.time()
        await steal(emu)
        await eventually(lambda: not a.is_leader, timeout=1)
        assert loop.time() - taken < 0.4
        assert changes == [True, False]
        await a.stop()
        assert emu.get("leases", "default", LEASE)["spec"]["holderIdentity"] == "intruder"

    async def test_a_leader_that_cannot_renew_is_no_leader_by_its_deadline(
        self, api: ApiClient, emu: KubeEmulator
    ) -> None:
        """The API fails every renewal: is_leader turns false by the renew deadline, before
        the lease could expire for anybody else."""
        a = elector(api, "a")
        a.start()
        await eventually(lambda: a.is_leader)
        emu.inject_failure(500, resource="leases", count=15)  # ~1.5 s of failing attempts
        loop = asyncio.get_running_loop()
        failing = loop.time()
        await eventually(lambda: not a.is_leader, timeout=2)
        assert loop.time() - failing < 0.6 + 0.05
        await eventually(lambda: a.is_leader, timeout=5)  # the API recovers: leading again
        await a.stop()


class Replicas:
    """Watcher replicas of cluster east, stopped at teardown."""

    def __init__(self, make_runtime: RuntimeFactory, kubeconfig: Path) -> None:
        self._make_runtime = make_runtime
        self._kubeconfig = kubeconfig
        self.watchers: list[WatcherService] = []

    async def start(self, name: str) -> WatcherService:
        settings = WatcherSettings(
            cluster="east",
            kubeconfig=str(self._kubeconfig),
            context="east",
            instance=name,
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
            **TIMING,
        )
        watcher = WatcherService(settings, await self._make_runtime("watcher"))
        await watcher.start()
        self.watchers.append(watcher)
        await eventually(lambda: watcher.readiness() is None)
        return watcher


@pytest.fixture
async def replicas(make_runtime: RuntimeFactory, kubeconfig: Path) -> AsyncIterator[Replicas]:
    r = Replicas(make_runtime, kubeconfig)
    try:
        yield r
    finally:
        for watcher in reversed(r.watchers):
            await watcher.stop()


class TestWatchers:
    async def test_the_standby_is_ready_and_writes_nothing(
        self, replicas: Replicas, emu: KubeEmulator
    ) -> None:
        """Two replicas: both ready, one leads; only the leader touches the API."""
        first = await replicas.start("w-0")
        second = await replicas.start("w-1")
        assert first.leading and not second.leading
        await emu.create(_service("web"))
        await eventually(lambda: _has_finalizer(emu, "web"))
        writes = second.runtime.metrics.counter("watcher_api_writes_total", "", ["kind", "outcome"])
        assert writes.total() == 0
        assert second.runtime.metrics.gauge("watcher_leader", "").value() == 0
        assert first.runtime.metrics.gauge("watcher_leader", "").value() == 1

    async def test_a_deposed_leader_stops_writing_and_leads_again_later(
        self, replicas: Replicas, emu: KubeEmulator
    ) -> None:
        """Lease taken away: the watcher stops publishing and writing at once (a Service
        created meanwhile is left alone); once the Lease is free it leads a new term and
        serves that Service."""
        watcher = await replicas.start("w-0")
        seen: list[ServiceSnapshot] = []

        async def record(msg: Any) -> None:
            message = decode(msg.subject, msg.data)
            if isinstance(message, ServiceSnapshot):
                seen.append(message)

        sub = await watcher.runtime.bus.nc.subscribe("vipwire.east.service.>", cb=record)
        try:
            await steal(emu)
            await eventually(lambda: not watcher.leading, timeout=1)
            await emu.create(_service("meanwhile"))
            await asyncio.sleep(0.5)
            assert not _has_finalizer(emu, "meanwhile")
            assert not seen
            await steal(emu, holder="", duration=1)  # the intruder lets go
            await eventually(lambda: _has_finalizer(emu, "meanwhile"), timeout=5)
            await eventually(lambda: seen)
            terms = watcher.runtime.metrics.counter("watcher_leader_terms_total", "")
            assert terms.value() == 2
        finally:
            await sub.unsubscribe()


def _service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": "vipwire.io/dsr",
            "ports": [{"name": "http", "port": 80}],
        },
    }


def _has_finalizer(emu: KubeEmulator, name: str) -> bool:
    svc = emu.find("services", "default", name) or {}
    return "service.kubernetes.io/load-balancer-cleanup" in (
        svc.get("metadata", {}).get("finalizers") or []
    )
