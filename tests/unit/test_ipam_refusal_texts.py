"""What a refused Service is told names no other tenant; operators get the full detail."""

from __future__ import annotations

import msgspec

from vipwire.ipam.core.allocator import Allocator
from vipwire.ipam.core.choices import Allocation
from vipwire.ipam.core.claims import Request
from vipwire.ipam.core.refusals import AllocationFailure, taken
from vipwire.ipam.settings import PoolSettings

LAB = PoolSettings(name="lab", addresses=("198.51.100.0/29",))


def req(name: str, cluster: str = "east", namespace: str = "shop", **kw: object) -> Request:
    fields: dict[str, object] = {
        "cluster": cluster,
        "namespace": namespace,
        "name": name,
        "uid": f"uid-{cluster}-{namespace}-{name}",
    }
    fields.update(kw)
    return msgspec.convert(fields, Request)


def holder() -> Allocator:
    allocator = Allocator((LAB,))
    held = allocator.choose(req("healthy-1", requested_ips=("198.51.100.7",)))
    assert isinstance(held, Allocation)
    allocator.take(held)
    return allocator


def test_an_address_of_another_cluster_or_namespace_is_in_use_by_another_service() -> None:
    """Another cluster's or namespace's holder is "another Service" in the message (the
    Event); the detail for the log and `vipwire ipam show` names it."""
    allocator = holder()
    for cluster, namespace in (("west", "shop"), ("east", "default")):
        refused = allocator.choose(req("web", cluster, namespace, requested_ips=("198.51.100.7",)))
        assert isinstance(refused, AllocationFailure)
        assert refused.message == "requested address 198.51.100.7 is in use by another Service"
        assert "east/shop/healthy-1" in refused.full


def test_the_holder_is_named_within_the_same_cluster_and_namespace() -> None:
    """A Service of the same cluster and namespace is told who holds the address."""
    refused = holder().choose(req("web", requested_ips=("198.51.100.7",)))
    assert isinstance(refused, AllocationFailure)
    assert refused.message == "requested address 198.51.100.7 is in use by east/shop/healthy-1"
    assert refused.detail is None and refused.full == refused.message


def test_taken_keeps_the_detail_only_when_it_says_more() -> None:
    """The detail is kept apart only when the public text leaves someone out."""
    assert taken("192.0.2.1", "another Service", detail="west/a/b").full.endswith("west/a/b")
    assert taken("192.0.2.1", "east/a/b", detail="east/a/b").detail is None
