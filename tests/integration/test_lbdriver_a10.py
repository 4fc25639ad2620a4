"""The A10 driver against the aXAPI v3 emulator, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from support.appliances import CLUSTER, PREFIX, by_name, converge, server
from vipwire.applianceemu import A10Emulator
from vipwire.lbdriver import (
    ApplianceAuthError,
    ApplianceRejected,
    ApplianceSettings,
    ApplianceTimeouts,
    ApplianceUnavailable,
    CreateVirtualServer,
    build_driver,
    owns,
)
from vipwire.lbdriver.io.drivers._rest import VendorError
from vipwire.lbdriver.io.drivers.a10 import A10Driver, monitor_name
from vipwire.lbdriver.io.drivers.credentials import CredentialSource

PASSWORD = "a10-s3cret"
#: Short timeouts: an emulator on this host answers at once or not at all.
QUICK = ApplianceTimeouts(login_s=5, read_s=5, write_s=5, commit_s=5)


@pytest.fixture
async def emu() -> AsyncIterator[A10Emulator]:
    emulator = A10Emulator(username="admin", password=PASSWORD, partitions=(CLUSTER,))
    await emulator.start()
    yield emulator
    await emulator.stop()


def make_driver(emu: A10Emulator, **options: object) -> A10Driver:
    credentials = CredentialSource("thunder-a", "admin", password=PASSWORD)
    return A10Driver("thunder-a", emu.url, credentials, timeouts=QUICK, **options)  # type: ignore[arg-type]


@pytest.fixture
async def driver(emu: A10Emulator) -> AsyncIterator[A10Driver]:
    d = make_driver(emu)
    yield d
    await d.close()


# --- programming ---------------------------------------------------------------------


async def test_create_builds_a_dsr_virtual_port_on_servers_and_a_service_group(
    driver: A10Driver, emu: A10Emulator
) -> None:
    """Nodes become servers, the port has no-dest-nat, memory is written."""
    s = server()
    assert await converge(driver, by_name(s)) == ["CreateVirtualServer"]
    assert CLUSTER in emu.partitions
    servers = emu.objects(CLUSTER, "server")
    assert sorted(servers) == ["vipwire-node-198.51.100.1", "vipwire-node-198.51.100.2"]
    node = servers["vipwire-node-198.51.100.1"]
    assert node["host"] == "198.51.100.1"
    assert node["user-tag"] == "node-198.51.100.1"
    assert node["port-list"] == [{"port-number": 80, "protocol": "tcp", "health-check-disable": 1}]
    group = emu.objects(CLUSTER, "service-group")[s.name]
    assert group["protocol"] == "tcp"
    assert sorted((m["name"], m["port"]) for m in group["member-list"]) == [
        ("vipwire-node-198.51.100.1", 80),
        ("vipwire-node-198.51.100.2", 80),
    ]
    monitor = emu.objects(CLUSTER, "monitor")[group["health-check"]]
    assert len(monitor["name"]) <= 31
    assert monitor["override-port"] == 10256  # the health port, not the member port
    assert monitor["method"]["http"]["url-path"] == "/healthz"
    vip = emu.objects(CLUSTER, "virtual-server")["vipwire-vip-192.0.2.10"]
    assert vip["ip-address"] == "192.0.2.10"
    assert vip["user-tag"] == "prod/shop/web"
    [vport] = vip["port-list"]
    assert vport["no-dest-nat"] == 1
    assert (vport["port-number"], vport["protocol"]) == (80, "tcp")
    assert vport["service-group"] == vport["name"] == s.name
    assert emu.memory_writes == [CLUSTER]


async def test_listing_reads_back_exactly_what_was_programmed(driver: A10Driver) -> None:
    """Ports of one VIP share its virtual-server; v6, UDP and SCTP round-trip too."""
    desired = by_name(
        server(),
        server(8443, health=32000),
        server(443, address="2001:db8::10", protocol="UDP", nodes=("2001:db8::1",)),
        server(3868, address="192.0.2.11", protocol="SCTP", nodes=()),
    )
    await converge(driver, desired)
    assert await driver.list_virtual_servers(CLUSTER) == desired


async def test_the_same_desired_state_twice_writes_nothing(
    driver: A10Driver, emu: A10Emulator
) -> None:
    """The second pass diffs to no operation: no write, no write memory."""
    desired = by_name(server(), server(443))
    await converge(driver, desired)
    writes, saved = emu.writes, list(emu.memory_writes)
    assert await converge(driver, desired) == []
    assert emu.writes == writes
    assert emu.memory_writes == saved


async def test_member_change_edits_only_the_members(driver: A10Driver, emu: A10Emulator) -> None:
    """Added and removed members are single member writes; the unused server is removed."""
    await converge(driver, by_name(server()))
    writes = emu.writes
    changed = server(nodes=("198.51.100.2", "198.51.100.3"))
    assert await converge(driver, by_name(changed)) == ["UpdateMembers"]
    # server .3 created, member .3 added, member .1 removed, server .1 collected
    assert emu.writes == writes + 4
    assert sorted(emu.objects(CLUSTER, "server")) == [
        "vipwire-node-198.51.100.2",
        "vipwire-node-198.51.100.3",
    ]
    assert await driver.list_virtual_servers(CLUSTER) == by_name(changed)


async def test_port_change_replaces_the_virtual_port(driver: A10Driver, emu: A10Emulator) -> None:
    """A new port is a new virtual port and service group; the VIP's virtual-server stays."""
    old, new = server(80), server(8080)
    await converge(driver, by_name(old))
    assert await converge(driver, by_name(new)) == ["DeleteVirtualServer", "CreateVirtualServer"]
    vip = emu.objects(CLUSTER, "virtual-server")["vipwire-vip-192.0.2.10"]
    assert [p["port-number"] for p in vip["port-list"]] == [8080]
    assert sorted(emu.objects(CLUSTER, "service-group")) == [new.name]
    assert await driver.list_virtual_servers(CLUSTER) == by_name(new)


