"""Pure decisions of the fleet: drift findings, the active appliance, what status may show."""

from __future__ import annotations

import msgspec

from vipwire.contracts import APPLIANCE_DRIFT, Member
from vipwire.lbdriver import (
    CreateVirtualServer,
    DeleteVirtualServer,
    Monitor,
    UpdateMembers,
    UpdateVirtualServer,
    VirtualServer,
    choose_active,
    find_drift,
)
from vipwire.lbdriver.core.drift import describe_drift, drift_found, drift_unrepaired, held_by
from vipwire.lbdriver.core.outcomes import Explanation
from vipwire.lbdriver.io.status_server import redact_address

PREFIX = "vipwire"
WEB = "prod/shop/web"
API = "prod/shop/api"


def vs(name: str, owner: str = WEB, *members: str, port: int = 80) -> VirtualServer:
    return VirtualServer(
        name=name,
        owner=owner,
        address="192.0.2.10",
        port=port,
        protocol="TCP",
        members=tuple(Member(node=n, address=f"198.51.100.{n[1:]}") for n in sorted(members)),
        monitor=Monitor(port=10256),
    )


def by_name(*servers: VirtualServer) -> dict[str, VirtualServer]:
    return {s.name: s for s in servers}


A = "vipwire-prod-shop-web-192.0.2.10-80-tcp"
B = "vipwire-prod-shop-web-192.0.2.10-443-tcp"
X = "vipwire-prod-shop-api-192.0.2.11-80-tcp"


class TestFindDrift:
    def test_matching_listing_finds_nothing(self) -> None:
        """What we wrote is what is there: no repair, no orphan."""
        want = by_name(vs(A, WEB, "n1"))
        found = find_drift(want, {WEB: want}, {WEB}, PREFIX)
        assert found.repairs == {} and found.orphans == []

    def test_deleted_and_edited_objects_are_repairs_of_their_service(self) -> None:
        """An object removed or changed out of band is a repair for its owner, fewest ops."""
        want = by_name(vs(A, WEB, "n1", "n2"), vs(B, WEB, "n1", "n2", port=443))
        actual = by_name(vs(A, WEB, "n1"))  # B deleted, A's pool edited
        found = find_drift(actual, {WEB: want}, {WEB}, PREFIX)
        assert [type(op).__name__ for op in found.repairs[WEB]] == [
            "UpdateMembers",
            "CreateVirtualServer",
        ]
        assert isinstance(found.repairs[WEB][0], UpdateMembers)

    def test_our_objects_of_no_service_here_are_orphans(self) -> None:
        """Objects with our prefix whose owner is not placed here are deleted, sorted."""
        actual = by_name(vs(A, WEB, "n1"), vs(X, API, "n1"), vs("vipwire-prod-x-y", ""))
        found = find_drift(actual, {WEB: by_name(vs(A, WEB, "n1"))}, {WEB}, PREFIX)
        assert found.orphans == [
            DeleteVirtualServer(name=X),
            DeleteVirtualServer(name="vipwire-prod-x-y"),
        ]

    def test_foreign_objects_are_never_touched(self) -> None:
        """No prefix, no finding: even under a tag we know, even when nothing is placed here."""
        actual = by_name(vs("legacy-app", ""), vs("other-web", WEB), vs("vipwireish", API))
        found = find_drift(actual, {}, set(), PREFIX)
        assert found == ({}, [])

    def test_unsettled_services_are_neither_repaired_nor_orphaned(self) -> None:
        """A Service being reconciled right now is its own authority: its objects stay."""
        actual = by_name(vs(A, WEB, "n9"))
        found = find_drift(actual, {}, {WEB}, PREFIX)
        assert found == ({}, [])

    def test_a_name_a_service_claims_is_not_an_orphan(self) -> None:
        """A leftover under a name ipam gave to a settled Service is taken over, not deleted."""
        leftover = vs(A, "prod/old/app", "n1")
        want = by_name(vs(A, WEB, "n1"))
        found = find_drift(by_name(leftover), {WEB: want}, {WEB}, PREFIX)
        assert found.orphans == []
        assert len(found.repairs[WEB]) == 1  # an update that re-tags it

    def test_released_service_reappearing_is_deleted_again(self) -> None:
        """A releasing Service wants nothing; its objects come back only to be repaired away."""
        found = find_drift(by_name(vs(A, WEB, "n1")), {WEB: {}}, {WEB}, PREFIX)
        assert found.repairs == {WEB: [DeleteVirtualServer(name=A)]}

    def test_member_order_is_no_drift(self) -> None:
        """Appliances list pools in their own order."""
        want = by_name(vs(A, WEB, "n1", "n2"))
        listed = {A: msgspec.structs.replace(want[A], members=want[A].members[::-1])}
        assert find_drift(listed, {WEB: want}, {WEB}, PREFIX) == ({}, [])

    def test_held_by_counts_only_our_objects_of_those_owners(self) -> None:
        """Holdings decide where a restart writes: ours, of the group's Services."""
        actual = by_name(vs(A, WEB), vs(B, WEB, port=443), vs(X, API), vs("legacy", WEB))
        assert held_by(actual, {WEB}, PREFIX) == 2
        assert held_by(actual, set(), PREFIX) == 0


