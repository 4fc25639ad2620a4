"""Graceful drain, decided in the pure core: disable first, remove after the timeout."""

from __future__ import annotations

import msgspec

from vipwire.contracts import (
    Endpoint,
    EndpointsSnapshot,
    Member,
    NodeEndpoints,
    NodeSnapshot,
    ServicePort,
    ServiceRef,
    VipAssigned,
)
from vipwire.lbdriver import Monitor, UpdateMembers, VirtualServer, diff
from vipwire.lbdriver.core.coalesce import Coalescer
from vipwire.lbdriver.core.drain import draining_members, plan_drain, with_draining
from vipwire.lbdriver.core.inventory import Inventory
from vipwire.lbdriver.core.outcomes import outcome

PREFIX = "vipwire"
NAME = "vipwire-prod-shop-web-192.0.2.10-80-tcp"


def m(node: str) -> Member:
    return Member(node=node, address=f"198.51.100.{int(node[1:])}")


def vs(*members: str, draining: tuple[str, ...] = ()) -> VirtualServer:
    return VirtualServer(
        name=NAME,
        owner="prod/shop/web",
        address="192.0.2.10",
        port=80,
        protocol="TCP",
        members=tuple(sorted(m(n) for n in members)),
        monitor=Monitor(port=10256),
        draining=tuple(sorted(m(n) for n in draining)),
    )


ALL = frozenset({"n1", "n2", "n3"})


def test_a_leaving_member_is_disabled_first_and_a_requeue_asked_for() -> None:
    """A member the Service no longer wants stays on the appliance, draining, until the timeout."""
    plan = plan_drain(
        {NAME: vs("n1")}, {NAME: vs("n1", "n2")}, since={}, now=100.0, timeout_s=30, present=ALL
    )
    assert plan.servers[NAME].members == (m("n1"),)
    assert plan.servers[NAME].draining == (m("n2"),)
    assert plan.since == {(NAME, m("n2")): 100.0}
    assert plan.requeue_after_s == 30
    assert diff(plan.servers, {NAME: vs("n1", "n2")}, PREFIX) == [
        UpdateMembers(name=NAME, members=(m("n1"),), draining=(m("n2"),))
    ]


def test_a_drain_keeps_its_start_and_ends_after_the_timeout() -> None:
    """Later reconciles keep the first drain time; once it has passed the member is removed."""
    actual = {NAME: vs("n1", draining=("n2",))}
    since = {(NAME, m("n2")): 100.0}
    during = plan_drain({NAME: vs("n1")}, actual, since=since, now=120.0, timeout_s=30, present=ALL)
    assert during.servers[NAME].draining == (m("n2"),)
    assert during.requeue_after_s == 10
    assert diff(during.servers, actual, PREFIX) == []  # nothing to write meanwhile
    after = plan_drain({NAME: vs("n1")}, actual, since=since, now=130.0, timeout_s=30, present=ALL)
    assert after.servers[NAME].draining == ()
    assert after.requeue_after_s is None
    assert after.since == {}
    assert diff(after.servers, actual, PREFIX) == [
        UpdateMembers(name=NAME, members=(m("n1"),), draining=())
    ]


def test_a_member_whose_node_is_gone_is_removed_at_once() -> None:
    """NodeGone: the node is not coming back, there is nothing to drain."""
    plan = plan_drain(
        {NAME: vs("n1")},
        {NAME: vs("n1", "n2")},
        since={},
        now=0.0,
        timeout_s=30,
        present=frozenset({"n1"}),
    )
    assert plan.servers[NAME].draining == ()
    assert plan.requeue_after_s is None


def test_no_drain_with_a_zero_timeout() -> None:
    """drain_timeout_s 0 keeps the old behaviour: removed in the same write."""
    plan = plan_drain(
        {NAME: vs("n1")}, {NAME: vs("n1", "n2")}, since={}, now=0.0, timeout_s=0, present=ALL
    )
    assert plan.servers[NAME].draining == ()


def test_a_member_that_comes_back_is_enabled_again() -> None:
    """A draining member wanted again is enabled, and its drain forgotten."""
    plan = plan_drain(
        {NAME: vs("n1", "n2")},
        {NAME: vs("n1", draining=("n2",))},
        since={(NAME, m("n2")): 0.0},
        now=5.0,
        timeout_s=30,
        present=ALL,
    )
    assert plan.servers[NAME] == vs("n1", "n2")
    assert plan.since == {}


def test_a_new_virtual_server_has_nothing_to_drain() -> None:
    """Only members the appliance holds can drain."""
    plan = plan_drain({NAME: vs("n1")}, {}, since={}, now=0.0, timeout_s=30, present=ALL)
    assert plan.servers[NAME] == vs("n1")
    assert plan.requeue_after_s is None


