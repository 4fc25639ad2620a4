"""The diff: fewest writes, safe order, and nothing foreign touched."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vipwire.contracts import Member
from vipwire.lbdriver import (
    CreateVirtualServer,
    DeleteVirtualServer,
    Monitor,
    OperationConflict,
    UpdateMembers,
    UpdateVirtualServer,
    VirtualServer,
    apply_operations,
    diff,
    op_kind,
    op_name,
)
from vipwire.lbdriver.core.diff import canonical

PREFIX = "vipwire"


def m(node: str) -> Member:
    return Member(node=node, address=f"198.51.100.{int(node[1:])}")


def vs(
    name: str,
    *members: str,
    port: int = 80,
    monitor: int = 10256,
    owner: str = "prod/shop/web",
) -> VirtualServer:
    return VirtualServer(
        name=name,
        owner=owner,
        address="192.0.2.10",
        port=port,
        protocol="TCP",
        members=tuple(sorted(m(n) for n in members)),
        monitor=Monitor(port=monitor),
    )


def by_name(*servers: VirtualServer) -> dict[str, VirtualServer]:
    return {s.name: s for s in servers}


A = "vipwire-prod-shop-web-192.0.2.10-80-tcp"
B = "vipwire-prod-shop-web-192.0.2.10-443-tcp"
C = "vipwire-prod-shop-web-192.0.2.10-8080-tcp"


class TestFewestWrites:
    def test_everything_missing_is_created_in_name_order(self) -> None:
        """An empty appliance gets one create per desired server."""
        desired = by_name(vs(A, "n1"), vs(B, "n1", port=443))
        ops = diff(desired, {}, PREFIX)
        assert ops == [
            CreateVirtualServer(server=desired[B]),
            CreateVirtualServer(server=desired[A]),
        ]

    def test_same_desired_twice_is_zero_operations(self) -> None:
        """Once applied, the same desired state needs no write at all."""
        desired = by_name(vs(A, "n1", "n2"), vs(B, "n2", port=443))
        after = apply_operations({}, diff(desired, {}, PREFIX))
        assert diff(desired, after, PREFIX) == []

    def test_member_order_on_the_appliance_is_no_difference(self) -> None:
        """Appliances list pools in their own order; that alone writes nothing."""
        listed = msgspec.structs.replace(vs(A, "n1", "n2"), members=(m("n2"), m("n1"), m("n2")))
        assert diff(by_name(vs(A, "n1", "n2")), by_name(listed), PREFIX) == []

    def test_members_only_change_is_one_member_update(self) -> None:
        """A pool change alone is one update-members, not a replace."""
        ops = diff(by_name(vs(A, "n1", "n3")), by_name(vs(A, "n1", "n2")), PREFIX)
        assert ops == [UpdateMembers(name=A, members=(m("n1"), m("n3")))]

    def test_other_change_is_one_full_update_even_with_members(self) -> None:
        """A monitor change (with or without members) is exactly one update."""
        want = vs(A, "n1", monitor=32000)
        ops = diff(by_name(want), by_name(vs(A, "n1", "n2")), PREFIX)
        assert ops == [UpdateVirtualServer(server=want)]

    def test_owner_change_is_an_update(self) -> None:
        """Taking over a name (new owner tag) rewrites the object, it is not recreated."""
        want = vs(A, "n1", owner="prod/shop/other")
        assert [op_kind(o) for o in diff(by_name(want), by_name(vs(A, "n1")), PREFIX)] == ["update"]

    def test_undesired_owned_servers_are_deleted(self) -> None:
        """Our servers no longer desired are deleted."""
        ops = diff({}, by_name(vs(A, "n1"), vs(B, "n1", port=443)), PREFIX)
        assert ops == [DeleteVirtualServer(name=B), DeleteVirtualServer(name=A)]

    def test_deletes_come_before_updates_before_creates(self) -> None:
        """Deletes free destinations first; creates come last."""
        desired = by_name(vs(A, "n2"), vs(C, "n1", port=8080))
        actual = by_name(vs(A, "n1"), vs(B, "n1", port=443))
        assert [op_kind(o) for o in diff(desired, actual, PREFIX)] == [
            "delete",
            "update-members",
            "create",
        ]


class TestForeignObjects:
    def test_objects_without_our_prefix_are_never_touched(self) -> None:
        """Foreign objects stay, even though nothing desires them."""
        foreign = by_name(
            vs("legacy-web", "n1"),
            vs("vipwire2-prod-x", "n1"),
            vs("vipwireprod", "n1"),
            vs("VIPWIRE-prod-x", "n1"),
        )
        assert diff({}, foreign, PREFIX) == []
        desired = by_name(vs(A, "n1"))
        assert diff(desired, {**foreign, **desired}, PREFIX) == []

    def test_desired_names_must_carry_the_prefix(self) -> None:
        """A desired name we could not recognise as ours later is refused."""
        with pytest.raises(ValueError, match="without prefix"):
            diff(by_name(vs("web", "n1")), {}, PREFIX)


class TestApplyOperations:
    def test_conflicting_operations_are_refused(self) -> None:
        """Creating an existing name or writing a missing one is a conflict."""
        state = by_name(vs(A, "n1"))
        with pytest.raises(OperationConflict):
            apply_operations(state, [CreateVirtualServer(server=vs(A, "n2"))])
        with pytest.raises(OperationConflict):
            apply_operations(state, [UpdateMembers(name=B, members=())])
        with pytest.raises(OperationConflict):
            apply_operations(state, [UpdateVirtualServer(server=vs(B))])
        with pytest.raises(OperationConflict):
            apply_operations(state, [DeleteVirtualServer(name=B)])

    def test_input_state_is_not_modified(self) -> None:
        """Applying returns a new state and leaves the old one as it was."""
        state = by_name(vs(A, "n1"))
        apply_operations(state, [DeleteVirtualServer(name=A)])
        assert A in state


names = st.sampled_from([A, B, C, "vipwire-other-1", "legacy-1", "other-vipwire-1"])
servers = st.builds(
    lambda name, members, monitor: vs(name, *members, monitor=monitor),
    names,
    st.lists(st.sampled_from(["n1", "n2", "n3", "n4"]), max_size=4),
    st.sampled_from([10256, 32000]),
)
states = st.lists(servers, max_size=6).map(lambda xs: {s.name: s for s in xs})


@settings(max_examples=300, deadline=None)
@given(desired=states, actual=states)
def test_diff_converges_touching_only_what_differs(
    desired: dict[str, VirtualServer], actual: dict[str, VirtualServer]
) -> None:
    """Applying the diff yields desired for our objects, foreign ones untouched, then no ops."""
    desired = {n: s for n, s in desired.items() if n.startswith(f"{PREFIX}-")}
    ops = diff(desired, actual, PREFIX)
    after = apply_operations(actual, ops)
    ours = {n: canonical(s) for n, s in after.items() if n.startswith(f"{PREFIX}-")}
    assert ours == {n: canonical(s) for n, s in desired.items()}
    assert {n: s for n, s in after.items() if not n.startswith(f"{PREFIX}-")} == {
        n: s for n, s in actual.items() if not n.startswith(f"{PREFIX}-")
    }
    assert diff(desired, after, PREFIX) == []
    # At most one write per object, and only for objects that differ.
    touched = [op_name(op) for op in ops]
    assert len(touched) == len(set(touched))
