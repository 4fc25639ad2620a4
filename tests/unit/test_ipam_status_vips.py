"""ipam gives a Service that holds nothing the VIPs its status already holds, and
reserves them for it: after a lost bus store, no live VIP moves (pure, no NATS)."""

from __future__ import annotations

import random

import msgspec

from vipwire.contracts import (
    LbRemoved,
    Message,
    ServiceGone,
    ServicePort,
    ServiceRef,
    ServiceSnapshot,
    VipAssigned,
    VipFailed,
)
from vipwire.ipam import Allocation, AllocationFailure, Allocator, PoolSettings, Request
from vipwire.ipam.core.sandbox import Sandbox
from vipwire.ipam.core.status_vips import StatusVips

LAB = PoolSettings(name="lab", addresses=("192.0.2.0/28", "2001:db8::/124"), avoid=("192.0.2.14",))
WEST = PoolSettings(name="west-only", addresses=("198.51.100.0/29",), clusters=("west",))
TINY = PoolSettings(name="tiny", addresses=("203.0.113.1-203.0.113.2",), auto_assign=False)


def snap(name: str, *status: str, uid: str | None = None, **kw: object) -> ServiceSnapshot:
    fields: dict[str, object] = {
        "cluster": "east",
        "namespace": "shop",
        "name": name,
        "uid": uid or f"uid-{name}",
        "resource_version": "1",
        "ports": (ServicePort(port=80),),
        "status_vips": status,
    }
    fields.update(kw)
    return msgspec.convert(fields, ServiceSnapshot, from_attributes=True)


def req(name: str, *status: str, **kw: object) -> Request:
    fields: dict[str, object] = {
        "cluster": "east",
        "namespace": "shop",
        "name": name,
        "uid": f"uid-{name}",
        "status_vips": status,
    }
    fields.update(kw)
    return msgspec.convert(fields, Request)


def assigned(out: list[Message]) -> VipAssigned:
    (message,) = [m for m in out if isinstance(m, VipAssigned)]
    return message


def vips_of(ipam: Sandbox, name: str) -> tuple[str, ...]:
    return ipam.records[ServiceRef("east", "shop", name)].vips


# --- the allocator ---------------------------------------------------------------------


def test_a_service_holding_nothing_gets_its_status_vip_back_not_the_next_free() -> None:
    """A free status VIP in an allowed pool is given back as it is, and next fit is left alone."""
    allocator = Allocator((LAB,))
    chosen = allocator.choose(req("web", "192.0.2.7"))
    assert isinstance(chosen, Allocation)
    assert (chosen.addresses, chosen.new, chosen.notes) == (("192.0.2.7",), ("192.0.2.7",), ())
    allocator.take(chosen)
    after = allocator.choose(req("api"))
    assert isinstance(after, Allocation) and after.addresses == ("192.0.2.0",)


def test_requested_ips_win_over_status_vips() -> None:
    """vipwire.io/ips is the user's change: it wins over what the status holds."""
    chosen = Allocator((LAB,)).choose(req("web", "192.0.2.7", requested_ips=("192.0.2.9",)))
    assert isinstance(chosen, Allocation) and chosen.addresses == ("192.0.2.9",)
    assert chosen.notes == ()


def test_a_status_vip_that_cannot_be_kept_is_noted_with_the_reason() -> None:
    """Taken, outside every pool, avoided, another family, another pool than the
    annotation names, a pool the Service may not use: a new VIP, and each reason."""
    allocator = Allocator((LAB, WEST, TINY))
    holder = allocator.choose(req("db", "192.0.2.5"))
    assert isinstance(holder, Allocation)
    allocator.take(holder)
    cases = {
        "192.0.2.5": "held by another Service (east/shop/db)",
        "10.9.9.9": "in no configured pool",
        "192.0.2.14": "on pool 'lab''s avoid list",
        "2001:db8::3": "an IPv6 address, and the Service is SingleStack IPv4",
        "198.51.100.3": "pool 'west-only' is only for clusters west",
    }
    for address, why in cases.items():
        chosen = allocator.choose(req("web", address))
        assert isinstance(chosen, Allocation), address
        assert chosen.addresses == ("192.0.2.0",), address
        assert chosen.notes == (f"status VIP {address} not kept: {why}",)
    # Held by a Service of another namespace: its name stays out of the Event.
    other = allocator.choose(req("web", "192.0.2.5", namespace="pay"))
    assert isinstance(other, Allocation)
    assert other.notes == ("status VIP 192.0.2.5 not kept: held by another Service",)
    named = allocator.choose(req("web", "192.0.2.9", pool="tiny"))
    assert isinstance(named, Allocation) and named.addresses == ("203.0.113.1",)
    assert named.notes == (
        "status VIP 192.0.2.9 not kept: in pool 'lab', not in the Service's pool 'tiny'",
    )


