"""ipam's lifecycle without NATS: the core's decisions carried out in memory.

First a story of one pool set's life (keep, withdraw, release, reassign,
sharing, waiting), with invariants checked after each step; then the focused
cases that once needed a server (moved from tests/integration/test_ipam_service.py).
"""

from __future__ import annotations

import ipaddress
from typing import Any, TypeVar

import msgspec

from vipwire.contracts import (
    LbProgrammed,
    LbRemoved,
    Member,
    Message,
    ServiceGone,
    ServicePort,
    ServiceRef,
    ServiceRejected,
    ServiceSnapshot,
    StatusWritten,
    VipAssigned,
    VipFailed,
    VipReleased,
    VipReleasing,
)
from vipwire.ipam import PoolSettings
from vipwire.ipam.core.claims import Owner
from vipwire.ipam.core.decide import decide
from vipwire.ipam.core.moves import announced, broken
from vipwire.ipam.core.records import ServiceRecord
from vipwire.ipam.core.sandbox import Sandbox

M = TypeVar("M", bound=Message)

POOL = PoolSettings(name="lab", addresses=("192.0.2.0/24", "2001:db8::/120"), appliance_group="g1")
TINY = PoolSettings(name="tiny", addresses=("198.51.100.10-198.51.100.11",))


def snapshot(
    name: str, uid: str | None = None, cluster: str = "east", **kw: object
) -> ServiceSnapshot:
    fields: dict[str, object] = {
        "cluster": cluster,
        "namespace": "shop",
        "name": name,
        "uid": uid or f"uid-{name}",
        "resource_version": "1",
        "ports": (ServicePort(port=80),),
    }
    fields.update(kw)
    return msgspec.convert(fields, ServiceSnapshot, from_attributes=True)


def lb_removed(name: str, uid: str | None = None) -> LbRemoved:
    return LbRemoved(
        cluster="east", namespace="shop", name=name, uid=uid or f"uid-{name}", appliance="sim-1"
    )


def gone(name: str, uid: str | None = None) -> ServiceGone:
    return ServiceGone(cluster="east", namespace="shop", name=name, uid=uid or f"uid-{name}")


def ports(*specs: str) -> tuple[ServicePort, ...]:
    """``ports("53/TCP", "53/UDP")``."""
    out = []
    for spec in specs:
        number, _, protocol = spec.partition("/")
        out.append(msgspec.convert({"port": int(number), "protocol": protocol}, ServicePort))
    return tuple(out)


def ref(name: str) -> ServiceRef:
    return ServiceRef("east", "shop", name)


class Story:
    """One sandboxed ipam, every message it published, checked after each step."""

    def __init__(self, *pools: PoolSettings) -> None:
        self.ipam = Sandbox(pools or (POOL,))
        self.published: list[Message] = []
        self.title = "start"

    def step(self, title: str, *messages: Message) -> list[Message]:
        """Handle ``messages`` in order, then retry the waiting (as a freed claim does)."""
        self.title = title
        out: list[Message] = []
        for message in messages:
            out.extend(self.ipam.handle(message))
            out.extend(self.ipam.retry_waiting())
        self.published.extend(out)
        self.check()
        return out

    def operator_release(
        self, title: str, name: str, caller: str = "operator-test"
    ) -> list[Message]:
        self.title = title
        out = self.ipam.release(ref(name), caller=caller)
        self.published.extend(out)
        self.check()
        return out

    def last(self, kind: type[M], name: str) -> M:
        found = [m for m in self.published if isinstance(m, kind) and _name(m) == name]
        assert found, f"{self.title}: no {kind.__name__} for {name}"
        return found[-1]

    def count(self, kind: type[Message], name: str) -> int:
        return sum(1 for m in self.published if isinstance(m, kind) and _name(m) == name)

    def check(self) -> None:
        """What must hold after any step: no address held twice, every record's VIPs
        claimed by it, every claim named by a record, and the last word about each
        live Service describes what its record holds."""
        where = f"after {self.title!r}"
        allocator = self.ipam.allocator
        claims = allocator.claims()
        records = self.ipam.records
        named: dict[str, set[ServiceRef]] = {}
        for service, record in records.items():
            assert len(set(record.vips)) == len(record.vips), f"{where}: {record}"
            assert not broken(record, allocator, _owner(service, record)), f"{where}: {record}"
            # One VIP per family, but for the old ones while a move serves both.
            staying = [v for v in record.vips if v not in record.moving_from]
            families = [ipaddress.ip_address(v).version for v in staying]
            assert len(families) == len(set(families)), f"{where}: {service} {record.vips}"
            for vip in record.vips:
                claim = claims.get(vip)
                assert claim is not None, f"{where}: {service} names {vip}, nobody claims it"
                sharer = claim.sharer(_owner(service, record))
                assert sharer is not None, f"{where}: {vip} is not {service}'s ({claim})"
                named.setdefault(vip, set()).add(service)
        # A withdrawn incarnation replaced by a new one keeps its claims, with no record,
        # until its LbRemoved: its virtual server may still be on the appliance.
        withdrawn = {m.uid for m in self.published if isinstance(m, VipReleasing)}
        for vip, claim in claims.items():
            holders = {
                ServiceRef(o.cluster, o.namespace, o.name)
                for o in claim.owners
                if o.uid not in withdrawn
                or getattr(records.get(ServiceRef(o.cluster, o.namespace, o.name)), "uid", None)
                == o.uid
            }
            assert holders == named.get(vip, set()), f"{where}: {vip} {claim} vs records"
            if len(claim.sharers) > 1:
                assert claim.sharing_key is not None, f"{where}: {vip} shared without a key"
                used = [p for s in claim.sharers for p in s.ports]
                assert len(used) == len(set(used)), f"{where}: {vip} port twice: {used}"
        for service, record in records.items():
            last = self.ipam.last_vip.get(service)
            if record.state == "active" and isinstance(last, VipAssigned):
                assert last.vips == announced(record), f"{where}: {service} told {last.vips}"
        for service in self.ipam.waiting:
            assert service not in records or records[service].state == "active", where