async def test_monitor_and_owner_changes_update_in_place(driver: A10Driver) -> None:
    """A changed health port or owner is rewritten without recreating the port."""
    await converge(driver, by_name(server()))
    changed = server(health=31000, owner="prod/shop/web2")
    assert await converge(driver, by_name(changed)) == ["UpdateVirtualServer"]
    assert await driver.list_virtual_servers(CLUSTER) == by_name(changed)


async def test_delete_removes_everything_of_ours(driver: A10Driver, emu: A10Emulator) -> None:
    """Ports, the VIP's virtual-server, service groups, monitors and servers all go."""
    await converge(driver, by_name(server(), server(443)))
    assert await converge(driver, {}) == ["DeleteVirtualServer"] * 2
    for kind in ("virtual-server", "service-group", "monitor", "server"):
        assert emu.objects(CLUSTER, kind) == {}, kind


async def test_concurrent_batches_sharing_nodes_both_land(
    driver: A10Driver, emu: A10Emulator
) -> None:
    """Two Services' batches at once, on the same node servers, are applied one after the other."""
    web, api = server(), server(8080, address="192.0.2.20", owner="prod/shop/api")
    await asyncio.gather(
        driver.apply(CLUSTER, [CreateVirtualServer(server=web)]),
        driver.apply(CLUSTER, [CreateVirtualServer(server=api)]),
    )
    assert await driver.list_virtual_servers(CLUSTER) == by_name(web, api)
    node = emu.objects(CLUSTER, "server")["vipwire-node-198.51.100.1"]
    assert sorted(p["port-number"] for p in node["port-list"]) == [80, 8080]


# --- partitions ----------------------------------------------------------------------


async def test_long_cluster_names_need_a_partition_mapping(emu: A10Emulator) -> None:
    """ACOS partition names have at most 14 characters: unmapped long names are refused clearly."""
    d = make_driver(emu, partitions={"averyverylongclustername": "avl"}, partition_mode="create")
    try:
        with pytest.raises(ApplianceRejected, match="14 characters"):
            await d.apply("anotherverylongcluster", [CreateVirtualServer(server=server())])
        await d.apply("averyverylongclustername", [CreateVirtualServer(server=server())])
    finally:
        await d.close()
    assert "avl" in emu.partitions
    assert "vipwire-vip-192.0.2.10" in emu.objects("avl", "virtual-server")


async def test_listing_a_missing_partition_creates_nothing(
    driver: A10Driver, emu: A10Emulator
) -> None:
    """Reading is side-effect free: an unknown cluster lists empty and no partition appears."""
    assert await driver.list_virtual_servers("elsewhere") == {}
    assert "elsewhere" not in emu.partitions


# --- drift ---------------------------------------------------------------------------


