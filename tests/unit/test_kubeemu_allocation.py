"""The emulator's cluster IP and node port allocation, kept as an index by the store."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vipwire.kubeemu import ApiError
from vipwire.kubeemu._patch import MERGE_PATCH
from vipwire.kubeemu._resources import SERVICES
from vipwire.kubeemu._store import Store


def _lb(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}], **spec},
    }


def _held(obj: dict[str, Any]) -> tuple[str, list[int]]:
    spec = obj["spec"]
    return spec["clusterIP"], [p["nodePort"] for p in spec["ports"]]


def test_allocation_is_sequential_and_reuses_what_a_deleted_service_freed() -> None:
    """New Services get the lowest free cluster IP and node port; a deleted one's are
    handed out again, lowest first."""
    store = Store()
    a, b, c = (store.create(SERVICES, "default", _lb(n)) for n in "abc")
    assert [_held(s) for s in (a, b, c)] == [
        ("198.18.0.10", [30000]),
        ("198.18.0.11", [30001]),
        ("198.18.0.12", [30002]),
    ]
    store.delete(SERVICES, "default", "b")
    store.delete(SERVICES, "default", "a")
    d = store.create(SERVICES, "default", _lb("d"))
    e = store.create(SERVICES, "default", _lb("e"))
    f = store.create(SERVICES, "default", _lb("f"))
    assert [_held(s) for s in (d, e, f)] == [
        ("198.18.0.10", [30000]),
        ("198.18.0.11", [30001]),
        ("198.18.0.13", [30003]),
    ]


def test_a_service_keeps_its_own_ports_and_may_not_take_another_ones() -> None:
    """An update keeps the Service's allocations (they are not "taken" from itself); a
    port or IP another Service holds is refused."""
    store = Store()
    store.create(SERVICES, "default", _lb("a"))
    b = store.create(SERVICES, "default", _lb("b", externalTrafficPolicy="Local"))
    patched = store.patch(
        SERVICES, "default", "b", MERGE_PATCH, {"metadata": {"labels": {"x": "y"}}}
    )
    assert _held(patched) == _held(b)
    assert patched["spec"]["healthCheckNodePort"] == b["spec"]["healthCheckNodePort"]
    for spec in ({"clusterIP": "198.18.0.10"}, {"ports": [{"port": 80, "nodePort": 30000}]}):
        try:
            store.create(SERVICES, "default", _lb("c", **spec))
        except ApiError as err:
            assert err.code == 422
        else:
            raise AssertionError(f"{spec} was accepted although another Service holds it")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 7)), max_size=40))
def test_allocations_match_a_scan_of_every_service(ops: list[tuple[bool, int]]) -> None:
    """Whatever the creates and deletes, every Service holds a distinct IP and port, and
    a new one gets the lowest ones no other Service holds (what a full scan would give)."""
    store = Store()
    for create, index in ops:
        name = f"s{index}"
        exists = any(o["metadata"]["name"] == name for o in store.objects(SERVICES))
        if create and not exists:
            others = list(store.objects(SERVICES))
            used_ips = {o["spec"]["clusterIP"] for o in others}
            used_ports = {p["nodePort"] for o in others for p in o["spec"]["ports"]}
            ip, (port,) = _held(store.create(SERVICES, "default", _lb(name)))
            offsets = sorted(int(i.rsplit(".", 1)[1]) for i in used_ips)
            want_ip = next(n for n in range(10, 300) if n not in offsets)
            assert ip == f"198.18.0.{want_ip}"
            assert port == next(p for p in range(30000, 32768) if p not in used_ports)
        elif not create and exists:
            store.delete(SERVICES, "default", name)
    held = [_held(o) for o in store.objects(SERVICES)]
    assert len({ip for ip, _ in held}) == len(held)
    assert len({p for _, ports in held for p in ports}) == len(held)