def _name(message: Message) -> str:
    return str(getattr(message, "name", ""))


def _owner(service: ServiceRef, record: ServiceRecord) -> Owner:
    return Owner(*service, record.uid)


def test_the_life_of_a_pool_set() -> None:
    """keep, withdraw, release, reassign, sharing and waiting, one step after another."""
    s = Story(TINY)

    (web,) = s.step("web is live: it gets the pool's first address", snapshot("web"))
    assert isinstance(web, VipAssigned)
    assert (web.vips, web.pool) == (("198.51.100.10",), "tiny")

    (kept,) = s.step("web changes its ports: keep", snapshot("web", ports=ports("443/TCP")))
    assert isinstance(kept, VipAssigned)
    assert kept.vips == web.vips and kept.ports == ports("443/TCP")

    s.step(
        "dns-tcp and dns-udp share one key: one VIP",
        snapshot("dns-tcp", sharing_key="dns", ports=ports("53/TCP")),
        snapshot("dns-udp", sharing_key="dns", ports=ports("53/UDP")),
    )
    assert s.last(VipAssigned, "dns-tcp").vips == s.last(VipAssigned, "dns-udp").vips
    (shared,) = s.last(VipAssigned, "dns-tcp").vips

    (refused,) = s.step("api finds the pool full: refused, waiting", snapshot("api"))
    assert isinstance(refused, VipFailed)
    assert "'tiny' (2/2 in use)" in refused.message
    assert ref("api") in s.ipam.waiting

    (refused_port, again) = s.step(
        "dns-udp moves onto dns-tcp's port: refused, VIP kept as it was",
        snapshot("dns-udp", sharing_key="dns", ports=ports("53/TCP")),
    )
    assert isinstance(refused_port, VipFailed) and "53/TCP" in refused_port.message
    assert isinstance(again, VipAssigned) and again.ports == ports("53/UDP")
    assert ref("dns-udp") in s.ipam.waiting

    (releasing,) = s.step("web is deleted: withdraw, claims held", snapshot("web", deleting=True))
    assert isinstance(releasing, VipReleasing) and releasing.vips == web.vips
    assert s.ipam.records[ref("web")].state == "releasing"
    assert s.ipam.allocator.claim_of(web.vips[0]) is not None
    assert s.count(VipAssigned, "api") == 0, "the address is held until the appliance is clean"

    out = s.step("the appliance is clean of web: release; api gets its address", lb_removed("web"))
    assert [type(m) for m in out] == [VipReleased, VipAssigned]
    assert s.last(VipReleased, "web").vips == web.vips
    assert s.last(VipAssigned, "api").vips == web.vips
    assert ref("api") not in s.ipam.waiting

    (tcp_leaving,) = s.step("dns-tcp leaves: only itself", snapshot("dns-tcp", deleting=True))
    assert isinstance(tcp_leaving, VipReleasing) and tcp_leaving.vips == (shared,)
    out = s.step("dns-tcp is clean: dns-udp's waiting change goes through", lb_removed("dns-tcp"))
    assert [type(m) for m in out] == [VipReleased, VipAssigned]
    assert s.last(VipAssigned, "dns-udp").ports == ports("53/TCP")
    claim = s.ipam.allocator.claim_of(shared)
    assert claim is not None and [x.name for x in claim.sharers] == ["dns-udp"]

    (withdrawn,) = s.operator_release("an operator releases api", "api")
    assert isinstance(withdrawn, VipReleasing)
    assert s.step("api's snapshot again: nothing until clean", snapshot("api")) == []
    out = s.step("api is clean: reassigned from the pools as they are", lb_removed("api"))
    assert [type(m) for m in out] == [VipAssigned]
    assert s.ipam.records[ref("api")].state == "active"

    s.step("everyone goes", gone("api"), gone("dns-udp"))
    s.step("the appliance is clean", lb_removed("api"), lb_removed("dns-udp"))
    assert s.ipam.records == {} and s.ipam.allocator.claims() == {}


