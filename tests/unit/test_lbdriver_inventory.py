"""The lbdriver's knowledge of its clusters: which Services a message affects, what stays
on an appliance, and what a drift pass or the start-up may take as done."""

from __future__ import annotations

from typing import Literal

from vipwire.contracts import (
    Endpoint,
    EndpointsSnapshot,
    NodeEndpoints,
    NodeGone,
    NodeSnapshot,
    ServicePort,
    ServiceRef,
    VipAssigned,
    VipReleasing,
    encode,
)
from vipwire.lbdriver.core.inventory import Inventory
from vipwire.lbdriver.core.listing import Listing
from vipwire.lbdriver.core.outcomes import fingerprint, outcome

PREFIX = "vipwire"
CLUSTER = "prod"


def assigned(
    name: str, *, policy: Literal["Cluster", "Local"] = "Cluster", group: str = "default"
) -> VipAssigned:
    return VipAssigned(
        cluster=CLUSTER,
        namespace="shop",
        name=name,
        uid=f"uid-{name}",
        vips=("192.0.2.10",),
        pool="default",
        appliance_group=group,
        ports=(ServicePort(port=80),),
        external_traffic_policy=policy,
        health_check_node_port=32000 if policy == "Local" else None,
    )


def node(name: str, address: str) -> NodeSnapshot:
    return NodeSnapshot(cluster=CLUSTER, node=name, addresses=(address,))


def endpoints(name: str, *ready: str) -> EndpointsSnapshot:
    return EndpointsSnapshot(
        cluster=CLUSTER,
        namespace="shop",
        name=name,
        nodes=tuple(
            NodeEndpoints(node=n, endpoints=(Endpoint(addresses=("10.0.0.1",)),)) for n in ready
        ),
    )


def key(name: str) -> ServiceRef:
    return ServiceRef(CLUSTER, "shop", name)


def test_a_node_change_affects_the_assigned_services_of_its_cluster_only_once() -> None:
    """A new or changed Node affects every assigned (not releasing) Service of its
    cluster; the same snapshot again, or the removal of an unknown node, affects none."""
    inventory = Inventory(PREFIX)
    inventory.note_assignment(assigned("web"), 1)
    inventory.note_assignment(
        VipReleasing(
            cluster=CLUSTER,
            namespace="shop",
            name="old",
            uid="uid-old",
            vips=("192.0.2.11",),
            appliance_group="default",
        ),
        2,
    )
    assert inventory.note_node(node("n1", "198.51.100.1")) == [key("web")]
    assert inventory.note_node(node("n1", "198.51.100.1")) == []
    assert inventory.note_node(NodeGone(cluster=CLUSTER, node="n9")) == []
    assert inventory.note_node(NodeGone(cluster=CLUSTER, node="n1")) == [key("web")]


def test_endpoints_matter_only_to_a_local_service_whose_ready_nodes_changed() -> None:
    """Cluster policy ignores endpoints; Local is affected when its ready nodes change."""
    inventory = Inventory(PREFIX)
    inventory.note_assignment(assigned("web"), 1)
    inventory.note_assignment(assigned("api", policy="Local"), 2)
    assert inventory.note_endpoints(endpoints("web", "n1")) == []
    assert inventory.note_endpoints(endpoints("api", "n1")) == [key("api")]
    assert inventory.note_endpoints(endpoints("api", "n1")) == []
    assert inventory.note_endpoints(endpoints("api", "n1", "n2")) == [key("api")]


def test_an_assignment_takes_the_stream_report_and_a_release_forgets_it() -> None:
    """A Service first assigned picks up the fingerprint the stream reported for it; its
    release removes it (and an emptied cluster) but the cluster stays a partition."""
    inventory = Inventory(PREFIX)
    inventory.reports = {key("web"): (b"stamp", 7)}
    inventory.note_assignment(assigned("web"), 5)
    state = inventory.services[key("web")]
    assert state.published == b"stamp" and state.assigned_seq == 5
    assert inventory.answered(key("web"), state)
    assert inventory.answered_after(key("web"), 6) and not inventory.answered_after(key("web"), 7)
    inventory.forget(key("web"))
    assert len(inventory) == 0 and inventory.by_cluster == {}
    assert inventory.partitions() == {CLUSTER}


def test_objects_stay_where_a_service_is_placed_or_was_last_written() -> None:
    """On the active appliance the group's Services stay; on another, only those whose
    last write went there (make before break) do."""
    inventory = Inventory(PREFIX)
    inventory.note_assignment(assigned("web"), 1)
    inventory.note_assignment(assigned("api"), 2)
    inventory.note_written(key("api"), "lb-b", {})
    staying_a = inventory.staying("lb-a", "default", CLUSTER, active=True)
    assert staying_a == {"prod/shop/web", "prod/shop/api"}
    assert inventory.staying("lb-b", "default", CLUSTER, active=False) == {"prod/shop/api"}


def test_an_unknown_service_keeps_its_objects_until_a_valid_message_says_otherwise() -> None:
    """A Service whose VIP message cannot be read is no orphan on any appliance of its
    partition; a valid assignment or release ends that."""
    inventory = Inventory(PREFIX)
    inventory.note_unknown(key("web"))
    assert inventory.partitions() == {CLUSTER}
    assert inventory.staying("lb-a", "default", CLUSTER, active=True) == {"prod/shop/web"}
    assert inventory.staying("lb-b", "default", CLUSTER, active=False) == {"prod/shop/web"}
    assert inventory.staying("lb-a", "default", "other", active=True) == set()
    inventory.forget(key("web"))
    assert inventory.staying("lb-a", "default", CLUSTER, active=True) == set()
    inventory.note_unknown(key("web"))
    inventory.note_assignment(assigned("web"), 3)
    assert inventory.unknown == set()


def test_a_drift_pass_compares_only_settled_services_whose_objects_changed() -> None:
    """A Service whose objects are what it last wrote needs no comparison; one whose
    objects changed does; one reconciled since the pass began is left to that reconcile."""
    inventory = Inventory(PREFIX)
    inventory.note_node(node("n1", "198.51.100.1"))
    inventory.note_assignment(assigned("web"), 1)
    desired = inventory.desired(key("web"), inventory.services[key("web")].assignment)
    inventory.note_written(key("web"), "lb-a", desired)
    same = Listing(desired, PREFIX)
    assert inventory.drift_candidate(key("web"), 0, "lb-a", "default", same) is None
    edited = Listing({}, PREFIX)
    assert inventory.drift_candidate(key("web"), 0, "lb-a", "default", edited) == desired
    assert inventory.drift_candidate(key("web"), 1, "lb-a", "default", edited) is None
    assert inventory.drift_candidate(key("web"), 0, "lb-b", "default", edited) is None


def test_the_start_up_adopts_a_service_only_when_nothing_is_to_write_or_say() -> None:
    """Adopted: the appliance holds exactly what is needed and the report would be the
    one last published; a different report or a missing object means a reconcile."""
    inventory = Inventory(PREFIX)
    inventory.note_node(node("n1", "198.51.100.1"))
    assignment = assigned("web")
    inventory.note_assignment(assignment, 1)
    state = inventory.services[key("web")]
    desired = inventory.desired(key("web"), state.assignment)
    state.published = fingerprint(encode(outcome(key("web"), state.assignment, "lb-a", desired)))
    found = inventory.adoptable(key("web"), state, state.assignment, "lb-a", desired)
    assert found == desired
    assert inventory.adoptable(key("web"), state, state.assignment, "lb-a", {}) is None
    assert inventory.adoptable(key("web"), state, state.assignment, "lb-b", desired) is None
