"""Issue 18, F5 items 7-9: the driver against an emulator that behaves as BIG-IP does
(nodes kept after their members, route domains, partition rules, create-only
``defaultsFrom``, slow commits)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest

from support.appliances import CLUSTER, by_name, converge, server
from vipwire.applianceemu import F5Emulator
from vipwire.lbdriver import (
    ApplianceRejected,
    ApplianceSettings,
    ApplianceTimeouts,
    DeleteVirtualServer,
    Monitor,
    build_driver,
)
from vipwire.lbdriver.io.drivers.credentials import CredentialSource
from vipwire.lbdriver.io.drivers.f5 import F5Driver

PASSWORD = "s3cret-pw"
QUICK = ApplianceTimeouts(login_s=5, read_s=5, write_s=5, commit_s=5)


@pytest.fixture
async def emu() -> AsyncIterator[F5Emulator]:
    emulator = F5Emulator(username="admin", password=PASSWORD, route_domains=(0, 2))
    await emulator.start()
    yield emulator
    await emulator.stop()


def make_driver(emu: F5Emulator, **options: object) -> F5Driver:
    credentials = CredentialSource("bigip-a", "admin", password=PASSWORD)
    options.setdefault("timeouts", QUICK)
    return F5Driver("bigip-a", emu.url, credentials, **options)  # type: ignore[arg-type]


@pytest.fixture
async def driver(emu: F5Emulator) -> AsyncIterator[F5Driver]:
    d = make_driver(emu)
    yield d
    await d.close()


def addresses(emu: F5Emulator) -> list[str]:
    """The node objects' addresses, in every partition."""
    return sorted(emu.nodes().values())


# --- item 7: node leak ------------------------------------------------------------------