def test_the_assignment_after_an_operator_release_says_who_once() -> None:
    """The releasing record keeps the caller; the VipAssigned giving the new VIPs names it
    and the released VIPs; the next republish (a changed snapshot) carries neither."""
    s = Story()
    (first,) = s.step("live", snapshot("web"))
    assert isinstance(first, VipAssigned) and first.released_by is None
    s.operator_release("alice releases web", "web", caller="operator-alice")
    assert s.ipam.records[ref("web")].released_by == "operator-alice"
    (after,) = s.step("clean", lb_removed("web"))
    assert isinstance(after, VipAssigned)
    assert (after.released_by, after.released_vips) == ("operator-alice", first.vips)
    assert after.vips != first.vips
    assert s.ipam.records[ref("web")].released_by is None
    (again,) = s.step("new ports", snapshot("web", ports=(ServicePort(port=443),)))
    assert isinstance(again, VipAssigned) and again.vips == after.vips
    assert (again.released_by, again.released_vips) == (None, ())


def test_a_changed_snapshot_keeps_its_vip_and_carries_new_ports() -> None:
    """VipAssigned is repeated with the new ports; the VIP never changes."""
    s = Story()
    (first,) = s.step("live", snapshot("web"))
    (second,) = s.step("new ports", snapshot("web", ports=(ServicePort(port=443),)))
    assert isinstance(first, VipAssigned) and isinstance(second, VipAssigned)
    assert second.vips == first.vips and second.ports == (ServicePort(port=443),)


def test_dual_stack_and_requested_ips() -> None:
    """RequireDualStack gets one VIP per family; a requested address is given as asked."""
    s = Story()
    s.step(
        "dual and pinned",
        snapshot("dual", ip_families=("IPv6", "IPv4"), ip_family_policy="RequireDualStack"),
        snapshot("pinned", requested_ips=("192.0.2.77",)),
    )
    dual = s.last(VipAssigned, "dual")
    assert [ipaddress.ip_address(v).version for v in dual.vips] == [6, 4]
    assert s.last(VipAssigned, "pinned").vips == ("192.0.2.77",)
    s.step("a thief asks for pinned's address", snapshot("thief", requested_ips=("192.0.2.77",)))
    assert "east/shop/pinned" in s.last(VipFailed, "thief").message


def test_a_replaced_service_releases_the_old_claims_first() -> None:
    """Same name, new uid: the old incarnation's claims go, the new one gets its own."""
    s = Story()
    s.step("first", snapshot("web", requested_ips=("192.0.2.9",)))
    (again,) = s.step("second", snapshot("web", uid="second", requested_ips=("192.0.2.9",)))
    assert isinstance(again, VipAssigned) and (again.uid, again.vips) == ("second", ("192.0.2.9",))
    claims = s.ipam.allocator.claims()
    assert [x.uid for c in claims.values() for x in c.sharers] == ["second"]
    assert s.ipam.records[ref("web")].uid == "second"


