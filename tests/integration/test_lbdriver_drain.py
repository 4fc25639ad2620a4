"""Graceful drain through the lbdriver, on the sim appliance and the F5 and A10 emulators:
the objects each vendor gets (member disabled first, removed after drain_timeout_s, at
once on NodeGone), cordon, terminating-but-serving endpoints, one write per window; and
a port the appliance refuses, reported per port while the others are served."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import msgspec
import pytest

from support.lbdriver import LbHarness
from vipwire.applianceemu import A10Emulator, F5Emulator
from vipwire.contracts import (
    Endpoint,
    EndpointsSnapshot,
    LbFailed,
    LbProgrammed,
    NodeEndpoints,
    NodeGone,
    NodeSnapshot,
    ServicePort,
    VipAssigned,
)
from vipwire.lbdriver import ApplianceSettings, Monitor, SimAppliance, VirtualServer
from vipwire.runtime import Runtime
from vipwire.testing import eventually

RuntimeFactory = Callable[[str], Awaitable[Runtime]]
Kind = Literal["sim", "f5", "a10"]
CLUSTER = "prod"
PASSWORD = "drain-s3cret"
ADDRESS = {"n1": "198.51.100.1", "n2": "198.51.100.2", "n3": "198.51.100.3"}


def node(name: str, *, ready: bool = True, cordoned: bool = False) -> NodeSnapshot:
    return NodeSnapshot(
        cluster=CLUSTER, node=name, addresses=(ADDRESS[name],), ready=ready, cordoned=cordoned
    )


def assigned(name: str = "web", policy: Literal["Cluster", "Local"] = "Cluster") -> VipAssigned:
    return VipAssigned(
        cluster=CLUSTER,
        namespace="shop",
        name=name,
        uid=f"uid-{name}",
        vips=("192.0.2.10" if name == "web" else "192.0.2.11",),
        pool="default",
        appliance_group="default",
        ports=(ServicePort(port=80),),
        external_traffic_policy=policy,
        health_check_node_port=32000 if policy == "Local" else None,
    )


def nodes_of(message: LbProgrammed) -> tuple[list[str], list[str]]:
    return sorted(m.node for m in message.members), sorted(m.node for m in message.draining)


class Appliance:
    """One appliance of each kind, and the member states its vendor objects hold."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.sim = SimAppliance("sim-a")
        self.f5 = F5Emulator(username="admin", password=PASSWORD) if kind == "f5" else None
        self.a10 = (
            A10Emulator(username="admin", password=PASSWORD, partitions=(CLUSTER,))
            if kind == "a10"
            else None
        )

    async def start(self, monkeypatch: pytest.MonkeyPatch) -> ApplianceSettings:
        monkeypatch.setenv("VIPWIRE_TEST_DRAIN_PASSWORD", PASSWORD)
        emu = self.f5 or self.a10
        if emu is None:
            return ApplianceSettings(name="sim-a")
        await emu.start()
        return ApplianceSettings(
            name="box",
            driver=self.kind,  # type: ignore[arg-type]
            address=emu.url,
            username="admin",
            password_env="VIPWIRE_TEST_DRAIN_PASSWORD",
        )

    async def stop(self) -> None:
        emu = self.f5 or self.a10
        if emu is not None:
            await emu.stop()

    def members(self, vip: str = "192.0.2.10") -> dict[str, str]:
        """Node address → ``enabled`` or ``disabled``, as the vendor's objects say."""
        if self.f5 is not None:
            for pool in self.f5.names("pool", CLUSTER):
                obj = self.f5.get("pool", CLUSTER, pool)
                assert obj is not None
                if vip in pool:
                    return {
                        m["address"]: "disabled" if m["session"] == "user-disabled" else "enabled"
                        for m in obj["members"]
                    }
            return {}
        if self.a10 is not None:
            servers = self.a10.objects(CLUSTER, "server")
            for name, group in self.a10.objects(CLUSTER, "service-group").items():
                if vip in name:
                    return {
                        servers[m["name"]]["host"]: (
                            "enabled" if m["member-state"] == "enable" else "disabled"
                        )
                        for m in group["member-list"]
                    }
            return {}
        for server in self.sim.virtual_servers(CLUSTER).values():
            if server.address == vip:
                return {
                    **{m.address: "enabled" for m in server.members},
                    **{m.address: "disabled" for m in server.draining},
                }
        return {}


