"""The watcher's encoded mapping: a dict in behaviour, whatever it holds."""

from __future__ import annotations

from typing import Any

import pytest

from vipwire.contracts import LbFailed, LbProgrammed, Member, ServicePort, VipAssigned
from vipwire.watcher.core.bus_view import BusView
from vipwire.watcher.core.packed import Interned, PackedDict
from vipwire.watcher.core.translate import SliceEndpoints, slice_endpoints, slim_service

SERVICE: dict[str, Any] = {
    "metadata": {
        "name": "web",
        "namespace": "shop",
        "uid": "u-1",
        "resourceVersion": "41",
        "generation": 3,
        "labels": {"app": "web"},
        "annotations": {"vipwire.io/ips": "198.51.100.7"},
        "finalizers": ["service.kubernetes.io/load-balancer-cleanup"],
        "deletionTimestamp": None,
    },
    "spec": {
        "type": "LoadBalancer",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}],
        "externalTrafficPolicy": "Local",
        "healthCheckNodePort": 31000,
    },
    "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7", "ipMode": "VIP"}]}},
}

PORTS = (ServicePort(port=80, protocol="TCP", name="http", target_port=8080, node_port=30080),)


def _assigned() -> VipAssigned:
    return VipAssigned(
        cluster="east",
        namespace="shop",
        name="web",
        uid="u-1",
        vips=("198.51.100.7",),
        pool="default",
        appliance_group="dc1",
        ports=PORTS,
    )


def _programmed() -> LbProgrammed:
    return LbProgrammed(
        cluster="east",
        namespace="shop",
        name="web",
        uid="u-1",
        appliance="sim-1",
        vips=("198.51.100.7",),
        ports=PORTS,
        members=(Member(node="n1", address="192.0.2.1"),),
    )


class TestLikeADict:
    def test_what_goes_in_comes_out_equal(self) -> None:
        """Kubernetes objects, structs and views of tagged messages decode to what was stored."""
        services: PackedDict[dict[str, Any]] = PackedDict(dict[str, Any])
        services["shop/web"] = slim_service(SERVICE)
        assert services["shop/web"] == slim_service(SERVICE)

        slices: PackedDict[SliceEndpoints] = PackedDict(SliceEndpoints)
        raw_slice = {
            "metadata": {"namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"port": 8080, "protocol": "TCP", "name": "http"}],
            "endpoints": [{"addresses": ["10.1.0.5"], "nodeName": "n1"}],
        }
        slices["shop/web-abc"] = slice_endpoints(raw_slice)
        assert slices["shop/web-abc"] == slice_endpoints(raw_slice)

        views: PackedDict[BusView] = PackedDict(BusView)
        failed = LbFailed(
            cluster="east",
            namespace="shop",
            name="web",
            uid="u-1",
            appliance="sim-1",
            reason="ApplianceUnreachable",
            message="timed out",
        )
        view = BusView(vip=_assigned(), vip_seq=4, lb=_programmed(), lb_seq=9, lb_before=failed)
        views["shop/web"] = view
        assert views["shop/web"] == view
        assert isinstance(views["shop/web"].lb_before, LbFailed)

    def test_the_mapping_protocol(self) -> None:
        """get with and without a default, in, len, iteration, pop and delete act as a dict's."""
        views: PackedDict[BusView] = PackedDict(BusView)
        assert views.get("shop/web") is None
        assert views.get("shop/web", BusView()) == BusView()
        views["shop/web"] = BusView(vip=_assigned(), vip_seq=1)
        views["shop/api"] = BusView()
        assert "shop/web" in views and "shop/db" not in views
        assert len(views) == 2 and sorted(views) == ["shop/api", "shop/web"]
        assert views.pop("shop/api") == BusView()
        assert views.pop("shop/api", None) is None
        del views["shop/web"]
        assert len(views) == 0
        with pytest.raises(KeyError):
            views["shop/web"]

    def test_a_read_is_a_copy(self) -> None:
        """Changing what a read returned changes nothing stored."""
        services: PackedDict[dict[str, Any]] = PackedDict(dict[str, Any])
        services["shop/web"] = slim_service(SERVICE)
        read = services["shop/web"]
        read["metadata"]["finalizers"].clear()
        read["spec"]["type"] = "ClusterIP"
        again = services["shop/web"]
        assert again["metadata"]["finalizers"] == ["service.kubernetes.io/load-balancer-cleanup"]
        assert again["spec"]["type"] == "LoadBalancer"

    def test_holds_a_fraction_of_the_decoded_size(self) -> None:
        """What the trade is for: a stored Service takes a few hundred bytes encoded."""
        services: PackedDict[dict[str, Any]] = PackedDict(dict[str, Any])
        services["shop/web"] = slim_service(SERVICE)
        encoded = services._data["shop/web"]
        assert isinstance(encoded, bytes) and len(encoded) < 600


def test_interned_values_share_one_copy_until_the_last_holder_lets_go() -> None:
    """Equal values taken twice come back as one object; the copy is dropped only when
    every holder released it."""
    shared: Interned[frozenset[str]] = Interned()
    first = shared.take(frozenset({"n1", "n2"}))
    second = shared.take(frozenset({"n2", "n1"}))
    assert second is first and len(shared) == 1
    shared.release(first)
    assert list(shared) == [first]
    shared.release(second)
    assert len(shared) == 0
    assert shared.take(frozenset({"n1", "n2"})) is not first  # a new copy after that