def test_deletion_withdraws_then_releases_on_lb_removed() -> None:
    """deleting → VipReleasing (claims held); LbRemoved → claims gone, VipReleased."""
    s = Story()
    (assigned,) = s.step("live", snapshot("web"))
    assert isinstance(assigned, VipAssigned)
    (releasing,) = s.step("deleting", snapshot("web", deleting=True))
    assert isinstance(releasing, VipReleasing)
    assert (releasing.vips, releasing.appliance_group) == (assigned.vips, "g1")
    assert set(s.ipam.allocator.claims()) == set(assigned.vips)
    assert s.ipam.records[ref("web")].state == "releasing"
    (released,) = s.step("clean", lb_removed("web"))
    assert isinstance(released, VipReleased) and released.vips == assigned.vips
    assert s.ipam.allocator.claims() == {} and s.ipam.records == {}


def test_gone_without_claims_is_released_at_once() -> None:
    """A Service that never held an address is released without an appliance round trip."""
    s = Story()
    out = s.step("gone", ServiceGone(cluster="east", namespace="shop", name="ghost", uid="u"))
    assert len(out) == 1 and isinstance(out[0], VipReleased) and out[0].vips == ()


def test_deleting_a_new_incarnation_also_withdraws_an_outlived_old_one() -> None:
    """Old uid recorded, new uid deleted before it was ever live: the new one is released
    at once, the old one goes through withdrawal."""
    s = Story()
    (first,) = s.step("old is live", snapshot("web", uid="old"))
    releasing, released = s.step("new is deleted", snapshot("web", uid="new", deleting=True))
    assert isinstance(first, VipAssigned)
    assert isinstance(releasing, VipReleasing) and isinstance(released, VipReleased)
    assert (releasing.uid, releasing.vips) == ("old", first.vips)
    assert (released.uid, released.vips) == ("new", ())
    (old,) = s.step("old is clean", lb_removed("web", uid="old"))
    assert isinstance(old, VipReleased) and (old.uid, old.vips) == ("old", first.vips)
    assert s.ipam.allocator.claims() == {} and s.ipam.records == {}


def test_a_service_that_comes_back_before_removal_keeps_its_vip() -> None:
    """deleting then live again (class changed back): same VIP, a late LbRemoved is ignored."""
    s = Story()
    (first,) = s.step("live", snapshot("web"))
    s.step("deleting", snapshot("web", deleting=True))
    (back,) = s.step("live again", snapshot("web"))
    assert isinstance(first, VipAssigned) and isinstance(back, VipAssigned)
    assert back.vips == first.vips
    assert s.step("a late LbRemoved", lb_removed("web")) == []
    assert s.ipam.records[ref("web")].state == "active"
    assert first.vips[0] in s.ipam.allocator.claims()


def test_one_key_shares_one_vip_until_the_last_sharer_leaves() -> None:
    """Two Services of one key share a VIP; one leaving withdraws only itself, the claim
    stays for the other; the last frees it."""
    s = Story()
    s.step(
        "two sharers",
        snapshot("dns-tcp", sharing_key="dns", ports=ports("53/TCP")),
        snapshot("dns-udp", sharing_key="dns", ports=ports("53/UDP")),
    )
    (vip,) = s.last(VipAssigned, "dns-tcp").vips
    assert s.last(VipAssigned, "dns-udp").vips == (vip,)
    claim = s.ipam.allocator.claim_of(vip)
    assert claim is not None and [x.name for x in claim.sharers] == ["dns-tcp", "dns-udp"]
    assert claim.sharers[1].ports == ("53/UDP",)
    (releasing,) = s.step("tcp leaves", snapshot("dns-tcp", deleting=True))
    assert isinstance(releasing, VipReleasing) and releasing.vips == (vip,)
    (released,) = s.step("tcp is clean", lb_removed("dns-tcp"))
    assert isinstance(released, VipReleased) and released.vips == (vip,)
    claim = s.ipam.allocator.claim_of(vip)
    assert claim is not None and [x.name for x in claim.sharers] == ["dns-udp"]
    assert s.count(VipReleasing, "dns-udp") == 0
    s.step("udp leaves and is clean", snapshot("dns-udp", deleting=True), lb_removed("dns-udp"))
    assert s.ipam.allocator.claims() == {} and s.ipam.records == {}


