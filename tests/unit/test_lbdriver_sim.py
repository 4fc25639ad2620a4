"""The simulated appliance: a strict state model with latency and fault injection."""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace

import pytest

from vipwire.contracts import Member
from vipwire.lbdriver import (
    ApplianceAuthError,
    ApplianceError,
    ApplianceRejected,
    ApplianceUnavailable,
    CreateVirtualServer,
    DeleteVirtualServer,
    Monitor,
    SimAppliance,
    UpdateMembers,
    UpdateVirtualServer,
    VirtualServer,
)


def vs(name: str, port: int = 80, address: str = "192.0.2.10") -> VirtualServer:
    return VirtualServer(
        name=name,
        owner="prod/shop/web",
        address=address,
        port=port,
        protocol="TCP",
        members=(Member(node="n1", address="198.51.100.1"),),
        monitor=Monitor(port=10256),
    )


async def test_apply_and_list_by_partition_counting_writes() -> None:
    """Applied operations show up in their partition only; writes count operations."""
    sim = SimAppliance("s")
    await sim.apply(
        "prod", [CreateVirtualServer(server=vs("a")), CreateVirtualServer(server=vs("b", 81))]
    )
    await sim.apply("prod", [UpdateMembers(name="a", members=())])
    assert set(await sim.list_virtual_servers("prod")) == {"a", "b"}
    assert await sim.list_virtual_servers("dev") == {}
    assert sim.virtual_servers("prod")["a"].members == ()
    assert (sim.writes, sim.apply_calls, sim.list_calls) == (3, 2, 2)


async def test_conflicts_are_rejected_and_change_nothing() -> None:
    """A refused batch (existing name, missing name, taken destination) is all-or-nothing."""
    sim = SimAppliance("s")
    sim.put("prod", vs("foreign"))
    with pytest.raises(ApplianceRejected) as info:
        await sim.apply(
            "prod",
            [CreateVirtualServer(server=vs("b", 81)), CreateVirtualServer(server=vs("mine"))],
        )
    assert "192.0.2.10:80/TCP is already served by another virtual server" in str(info.value)
    assert "foreign" not in str(info.value)  # another Service's name: in the log only
    with pytest.raises(ApplianceRejected):
        await sim.apply("prod", [DeleteVirtualServer(name="missing")])
    assert set(sim.virtual_servers("prod")) == {"foreign"}
    assert sim.writes == 0


async def test_destinations_freed_by_delete_or_move_can_be_reused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A destination is taken only while a server serves it: after a delete, an address
    change or an out-of-band removal it can be used again; a put server takes it."""
    sim = SimAppliance("s")
    await sim.apply("prod", [CreateVirtualServer(server=vs("a"))])
    await sim.apply("prod", [DeleteVirtualServer(name="a"), CreateVirtualServer(server=vs("b"))])
    await sim.apply("prod", [UpdateVirtualServer(server=vs("b", address="192.0.2.11"))])
    await sim.apply("prod", [CreateVirtualServer(server=vs("c"))])
    sim.remove("prod", "c")
    sim.put("prod", vs("d", address="192.0.2.11", port=443))
    await sim.apply("prod", [CreateVirtualServer(server=vs("e"))])
    with (
        caplog.at_level(logging.WARNING, logger="vipwire.lbdriver"),
        pytest.raises(ApplianceRejected, match=r"192.0.2.11:443/TCP is already served"),
    ):
        await sim.apply("prod", [CreateVirtualServer(server=vs("f", 443, "192.0.2.11"))])
    assert "destination 192.0.2.11:443/TCP is served by 'd', 'f'" in caplog.text
    assert set(sim.virtual_servers("prod")) == {"b", "d", "e"}


async def test_fail_next_and_down_raise_the_error_family_from_a_cause() -> None:
    """Injected failures are ApplianceErrors chained to a cause; recovery is immediate."""
    sim = SimAppliance("s")
    sim.fail_next(1, ApplianceAuthError)
    with pytest.raises(ApplianceAuthError) as info:
        await sim.list_virtual_servers("prod")
    assert info.value.__cause__ is not None
    sim.set_down(True)
    with pytest.raises(ApplianceUnavailable) as down:
        await sim.apply("prod", [CreateVirtualServer(server=vs("a"))])
    assert isinstance(down.value.__cause__, ConnectionRefusedError)
    sim.set_down(False)
    await sim.apply("prod", [CreateVirtualServer(server=vs("a"))])
    assert sim.failures == 2


async def test_fail_rate_is_reproducible_with_a_seed() -> None:
    """The same seed fails the same calls."""

    async def pattern(seed: int) -> list[bool]:
        sim = SimAppliance("s", fail_rate=0.5, seed=seed)
        out = []
        for _ in range(20):
            try:
                await sim.list_virtual_servers("p")
                out.append(True)
            except ApplianceError:
                out.append(False)
        return out

    first = await pattern(42)
    assert first == await pattern(42)
    assert True in first and False in first


async def test_api_latency_is_simulated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each call waits the configured latency (asked of asyncio, not measured by a clock)."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    module = sys.modules[SimAppliance.__module__]
    monkeypatch.setattr(module, "asyncio", SimpleNamespace(sleep=sleep))
    sim = SimAppliance("s", api_latency_ms=20)
    await sim.list_virtual_servers("p")
    await sim.apply("p", [])
    assert waits == [0.02, 0.02]
