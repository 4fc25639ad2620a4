"""Issue 18, A10 items 1-6: the driver against what ACOS really does (as the emulator
now models it, each behaviour with its source), over real HTTP on loopback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from support.appliances import CLUSTER, PREFIX, by_name, converge, server
from vipwire.applianceemu import A10Emulator
from vipwire.applianceemu.a10 import BUSY_CODES, SESSION_INVALID_CODES
from vipwire.lbdriver import (
    ApplianceRejected,
    ApplianceSettings,
    ApplianceTimeouts,
    ApplianceUnavailable,
    CreateVirtualServer,
    build_driver,
)
from vipwire.lbdriver.io.drivers.a10 import A10Driver, monitor_name
from vipwire.lbdriver.io.drivers.credentials import CredentialSource

PASSWORD = "a10-s3cret"
QUICK = ApplianceTimeouts(login_s=5, read_s=5, write_s=5, commit_s=5)


@pytest.fixture
async def emu() -> AsyncIterator[A10Emulator]:
    emulator = A10Emulator(username="admin", password=PASSWORD, partitions=(CLUSTER,))
    await emulator.start()
    yield emulator
    await emulator.stop()


@pytest.fixture
async def bare() -> AsyncIterator[A10Emulator]:
    """An appliance with no partition but shared."""
    emulator = A10Emulator(username="admin", password=PASSWORD)
    await emulator.start()
    yield emulator
    await emulator.stop()


def make_driver(emu: A10Emulator, **options: object) -> A10Driver:
    credentials = CredentialSource("thunder-a", "admin", password=PASSWORD)
    return A10Driver("thunder-a", emu.url, credentials, timeouts=QUICK, **options)  # type: ignore[arg-type]


async def group_oper(emu: A10Emulator, group: str) -> dict[str, Any]:
    """``GET /axapi/v3/slb/service-group/<group>/oper`` in the cluster's partition."""
    async with aiohttp.ClientSession(base_url=emu.url) as http:
        creds = {"credentials": {"username": "admin", "password": PASSWORD}}
        async with http.post("/axapi/v3/auth", json=creds) as resp:
            signature = (await resp.json())["authresponse"]["signature"]
        headers = {"Authorization": f"A10 {signature}"}
        async with http.post(f"/axapi/v3/active-partition/{CLUSTER}", headers=headers):
            pass
        path = f"/axapi/v3/slb/service-group/{group}/oper"
        async with http.get(path, headers=headers) as resp:
            body: dict[str, Any] = (await resp.json())["service-group"]
    return body


@pytest.fixture
async def driver(emu: A10Emulator) -> AsyncIterator[A10Driver]:
    d = make_driver(emu)
    yield d
    await d.close()


# --- item 1: partition detection; Deliver 1: partition_mode ---------------------------


async def test_a10_item1_a_missing_partition_is_refused_not_written_in_shared(
    bare: A10Emulator,
) -> None:
    """Item 1: active-partition answers 204 for a missing partition; partition_mode
    existing (the default) checks the partition and refuses, saying what to do, and
    writes nothing anywhere (not into shared)."""
    d = make_driver(bare)
    try:
        with pytest.raises(ApplianceRejected, match="partition 'prod' does not exist"):
            await d.apply(CLUSTER, [CreateVirtualServer(server=server())])
    finally:
        await d.close()
    assert bare.partitions == ["shared"]
    assert bare.objects("shared", "virtual-server") == {}
    assert bare.objects("shared", "server") == {}


async def test_a10_item1_a_session_left_in_another_partition_is_refused(
    emu: A10Emulator,
) -> None:
    """Item 1: after switching, the driver reads the active partition back; an ACOS
    that stays elsewhere (204, no switch) is caught before any write."""
    d = make_driver(emu)
    # An operator deletes the partition between the lookup and the switch: ACOS
    # answers the switch with 204 and the session stays in shared.
    original = emu._dispatch

    def vanish(session, method, path, body):  # type: ignore[no-untyped-def]
        if method == "POST" and path.startswith("/active-partition/"):
            emu.remove_partition(CLUSTER)
        return original(session, method, path, body)

    emu._dispatch = vanish  # type: ignore[method-assign]
    try:
        with pytest.raises(ApplianceRejected, match="session is in partition 'shared'"):
            await d.apply(CLUSTER, [CreateVirtualServer(server=server())])
    finally:
        await d.close()
    assert emu.objects("shared", "virtual-server") == {}


async def test_a10_item1_a_partition_admin_who_cannot_read_partitions_gets_in(
    driver: A10Driver, emu: A10Emulator
) -> None:
    """Item 1: a user refused the partition lookup (a partition admin) is not locked
    out: the read-back of the active partition is what proves the switch."""
    emu.fail_next(403, method="GET", path_contains=f"/partition/{CLUSTER}")
    assert await converge(driver, by_name(server())) == ["CreateVirtualServer"]
    assert server().name in emu.objects(CLUSTER, "service-group")