def test_a_refused_port_change_keeps_the_vip_and_the_appliance_as_it_was() -> None:
    """A sharer moving onto another's port: VipFailed says why, then VipAssigned repeats
    the VIP with the old ports; once the port is free the change goes through."""
    s = Story()
    (first,) = s.step("a", snapshot("a", sharing_key="k", ports=ports("80/TCP")))
    s.step("b", snapshot("b", sharing_key="k", ports=ports("81/TCP")))
    failed, kept = s.step(
        "b onto a's port", snapshot("b", sharing_key="k", ports=ports("80/TCP", "81/TCP"))
    )
    assert isinstance(first, VipAssigned)
    assert isinstance(failed, VipFailed) and failed.reason == "AllocationFailed"
    assert "80/TCP" in failed.message and "keeps its VIP" in failed.message
    assert isinstance(kept, VipAssigned)
    assert kept.vips == first.vips and kept.ports == ports("81/TCP")
    assert s.ipam.last_vip[ref("b")] == kept
    s.step("a moves away", snapshot("a", sharing_key="k", ports=ports("8080/TCP")))
    through = s.last(VipAssigned, "b")
    assert through.ports == ports("80/TCP", "81/TCP")
    (claim,) = s.ipam.allocator.claims().values()
    assert [x.ports for x in claim.sharers] == [("8080/TCP",), ("80/TCP", "81/TCP")]


FAILURE_POOLS = (
    PoolSettings(
        name="lab",
        addresses=("192.0.2.0/29",),
        avoid=("192.0.2.3",),
        clusters=("east", "west"),
    ),
    PoolSettings(name="east-only", addresses=("198.51.100.8/30",), clusters=("east",)),
    PoolSettings(name="pay-only", addresses=("198.51.100.16/30",), namespaces=("pay",)),
    PoolSettings(name="gold", addresses=("198.51.100.24/30",), service_selector={"tier": "gold"}),
    PoolSettings(name="manual", addresses=("203.0.113.0/30",), auto_assign=False),
)


def test_every_refusal_reaches_the_service_with_its_reason() -> None:
    """Each rule that can refuse an allocation is named in a VipFailed (AllocationFailed),
    the message the watcher puts in the Service's Warning Event."""
    s = Story(*FAILURE_POOLS)
    s.step(
        "owner and dns",
        snapshot("owner", requested_ips=("192.0.2.1",)),
        snapshot("dns", requested_ips=("192.0.2.2",), sharing_key="k", ports=ports("53/UDP")),
    )
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "unknown-pool": ({"pool": "nope"}, "pool 'nope' does not exist"),
        "other-cluster": ({"pool": "east-only", "cluster": "west"}, "only for clusters east"),
        "other-ns": ({"pool": "pay-only"}, "only for namespaces pay"),
        "no-label": ({"pool": "gold"}, "only serves Services labelled tier=gold"),
        "no-pool": ({"cluster": "north"}, "no auto-assign pool serves north/shop/no-pool"),
        "family": (
            {"pool": "east-only", "ip_family_policy": "RequireDualStack"},
            "pool 'east-only' has no IPv6 addresses",
        ),
        "outside": ({"requested_ips": ("10.0.0.1",)}, "10.0.0.1 is in no pool"),
        "avoided": ({"requested_ips": ("192.0.2.3",)}, "192.0.2.3 is on pool 'lab''s avoid"),
        "taken": ({"requested_ips": ("192.0.2.1",)}, "in use by east/shop/owner"),
        "port-clash": (
            {"requested_ips": ("192.0.2.2",), "sharing_key": "k", "ports": ports("53/UDP")},
            "dns, which uses port 53/UDP",
        ),
        "policy": (
            {
                "requested_ips": ("192.0.2.2",),
                "sharing_key": "k",
                "ports": ports("53/TCP"),
                "external_traffic_policy": "Local",
            },
            "externalTrafficPolicy is Cluster",
        ),
        "other-key": ({"requested_ips": ("192.0.2.2",), "sharing_key": "j"}, "sharing key 'k'"),
        "cross-cluster": (
            {"requested_ips": ("192.0.2.2",), "sharing_key": "k", "cluster": "west"},
            "requested address 192.0.2.2 is in use by another Service",
        ),
        "cross-namespace": (
            {"requested_ips": ("192.0.2.1",), "namespace": "pay"},
            "requested address 192.0.2.1 is in use by another Service",
        ),
        "bad-family": ({"requested_ips": ("2001:db8::1",)}, "SingleStack IPv4"),
    }
    for name, (fields, text) in cases.items():
        (failed,) = s.step(name, snapshot(name, **fields))
        assert isinstance(failed, VipFailed) and failed.reason == "AllocationFailed", name
        assert text in failed.message, (name, failed.message)
    for name in ("cross-cluster", "cross-namespace"):
        told = s.last(VipFailed, name).message
        assert "owner" not in told and "dns" not in told and "east/" not in told, told
    s.step("fill the pool", *(snapshot(f"fill{i}", pool="lab") for i in range(6)))
    assert s.last(VipFailed, "fill5").message == "no free IPv4 address in pool 'lab' (7/7 in use)"


