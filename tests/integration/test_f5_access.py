"""Source ranges and affinity on the F5 emulator: the BIG-IP objects the driver writes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest

from support.appliances import CLUSTER, by_name, converge, server
from vipwire.applianceemu import F5Emulator
from vipwire.lbdriver.io.drivers.credentials import CredentialSource
from vipwire.lbdriver.io.drivers.f5 import F5Driver
from vipwire.lbdriver.settings import ApplianceTimeouts

PASSWORD = "s3cret-pw"
#: Short timeouts: an emulator on this host answers at once or not at all.
QUICK = ApplianceTimeouts(login_s=5, read_s=5, write_s=5, commit_s=5)


@pytest.fixture
async def emu() -> AsyncIterator[F5Emulator]:
    emulator = F5Emulator(username="admin", password=PASSWORD)
    await emulator.start()
    yield emulator
    await emulator.stop()


@pytest.fixture
async def driver(emu: F5Emulator) -> AsyncIterator[F5Driver]:
    credentials = CredentialSource("bigip-a", "admin", password=PASSWORD)
    d = F5Driver("bigip-a", emu.url, credentials, timeouts=QUICK)
    yield d
    await d.close()


async def test_one_range_is_the_virtual_source_several_an_address_list_with_criteria(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """One range: the virtual's ``source``. Several: a net address-list and traffic-matching
    criteria the virtual names (one transaction each change); back to open: source 0.0.0.0/0
    and the list and criteria deleted. Each state reads back exactly as programmed."""
    one = msgspec.structs.replace(server(), source_ranges=("203.0.113.0/24",))
    await converge(driver, by_name(one))
    virtual = emu.get("virtual", CLUSTER, one.name)
    assert virtual is not None and virtual["source"] == "203.0.113.0/24"
    assert virtual["destination"] == f"/{CLUSTER}/192.0.2.10:80"
    assert await driver.list_virtual_servers(CLUSTER) == by_name(one)

    several = msgspec.structs.replace(one, source_ranges=("198.51.100.0/25", "203.0.113.0/24"))
    commits = emu.commits
    assert await converge(driver, by_name(several)) == ["UpdateVirtualServer"]
    assert emu.commits == commits + 1
    listed = emu.get("addresslist", CLUSTER, one.name)
    assert listed is not None
    assert [a["name"] for a in listed["addresses"]] == ["198.51.100.0/25", "203.0.113.0/24"]
    criteria = emu.get("tmc", CLUSTER, one.name)
    assert criteria is not None
    assert criteria["sourceAddressList"] == f"/{CLUSTER}/{one.name}"
    assert (criteria["destinationAddressInline"], criteria["destinationPortInline"]) == (
        "192.0.2.10",
        "80",
    )
    virtual = emu.get("virtual", CLUSTER, one.name)
    assert virtual is not None and "destination" not in virtual
    assert virtual["trafficMatchingCriteria"] == f"/{CLUSTER}/{one.name}"
    assert await driver.list_virtual_servers(CLUSTER) == by_name(several)
    assert await converge(driver, by_name(several)) == []

    opened = msgspec.structs.replace(one, source_ranges=())
    assert await converge(driver, by_name(opened)) == ["UpdateVirtualServer"]
    virtual = emu.get("virtual", CLUSTER, one.name)
    assert virtual is not None and virtual["source"] == "0.0.0.0/0"
    assert emu.get("tmc", CLUSTER, one.name) is None
    assert emu.get("addresslist", CLUSTER, one.name) is None
    assert await driver.list_virtual_servers(CLUSTER) == by_name(opened)


async def test_affinity_is_a_source_addr_persistence_profile_of_the_virtual(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """ClientIP affinity: an ltm persistence source-addr profile (timeout in seconds) as the
    virtual's default persistence; turned off, the virtual persists nothing and the profile
    goes; a deleted virtual takes its profile with it."""
    sticky = msgspec.structs.replace(
        server(address="2001:db8::10", nodes=("2001:db8::1",)),
        affinity_timeout_s=600,
        source_ranges=("2001:db8:1::/48",),
    )
    await converge(driver, by_name(sticky))
    profile = emu.get("persist", CLUSTER, sticky.name)
    assert profile is not None
    assert (profile["defaultsFrom"], profile["timeout"]) == ("/Common/source_addr", "600")
    virtual = emu.get("virtual", CLUSTER, sticky.name)
    assert virtual is not None
    assert [p["name"] for p in virtual["persist"]] == [f"/{CLUSTER}/{sticky.name}"]
    assert virtual["source"] == "2001:db8:1::/48"
    assert await driver.list_virtual_servers(CLUSTER) == by_name(sticky)

    plain = msgspec.structs.replace(sticky, affinity_timeout_s=None)
    assert await converge(driver, by_name(plain)) == ["UpdateVirtualServer"]
    virtual = emu.get("virtual", CLUSTER, sticky.name)
    assert virtual is not None and virtual["persist"] == []
    assert emu.get("persist", CLUSTER, sticky.name) is None

    await converge(driver, by_name(sticky))
    assert await converge(driver, {}) == ["DeleteVirtualServer"]
    assert emu.names("persist", CLUSTER) == [] and emu.names("virtual", CLUSTER) == []


async def test_the_emulator_refuses_a_source_of_the_other_family(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """BIG-IP refuses an IPv4 source on an IPv6 destination; the driver reports it refused."""
    wrong = msgspec.structs.replace(
        server(address="2001:db8::10", nodes=("2001:db8::1",)), source_ranges=("192.0.2.0/24",)
    )
    with pytest.raises(Exception, match="same IP family"):
        await converge(driver, by_name(wrong))
    assert emu.names("virtual", CLUSTER) == []
