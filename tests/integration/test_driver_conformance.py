"""Driver conformance: what every appliance driver (sim, linux, f5, a10) must do.

One parametrised suite; a new driver is written against it. Each test drives the
driver the way the lbdriver does (read, diff, apply: ``support.appliances.converge``)
and judges it by what the driver lists back: after a pass, the next diff is empty.
What a backend cannot model (the simulator has no password) is skipped with the
reason. linux needs root, ``ip`` and ``nft`` (a lab namespace per test).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest

from support.appliances import CLUSTER, PREFIX, by_name, converge, server
from support.driver_backends import KINDS, Backend, NotSupported, backend
from vipwire.lab import missing_requirements
from vipwire.lbdriver import (
    ApplianceDriver,
    ApplianceUnavailable,
    VirtualServer,
    diff,
)

_LINUX_PROBLEMS = missing_requirements()


@pytest.fixture(
    params=[
        pytest.param(k, marks=[pytest.mark.root], id=k) if k == "linux" else pytest.param(k, id=k)
        for k in KINDS
    ]
)
async def appliance(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    kind: str = request.param
    if kind == "linux" and _LINUX_PROBLEMS:
        pytest.skip("; ".join(_LINUX_PROBLEMS))
    async with backend(kind, tmp_path) as b:
        yield b


def web(b: Backend, *ports: int, nodes: tuple[str, ...] | None = None) -> dict[str, VirtualServer]:
    """Service prod/shop/web on the backend's VIP, one virtual server per port."""
    members = nodes if nodes is not None else b.nodes[:2]
    return by_name(*(server(p, address=b.vip, nodes=members) for p in ports))


async def ours(driver: ApplianceDriver) -> dict[str, VirtualServer]:
    listed = await driver.list_virtual_servers(CLUSTER)
    return {n: s for n, s in listed.items() if n.startswith(f"{PREFIX}-")}


async def assert_converged(driver: ApplianceDriver, desired: dict[str, VirtualServer]) -> None:
    """What the driver lists back is what was desired: the next diff writes nothing."""
    listed = await driver.list_virtual_servers(CLUSTER)
    assert diff(desired, listed, PREFIX) == []
    assert set(await ours(driver)) == set(desired)


def supported(action: Callable[[], None]) -> None:
    """Run a backend action; skip the test with the backend's reason if it has none."""
    try:
        action()
    except NotSupported as exc:
        pytest.skip(str(exc))


async def test_create_lists_back_what_was_programmed(appliance: Backend) -> None:
    """One virtual server is created and lists back exactly (owner, members, monitor)."""
    d = appliance.driver()
    desired = web(appliance, 80)
    assert await converge(d, desired) == ["CreateVirtualServer"]
    await assert_converged(d, desired)
    [listed] = (await ours(d)).values()
    assert listed.owner == "prod/shop/web"


async def test_ports_are_added_and_removed(appliance: Backend) -> None:
    """A second port is added beside the first; removing the first leaves the second."""
    d = appliance.driver()
    await converge(d, web(appliance, 80))
    await converge(d, web(appliance, 80, 443))
    await assert_converged(d, web(appliance, 80, 443))
    await converge(d, web(appliance, 443))
    await assert_converged(d, web(appliance, 443))


async def test_member_churn_converges_each_time(appliance: Backend) -> None:
    """Members leave and come back (a rolling update): each pass lists the new set."""
    d = appliance.driver()
    a, b = appliance.nodes[:2]
    for members in ((a, b), (b,), (a,), (a, b)):
        desired = web(appliance, 80, nodes=members)
        await converge(d, desired)
        await assert_converged(d, desired)
        [listed] = (await ours(d)).values()
        assert {m.address for m in listed.members} == set(members)


async def test_drain(appliance: Backend) -> None:
    """A draining member stays on the appliance, disabled (issue 17), lists back as
    draining, and goes when it is no longer desired."""
    if "draining" not in VirtualServer.__struct_fields__:
        pytest.skip("issue 17's drain has not landed on main: VirtualServer has no draining")
    d = appliance.driver()
    a, b = appliance.nodes[:2]
    [(name, both)] = web(appliance, 80, nodes=(a, b)).items()
    await converge(d, {name: both})
    leaving = [m for m in both.members if m.address == b]
    draining = msgspec.structs.replace(
        both, members=tuple(m for m in both.members if m.address == a), draining=tuple(leaving)
    )
    await converge(d, {name: draining})
    await assert_converged(d, {name: draining})
    field = "draining"  # not a field before issue 17's drain lands
    listed = (await ours(d))[name]
    assert [m.address for m in getattr(listed, field)] == [b]
    gone = msgspec.structs.replace(draining, draining=())
    await converge(d, {name: gone})
    await assert_converged(d, {name: gone})


async def test_a_restarted_driver_adopts_what_is_there(appliance: Backend) -> None:
    """A new driver instance (an lbdriver restart) lists the same objects as ours and
    writes nothing for the same desired state."""
    first = appliance.driver()
    desired = web(appliance, 80, 443)
    await converge(first, desired)
    await first.close()
    writes = appliance.writes()
    second = appliance.driver()
    assert await converge(second, desired) == []
    await assert_converged(second, desired)
    assert appliance.writes() == writes


async def test_a_virtual_server_deleted_out_of_band_is_repaired(appliance: Backend) -> None:
    """Drift: an operator deletes our virtual server; the next pass recreates it."""
    d = appliance.driver()
    desired = web(appliance, 80)
    await converge(d, desired)
    [name] = desired
    await appliance.tamper(name)
    assert name not in await ours(d)
    assert await converge(d, desired) != []
    await assert_converged(d, desired)


async def test_credentials_rotated_mid_run(appliance: Backend) -> None:
    """The password changes on the appliance and in the Secret, sessions die: the next
    write logs in with the new password, no restart needed."""
    d = appliance.driver()
    await converge(d, web(appliance, 80))
    try:
        await appliance.rotate_password("second-s3cret")
    except NotSupported as exc:
        pytest.skip(str(exc))
    desired = web(appliance, 80, 443)
    await converge(d, desired)
    await assert_converged(d, desired)


async def test_a_busy_appliance_is_unavailable_then_recovers(appliance: Backend) -> None:
    """Busy is "unavailable, retry" (never "rejected"); the retry converges."""
    d = appliance.driver()
    desired = web(appliance, 80)
    supported(appliance.busy)
    # The lbdriver retries; a driver that retried by itself is fine too.
    with contextlib.suppress(ApplianceUnavailable):
        await converge(d, desired)
    await converge(d, desired)
    await assert_converged(d, desired)
    assert appliance.injected_left() == 0  # the busy answer was given


async def test_a_session_expired_mid_write_is_renewed(appliance: Backend) -> None:
    """The session dies in the middle of a write: the driver logs in again and the
    write completes, or fails retryably and the next pass completes it."""
    d = appliance.driver()
    await converge(d, web(appliance, 80))
    supported(appliance.expire_mid_write)
    desired = web(appliance, 80, 443)
    try:
        await converge(d, desired)
    except ApplianceUnavailable:
        await converge(d, desired)
    await assert_converged(d, desired)
    assert appliance.injected_left() == 0  # the session did die mid-write


async def test_delete_removes_every_virtual_server_of_ours(appliance: Backend) -> None:
    """Desired nothing: every object of ours goes, so the listing has none left."""
    d = appliance.driver()
    await converge(d, web(appliance, 80, 443))
    await converge(d, {})
    assert await ours(d) == {}