def test_decide_is_a_plan_not_an_action() -> None:
    """decide() only describes: the allocator and the record are left as they were."""
    s = Story(TINY)
    s.step("a holds one address", snapshot("a"))
    before = s.ipam.allocator.claims()
    plan = decide(snapshot("b"), None, s.ipam.allocator)
    assert plan.action == "assign" and plan.choice is not None
    assert plan.choice.new == ("198.51.100.11",)
    assert s.ipam.allocator.claims() == before
    busy = decide(snapshot("b"), None, s.ipam.allocator, skip=plan.choice.new)
    assert busy.action == "refuse" and busy.failure is not None
    assert "(2/2 in use)" in busy.failure.message


def test_a_new_incarnation_leaves_a_withdrawn_one_its_claims_until_lb_removed() -> None:
    """Old uid withdrawn (its virtual server still on the appliance), new uid live before
    LbRemoved: the new one gets other VIPs and nobody gets the old ones until LbRemoved.
    (Two `vipwire up --smoke` on one state dir: a recreated Service's old VIP went to
    another Service while the appliance still had it, and the lbdriver's write failed.)"""
    s = Story()
    (first,) = s.step("old is live", snapshot("web", uid="old"))
    s.step("old is deleted", gone("web", uid="old"))
    (second,) = s.step("new is live", snapshot("web", uid="new"))
    (other,) = s.step("another Service", snapshot("api"))
    assert isinstance(first, VipAssigned) and isinstance(second, VipAssigned)
    assert isinstance(other, VipAssigned)
    assert first.vips[0] not in second.vips + other.vips
    assert first.vips[0] in s.ipam.allocator.claims()
    s.step("old is clean", lb_removed("web", uid="old"))
    assert first.vips[0] not in s.ipam.allocator.claims()
    assert s.ipam.records[ref("web")].uid == "new"


def test_a_served_service_asking_for_other_vips_is_told_what_it_keeps_and_why() -> None:
    """vipwire.io/ips changed on a served Service: VipFailed MoveRefused (not waiting)
    names what it keeps, what it asks for and how to move it; then VipAssigned repeats
    what it keeps. Asking for what it holds again: VipAssigned alone."""
    s = Story()
    s.ipam.move_on_change = False
    (first,) = s.step("pinned", snapshot("web", requested_ips=("192.0.2.9",)))
    refused, kept = s.step("asks for another", snapshot("web", requested_ips=("192.0.2.77",)))
    assert isinstance(first, VipAssigned) and isinstance(kept, VipAssigned)
    assert isinstance(refused, VipFailed) and refused.reason == "MoveRefused"
    assert not refused.retryable
    assert "keeps 192.0.2.9 although it asks for 192.0.2.77" in refused.message
    assert "vipwire ipam release east/shop/web" in refused.message
    assert kept.vips == first.vips == ("192.0.2.9",)
    assert s.step("back", snapshot("web", requested_ips=("192.0.2.9",))) == [
        msgspec.structs.replace(kept)
    ]


def test_a_sharing_key_that_cannot_share_says_so_and_why() -> None:
    """Two Services with one sharing key whose ports clash: the second gets a VIP of its own
    and its VipAssigned says why it could not share (a SharingRefused Event); one that can
    share carries nothing of the sort."""
    s = Story()
    (a,) = s.step("a", snapshot("a", sharing_key="k", ports=ports("80/TCP")))
    (b,) = s.step("b on a's port", snapshot("b", sharing_key="k", ports=ports("80/TCP")))
    assert isinstance(a, VipAssigned) and isinstance(b, VipAssigned)
    assert b.vips != a.vips and a.sharing_refused is None
    assert b.sharing_refused is not None
    assert "east/shop/b could not share a VIP (sharing key 'k'" in b.sharing_refused
    assert "uses port 80/TCP" in b.sharing_refused
    (c,) = s.step("c shares", snapshot("c", sharing_key="k", ports=ports("81/TCP")))
    assert isinstance(c, VipAssigned) and c.vips == a.vips and c.sharing_refused is None


