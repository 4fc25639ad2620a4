"""The desired virtual servers of a Service: members, families, policies, names."""

from __future__ import annotations

from typing import Literal

import pytest

from vipwire.contracts import (
    Endpoint,
    EndpointsSnapshot,
    Member,
    NodeEndpoints,
    NodeSnapshot,
    ServicePort,
    VipAssigned,
)
from vipwire.lbdriver import (
    KUBE_PROXY_HEALTH_PORT,
    InvalidAssignment,
    Monitor,
    desired_virtual_servers,
    members_of,
    virtual_server_name,
)
from vipwire.lbdriver.core.desired import MAX_NAME_LENGTH, node_address

CLUSTER = "prod"


def assigned(
    *,
    vips: tuple[str, ...] = ("192.0.2.10",),
    ports: tuple[ServicePort, ...] = (ServicePort(port=80),),
    policy: Literal["Cluster", "Local"] = "Cluster",
    hcnp: int | None = None,
    name: str = "web",
) -> VipAssigned:
    return VipAssigned(
        cluster=CLUSTER,
        namespace="shop",
        name=name,
        uid="u-1",
        vips=vips,
        pool="default",
        appliance_group="default",
        ports=ports,
        external_traffic_policy=policy,
        health_check_node_port=hcnp,
    )


def node(name: str, *addresses: str, eligible: bool = True, ready: bool = True) -> NodeSnapshot:
    return NodeSnapshot(
        cluster=CLUSTER, node=name, addresses=addresses, eligible=eligible, ready=ready
    )


def nodes(*snapshots: NodeSnapshot) -> dict[str, NodeSnapshot]:
    return {n.node: n for n in snapshots}


def endpoints(ready: dict[str, bool]) -> EndpointsSnapshot:
    return EndpointsSnapshot(
        cluster=CLUSTER,
        namespace="shop",
        name="web",
        nodes=tuple(
            NodeEndpoints(node=n, endpoints=(Endpoint(addresses=("10.244.0.5",), ready=r),))
            for n, r in ready.items()
        ),
    )


FLEET = nodes(
    node("n1", "198.51.100.1", "2001:db8::1"),
    node("n2", "198.51.100.2", "2001:db8::2"),
    node("n3", "198.51.100.3"),
)


def only(servers: dict[str, object]) -> object:
    assert len(servers) == 1
    return next(iter(servers.values()))


class TestMembers:
    def test_cluster_policy_takes_every_eligible_node_on_the_service_port(self) -> None:
        """With Cluster, every eligible node is a member, on the Service port (DSR)."""
        servers = desired_virtual_servers(
            assigned(ports=(ServicePort(port=443, node_port=31443),)), FLEET, None, prefix="vw"
        )
        (server,) = servers.values()
        assert server.port == 443
        assert server.address == "192.0.2.10"
        assert server.members == (
            Member(node="n1", address="198.51.100.1"),
            Member(node="n2", address="198.51.100.2"),
            Member(node="n3", address="198.51.100.3"),
        )

    def test_local_policy_takes_only_nodes_with_a_ready_endpoint(self) -> None:
        """With Local, only nodes holding a ready endpoint of the Service are members."""
        eps = endpoints({"n1": False, "n2": True, "n9": True})
        (server,) = desired_virtual_servers(
            assigned(policy="Local", hcnp=32000), FLEET, eps, prefix="vw"
        ).values()
        assert server.members == (Member(node="n2", address="198.51.100.2"),)

    def test_local_policy_without_endpoints_has_no_members(self) -> None:
        """Local with no endpoints known yet programs an empty pool, never all nodes."""
        (server,) = desired_virtual_servers(
            assigned(policy="Local", hcnp=32000), FLEET, None, prefix="vw"
        ).values()
        assert server.members == ()

    def test_cluster_policy_ignores_endpoints(self) -> None:
        """With Cluster, where the endpoints run does not change the members."""
        eps = endpoints({"n1": True})
        a = desired_virtual_servers(assigned(), FLEET, eps, prefix="vw")
        b = desired_virtual_servers(assigned(), FLEET, None, prefix="vw")
        assert a == b

    def test_ineligible_and_not_ready_nodes_are_excluded(self) -> None:
        """Nodes excluded from load balancers or NotReady are never members."""
        fleet = nodes(
            node("n1", "198.51.100.1"),
            node("n2", "198.51.100.2", eligible=False),
            node("n3", "198.51.100.3", ready=False),
        )
        (server,) = desired_virtual_servers(assigned(), fleet, None, prefix="vw").values()
        assert [m.node for m in server.members] == ["n1"]

    def test_ineligible_node_with_ready_endpoint_is_excluded_for_local(self) -> None:
        """A ready endpoint does not make an excluded node a member."""
        fleet = nodes(node("n1", "198.51.100.1", eligible=False), node("n2", "198.51.100.2"))
        eps = endpoints({"n1": True, "n2": True})
        (server,) = desired_virtual_servers(
            assigned(policy="Local", hcnp=32000), fleet, eps, prefix="vw"
        ).values()
        assert [m.node for m in server.members] == ["n2"]

    def test_no_nodes_means_no_members(self) -> None:
        """An unknown cluster (no nodes) yields virtual servers with empty pools."""
        (server,) = desired_virtual_servers(assigned(), {}, None, prefix="vw").values()
        assert server.members == ()