# --- items 2 and 3: creating partitions ------------------------------------------------


async def test_a10_item2_create_mode_makes_the_partition_and_warns_about_its_network(
    bare: A10Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Items 2, 3: partition_mode create makes the partition, warns that an L3V
    partition has no network, and saves the shared partition that holds it."""
    d = make_driver(bare, partition_mode="create")
    try:
        with caplog.at_level(logging.WARNING, logger="vipwire.lbdriver.a10"):
            assert await converge(d, by_name(server())) == ["CreateVirtualServer"]
    finally:
        await d.close()
    assert CLUSTER in bare.partitions
    assert any("L3V" in r.getMessage() and "prod" in r.getMessage() for r in caplog.records)
    assert "shared" in bare.memory_writes
    assert bare.memory_writes.index("shared") < bare.memory_writes.index(CLUSTER)


async def test_a10_item3_a_partition_id_taken_by_a_racing_creator_is_retried(
    bare: A10Emulator,
) -> None:
    """Item 3: 754974733 (the id was taken meanwhile) makes the driver take the next id."""
    bare.race_partition_create("racer")
    d = make_driver(bare, partition_mode="create")
    try:
        await d.apply(CLUSTER, [CreateVirtualServer(server=server())])
    finally:
        await d.close()
    assert {"racer", CLUSTER} <= set(bare.partitions)
    assert server().name in bare.objects(CLUSTER, "service-group")


async def test_a10_shared_mode_writes_into_the_shared_partition(bare: A10Emulator) -> None:
    """partition_mode shared: no partition is looked up or made; shared is saved."""
    d = make_driver(bare, partition_mode="shared")
    try:
        assert await converge(d, by_name(server())) == ["CreateVirtualServer"]
        assert await converge(d, by_name(server())) == []
    finally:
        await d.close()
    assert bare.partitions == ["shared"]
    assert f"{PREFIX}-vip-192.0.2.10" in bare.objects("shared", "virtual-server")
    assert bare.memory_writes == ["shared"]


def test_partition_mode_comes_from_the_settings() -> None:
    """The appliance settings carry partition_mode to the driver (existing by default)."""
    settings = ApplianceSettings(
        name="t",
        driver="a10",
        address="thunder.example",
        username="u",
        password_env="P",
        partition_mode="shared",
    )
    d = build_driver(settings)
    assert isinstance(d, A10Driver)
    assert d.partition_mode == "shared"
    assert d.partition_of("east") == "shared"
    assert ApplianceSettings(name="t").partition_mode == "existing"


# --- item 4: default health checks ---------------------------------------------------


async def test_a10_item4_members_stay_up_with_acos_default_checks_off(
    driver: A10Driver, emu: A10Emulator
) -> None:
    """Item 4: servers and their ports carry health-check-disable, so ACOS's default
    ping and L4 checks do not mark the (DSR) nodes down."""
    s = server()
    await converge(driver, by_name(s))
    states = emu.member_states(CLUSTER, s.name)
    assert len(states) == 2
    assert set(states.values()) == {"UP"}
    # As the appliance shows it: the service group's oper state.
    group = await group_oper(emu, s.name)
    assert group["oper"]["state"] == "All Up"
    assert {m["oper"]["state"] for m in group["member-list"]} == {"UP"}


async def test_a10_item4_servers_made_with_default_checks_are_repaired(
    driver: A10Driver, emu: A10Emulator
) -> None:
    """Item 4: a server of ours whose default checks are on (made by an older
    vipwire) reads as drifted and is switched over on the next pass."""
    s = server()
    await converge(driver, by_name(s))
    name = f"{PREFIX}-node-198.51.100.1"
    planted = {**emu.objects(CLUSTER, "server")[name], "health-check-disable": 0}
    emu.plant(CLUSTER, "server", planted)
    fresh = make_driver(emu)
    try:
        assert await converge(fresh, by_name(s)) == ["UpdateVirtualServer"]
    finally:
        await fresh.close()
    assert set(emu.member_states(CLUSTER, s.name).values()) == {"UP"}


# --- item 5: error handling ----------------------------------------------------------


@pytest.mark.parametrize("code", SESSION_INVALID_CODES)
async def test_a10_item5_session_invalid_codes_log_in_again(
    driver: A10Driver, emu: A10Emulator, code: int
) -> None:
    """Item 5: an expired session answered as a response.err code (not 401) is a
    new login and the write goes through."""
    await converge(driver, by_name(server()))
    emu.expire_sessions()
    emu.invalid_session_answer, emu.session_invalid_code = "err", code
    logins = emu.logins
    assert sorted(await converge(driver, by_name(server(8080)))) == [
        "CreateVirtualServer",
        "DeleteVirtualServer",
    ]
    assert emu.logins == logins + 1


async def test_a10_item5_an_authorizationschema_body_with_2xx_is_no_success(
    driver: A10Driver, emu: A10Emulator
) -> None:
    """Item 5: an expired session answered 200 with an authorizationschema body is
    not taken as done: the driver logs in again and the objects really exist."""
    await converge(driver, by_name(server()))
    emu.expire_sessions()
    emu.invalid_session_answer = "schema-200"
    await converge(driver, by_name(server(), server(8080)))
    assert server(8080).name in emu.objects(CLUSTER, "service-group")


@pytest.mark.parametrize("code", BUSY_CODES)
async def test_a10_item5_busy_codes_are_unavailable_not_rejected(
    driver: A10Driver, emu: A10Emulator, code: int
) -> None:
    """Item 5: config-manager-not-ready and system-not-ready codes are "unavailable,
    retry" (the breaker and backoff retry), and the retry lands."""
    await converge(driver, by_name(server()))
    emu.busy_next(1, code, path="/slb/")
    with pytest.raises(ApplianceUnavailable, match=str(code)):
        await converge(driver, by_name(server(), server(8080)))
    await converge(driver, by_name(server(), server(8080)))
    assert server(8080).name in emu.objects(CLUSTER, "service-group")


async def test_a10_item5_exists_code_67240011_counts_as_exists(
    driver: A10Driver, emu: A10Emulator
) -> None:
    """Item 5: a batch cut short left a server; its create answers 67240011 (exists,
    not "in use"), which the driver takes as done and goes on."""
    s = server()
    assert await driver.list_virtual_servers(CLUSTER) == {}  # the driver's view: empty
    emu.plant(
        CLUSTER,
        "server",
        {
            "name": f"{PREFIX}-node-198.51.100.1",
            "host": "198.51.100.1",
            "user-tag": "node-198.51.100.1",
            "health-check-disable": 1,
            "port-list": [],
        },
    )
    await driver.apply(CLUSTER, [CreateVirtualServer(server=s)])
    assert s.name in emu.objects(CLUSTER, "service-group")


async def test_a10_item5_acos_410_write_memory_is_sent_again_without_a_body(
    emu: A10Emulator,
) -> None:
    """Item 5: ACOS 4.1.0 refuses write memory's JSON body (AxapiJsonFormatError);
    the driver saves with an empty body instead of failing every batch."""
    emu.version = "4.1.0-P3"
    d = make_driver(emu)
    try:
        await d.apply(CLUSTER, [CreateVirtualServer(server=server())])
    finally:
        await d.close()
    assert emu.memory_writes == [CLUSTER]


async def test_a10_item5_a_long_write_memory_gets_the_save_timeout(emu: A10Emulator) -> None:
    """Item 5: write memory may outlast a write's timeout; it is a commit (commit_s)."""
    emu.save_delay = 0.6
    credentials = CredentialSource("thunder-a", "admin", password=PASSWORD)
    timeouts = ApplianceTimeouts(login_s=5, read_s=5, write_s=0.3, commit_s=5)
    d = A10Driver("thunder-a", emu.url, credentials, timeouts=timeouts)
    try:
        await d.apply(CLUSTER, [CreateVirtualServer(server=server())])
    finally:
        await d.close()
    assert emu.memory_writes == [CLUSTER]


# --- item 6: versions ----------------------------------------------------------------


async def test_a10_item6_acos_before_41_is_refused_with_the_reason(emu: A10Emulator) -> None:
    """Item 6: user-tag needs ACOS 4.1: an older release is refused once, clearly,
    before any write (not a cryptic field error per object)."""
    emu.version = "4.0.3-P2"
    d = make_driver(emu)
    try:
        with pytest.raises(ApplianceRejected, match=r"ACOS 4\.0\.3-P2 is too old.*4\.1"):
            await d.apply(CLUSTER, [CreateVirtualServer(server=server())])
    finally:
        await d.close()
    assert emu.writes == 0
    assert emu.live_sessions == 0  # the refused session was logged off


async def test_a10_item6_a_14_character_prefix_gives_a_29_character_monitor(
    emu: A10Emulator,
) -> None:
    """Item 6: with a prefix of 14 or more characters the monitor name stays within
    ACOS's 29 characters, and the emulator (which refuses 30) takes it."""
    prefix = "vipwireclusteraa"
    assert len(monitor_name(prefix, "x")) <= 29
    s = server()
    s = type(s)(**{**{f: getattr(s, f) for f in s.__struct_fields__}, "name": f"{prefix}-{s.name}"})
    d = make_driver(emu)
    try:
        await d.apply(CLUSTER, [CreateVirtualServer(server=s)])
    finally:
        await d.close()
    assert monitor_name(prefix, s.name) in emu.objects(CLUSTER, "monitor")
