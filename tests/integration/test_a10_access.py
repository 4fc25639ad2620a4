"""Source ranges and affinity on the A10 emulator: the ACOS objects the driver writes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest

from support.appliances import CLUSTER, PREFIX, by_name, converge, server
from vipwire.applianceemu import A10Emulator
from vipwire.lbdriver.io.drivers.a10 import A10Driver, acl_name, persist_name
from vipwire.lbdriver.io.drivers.credentials import CredentialSource
from vipwire.lbdriver.settings import ApplianceTimeouts

PASSWORD = "a10-s3cret"
#: Short timeouts: an emulator on this host answers at once or not at all.
QUICK = ApplianceTimeouts(login_s=5, read_s=5, write_s=5, commit_s=5)


@pytest.fixture
async def emu() -> AsyncIterator[A10Emulator]:
    emulator = A10Emulator(username="admin", password=PASSWORD, partitions=(CLUSTER,))
    await emulator.start()
    yield emulator
    await emulator.stop()


@pytest.fixture
async def driver(emu: A10Emulator) -> AsyncIterator[A10Driver]:
    credentials = CredentialSource("thunder-a", "admin", password=PASSWORD)
    d = A10Driver("thunder-a", emu.url, credentials, timeouts=QUICK)
    yield d
    await d.close()


def vport(emu: A10Emulator, vip: str) -> dict[str, object]:
    ports = emu.objects(CLUSTER, "virtual-server")[f"{PREFIX}-vip-{vip.replace(':', '_')}"]
    (port,) = ports["port-list"]
    return dict(port)


async def test_ranges_are_an_access_list_bound_to_the_virtual_port(
    driver: A10Driver, emu: A10Emulator
) -> None:
    """IPv4: an ip access-list of permit rules (wildcard masks) in the port's acl-list;
    IPv6: an ipv6 access-list in its ipv6-acl-list. A change of ranges rewrites the list
    once; opened again, the port names none and the list is gone. Each reads back."""
    v4 = msgspec.structs.replace(server(), source_ranges=("203.0.113.0/24",))
    v6 = msgspec.structs.replace(
        server(address="2001:db8::10", nodes=("2001:db8::1",)), source_ranges=("2001:db8:1::/48",)
    )
    await converge(driver, by_name(v4, v6))
    acl = acl_name(PREFIX, v4.name)
    assert vport(emu, "192.0.2.10")["acl-list"] == [{"acl-name": acl}]
    rules = emu.objects(CLUSTER, "access-list")[acl]["rules"]
    assert [(r["action"], r["src-subnet"], r["src-mask"]) for r in rules] == [
        ("permit", "203.0.113.0", "0.0.0.255")
    ]
    acl6 = acl_name(PREFIX, v6.name)
    assert vport(emu, "2001:db8::10")["ipv6-acl-list"] == [{"ipv6-acl-name": acl6}]
    rules6 = emu.objects(CLUSTER, "ipv6-access-list")[acl6]["rules"]
    assert [r["src-subnet"] for r in rules6] == ["2001:db8:1::/48"]
    assert await driver.list_virtual_servers(CLUSTER) == by_name(v4, v6)

    wider = msgspec.structs.replace(v4, source_ranges=("198.51.100.7/32", "203.0.113.0/24"))
    assert await converge(driver, by_name(wider, v6)) == ["UpdateVirtualServer"]
    rules = emu.objects(CLUSTER, "access-list")[acl]["rules"]
    assert [(r["src-subnet"], r["src-mask"]) for r in rules] == [
        ("198.51.100.7", "0.0.0.0"),
        ("203.0.113.0", "0.0.0.255"),
    ]
    assert await converge(driver, by_name(wider, v6)) == []

    opened = msgspec.structs.replace(v4, source_ranges=())
    assert await converge(driver, by_name(opened, v6)) == ["UpdateVirtualServer"]
    assert "acl-list" not in vport(emu, "192.0.2.10")
    assert acl not in emu.objects(CLUSTER, "access-list")
    assert await driver.list_virtual_servers(CLUSTER) == by_name(opened, v6)


async def test_affinity_is_a_persist_source_ip_template_of_the_port(
    driver: A10Driver, emu: A10Emulator
) -> None:
    """ClientIP affinity: an slb template persist source-ip (timeout in whole minutes, the
    seconds kept in its user-tag) named by the port; off again, the port names none and the
    template goes; deleting the Service deletes it too."""
    sticky = msgspec.structs.replace(server(), affinity_timeout_s=90)
    await converge(driver, by_name(sticky))
    template = persist_name(PREFIX, sticky.name)
    assert vport(emu, "192.0.2.10")["template-persist-source-ip"] == template
    assert emu.objects(CLUSTER, "source-ip")[template]["timeout"] == 2
    assert await driver.list_virtual_servers(CLUSTER) == by_name(sticky)
    assert await converge(driver, by_name(sticky)) == []

    plain = msgspec.structs.replace(sticky, affinity_timeout_s=None)
    assert await converge(driver, by_name(plain)) == ["UpdateVirtualServer"]
    assert "template-persist-source-ip" not in vport(emu, "192.0.2.10")
    assert emu.objects(CLUSTER, "source-ip") == {}

    await converge(driver, by_name(sticky))
    assert await converge(driver, {}) == ["DeleteVirtualServer"]
    assert emu.objects(CLUSTER, "source-ip") == {}
    assert emu.objects(CLUSTER, "virtual-server") == {}
