"""The preflight's verdicts (``vipwire lb check``), from readings made by hand."""

from __future__ import annotations

from typing import Any

from vipwire.lbdriver.core.preflight import Check, Reading, decide, failed, parse_version


def reading(driver: str = "f5", **changes: Any) -> Reading:
    """A healthy appliance's reading, changed as given."""
    base: dict[str, Any] = {
        "appliance": "box",
        "driver": driver,
        "version": "17.1.0" if driver == "f5" else "4.1.4-GR1-P5 build 81",
        "rights": {"all-partitions": "admin"} if driver == "f5" else {"global": "write"},
        "partition": "prod",
        "partition_exists": True,
        "vlans": 1 if driver == "a10" else None,
        "route_domain": 0 if driver == "f5" else None,
        "route_domain_exists": True if driver == "f5" else None,
        "virtual_servers": {},
    }
    return Reading(**{**base, **changes})


def verdict(checks: list[Check], name: str) -> Check:
    [found] = [c for c in checks if c.check == name and c.verdict != "passed"] or [
        c for c in checks if c.check == name
    ]
    return found


def test_a_healthy_f5_and_a10_pass_every_check() -> None:
    """Nothing warned or failed for appliances that have what vipwire needs."""
    for driver in ("f5", "a10"):
        checks = decide(reading(driver))
        assert {c.verdict for c in checks} == {"passed"}, checks
        assert not failed(checks)


def test_a_refused_login_fails_and_stops_there() -> None:
    """Nothing else can be read without a session: one failed check, saying what to check."""
    checks = decide(reading(login_error="login as 'vip': HTTP 401: Authentication failed."))
    assert [(c.check, c.verdict) for c in checks] == [("login", "failed")]
    assert "password" in checks[0].action


def test_versions_below_the_minimum_fail_and_below_a_feature_warn() -> None:
    """ACOS 4.0 lacks user-tag, which the driver needs (failed); BIG-IP 13.1 works but
    lacks traffic-matching-criteria (warned)."""
    old = verdict(decide(reading("a10", version="4.0.3-P2 build 12")), "version")
    assert old.verdict == "failed" and "4.1" in old.detail and "4.1" in old.action
    assert verdict(decide(reading("a10", version="4.1.0-P1 build 3")), "version").verdict == (
        "passed"
    )
    f5 = verdict(decide(reading("f5", version="13.1.3")), "version")
    assert f5.verdict == "warned" and "14.1" in f5.detail
    assert parse_version("BIG-IP 17.1.0.3") == (17, 1, 0, 3)


def test_rights_that_cannot_write_fail() -> None:
    """An F5 operator or an A10 read-only admin cannot program; manager on the partition can."""
    f5 = verdict(decide(reading("f5", rights={"all-partitions": "operator"})), "rights")
    assert f5.verdict == "failed" and "admin" in f5.action
    manager = decide(reading("f5", rights={"prod": "manager", "Common": "guest"}))
    assert verdict(manager, "rights").verdict == "passed"
    a10 = verdict(decide(reading("a10", rights={"global": "read"})), "rights")
    assert a10.verdict == "failed" and "write" in a10.action
    scoped = decide(reading("a10", rights={"global": "read", "prod": "partition-write"}))
    assert verdict(scoped, "rights").verdict == "passed"


def test_a_missing_a10_partition_fails_unless_vipwire_creates_it() -> None:
    """partition_mode existing: create it yourself; create: a warning about L3V networking."""
    missing = verdict(decide(reading("a10", partition_exists=False, vlans=None)), "partition")
    assert missing.verdict == "failed" and "partition_mode" in missing.action
    created = decide(reading("a10", partition_exists=False, vlans=None, partition_mode="create"))
    assert verdict(created, "partition").verdict == "warned"
    assert "VLAN" in verdict(created, "partition").detail


def test_a_missing_f5_partition_is_created_by_an_admin_only() -> None:
    """An admin's driver creates the partition (a warning); a manager's cannot (failed)."""
    admin = decide(reading("f5", partition_exists=False))
    assert verdict(admin, "partition").verdict == "warned"
    manager = decide(reading("f5", partition_exists=False, rights={"all-partitions": "manager"}))
    assert verdict(manager, "partition").verdict == "failed"


def test_an_a10_partition_without_a_vlan_fails() -> None:
    """No data-plane interface: the VIP cannot ARP; add a VLAN with a VE."""
    check = verdict(decide(reading("a10", vlans=0)), "interface")
    assert check.verdict == "failed" and "VLAN" in check.action


def test_a_missing_route_domain_fails() -> None:
    """F5: the route domain vipwire's members use must exist."""
    check = verdict(
        decide(reading("f5", route_domain=7, route_domain_exists=False)), "route-domain"
    )
    assert check.verdict == "failed" and "7" in check.detail


def test_foreign_objects_inside_the_prefix_warn_and_ours_are_counted() -> None:
    """Objects named like ours without an owner mark are named; ours and others' counted."""
    checks = decide(
        reading(
            virtual_servers={
                "vipwire-prod-shop-web-192.0.2.10-80-tcp": "prod/shop/web",
                "vipwire-handmade": "",
                "legacy-app": "",
            }
        )
    )
    objects = [c for c in checks if c.check == "objects"]
    assert [c.verdict for c in objects] == ["warned", "passed"]
    assert "vipwire-handmade" in objects[0].detail
    assert "1 virtual server(s) in prod owned by vipwire, 1 of others" in objects[1].detail


def test_missing_built_in_parents_fail() -> None:
    """A /Common/fastL4 removed by hand: vipwire's profile cannot derive from it."""
    check = verdict(decide(reading("f5", missing_parents=("/Common/fastL4",))), "profiles")
    assert check.verdict == "failed"


def test_sim_has_no_vendor_checks() -> None:
    """The simulator answers login, rights and objects, nothing vendor-specific."""
    checks = decide(
        Reading(appliance="sim-a", driver="sim", rights={"tables": "ok"}, virtual_servers={})
    )
    assert [c.check for c in checks] == ["login", "rights", "objects"]