def test_a_pool_the_service_names_on_request_only_still_gives_its_status_vip_back() -> None:
    """An address of a request-only pool in the status of a Service that may use the
    pool is kept: it was given on request once, and live VIPs never move."""
    chosen = Allocator((LAB, TINY)).choose(req("web", "203.0.113.2"))
    assert isinstance(chosen, Allocation) and chosen.addresses == ("203.0.113.2",)


def test_dual_stack_keeps_its_status_vip_and_completes_from_the_same_pool() -> None:
    """A dual-stack Service whose status held one family keeps it and gets the other."""
    chosen = Allocator((LAB,)).choose(
        req(
            "web",
            "2001:db8::9",
            ip_families=("IPv4", "IPv6"),
            ip_family_policy="RequireDualStack",
        )
    )
    assert isinstance(chosen, Allocation)
    assert chosen.addresses == ("192.0.2.0", "2001:db8::9") and chosen.notes == ()


def test_a_service_sharing_a_vip_gets_it_back_next_to_the_others() -> None:
    """Two Services of one sharing key with one VIP in status both keep it."""
    allocator = Allocator((LAB,))
    first = allocator.choose(req("web", "192.0.2.9", sharing_key="k", ports=("80/TCP",)))
    assert isinstance(first, Allocation)
    allocator.take(first)
    second = allocator.choose(req("dns", "192.0.2.9", sharing_key="k", ports=("53/UDP",)))
    assert isinstance(second, Allocation)
    assert (second.addresses, second.joined) == (("192.0.2.9",), ("192.0.2.9",))


def test_new_addresses_pass_over_those_reserved_in_another_services_status() -> None:
    """Reserved for a Service that holds nothing yet: nobody else gets it; once that
    Service holds its claim (or goes away) the reservation lapses."""
    allocator = Allocator((LAB,))
    status = StatusVips()
    status.see(snap("db", "192.0.2.0", "192.0.2.1"))
    chosen = allocator.choose(req("web"), status=status)
    assert isinstance(chosen, Allocation) and chosen.addresses == ("192.0.2.2",)
    # Its own status reserves nothing against itself.
    mine = allocator.choose(req("db"), status=status)
    assert isinstance(mine, Allocation) and mine.addresses == ("192.0.2.0",)
    status.see(snap("db", deleting=True))
    freed = allocator.choose(req("web"), status=status)
    assert isinstance(freed, Allocation) and freed.addresses == ("192.0.2.0",)


def test_a_full_pool_fails_with_the_status_reason_in_front() -> None:
    """No status VIP kept and no room left: the VipFailed says both."""
    allocator = Allocator((TINY,))
    for name in ("a", "b"):
        taken = allocator.choose(req(name, pool="tiny"))
        assert isinstance(taken, Allocation)
        allocator.take(taken)
    failed = allocator.choose(req("web", "203.0.113.1", pool="tiny"))
    assert isinstance(failed, AllocationFailure)
    assert failed.message.startswith(
        "status VIP 203.0.113.1 not kept: held by another Service (east/shop/a); no free IPv4"
    )


# --- the lifecycle ---------------------------------------------------------------------