async def test_item7_the_node_of_a_removed_member_is_deleted(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """Item 7: BIG-IP keeps a member's node after the member goes; the driver deletes it."""
    await converge(driver, by_name(server(nodes=("198.51.100.1", "198.51.100.2"))))
    assert addresses(emu) == ["198.51.100.1", "198.51.100.2"]
    await converge(driver, by_name(server(nodes=("198.51.100.2",))))
    assert addresses(emu) == ["198.51.100.2"]


async def test_item7_deleting_the_virtual_server_deletes_its_nodes(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """Item 7: nothing of a deleted Service stays behind, its nodes included."""
    await converge(driver, by_name(server()))
    await driver.apply(CLUSTER, [DeleteVirtualServer(name=server().name)])
    assert emu.nodes() == {}
    assert emu.names("pool", CLUSTER) == []


async def test_item7_a_node_another_pool_uses_is_kept(driver: F5Driver, emu: F5Emulator) -> None:
    """Item 7: a node two pools share stays while one still uses it (BIG-IP refuses the
    delete: "referenced by a member of pool")."""
    web, api = server(80), server(8080)
    await converge(driver, by_name(web, api))
    await converge(driver, by_name(web, msgspec.structs.replace(api, members=())))
    assert addresses(emu) == ["198.51.100.1", "198.51.100.2"]
    await converge(driver, by_name())
    assert emu.nodes() == {}


async def test_emulator_refuses_to_delete_a_node_in_use(driver: F5Driver, emu: F5Emulator) -> None:
    """The emulator answers BIG-IP's 400 for a node a pool member references."""
    await converge(driver, by_name(server()))
    resp = await driver._call("DELETE", f"/mgmt/tm/ltm/node/~{CLUSTER}~198.51.100.1")
    assert resp.status == 400
    assert "is referenced by a member of pool" in resp.body["message"]


# --- item 8: partition and route domain ---------------------------------------------------


async def test_item8_members_and_nodes_are_in_the_partition_and_route_domain(
    emu: F5Emulator,
) -> None:
    """Item 8: with route_domain 2 each node is /<partition>/<address>%2, never in /Common."""
    d = make_driver(emu, route_domain=2)
    try:
        await converge(d, by_name(server()))
        assert await d.list_virtual_servers(CLUSTER) == by_name(server())
    finally:
        await d.close()
    assert emu.nodes() == {
        f"/{CLUSTER}/198.51.100.1%2": "198.51.100.1%2",
        f"/{CLUSTER}/198.51.100.2%2": "198.51.100.2%2",
    }
    pool = emu.get("pool", CLUSTER, server().name)
    assert pool is not None
    assert {m["partition"] for m in pool["members"]} == {CLUSTER}


async def test_item8_a_node_of_that_address_in_common_does_not_conflict(emu: F5Emulator) -> None:
    """Item 8: a node an operator made in /Common (another name, route domain 0) does not
    stop our member in route domain 2 (f5-ansible #2293, #1800)."""
    emu.plant("node", "Common", {"name": "web-1", "address": "198.51.100.1"})
    d = make_driver(emu, route_domain=2)
    try:
        await converge(d, by_name(server()))
    finally:
        await d.close()
    assert f"/{CLUSTER}/198.51.100.1%2" in emu.nodes()
    assert emu.nodes()["/Common/web-1"] == "198.51.100.1"


async def test_item8_default_route_domain_is_the_partitions(emu: F5Emulator) -> None:
    """Item 8: without route_domain, members take the partition's default route domain
    explicitly, and nodes land in the cluster's partition, not /Common."""
    emu.plant_partition(CLUSTER, default_route_domain=2)
    d = make_driver(emu)
    try:
        await converge(d, by_name(server()))
        assert await d.list_virtual_servers(CLUSTER) == by_name(server())
    finally:
        await d.close()
    # Shown without "%2": it is the partition's default.
    assert emu.nodes() == {
        f"/{CLUSTER}/198.51.100.1": "198.51.100.1",
        f"/{CLUSTER}/198.51.100.2": "198.51.100.2",
    }


async def test_item8_a_missing_route_domain_is_refused_with_its_name(emu: F5Emulator) -> None:
    """Item 8: a route domain that does not exist fails the write, naming it."""
    d = make_driver(emu, route_domain=7)
    try:
        with pytest.raises(ApplianceRejected, match=r"route domain \(/Common/7\)"):
            await converge(d, by_name(server()))
    finally:
        await d.close()
    assert emu.nodes() == {}


def test_item8_route_domain_is_an_f5_setting() -> None:
    """Item 8: route_domain reaches the F5 driver from the settings, and only F5 takes it."""
    settings = ApplianceSettings(
        name="bigip",
        driver="f5",
        address="bigip.example",
        username="u",
        password_env="PW",
        route_domain=3,
    )
    d = build_driver(settings)
    assert isinstance(d, F5Driver) and d.route_domain == 3
    with pytest.raises(ValueError, match="route_domain is an f5 setting"):
        ApplianceSettings(name="sim", route_domain=3)


# --- item 9: defaultsFrom, slow commits -------------------------------------------------


async def test_item9_a_monitor_update_sends_no_defaults_from(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """Item 9: a changed monitor is PATCHed without defaultsFrom, which BIG-IP fixes at create."""
    s = server()
    await converge(driver, by_name(s))
    slower = msgspec.structs.replace(
        s, monitor=Monitor(port=10256, path="/healthz", interval_s=10, timeout_s=31)
    )
    assert await converge(driver, by_name(slower)) == ["UpdateVirtualServer"]
    monitor = emu.get("monitor", CLUSTER, s.name)
    assert monitor is not None and monitor["interval"] == 10
    assert monitor["defaultsFrom"] == "/Common/http"


async def test_emulator_refuses_defaults_from_in_a_monitor_patch(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """The emulator refuses defaultsFrom in a monitor PATCH, as BIG-IP does."""
    await converge(driver, by_name(server()))
    resp = await driver._call(
        "PATCH",
        f"/mgmt/tm/ltm/monitor/http/~{CLUSTER}~{server().name}",
        json={"defaultsFrom": "/Common/http"},
    )
    assert resp.status == 400 and "defaults-from" in resp.body["message"]


async def test_item9_a_slow_commit_gets_the_commit_timeout(emu: F5Emulator) -> None:
    """Item 9: a transaction commit slower than a read or write still succeeds within
    timeouts.commit_s."""
    emu.commit_delay_s = 0.5
    fast = ApplianceTimeouts(login_s=5, read_s=0.25, write_s=0.25, commit_s=5)
    d = make_driver(emu, timeouts=fast)
    try:
        await converge(d, by_name(server(), server(443)))
    finally:
        await d.close()
    assert emu.commits == 1


async def test_item8_members_of_an_earlier_release_keep_their_common_nodes(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """Item 8, upgrading: members an earlier release made (nodes in /Common) keep their
    node; a new member's node goes to the partition, and no write clashes with /Common."""
    s = server()
    await converge(driver, by_name(s))
    pool = emu.get("pool", CLUSTER, s.name)
    assert pool is not None
    emu.remove("pool", CLUSTER, s.name)
    for full in list(emu.nodes()):
        emu.remove("node", CLUSTER, full.rsplit("/", 1)[-1])
    legacy = [{"name": m["name"], "description": m["description"]} for m in pool["members"]]
    emu.plant("pool", CLUSTER, {**pool, "members": legacy})  # as the old driver sent them
    assert sorted(emu.nodes()) == ["/Common/198.51.100.1", "/Common/198.51.100.2"]
    fresh = make_driver(emu)
    try:
        changed = server(nodes=("198.51.100.1", "198.51.100.3"))
        assert await converge(fresh, by_name(changed)) == ["UpdateMembers"]
        assert await fresh.list_virtual_servers(CLUSTER) == by_name(changed)
    finally:
        await fresh.close()
    assert f"/{CLUSTER}/198.51.100.3" in emu.nodes()
    assert "/Common/198.51.100.1" in emu.nodes()


async def test_item9_fastl4_close_timeout_follows_the_idle_timeout(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """Item 9 (nPath): the fastL4 profiles' TCP close timeout is their idle timeout (300 s
    for the plain one), not BIG-IP's 5 s, so a half-closed flow is not re-balanced."""
    idle = msgspec.structs.replace(server(443), idle_timeout_s=30)
    await converge(driver, by_name(server(), idle))
    plain = emu.get("fastl4", CLUSTER, "vipwire-fastl4-dsr")
    short = emu.get("fastl4", CLUSTER, "vipwire-fastl4-dsr-idle30")
    assert plain is not None and short is not None
    assert (plain["tcpCloseTimeout"], short["tcpCloseTimeout"]) == (300, 30)


async def test_item9_an_earlier_profile_gets_the_close_timeout(emu: F5Emulator) -> None:
    """Item 9 (nPath): the fastL4 profile an earlier release made (BIG-IP's 5 s close
    timeout) is corrected the next time the partition is prepared."""
    emu.plant_partition(CLUSTER)
    emu.plant(
        "fastl4",
        CLUSTER,
        {"name": "vipwire-fastl4-dsr", "looseInitialization": "enabled", "looseClose": "enabled"},
    )
    d = make_driver(emu)
    try:
        await converge(d, by_name(server()))
    finally:
        await d.close()
    profile = emu.get("fastl4", CLUSTER, "vipwire-fastl4-dsr")
    assert profile is not None and profile["tcpCloseTimeout"] == 300


async def test_emulator_lists_the_route_domains_that_exist(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """The emulator answers route-domain reads (a preflight's check): 0 and 2 exist, 7 not."""
    listed = await driver._call("GET", "/mgmt/tm/net/route-domain")
    assert [i["id"] for i in listed.body["items"]] == [0, 2]
    assert (await driver._call("GET", "/mgmt/tm/net/route-domain/~Common~2")).status == 200
    assert (await driver._call("GET", "/mgmt/tm/net/route-domain/~Common~7")).status == 404