@pytest.fixture(params=["sim", "f5", "a10"])
async def box(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Appliance, ApplianceSettings]]:
    appliance = Appliance(request.param)
    settings = await appliance.start(monkeypatch)
    yield appliance, settings
    await appliance.stop()


async def harness(
    make_runtime: RuntimeFactory, appliance: Appliance, settings: ApplianceSettings, **extra: Any
) -> LbHarness:
    defaults = {
        "appliances": (settings,),
        "coalesce_window_ms": 1.0,
        "retry_initial_s": 0.05,
        "retry_max_s": 0.2,
        "drain_timeout_s": 1.0,
        **extra,
    }
    h = LbHarness(make_runtime, await make_runtime("test"), defaults=defaults, sim=appliance.sim)
    await h.observe()
    return h


async def test_a_leaving_member_is_disabled_then_removed_and_at_once_when_its_node_is_gone(
    box: tuple[Appliance, ApplianceSettings], make_runtime: RuntimeFactory
) -> None:
    """NotReady: the member is disabled on the appliance (F5 session user-disabled, A10
    member-state disable), reported as draining, removed after drain_timeout_s; a
    NodeGone member goes in the same write, never disabled first."""
    appliance, settings = box
    h = await harness(make_runtime, appliance, settings)
    try:
        await h.start()
        await h.publish(node("n1"), node("n2"), node("n3"), assigned())
        await h.expect(LbProgrammed, where=lambda m: nodes_of(m) == (["n1", "n2", "n3"], []))
        assert set(appliance.members().values()) == {"enabled"}

        await h.publish(node("n2", ready=False))
        await h.expect(LbProgrammed, where=lambda m: nodes_of(m) == (["n1", "n3"], ["n2"]))
        assert appliance.members() == {
            ADDRESS["n1"]: "enabled",
            ADDRESS["n2"]: "disabled",
            ADDRESS["n3"]: "enabled",
        }
        await h.expect(LbProgrammed, where=lambda m: nodes_of(m) == (["n1", "n3"], []))
        assert appliance.members() == {ADDRESS["n1"]: "enabled", ADDRESS["n3"]: "enabled"}

        await h.publish(NodeGone(cluster=CLUSTER, node="n3"))
        await h.expect(LbProgrammed, where=lambda m: nodes_of(m) == (["n1"], []))
        assert appliance.members() == {ADDRESS["n1"]: "enabled"}
        assert not [m for m in h.reports(LbProgrammed) if "n3" in nodes_of(m)[1]]
    finally:
        await h.close()


async def test_cordon_drains_and_terminating_serving_endpoints_keep_their_node(
    box: tuple[Appliance, ApplianceSettings], make_runtime: RuntimeFactory
) -> None:
    """A cordoned node is disabled (drain_on_cordon); under Local a node whose only endpoint
    is terminating but still serving stays an enabled member."""
    appliance, settings = box
    h = await harness(make_runtime, appliance, settings)
    terminating = Endpoint(addresses=("10.244.1.7",), ready=False, serving=True, terminating=True)
    try:
        await h.start()
        await h.publish(node("n1"), node("n2"), assigned())
        await h.expect(LbProgrammed, where=lambda m: nodes_of(m) == (["n1", "n2"], []))
        await h.publish(node("n2", cordoned=True))
        await h.expect(LbProgrammed, where=lambda m: nodes_of(m) == (["n1"], ["n2"]))
        assert appliance.members()[ADDRESS["n2"]] == "disabled"

        await h.publish(
            EndpointsSnapshot(
                cluster=CLUSTER,
                namespace="shop",
                name="api",
                nodes=(NodeEndpoints(node="n1", endpoints=(terminating,)),),
            ),
            assigned("api", policy="Local"),
        )
        api = await h.expect(LbProgrammed, name="api")
        assert nodes_of(api) == (["n1"], [])
        assert appliance.members("192.0.2.11") == {ADDRESS["n1"]: "enabled"}
    finally:
        await h.close()