def test_the_assignment_carries_why_a_status_vip_was_not_kept() -> None:
    """VipAssigned.notes carries the reason (the watcher's Warning Event); a later
    change of the Service repeats no note."""
    ipam = Sandbox((LAB,))
    ipam.handle(snap("db"))
    out = ipam.handle(snap("web", "192.0.2.0"))
    message = assigned(out)
    assert message.vips == ("192.0.2.1",)
    assert message.notes == (
        "status VIP 192.0.2.0 not kept: held by another Service (east/shop/db)",
    )
    again = assigned(ipam.handle(snap("web", "192.0.2.0", resource_version="2")))
    assert again.vips == ("192.0.2.1",) and again.notes == ()


def test_a_service_without_status_handled_first_cannot_take_a_reserved_address() -> None:
    """The race after a wipe: db's snapshot (status .0) is on the stream but web's
    (no status) is handled first: web passes over .0, and db gets it back."""
    ipam = Sandbox((LAB,))
    ipam.see(snap("db", "192.0.2.0"))
    ipam.handle(snap("web"))
    ipam.handle(snap("db", "192.0.2.0"))
    assert vips_of(ipam, "web") == ("192.0.2.1",)
    assert vips_of(ipam, "db") == ("192.0.2.0",)


def test_an_operator_release_gives_new_vips_not_those_in_status() -> None:
    """``vipwire ipam release`` asks for new VIPs: the status is not given back."""
    ipam = Sandbox((LAB,))
    ipam.handle(snap("web", "192.0.2.4"))
    assert vips_of(ipam, "web") == ("192.0.2.4",)
    ipam.release(ServiceRef("east", "shop", "web"))
    out = ipam.handle(
        LbRemoved(cluster="east", namespace="shop", name="web", uid="uid-web", appliance="a")
    )
    assert assigned(out).vips == ("192.0.2.0",)


def test_a_lost_store_restarted_in_any_order_moves_no_vip() -> None:
    """200 Services (some sharing, some dual-stack, some with named pools) get VIPs;
    the store is lost; a new ipam reads every snapshot, with status, in a shuffled
    order, new status-less Services among them: every VIP stays where it was."""
    pools = (
        PoolSettings(name="big", addresses=("192.0.2.0/24", "2001:db8::/120")),
        PoolSettings(name="named", addresses=("198.51.100.0/26",), auto_assign=False),
    )
    rng = random.Random(14)
    first = Sandbox(pools)
    snaps: list[ServiceSnapshot] = []
    for i in range(200):
        kw: dict[str, object] = {}
        if i % 10 == 0:
            kw = {"sharing_key": "k", "ports": (ServicePort(port=1000 + i),)}
        elif i % 7 == 0:
            kw = {"ip_families": ("IPv6", "IPv4"), "ip_family_policy": "PreferDualStack"}
        elif i % 5 == 0:
            kw = {"pool": "named"}
        s = snap(f"svc-{i:03d}", **kw)
        snaps.append(s)
        first.handle(s)
        if i % 3 == 0:  # churn: next fit moves on, so the VIPs are not just in order
            first.handle(snap(f"tmp-{i}"))
            first.handle(
                ServiceGone(cluster="east", namespace="shop", name=f"tmp-{i}", uid=f"uid-tmp-{i}")
            )
    before = {s.name: vips_of(first, s.name) for s in snaps}
    with_status = [msgspec.structs.replace(s, status_vips=before[s.name]) for s in snaps]
    newcomers = [snap(f"new-{i}") for i in range(20)]
    stream = with_status + newcomers
    rng.shuffle(stream)
    second = Sandbox(pools)
    for s in stream:  # the index reads the stream ahead of handling
        second.see(s)
    order = stream[:]
    rng.shuffle(order)
    told: list[Message] = []
    for s in order:
        told.extend(second.handle(s))
    after = {s.name: vips_of(second, s.name) for s in snaps}
    assert after == before
    assert not any(isinstance(m, VipFailed) for m in told)
    assert not any(isinstance(m, VipAssigned) and m.notes for m in told)
    kept = {v for vips in before.values() for v in vips}
    for s in newcomers:
        assert not set(vips_of(second, s.name)) & kept
