"""lbdriver.node_networks: which node addresses may become appliance members."""

from __future__ import annotations

from vipwire.contracts import NodeSnapshot
from vipwire.lbdriver import ApplianceSettings, LbdriverSettings
from vipwire.lbdriver.core.networks import admit, networks_of
from vipwire.runtime import section


def node(*addresses: str) -> NodeSnapshot:
    return NodeSnapshot(cluster="east", node="n1", addresses=addresses)


def test_a_list_holds_for_every_cluster_a_map_per_cluster_with_a_fallback() -> None:
    """A list restricts every cluster; a map names clusters, ``*`` the rest, and a
    cluster it does not name (no ``*``) is not restricted; empty: no restriction."""
    assert networks_of((), "east") is None
    assert [str(n) for n in networks_of(("10.0.0.0/8",), "west") or ()] == ["10.0.0.0/8"]
    per_cluster = {"east": ("192.0.2.0/24",), "*": ("10.0.0.0/8",)}
    assert [str(n) for n in networks_of(per_cluster, "east") or ()] == ["192.0.2.0/24"]
    assert [str(n) for n in networks_of(per_cluster, "west") or ()] == ["10.0.0.0/8"]
    assert networks_of({"east": ("192.0.2.0/24",)}, "west") is None


def test_addresses_outside_are_refused_one_by_one() -> None:
    """An address outside the networks is dropped and named; the others stay."""
    networks = networks_of(("192.0.2.0/24", "2001:db8::/64"), "east")
    admitted = admit(node("192.0.2.11", "203.0.113.66", "2001:db8::11"), networks)
    assert admitted.node == node("192.0.2.11", "2001:db8::11")
    assert admitted.refused == ("203.0.113.66",)
    assert admit(node("192.0.2.11"), networks).node == node("192.0.2.11")
    assert admit(node("203.0.113.66"), None).node == node("203.0.113.66")


def test_a_snapshot_with_no_address_left_keeps_the_node_as_it_was() -> None:
    """Every address refused: no snapshot to use (the last admitted one stays)."""
    admitted = admit(node("203.0.113.66"), networks_of(("192.0.2.0/24",), "east"))
    assert admitted.node is None and admitted.refused == ("203.0.113.66",)


def test_node_networks_decode_as_a_list_or_a_map() -> None:
    """The setting reads from a config section both as a list and as a map."""
    base = {"appliances": [{"name": "a"}]}
    as_list = section(
        {"lbdriver": {**base, "node_networks": ["10.0.0.0/8"]}}, "lbdriver", LbdriverSettings
    )
    assert as_list.node_networks == ("10.0.0.0/8",)
    as_map = section(
        {"lbdriver": {**base, "node_networks": {"east": ["10.0.0.0/8"]}}},
        "lbdriver",
        LbdriverSettings,
    )
    assert as_map.node_networks == {"east": ("10.0.0.0/8",)}
    assert LbdriverSettings(appliances=(ApplianceSettings(name="a"),)).node_networks == ()
