"""Appliance profiles on each appliance: the objects the vendor gets, and one write per change.

Against the F5 and A10 emulators over real HTTP, and the lbdriver service with
the simulated appliance over a real nats-server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from support.appliances import CLUSTER, by_name, converge, server
from support.lbdriver import LbHarness
from vipwire.applianceemu import A10Emulator, F5Emulator
from vipwire.contracts import LbFailed, LbProgrammed, NodeSnapshot, ServicePort, VipAssigned
from vipwire.lbdriver import ApplianceSettings, VirtualServer
from vipwire.lbdriver.core.desired import with_profile
from vipwire.lbdriver.core.profiles import HealthMonitorSettings, ProfileSettings
from vipwire.lbdriver.io.drivers.a10 import A10Driver, monitor_name
from vipwire.lbdriver.io.drivers.credentials import CredentialSource
from vipwire.lbdriver.io.drivers.f5 import F5Driver
from vipwire.runtime import Runtime
from vipwire.testing import eventually

FAST = ProfileSettings(
    monitor=HealthMonitorSettings(kind="tcp", interval_s=2, timeout_s=7),
    idle_timeout_s=30,
    connection_limit=5000,
    lb_method="least-connections",
    all_members_down="reset",
)
SECURE = ProfileSettings(monitor=HealthMonitorSettings(kind="https", path="/ready"))
BARE = ProfileSettings(monitor=HealthMonitorSettings(kind="none"), all_members_down="drop")
PASSWORD = "pw"


def shaped(profile: ProfileSettings) -> VirtualServer:
    return with_profile(server(), profile)


# --- F5 ------------------------------------------------------------------------------------


@pytest.fixture
async def f5() -> AsyncIterator[tuple[F5Emulator, F5Driver]]:
    emu = F5Emulator(username="admin", password=PASSWORD)
    await emu.start()
    driver = F5Driver("bigip", emu.url, CredentialSource("bigip", "admin", password=PASSWORD))
    try:
        yield emu, driver
    finally:
        await driver.close()
        await emu.stop()


async def test_f5_gets_the_profile_as_monitor_pool_virtual_and_fastl4(
    f5: tuple[F5Emulator, F5Driver],
) -> None:
    """A tcp monitor on the health port, the pool's mode and down action, the virtual's limit
    and an idle-timeout fastL4 profile; read back as written, so a second pass writes nothing."""
    emu, driver = f5
    s = shaped(FAST)
    assert await converge(driver, by_name(s)) == ["CreateVirtualServer"]
    monitor = emu.get("monitor_tcp", CLUSTER, f"{s.name}-mon-tcp")
    assert monitor is not None
    assert (monitor["destination"], monitor["interval"], monitor["timeout"]) == ("*:10256", 2, 7)
    assert emu.get("monitor", CLUSTER, s.name) is None  # no http monitor
    pool = emu.get("pool", CLUSTER, s.name)
    assert pool is not None
    assert pool["monitor"].strip() == f"/{CLUSTER}/{s.name}-mon-tcp"
    assert (pool["loadBalancingMode"], pool["serviceDownAction"]) == (
        "least-connections-member",
        "reset",
    )
    virtual = emu.get("virtual", CLUSTER, s.name)
    assert virtual is not None
    assert virtual["connectionLimit"] == 5000
    assert virtual["profiles"] == [f"/{CLUSTER}/vipwire-fastl4-dsr-idle30"]
    fastl4 = emu.get("fastl4", CLUSTER, "vipwire-fastl4-dsr-idle30")
    assert fastl4 is not None and fastl4["idleTimeout"] == 30
    assert fastl4["looseInitialization"] == fastl4["looseClose"] == "enabled"
    assert (await driver.list_virtual_servers(CLUSTER))[s.name] == s
    assert await converge(driver, by_name(s)) == []


async def test_f5_profile_change_is_one_write_replacing_the_monitor(
    f5: tuple[F5Emulator, F5Driver],
) -> None:
    """Built-in → fast → https → none: each is one update in one transaction; a monitor of the
    old kind goes, and without a health check the pool names none."""
    emu, driver = f5
    await converge(driver, by_name(server()))
    assert emu.get("monitor", CLUSTER, server().name) is not None
    for profile, kind in ((FAST, "monitor_tcp"), (SECURE, "monitor_https"), (BARE, None)):
        commits = emu.commits
        s = shaped(profile)
        assert await converge(driver, by_name(s)) == ["UpdateVirtualServer"]
        assert emu.commits == commits + 1
        kinds = [k for k in ("monitor", "monitor_https", "monitor_tcp") if emu.names(k, CLUSTER)]
        assert kinds == ([kind] if kind else [])
        assert (await driver.list_virtual_servers(CLUSTER))[s.name] == s
    pool = emu.get("pool", CLUSTER, server().name)
    assert pool is not None and pool["monitor"] == "" and pool["serviceDownAction"] == "drop"


# --- A10 -------------------------------------------------------------------------------------


@pytest.fixture
async def a10() -> AsyncIterator[tuple[A10Emulator, A10Driver]]:
    emu = A10Emulator(username="admin", password=PASSWORD, partitions=(CLUSTER,))
    await emu.start()
    driver = A10Driver("thunder", emu.url, CredentialSource("thunder", "admin", password=PASSWORD))
    try:
        yield emu, driver
    finally:
        await driver.close()
        await emu.stop()


async def test_a10_gets_the_profile_as_monitor_group_port_and_template(
    a10: tuple[A10Emulator, A10Driver],
) -> None:
    """A tcp health monitor, lc-method on the service group, conn-limit, reset on selection
    failure and a TCP template with the idle timeout on the port; read back as written."""
    emu, driver = a10
    s = shaped(FAST)
    assert await converge(driver, by_name(s)) == ["CreateVirtualServer"]
    group = emu.objects(CLUSTER, "service-group")[s.name]
    assert group["lc-method"] == "least-connection" and "lb-method" not in group
    monitor = emu.objects(CLUSTER, "monitor")[group["health-check"]]
    assert monitor["method"] == {"tcp": {"method-tcp": 1, "tcp-port": 10256}}
    assert (monitor["interval"], monitor["retry"]) == (2, 3)
    (vs,) = emu.objects(CLUSTER, "virtual-server").values()
    (port,) = vs["port-list"]
    assert port["conn-limit"] == 5000
    assert port["reset-on-server-selection-fail"] == 1
    assert port["template-tcp"] == "vipwire-idle30"
    assert emu.objects(CLUSTER, "tcp")["vipwire-idle30"]["idle-timeout"] == 30
    assert (await driver.list_virtual_servers(CLUSTER))[s.name] == s
    assert await converge(driver, by_name(s)) == []


async def test_a10_profile_change_is_one_write_and_none_disables_the_health_check(
    a10: tuple[A10Emulator, A10Driver],
) -> None:
    """Built-in → fast → https → none: one update each; without a health check the group has
    health-check-disable and the monitor is gone; drop turns the default selection off."""
    emu, driver = a10
    await converge(driver, by_name(server()))
    for profile in (FAST, SECURE, BARE):
        s = shaped(profile)
        assert await converge(driver, by_name(s)) == ["UpdateVirtualServer"]
        assert (await driver.list_virtual_servers(CLUSTER))[s.name] == s
    name = server().name
    group = emu.objects(CLUSTER, "service-group")[name]
    assert group["health-check-disable"] == 1 and "health-check" not in group
    assert monitor_name("vipwire", name) not in emu.objects(CLUSTER, "monitor")
    (vs,) = emu.objects(CLUSTER, "virtual-server").values()
    (port,) = vs["port-list"]
    assert port["def-selection-if-pref-failed"] == "def-selection-if-pref-failed-disable"
    assert port["conn-limit"] == 64_000_000 and port["template-tcp"] == "default"


# --- the lbdriver service with the simulated appliance -----------------------------------------


RuntimeFactory = Callable[[str], Awaitable[Runtime]]


@pytest.fixture
async def h(make_runtime: RuntimeFactory) -> AsyncIterator[LbHarness]:
    harness = LbHarness(
        make_runtime,
        await make_runtime("test"),
        defaults={
            "appliances": (ApplianceSettings(name="sim-a"),),
            "coalesce_window_ms": 1.0,
            "profiles": {"fast": FAST, "secure": SECURE},
        },
    )
    await harness.observe()
    yield harness
    await harness.close()


def assigned(profile: str | None) -> VipAssigned:
    return VipAssigned(
        cluster=CLUSTER,
        namespace="shop",
        name="web",
        uid="uid-web",
        vips=("192.0.2.10",),
        pool="default",
        appliance_group="default",
        ports=(ServicePort(port=80), ServicePort(port=443)),
        profile=profile,
    )


async def test_sim_programs_the_resolved_profile_and_a_change_is_one_write_per_server(
    h: LbHarness,
) -> None:
    """VipAssigned's profile shapes both virtual servers; switching it is one write each; a
    profile this lbdriver does not know is LbFailed naming the ones it knows."""
    await h.start()
    nodes = [NodeSnapshot(cluster=CLUSTER, node="n1", addresses=("198.51.100.1",))]
    await h.publish(*nodes, assigned("fast"))
    await h.expect(LbProgrammed)
    servers = h.servers()
    assert len(servers) == 2
    for s in servers.values():
        assert s.monitor.kind == "tcp" and s.connection_limit == 5000
        assert (s.lb_method, s.idle_timeout_s) == ("least-connections", 30)

    writes = h.sim.writes
    await h.publish(assigned("secure"))
    await eventually(
        lambda: all(s.monitor.kind == "https" for s in h.servers().values()),
        5.0,
        what="the https profile on both virtual servers",
    )
    assert h.sim.writes == writes + 2
    for s in h.servers().values():
        assert (s.monitor.path, s.connection_limit, s.lb_method) == ("/ready", None, "round-robin")

    await h.publish(assigned("gold"))
    failed = await h.expect(LbFailed)
    assert "'gold'" in failed.message and "profiles: fast, secure" in failed.message
    assert all(s.monitor.kind == "https" for s in h.servers().values())  # kept as it was