async def test_dsr_switched_off_out_of_band_is_restored(
    driver: A10Driver, emu: A10Emulator
) -> None:
    """A virtual port with destination NAT turned back on shows as changed and is fixed."""
    s = server()
    await converge(driver, by_name(s))
    vip = emu.objects(CLUSTER, "virtual-server")["vipwire-vip-192.0.2.10"]
    vip["port-list"][0]["no-dest-nat"] = 0
    emu.plant(CLUSTER, "virtual-server", vip)
    assert await converge(driver, by_name(s)) == ["UpdateVirtualServer"]
    restored = emu.objects(CLUSTER, "virtual-server")["vipwire-vip-192.0.2.10"]
    assert restored["port-list"][0]["no-dest-nat"] == 1
    assert await converge(driver, by_name(s)) == []


async def test_a_service_group_deleted_out_of_band_is_recreated(
    driver: A10Driver, emu: A10Emulator
) -> None:
    """A missing service group shows as changed; the update recreates it."""
    s = server()
    await converge(driver, by_name(s))
    emu.remove(CLUSTER, "service-group", s.name)
    assert await converge(driver, by_name(s)) == ["UpdateVirtualServer"]
    assert await driver.list_virtual_servers(CLUSTER) == by_name(s)


# --- authentication and faults ---------------------------------------------------------


async def test_expired_session_is_replaced_transparently(
    driver: A10Driver, emu: A10Emulator
) -> None:
    """A 401 for an expired signature leads to a new login and the active partition is reset."""
    await converge(driver, by_name(server()))
    logins = emu.logins
    emu.expire_sessions()
    assert await converge(driver, by_name(server(nodes=("198.51.100.9",)))) == ["UpdateMembers"]
    assert emu.logins == logins + 1
    assert await driver.list_virtual_servers(CLUSTER) == by_name(server(nodes=("198.51.100.9",)))


async def test_wrong_credentials_raise_an_auth_error_without_the_password(
    driver: A10Driver, emu: A10Emulator
) -> None:
    """A refused signature request is ApplianceAuthError, from ACOS's answer, without secrets."""
    emu.set_credentials("admin", "rotated")
    with pytest.raises(ApplianceAuthError) as caught:
        await driver.list_virtual_servers(CLUSTER)
    assert isinstance(caught.value.__cause__, VendorError)
    assert caught.value.__cause__.status == 403
    assert "Incorrect user name or password" in str(caught.value)
    assert "the appliance refused vipwire's login" in str(caught.value)
    assert "admin" not in str(caught.value), "the user name reaches Events"
    assert PASSWORD not in str(caught.value) and PASSWORD not in repr(driver)
    assert emu.failed_logins == 1


async def test_busy_appliance_is_unavailable_then_recovers(
    driver: A10Driver, emu: A10Emulator
) -> None:
    """A 503 is ApplianceUnavailable; the next call goes through."""
    await converge(driver, by_name(server()))
    emu.fail_next(503, path_contains="/slb/")
    with pytest.raises(ApplianceUnavailable) as caught:
        await driver.list_virtual_servers(CLUSTER)
    assert isinstance(caught.value.__cause__, VendorError)
    assert await driver.list_virtual_servers(CLUSTER) == by_name(server())


async def test_unfinished_batch_is_completed_by_the_next_pass(
    driver: A10Driver, emu: A10Emulator
) -> None:
    """Without transactions a cut-short create leaves pieces; the next pass finishes it."""
    s = server()
    emu.fail_next(503, method="POST", path_contains="/slb/virtual-server")
    with pytest.raises(ApplianceUnavailable):
        await converge(driver, by_name(s))
    assert s.name in emu.objects(CLUSTER, "service-group")  # the earlier steps happened
    assert await converge(driver, by_name(s)) == ["CreateVirtualServer"]
    assert await driver.list_virtual_servers(CLUSTER) == by_name(s)


async def test_failed_write_memory_is_retried_before_the_next_call(emu: A10Emulator) -> None:
    """Changes that could not be saved are saved before the next read."""
    d = make_driver(emu)
    try:
        emu.fail_next(503, path_contains="/write/memory")
        with pytest.raises(ApplianceUnavailable, match="write memory"):
            await d.apply(CLUSTER, [CreateVirtualServer(server=server())])
        assert emu.memory_writes == []
        await d.list_virtual_servers(CLUSTER)
        assert emu.memory_writes == [CLUSTER]
    finally:
        await d.close()