class TestFamilies:
    def test_ipv6_vip_takes_ipv6_addresses_and_skips_v4_only_nodes(self) -> None:
        """An IPv6 VIP's members are the nodes' IPv6 addresses; v4-only nodes drop out."""
        (server,) = desired_virtual_servers(
            assigned(vips=("2001:db8:ffff::10",)), FLEET, None, prefix="vw"
        ).values()
        assert server.members == (
            Member(node="n1", address="2001:db8::1"),
            Member(node="n2", address="2001:db8::2"),
        )

    def test_dual_stack_gets_one_server_per_vip_with_matching_families(self) -> None:
        """Dual-stack: each VIP gets its own servers, members of its own family only."""
        servers = desired_virtual_servers(
            assigned(vips=("192.0.2.10", "2001:db8:ffff::10")), FLEET, None, prefix="vw"
        )
        by_address = {s.address: s for s in servers.values()}
        assert set(by_address) == {"192.0.2.10", "2001:db8:ffff::10"}
        assert all("." in m.address for m in by_address["192.0.2.10"].members)
        assert all(":" in m.address for m in by_address["2001:db8:ffff::10"].members)
        assert len(members_of(servers.values())) == 5

    def test_addresses_are_canonical_and_malformed_ones_skipped(self) -> None:
        """Node and VIP addresses are compared in canonical form; junk is ignored."""
        n = node("n1", "not-an-ip", "2001:DB8:0::1", "198.51.100.1")
        assert node_address(n, 6) == "2001:db8::1"
        assert node_address(n, 4) == "198.51.100.1"
        (server,) = desired_virtual_servers(
            assigned(vips=("2001:DB8:FFFF:0::10",)), nodes(n), None, prefix="vw"
        ).values()
        assert server.address == "2001:db8:ffff::10"

    def test_first_address_of_a_family_wins(self) -> None:
        """A node with two InternalIPs of one family is one member, at the first."""
        n = node("n1", "198.51.100.1", "198.51.100.99")
        (server,) = desired_virtual_servers(assigned(), nodes(n), None, prefix="vw").values()
        assert server.members == (Member(node="n1", address="198.51.100.1"),)


class TestServers:
    def test_one_server_per_vip_port_and_protocol(self) -> None:
        """Each (VIP, port, protocol) is its own virtual server: 53/TCP and 53/UDP are two."""
        ports = (
            ServicePort(port=53, protocol="TCP"),
            ServicePort(port=53, protocol="UDP"),
            ServicePort(port=853, protocol="TCP"),
        )
        servers = desired_virtual_servers(assigned(ports=ports), FLEET, None, prefix="vw")
        assert sorted((s.port, s.protocol) for s in servers.values()) == [
            (53, "TCP"),
            (53, "UDP"),
            (853, "TCP"),
        ]
        assert {s.owner for s in servers.values()} == {"prod/shop/web"}

    def test_monitor_is_health_check_node_port_for_local(self) -> None:
        """Local is health-checked on healthCheckNodePort /healthz."""
        (server,) = desired_virtual_servers(
            assigned(policy="Local", hcnp=32123), FLEET, None, prefix="vw"
        ).values()
        assert server.monitor == Monitor(port=32123, path="/healthz")

    def test_monitor_is_kube_proxy_for_cluster(self) -> None:
        """Cluster is health-checked on kube-proxy's /healthz (10256)."""
        (server,) = desired_virtual_servers(assigned(), FLEET, None, prefix="vw").values()
        assert server.monitor == Monitor(port=KUBE_PROXY_HEALTH_PORT, path="/healthz")

    def test_invalid_vip_is_rejected(self) -> None:
        """A VIP that is not an address cannot be programmed."""
        with pytest.raises(InvalidAssignment):
            desired_virtual_servers(assigned(vips=("192.0.2.300",)), FLEET, None, prefix="vw")

    def test_same_input_same_output(self) -> None:
        """The computation is deterministic (so a replay writes nothing)."""
        a = desired_virtual_servers(
            assigned(vips=("192.0.2.10", "2001:db8::a")), FLEET, None, prefix="vw"
        )
        b = desired_virtual_servers(
            assigned(vips=("192.0.2.10", "2001:db8::a")), FLEET, None, prefix="vw"
        )
        assert a == b


class TestNames:
    def test_name_carries_prefix_cluster_service_vip_port_and_protocol(self) -> None:
        """Names read ``<prefix>-<cluster>-<ns>-<name>-<vip>-<port>-<proto>``."""
        (name,) = desired_virtual_servers(assigned(), FLEET, None, prefix="vipwire")
        assert name == "vipwire-prod-shop-web-192.0.2.10-80-tcp"

    def test_ipv6_colons_are_sanitised(self) -> None:
        """Characters vendors refuse (IPv6 colons) become underscores."""
        name = virtual_server_name(
            "vipwire",
            cluster="c",
            namespace="ns",
            name="s",
            vip="2001:db8::1",
            port=80,
            protocol="UDP",
        )
        assert name == "vipwire-c-ns-s-2001_db8__1-80-udp"

    def test_long_names_are_shortened_uniquely_and_keep_the_prefix(self) -> None:
        """Over-long names are cut with a hash suffix: still ours, still distinct."""
        long = "n" * 63
        a = virtual_server_name(
            "vipwire",
            cluster="c" * 63,
            namespace=long,
            name=long,
            vip="192.0.2.1",
            port=80,
            protocol="TCP",
        )
        b = virtual_server_name(
            "vipwire",
            cluster="c" * 63,
            namespace=long,
            name=long,
            vip="192.0.2.1",
            port=81,
            protocol="TCP",
        )
        assert len(a) == len(b) == MAX_NAME_LENGTH
        assert a != b
        assert a.startswith("vipwire-")
