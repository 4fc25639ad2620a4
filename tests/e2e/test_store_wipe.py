"""The cluster is the source of truth when the bus store is lost.

The all-in-one stack serves 200 Services; then every component stops, the
JetStream store is deleted, and everything starts again on an empty store. The
emulated API servers keep the Services and their status (as a real cluster
does), the appliance keeps its virtual servers: no VIP may change.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable

import pytest

from vipwire.allinone import Stack
from vipwire.testing import eventually

N = 200


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with Stack() as s:
        await s.wait_ready()
        yield s


Key = tuple[str, str]


def vips(stack: Stack, keys: list[Key]) -> dict[Key, tuple[str, ...]]:
    """The VIPs in the status of each (cluster, name)."""
    return {(c, n): tuple(stack.ingress_ips(c, n)) for c, n in keys}


async def wipe_and_restart(
    stack: Stack, created_meanwhile: list[Key], *, late: str, before_late: Callable[[], bool]
) -> None:
    """Stop every component and NATS, delete the JetStream store, start it all again;
    ``created_meanwhile``: Services created while everything is down; the component
    ``late`` starts last, once ``before_late()`` holds (a watcher that comes up late)."""
    for component in reversed(list(stack.components.values())):
        await component.stop()
    await stack.nats.stop()
    shutil.rmtree(stack.nats.store_dir)
    await asyncio.gather(*(stack.create_service(c, n) for c, n in created_meanwhile))
    await stack.nats.start()
    for name, component in stack.components.items():
        if name != late:
            await component.start()
    await eventually(before_late, timeout=30.0, what=f"ready for {late} to start")
    await stack.components[late].start()


async def test_wiping_the_jetstream_store_and_restarting_everything_moves_no_vip(
    stack: Stack,
) -> None:
    """Wipe the JetStream store of a stack serving 200 Services and restart every
    component: 0 VIPs change, and Services created while it was down or at once after
    the restart get none of the addresses the others hold in status."""
    started = time.monotonic()
    first, last = stack.clusters[0], stack.clusters[-1]
    # The last cluster's Services get the pool's first addresses (those new VIPs are
    # handed out from after a lost store); churn in between, so that the VIPs are not
    # simply handed out in the same order again.
    early = [(last, f"svc-{i:03d}") for i in range(N // 2)]
    churn = [(first, f"tmp-{i}") for i in range(20)]
    later = [(first, f"svc-{i:03d}") for i in range(N // 2, N)]
    names = early + later

    def have_vips(keys: list[Key]) -> Callable[[], bool]:
        return lambda: all(stack.ingress_ips(c, n) for c, n in keys)

    await asyncio.gather(*(stack.create_service(c, n) for c, n in early[:60] + churn))
    await eventually(have_vips(early[:60] + churn), timeout=30.0, what="the first 80 have VIPs")
    await asyncio.gather(*(stack.delete_service(c, n) for c, n in churn))
    await asyncio.gather(*(stack.create_service(c, n) for c, n in early[60:] + later))
    await eventually(have_vips(names), timeout=40.0, what=f"all {N} Services have a VIP")
    before = vips(stack, names)
    assert len({ip for v in before.values() for ip in v}) == N

    # Services created during the outage are listed by the watchers next to those with
    # VIPs; others are created right after the restart.
    meanwhile = [(c, f"down-{i}") for i, c in enumerate(stack.clusters * 3)]

    def first_cluster_restored() -> bool:
        """ipam holds claims for every Service of the first cluster with a VIP."""
        ipam = stack.components["ipam"].service
        held = {o.name for o in ipam.allocator.owners()}  # type: ignore[union-attr]
        return all(n in held for c, n in names if c == first)

    # The last cluster's watcher comes up late: its Services' VIPs are unknown to ipam
    # while the first cluster's Services created during the outage ask for new ones.
    await wipe_and_restart(
        stack, meanwhile, late=f"watcher:{last}", before_late=first_cluster_restored
    )
    after_restart = [(c, f"new-{i}") for i, c in enumerate(stack.clusters * 3)]
    await asyncio.gather(*(stack.create_service(c, n) for c, n in after_restart))
    newcomers = meanwhile + after_restart
    await stack.wait_ready()
    await eventually(
        lambda: all(stack.ingress_ips(c, n) for c, n in newcomers),
        timeout=30.0,
        what="the Services created after the restart have VIPs",
    )
    ipam = stack.components["ipam"].service
    assert ipam is not None

    def all_claimed() -> bool:
        held = {o.name for o in ipam.allocator.owners()}  # type: ignore[attr-defined]
        return all(n in held for _, n in names)

    await eventually(all_claimed, timeout=30.0, what="ipam holds a claim for every Service")
    after = vips(stack, names + newcomers)
    moved = {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v}
    assert not moved, f"{len(moved)} VIPs changed: {sorted(moved.items())[:5]}"
    taken = {ip for v in before.values() for ip in v}
    for key in newcomers:
        assert not set(after[key]) & taken, f"{key} took a live VIP: {after[key]}"
    # Every VIP is held in ipam's store again, by the Service whose status shows it.
    claims = ipam.allocator.claims()  # type: ignore[attr-defined]
    for (_, name), ips in before.items():
        for ip in ips:
            assert ip in claims and {o.name for o in claims[ip].owners} == {name}
    given_back = ipam.metrics.status_vips  # type: ignore[attr-defined]
    assert (given_back.value(outcome="kept"), given_back.value(outcome="not_kept")) == (N, 0)
    assert time.monotonic() - started < 90