async def test_write_memory_can_be_switched_off(emu: A10Emulator) -> None:
    """With write_memory off the running config changes and nothing is saved."""
    d = make_driver(emu, write_memory=False)
    try:
        await converge(d, by_name(server()))
    finally:
        await d.close()
    assert emu.memory_writes == []


async def test_sessions_are_logged_off_on_close(emu: A10Emulator) -> None:
    """Closing ends every session the driver opened (ACOS limits admin sessions)."""
    d = make_driver(emu)
    await converge(d, by_name(server()))
    assert emu.live_sessions >= 1
    await d.close()
    assert emu.live_sessions == 0


# --- shared appliance --------------------------------------------------------------------


async def test_foreign_objects_are_listed_as_not_ours_and_never_touched(
    driver: A10Driver, emu: A10Emulator
) -> None:
    """Another tool's virtual-server in the partition is reported, not owned, and survives."""
    emu.plant(
        CLUSTER,
        "server",
        {
            "name": "legacy-srv",
            "host": "198.51.100.50",
            "port-list": [{"port-number": 8080, "protocol": "tcp"}],
        },
    )
    emu.plant(
        CLUSTER,
        "service-group",
        {
            "name": "legacy-sg",
            "protocol": "tcp",
            "member-list": [{"name": "legacy-srv", "port": 8080}],
        },
    )
    emu.plant(
        CLUSTER,
        "virtual-server",
        {
            "name": "legacy-vs",
            "ip-address": "192.0.2.200",
            "port-list": [{"port-number": 8080, "protocol": "tcp", "service-group": "legacy-sg"}],
        },
    )
    kinds = ("server", "service-group", "virtual-server")
    before = {k: emu.objects(CLUSTER, k) for k in kinds}
    listed = await driver.list_virtual_servers(CLUSTER)
    [foreign] = [n for n in listed if not owns(n, PREFIX)]
    assert listed[foreign].address == "192.0.2.200"
    await converge(driver, by_name(server(), server(443)))
    await converge(driver, by_name(server(nodes=("198.51.100.7",))))
    await converge(driver, {})
    assert {k: emu.objects(CLUSTER, k) for k in kinds} == before


async def test_a_vip_held_by_a_foreign_virtual_server_is_refused(
    driver: A10Driver, emu: A10Emulator
) -> None:
    """We never add ports to someone else's virtual-server; its name (maybe another
    tenant's) is not in the error, which becomes the Service's Event."""
    emu.plant(CLUSTER, "virtual-server", {"name": "legacy-vs", "ip-address": "192.0.2.10"})
    await driver.list_virtual_servers(CLUSTER)
    with pytest.raises(ApplianceRejected, match="held by another virtual-server") as caught:
        await driver.apply(CLUSTER, [CreateVirtualServer(server=server())])
    assert "legacy-vs" not in str(caught.value)
    assert emu.objects(CLUSTER, "virtual-server")["legacy-vs"].get("port-list") is None


# --- configuration ---------------------------------------------------------------------


def test_monitor_names_fit_acos_limit() -> None:
    """Health monitor names stay within the 31 characters a service group may reference."""
    assert len(monitor_name("a" * 32, "x" * 127)) <= 31


async def test_driver_is_built_from_settings_with_a_password_variable(
    emu: A10Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build_driver reads the password from the environment at login."""
    monkeypatch.setenv("VIPWIRE_TEST_A10_PASSWORD", PASSWORD)
    settings = ApplianceSettings(
        name="thunder-a",
        driver="a10",
        address=emu.url,
        username="admin",
        password_env="VIPWIRE_TEST_A10_PASSWORD",
        write_memory=False,
    )
    d = build_driver(settings)
    try:
        assert isinstance(d, A10Driver)
        assert await d.list_virtual_servers(CLUSTER) == {}
    finally:
        await d.close()


# --- the emulator's write log ------------------------------------------------------------


async def test_the_write_log_names_the_session_user_and_skips_auth(emu: A10Emulator) -> None:
    """Writes are logged with the session's user; auth and logoff are not writes."""
    d = make_driver(emu)
    try:
        await converge(d, by_name(server()))
    finally:
        await d.close()
    records = emu.write_log.since(0)
    assert records, "a create writes"
    assert {r.writer for r in records} == {"admin"}
    assert not any(r.path.endswith(("/auth", "/logoff")) for r in records)
    assert all(r.started_ns <= r.ended_ns for r in records)