async def test_the_drain_keeps_one_write_per_window(make_runtime: RuntimeFactory) -> None:
    """The removal after the drain is a requeue on the coalescing schedule: the Service is
    still written at most once per window (sim appliance)."""
    appliance = Appliance("sim")
    window_s = 0.4
    h = await harness(
        make_runtime,
        appliance,
        ApplianceSettings(name="sim-a"),
        coalesce_window_ms=window_s * 1000,
        coalesce_quiet_ms=20.0,
        drain_timeout_s=0.05,
    )
    writes: list[float] = []
    apply = appliance.sim.apply

    async def timed(partition: str, ops: Any) -> None:
        await apply(partition, ops)
        writes.append(time.monotonic())

    appliance.sim.apply = timed  # type: ignore[method-assign]
    try:
        await h.start()
        await h.publish(node("n1"), node("n2"), node("n3"), assigned())
        await h.expect(LbProgrammed, where=lambda m: nodes_of(m) == (["n1", "n2", "n3"], []))
        # A burst: two nodes leave, one write disables both.
        await h.publish(node("n2", ready=False), node("n3", cordoned=True))
        await h.expect(LbProgrammed, where=lambda m: nodes_of(m) == (["n1"], ["n2", "n3"]))
        await h.expect(LbProgrammed, where=lambda m: nodes_of(m) == (["n1"], []))
        await eventually(lambda: len(writes) == 3, 5.0, what="create, disable, remove")
        gaps = [b - a for a, b in itertools.pairwise(writes)]
        assert min(gaps) >= window_s * 0.95, gaps
    finally:
        await h.close()


async def test_a_port_the_appliance_refuses_is_reported_and_the_others_served(
    make_runtime: RuntimeFactory,
) -> None:
    """Another tool's object holds VIP:443: port 80 is programmed anyway and LbProgrammed
    says 443 was refused (port_errors); once the clash is gone, the retry serves it."""
    appliance = Appliance("sim")
    h = await harness(make_runtime, appliance, ApplianceSettings(name="sim-a"))
    foreign = VirtualServer(
        name="other-tool-443",
        owner="",
        address="192.0.2.10",
        port=443,
        protocol="TCP",
        members=(),
        monitor=Monitor(port=1),
    )
    appliance.sim.put(CLUSTER, foreign)
    web = msgspec.structs.replace(assigned(), ports=(ServicePort(port=80), ServicePort(port=443)))
    try:
        await h.start()
        await h.publish(node("n1"), web)
        partial = await h.expect(LbProgrammed, where=lambda m: bool(m.port_errors))
        [error] = partial.port_errors
        assert (error.vip, error.port, error.protocol) == ("192.0.2.10", 443, "TCP")
        assert error.reason == "ApplianceRejected" and "already served by" in error.error
        assert "other-tool-443" not in error.error  # another tenant's object stays in the log
        ours = [s for s in appliance.sim.virtual_servers(CLUSTER).values() if s.owner]
        assert [(s.port, [m.node for m in s.members]) for s in ours] == [(80, ["n1"])]
        assert not h.reports(LbFailed)  # port 80 is served: no failure of the Service

        appliance.sim.remove(CLUSTER, "other-tool-443")
        await h.expect(LbProgrammed, where=lambda m: not m.port_errors)
        assert sorted(s.port for s in appliance.sim.virtual_servers(CLUSTER).values()) == [
            80,
            443,
        ]
    finally:
        await h.close()