def test_the_report_names_draining_members_apart() -> None:
    """LbProgrammed lists the draining members in ``draining``, not in ``members``."""
    assignment = VipAssigned(
        cluster="prod",
        namespace="shop",
        name="web",
        uid="u",
        vips=("192.0.2.10",),
        pool="p",
        appliance_group="g",
        ports=(ServicePort(port=80),),
    )
    servers = {NAME: vs("n1", draining=("n2",))}
    report = outcome(ServiceRef("prod", "shop", "web"), assignment, "a", servers)
    assert report.members == (m("n1"),)  # type: ignore[union-attr]
    assert report.draining == (m("n2"),)  # type: ignore[union-attr]
    assert draining_members(servers) == (m("n2"),)
    # What was last written is what a drift pass compares against.
    assert with_draining({NAME: vs("n1")}, {NAME: (m("n2"),)}) == servers


def _inventory(*, drain_on_cordon: bool) -> tuple[Inventory, VipAssigned]:
    inventory = Inventory(PREFIX, drain_on_cordon=drain_on_cordon)
    assignment = VipAssigned(
        cluster="prod",
        namespace="shop",
        name="web",
        uid="u",
        vips=("192.0.2.10",),
        pool="p",
        appliance_group="g",
        ports=(ServicePort(port=80),),
        external_traffic_policy="Local",
        health_check_node_port=32000,
    )
    for n in ("n1", "n2"):
        inventory.note_node(
            NodeSnapshot(
                cluster="prod",
                node=n,
                addresses=(m(n).address,),
                cordoned=n == "n2",
            )
        )
    inventory.note_assignment(assignment, 1)
    return inventory, assignment


def test_a_cordoned_node_leaves_only_with_drain_on_cordon() -> None:
    """drain_on_cordon on: a cordoned node is no member (so it drains); off: it stays."""
    endpoints = EndpointsSnapshot(
        cluster="prod",
        namespace="shop",
        name="web",
        nodes=tuple(
            NodeEndpoints(node=n, endpoints=(Endpoint(addresses=("10.244.0.1",)),))
            for n in ("n1", "n2")
        ),
    )
    key = ServiceRef("prod", "shop", "web")
    for flag, nodes in ((True, ["n1"]), (False, ["n1", "n2"])):
        inventory, assignment = _inventory(drain_on_cordon=flag)
        inventory.note_endpoints(endpoints)
        servers = inventory.desired(key, assignment)
        assert sorted(x.node for s in servers.values() for x in s.members) == nodes


def test_a_terminating_endpoint_still_serving_keeps_its_node_a_member() -> None:
    """EndpointSlice serving=true, terminating=true (ready=false): the node stays a member
    under Local; once it stops serving, the node leaves."""
    inventory, assignment = _inventory(drain_on_cordon=False)
    key = ServiceRef("prod", "shop", "web")

    def endpoints(serving: bool) -> EndpointsSnapshot:
        ep = Endpoint(addresses=("10.244.0.1",), ready=False, serving=serving, terminating=True)
        return EndpointsSnapshot(
            cluster="prod",
            namespace="shop",
            name="web",
            nodes=(NodeEndpoints(node="n1", endpoints=(ep,)),),
        )

    assert inventory.note_endpoints(endpoints(True)) == [key]
    servers = inventory.desired(key, assignment)
    assert [x.node for s in servers.values() for x in s.members] == ["n1"]
    assert inventory.note_endpoints(endpoints(False)) == [key]
    servers = inventory.desired(key, assignment)
    assert [x.node for s in servers.values() for x in s.members] == []


def test_a_requeue_never_breaks_the_window() -> None:
    """A drain's requeue is due after its delay, but never sooner than one window after
    the last write; an earlier mark brings it forward, one write for both."""
    c: Coalescer[str, str] = Coalescer(10.0)
    c.mark("svc", 0.0, "a", urgent=True)
    assert [k for k, _ in c.take_due(0.0)] == ["svc"]
    c.done("svc", 1.0)
    assert c.requeue("svc", 1.0, 2.0, "drain") == 11.0  # the window wins
    assert c.take_due(10.9) == []
    assert [f.cause for _, f in c.take_due(11.0)] == ["drain"]
    c.done("svc", 12.0)
    assert c.requeue("svc", 12.0, 30.0, "drain") == 42.0
    c.mark("svc", 25.0, "node", urgent=True)
    flushes = c.take_due(25.0)
    assert len(flushes) == 1 and flushes[0][1].events == 2


def test_coalescer_requeue_is_a_replace_not_a_second_entry() -> None:
    """A pending mark that is due sooner keeps its time; a requeue does not delay it."""
    c: Coalescer[str, str] = Coalescer(0.0)
    c.mark("svc", 0.0, "a", urgent=True)
    assert c.requeue("svc", 0.0, 5.0, "drain") == 0.0
    assert msgspec.json.encode(sorted(k for k, _ in c.take_due(0.0))) == b'["svc"]'