def test_sharing_across_namespaces_needs_both_sides_to_opt_in() -> None:
    """One sharing key in two namespaces: a VIP is shared only when each Service names the
    other's namespace (or *), and its claim then names each sharer's namespace; one that
    names nobody is never offered it; once shared, one side withdrawing its consent is
    refused (it keeps its VIP as it was)."""
    s = Story()
    (web,) = s.step(
        "shop/web",
        snapshot("web", sharing_key="k", ports=ports("80/TCP"), share_namespaces=("blog",)),
    )
    (solo,) = s.step(
        "blog/solo names nobody",
        snapshot("solo", namespace="blog", sharing_key="k", ports=ports("443/TCP")),
    )
    assert isinstance(web, VipAssigned) and isinstance(solo, VipAssigned)
    assert solo.vips != web.vips and solo.sharing_refused is None
    (api,) = s.step(
        "blog/api names *",
        snapshot(
            "api",
            namespace="blog",
            sharing_key="k",
            ports=ports("8080/TCP"),
            share_namespaces=("*",),
        ),
    )
    assert isinstance(api, VipAssigned) and api.vips == web.vips
    claim = s.ipam.allocator.claims()[web.vips[0]]
    assert {(claim.namespace_of(x), x.name) for x in claim.sharers} == {
        ("shop", "web"),
        ("blog", "api"),
    }
    (nosy,) = s.step(
        "shop/nosy names nobody", snapshot("nosy", sharing_key="k", ports=ports("9090/TCP"))
    )
    assert isinstance(nosy, VipAssigned) and nosy.vips != web.vips
    assert nosy.sharing_refused is not None and "share-with-namespaces" in nosy.sharing_refused
    failed, kept = s.step(
        "shop/web withdraws its consent", snapshot("web", sharing_key="k", ports=ports("80/TCP"))
    )
    assert isinstance(failed, VipFailed) and "does not name 'blog'" in failed.message
    assert isinstance(kept, VipAssigned) and kept.vips == web.vips


def test_sharing_across_namespaces_one_side_only_gets_its_own_vip_and_says_why() -> None:
    """blog/api names shop, but shop/web names nobody: api gets a VIP of its own, and its
    SharingRefused note says web does not accept blog."""
    s = Story()
    (web,) = s.step("shop/web", snapshot("web", sharing_key="k", ports=ports("80/TCP")))
    (api,) = s.step(
        "blog/api names shop",
        snapshot(
            "api",
            namespace="blog",
            sharing_key="k",
            ports=ports("8080/TCP"),
            share_namespaces=("shop",),
        ),
    )
    assert isinstance(web, VipAssigned) and isinstance(api, VipAssigned)
    assert api.vips != web.vips
    assert api.sharing_refused is not None
    assert "east/shop/web (another namespace: it does not name 'blog'" in api.sharing_refused


def test_a_rejection_is_not_a_deletion() -> None:
    """ServiceRejected of a served Service (its snapshot in force) keeps its VIP: what ipam
    says is that VipAssigned again, nothing is withdrawn; one never valid asks for nothing."""
    s = Story()
    live = snapshot("web")
    (first,) = s.step("live", live)
    assert isinstance(first, VipAssigned)
    rejected = ServiceRejected(
        cluster="east",
        namespace="shop",
        name="web",
        uid=live.uid,
        resource_version="2",
        reason="InvalidService",
        message="annotation vipwire.io/poool is not one vipwire knows",
        in_force=live,
    )
    assert s.step("made invalid", rejected) == [first]
    assert s.ipam.records[ref("web")].state == "active"
    never = msgspec.structs.replace(rejected, name="typo", uid="uid-typo", in_force=None)
    assert s.step("never valid", never) == []
    assert s.count(VipReleasing, "web") == 0


def _status(name: str, vips: tuple[str, ...], uid: str | None = None) -> StatusWritten:
    return StatusWritten(
        cluster="east", namespace="shop", name=name, uid=uid or f"uid-{name}", vips=vips
    )


def _programmed(name: str, vips: tuple[str, ...]) -> LbProgrammed:
    return LbProgrammed(
        cluster="east",
        namespace="shop",
        name=name,
        uid=f"uid-{name}",
        appliance="sim-1",
        vips=vips,
        ports=(ServicePort(port=80),),
        members=(Member(node="n1", address="192.0.2.201"),),
    )


