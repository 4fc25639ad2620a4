"""The lbdriver's verification against the F5 emulator: a virtual server deleted behind
vipwire's back is reported (ApplianceDrift) and re-created within the verification
interval, or, with the appliance refusing, reported as a drift that cannot be repaired."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from support.appliances import CLUSTER
from support.lbdriver import LbHarness
from vipwire.applianceemu import F5Emulator
from vipwire.contracts import LbFailed, LbProgrammed, NodeSnapshot, ServicePort, VipAssigned
from vipwire.lbdriver import ApplianceSettings
from vipwire.runtime import Runtime

PASSWORD = "s3cret-pw"
#: Seconds between verifications in these tests.
INTERVAL_S = 0.5
#: What the acceptance allows on top of the interval (a loaded 2-core machine).
SLACK_S = 4.0


@pytest.fixture
async def emu() -> AsyncIterator[F5Emulator]:
    emulator = F5Emulator(username="admin", password=PASSWORD)
    await emulator.start()
    yield emulator
    await emulator.stop()


@pytest.fixture
async def h(
    emu: F5Emulator,
    make_runtime: Callable[[str], Awaitable[Runtime]],
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[LbHarness]:
    monkeypatch.setenv("VIPWIRE_TEST_F5_PASSWORD", PASSWORD)
    settings = {
        "appliances": (
            ApplianceSettings(
                name="bigip-a",
                driver="f5",
                address=emu.url,
                username="admin",
                password_env="VIPWIRE_TEST_F5_PASSWORD",
                max_requests_per_s=0,
            ),
        ),
        "coalesce_window_ms": 1.0,
        "retry_initial_s": 0.05,
        "retry_max_s": 0.2,
        "verify_interval_s": INTERVAL_S,
    }
    harness = LbHarness(make_runtime, await make_runtime("test"), defaults=settings)
    await harness.observe()
    try:
        yield harness
    finally:
        await harness.close()


async def program_web(h: LbHarness, emu: F5Emulator) -> str:
    """Start an lbdriver, program Service shop/web; the name of its virtual server."""
    await h.start()
    for name, address in (("n1", "198.51.100.1"), ("n2", "198.51.100.2")):
        await h.publish(NodeSnapshot(cluster=CLUSTER, node=name, addresses=(address,)))
    await h.publish(
        VipAssigned(
            cluster=CLUSTER,
            namespace="shop",
            name="web",
            uid="uid-web",
            vips=("192.0.2.10",),
            pool="default",
            appliance_group="default",
            ports=(ServicePort(port=80),),
        )
    )
    await h.expect(LbProgrammed)
    [name] = emu.names("virtual", CLUSTER)
    return name


def drift(message: LbFailed) -> bool:
    return message.reason == "ApplianceDrift"


async def test_a_virtual_deleted_on_the_appliance_is_reported_and_recreated(
    h: LbHarness, emu: F5Emulator
) -> None:
    """Deleted behind vipwire's back: within the verification interval the Service reports
    ApplianceDrift (its status stops claiming programmed), the virtual server is re-created
    and the Service reports programmed again."""
    name = await program_web(h, emu)
    programmed = emu.get("virtual", CLUSTER, name)
    emu.remove("virtual", CLUSTER, name)
    deleted = time.monotonic()

    found = await h.expect(LbFailed, where=drift)
    assert time.monotonic() - deleted < INTERVAL_S + SLACK_S
    assert found.appliance == "bigip-a" and not found.removing
    assert f"virtual server {name} is missing" in found.message
    await h.expect(LbProgrammed)
    assert time.monotonic() - deleted < INTERVAL_S + SLACK_S
    assert emu.get("virtual", CLUSTER, name) == programmed


async def test_a_drift_the_appliance_refuses_to_repair_is_reported_as_such(
    h: LbHarness, emu: F5Emulator
) -> None:
    """With the appliance refusing every write, the deleted virtual server cannot be put
    back: the Service reports ApplianceDrift with the appliance's refusal, once (retries
    of the same refusal are not news); once writes are accepted again it is repaired."""
    name = await program_web(h, emu)
    emu.fail_next(400, count=1_000_000, method="POST", path_contains="/transaction")
    emu.remove("virtual", CLUSTER, name)
    deleted = time.monotonic()

    await h.expect(LbFailed, where=lambda m: drift(m) and "re-programming it" in m.message)
    failed = await h.expect(
        LbFailed, where=lambda m: drift(m) and "re-programming failed" in m.message
    )
    assert time.monotonic() - deleted < INTERVAL_S + SLACK_S
    assert f"virtual server {name} is missing" in failed.message
    assert "ApplianceRejected" in failed.message
    assert emu.get("virtual", CLUSTER, name) is None
    [service] = h.services
    assert "\nvipwire_lbdriver_drifted_services 1\n" in service.runtime.metrics.expose()

    refused = emu.requests
    emu.faults.clear()
    await h.expect(LbProgrammed)
    assert emu.requests > refused and emu.get("virtual", CLUSTER, name) is not None
    assert len([m for m in h.reports(LbFailed) if "re-programming failed" in m.message]) == 1
    assert "\nvipwire_lbdriver_drifted_services 0\n" in service.runtime.metrics.expose()