class TestDriftReports:
    def test_description_names_what_the_appliance_holds_instead(self) -> None:
        """Each repair is told as what was found: missing, other members, changed, extra."""
        ops = [
            CreateVirtualServer(server=vs(A, WEB, "n1")),
            UpdateMembers(name=B, members=()),
        ]
        text = describe_drift(ops)
        assert f"virtual server {A} is missing" in text
        assert f"virtual server {B} has other members" in text
        assert "behind vipwire's back" in text
        text = describe_drift([UpdateVirtualServer(server=vs(A)), DeleteVirtualServer(name=X)])
        assert f"{A} was changed" in text and f"{X} should not be there" in text

    def test_description_names_a_few_and_counts_the_rest(self) -> None:
        """A Service with many ports drifted names three objects and counts the others."""
        ops = [CreateVirtualServer(server=vs(f"{A}-{i}", port=80 + i)) for i in range(5)]
        text = describe_drift(ops)
        assert text.count("is missing") == 3 and "(and 2 more)" in text

    def test_found_and_unrepaired_are_appliance_drift_the_latter_with_why(self) -> None:
        """Both reports carry reason ApplianceDrift; the failed repair keeps the drift and
        adds the appliance's own reason and message."""
        found = drift_found("virtual server x is missing")
        assert found.reason == APPLIANCE_DRIFT
        assert found.message.startswith("virtual server x is missing") and "re-programming" in (
            found.message
        )
        failed = drift_unrepaired(
            "virtual server x is missing", Explanation("ApplianceRejected", "01070734:3: no")
        )
        assert failed.reason == APPLIANCE_DRIFT
        assert "virtual server x is missing" in failed.message
        assert "re-programming failed (ApplianceRejected: 01070734:3: no)" in failed.message
        assert failed != found  # a failed repair is news after the notice


class TestChooseActive:
    GROUP = ("a", "b", "c")

    def test_first_usable_in_order(self) -> None:
        """With no current active the first usable appliance wins."""
        assert choose_active(self.GROUP, None, {"a", "b", "c"}) == "a"
        assert choose_active(self.GROUP, None, {"b", "c"}) == "b"

    def test_current_stays_while_usable_no_flapping(self) -> None:
        """After a failover to b, a recovered a does not take the Services back."""
        assert choose_active(self.GROUP, "b", {"a", "b", "c"}) == "b"

    def test_fails_over_when_current_is_unusable(self) -> None:
        """The current active failing moves the group to the first usable one."""
        assert choose_active(self.GROUP, "a", {"b", "c"}) == "b"
        assert choose_active(self.GROUP, "b", {"a", "c"}) == "a"

    def test_holdings_decide_at_start(self) -> None:
        """At start the usable appliance holding most objects wins; ties go by order."""
        assert choose_active(self.GROUP, None, {"a", "b"}, {"a": 3, "b": 7}) == "b"
        assert choose_active(self.GROUP, None, {"a", "b"}, {"a": 0, "b": 0}) == "a"
        assert choose_active(self.GROUP, None, {"a"}, {"a": 0, "b": 9}) == "a"

    def test_nothing_usable_keeps_trying_somewhere(self) -> None:
        """All failing: stay on the current one (or the first); empty group: None."""
        assert choose_active(self.GROUP, "b", set()) == "b"
        assert choose_active(self.GROUP, None, set()) == "a"
        assert choose_active((), None, set()) is None


def test_status_never_shows_credentials_in_an_address() -> None:
    """A ``user:password@`` in a management address is cut before it is shown."""
    assert redact_address("https://admin:s3cret@bigip.example:8443") == "https://bigip.example:8443"
    assert redact_address("admin:s3cret@10.0.0.1") == "10.0.0.1"
    assert redact_address("https://bigip.example") == "https://bigip.example"
    assert redact_address(None) is None