def test_a_changed_address_moves_make_before_break() -> None:
    """vipwire.io/ips changed on a served Service: the new VIP is claimed and announced
    with the old (adding); nothing is withdrawn until a status shows both (withdrawing:
    only the new announced, the old still claimed); the old claim goes once the appliance
    no longer serves it. The invariants hold after every step."""
    s = Story()
    (first,) = s.step("pinned", snapshot("web", requested_ips=("192.0.2.9",)))
    assert isinstance(first, VipAssigned) and first.vips == ("192.0.2.9",)
    (adding,) = s.step("asks for another", snapshot("web", requested_ips=("192.0.2.77",)))
    assert isinstance(adding, VipAssigned)
    assert adding.vips == ("192.0.2.9", "192.0.2.77") and adding.moving_from == ("192.0.2.9",)
    assert s.ipam.records[ref("web")].move == "adding"
    # Programmed, status not yet showing the new one: nothing moves on.
    assert s.step("programmed both", _programmed("web", adding.vips)) == []
    assert s.step("status shows the old only", _status("web", ("192.0.2.9",))) == []
    assert s.step("another incarnation's status", _status("web", adding.vips, "x")) == []
    (withdrawing,) = s.step("status shows both", _status("web", adding.vips))
    assert isinstance(withdrawing, VipAssigned)
    assert withdrawing.vips == ("192.0.2.77",) and withdrawing.moving_from == ("192.0.2.9",)
    record = s.ipam.records[ref("web")]
    assert record.move == "withdrawing" and "192.0.2.9" in s.ipam.allocator.claims()
    assert s.step("appliance still serves both", _programmed("web", adding.vips)) == []
    assert "192.0.2.9" in s.ipam.allocator.claims()
    (done,) = s.step("appliance serves the new only", _programmed("web", ("192.0.2.77",)))
    assert isinstance(done, VipAssigned)
    assert done.vips == ("192.0.2.77",) and done.moving_from == ()
    assert s.ipam.records[ref("web")].vips == ("192.0.2.77",)
    assert set(s.ipam.allocator.claims()) == {"192.0.2.77"}
    # The address left is free for another Service.
    (other,) = s.step("other takes it", snapshot("other", requested_ips=("192.0.2.9",)))
    assert isinstance(other, VipAssigned) and other.vips == ("192.0.2.9",)


def test_a_pool_change_moves_and_a_move_that_cannot_serve_both_is_refused() -> None:
    """vipwire.io/pool changed: a VIP of the new pool, make-before-break; a pool on another
    appliance group cannot serve both at once: MoveRefused, it keeps its VIP."""
    other = PoolSettings(name="other", addresses=("198.51.100.0/30",), appliance_group="g1")
    elsewhere = PoolSettings(name="elsewhere", addresses=("203.0.113.0/30",), appliance_group="dc2")
    s = Story(POOL, other, elsewhere)
    (first,) = s.step("lab", snapshot("web", pool=POOL.name))
    (adding,) = s.step("to other", snapshot("web", pool="other"))
    assert isinstance(first, VipAssigned) and isinstance(adding, VipAssigned)
    (new,) = (v for v in adding.vips if v not in first.vips)
    assert new.startswith("198.51.100.") and adding.moving_from == first.vips
    s.step("status", _status("web", adding.vips))
    s.step("appliance", _programmed("web", (new,)))
    assert s.ipam.records[ref("web")].vips == (new,)
    refused, kept = s.step("to elsewhere", snapshot("web", pool="elsewhere"))
    assert isinstance(refused, VipFailed) and refused.reason == "MoveRefused"
    assert "appliance group 'dc2'" in refused.message
    assert isinstance(kept, VipAssigned) and kept.vips == (new,)


def test_a_change_made_during_a_move_is_followed_once_it_is_over() -> None:
    """The Service asks for a third address while moving to a second: the move finishes
    first, then it moves on to the third (not silently left on the second)."""
    s = Story()
    s.step("pinned", snapshot("web", requested_ips=("192.0.2.9",)))
    (adding,) = s.step("to .77", snapshot("web", requested_ips=("192.0.2.77",)))
    assert isinstance(adding, VipAssigned)
    (during,) = s.step("to .88 meanwhile", snapshot("web", requested_ips=("192.0.2.88",)))
    assert isinstance(during, VipAssigned) and during.vips == adding.vips  # finishing first
    s.step("status", _status("web", adding.vips))
    done, again = s.step("appliance", _programmed("web", ("192.0.2.77",)))
    assert isinstance(done, VipAssigned) and done.vips == ("192.0.2.77",)
    assert isinstance(again, VipAssigned)
    assert again.vips == ("192.0.2.77", "192.0.2.88") and again.moving_from == ("192.0.2.77",)
