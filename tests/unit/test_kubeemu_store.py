"""The emulator's pure parts: object store, history, selectors, patches, service strategy."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vipwire.kubeemu import ApiError, KubeEmulator
from vipwire.kubeemu._http import Settings
from vipwire.kubeemu._patch import (
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from vipwire.kubeemu._resources import ENDPOINT_SLICES, NAMESPACES, NODES, SERVICES, parse_path
from vipwire.kubeemu._selectors import Filter, parse_label_selector
from vipwire.kubeemu._store import Change, Store

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def store() -> Store:
    uids = (f"uid-{i}" for i in itertools.count())
    return Store(
        history_limit=5, clock=lambda: NOW, new_uid=lambda: next(uids), rng=random.Random(1)
    )


def _svc(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"ports": [{"port": 80}], **spec},
    }


def _record(store: Store) -> list[Change]:
    seen: list[Change] = []
    store.subscribe(seen.append)
    return seen


# --- store ----------------------------------------------------------------------


def test_bootstrap_namespaces_and_create_stamps_metadata(store: Store) -> None:
    """default and kube-system exist; create sets uid, timestamp, generation and next RV."""
    assert [n["metadata"]["name"] for n in store.objects(NAMESPACES)] == ["default", "kube-system"]
    assert store.resource_version == 2
    created = store.create(SERVICES, "default", _svc("web"))
    meta = created["metadata"]
    assert meta["resourceVersion"] == "3"
    assert meta["uid"] == "uid-2"
    assert meta["creationTimestamp"] == "2025-01-02T03:04:05Z"
    assert meta["generation"] == 1
    assert created["kind"] == "Service" and created["apiVersion"] == "v1"


def test_every_write_bumps_the_one_counter(store: Store) -> None:
    """resourceVersion is one cluster-wide counter across resources."""
    a = store.create(SERVICES, "default", _svc("a"))
    n = store.create(NODES, None, {"metadata": {"name": "n1"}})
    b = store.patch(SERVICES, "default", "a", MERGE_PATCH, {"metadata": {"labels": {"x": "y"}}})
    assert [int(o["metadata"]["resourceVersion"]) for o in (a, n, b)] == [3, 4, 5]


def test_noop_write_changes_nothing(store: Store) -> None:
    """A write that changes nothing keeps the resourceVersion and emits no change."""
    created = store.create(SERVICES, "default", _svc("a", {"k": "v"}))
    seen = _record(store)
    same = store.patch(SERVICES, "default", "a", MERGE_PATCH, {"metadata": {"labels": {"k": "v"}}})
    assert same == created
    assert seen == []
    assert store.resource_version == 3


def test_stale_resource_version_conflicts(store: Store) -> None:
    """An update whose metadata.resourceVersion is not the current one is 409 Conflict."""
    created = store.create(SERVICES, "default", _svc("a"))
    store.patch(SERVICES, "default", "a", MERGE_PATCH, {"metadata": {"labels": {"v": "2"}}})
    with pytest.raises(ApiError) as info:
        store.update(SERVICES, "default", "a", created)
    assert (info.value.code, info.value.reason) == (409, "Conflict")


def test_history_window_and_compaction(store: Store) -> None:
    """Changes after a retained RV replay; older RVs and compacted history are 410 Expired."""
    store.create(SERVICES, "default", _svc("a"))
    for i in range(6):  # history_limit is 5
        store.patch(SERVICES, "default", "a", MERGE_PATCH, {"metadata": {"labels": {"n": str(i)}}})
    assert store.resource_version == 9
    assert [c.resource_version for c in store.changes_since(SERVICES, 6)] == [7, 8, 9]
    assert [c.resource_version for c in store.changes_since(SERVICES, 4)] == [5, 6, 7, 8, 9]
    with pytest.raises(ApiError) as info:
        store.changes_since(SERVICES, 3)
    assert (info.value.code, info.value.reason) == (410, "Expired")
    store.compact()
    assert store.changes_since(SERVICES, 9) == []
    with pytest.raises(ApiError):
        store.changes_since(SERVICES, 8)


def test_history_is_per_resource(store: Store) -> None:
    """Churn on one resource does not expire watches of another."""
    start = store.resource_version
    for i in range(10):
        store.create(NODES, None, {"metadata": {"name": f"n{i}"}})
    assert store.changes_since(SERVICES, start) == []


def test_selector_transitions_become_added_and_deleted() -> None:
    """A watcher sees an object entering its selector as ADDED and leaving it as DELETED."""
    flt = Filter.parse("default", "tier=web")
    old = {
        "metadata": {
            "name": "a",
            "namespace": "default",
            "labels": {"tier": "web"},
            "resourceVersion": "4",
        }
    }
    new = {
        "metadata": {
            "name": "a",
            "namespace": "default",
            "labels": {"tier": "db"},
            "resourceVersion": "5",
        }
    }
    leaving = Change("MODIFIED", 5, SERVICES, new, old)
    kind, obj = leaving.for_filter(flt) or ("", {})
    assert kind == "DELETED"
    assert (
        obj["metadata"]["labels"] == {"tier": "web"} and obj["metadata"]["resourceVersion"] == "5"
    )
    entering = Change("MODIFIED", 6, SERVICES, old, new)
    assert entering.for_filter(flt) == ("ADDED", old)
    assert Change("MODIFIED", 7, SERVICES, new, new).for_filter(flt) is None


def test_finalizers_defer_deletion(store: Store) -> None:
    """With finalizers, DELETE sets deletionTimestamp; emptying them removes the object."""
    store.create(
        SERVICES, "default", {**_svc("a"), "metadata": {"name": "a", "finalizers": ["x.io/y"]}}
    )
    seen = _record(store)
    result = store.delete(SERVICES, "default", "a")
    assert result.deferred
    assert result.object["metadata"]["deletionTimestamp"] == "2025-01-02T03:04:05Z"
    with pytest.raises(ApiError) as info:
        store.patch(
            SERVICES,
            "default",
            "a",
            STRATEGIC_MERGE_PATCH,
            {"metadata": {"finalizers": ["new.io/z"]}},
        )
    assert info.value.code == 422
    store.patch(
        SERVICES, "default", "a", JSON_PATCH, [{"op": "remove", "path": "/metadata/finalizers"}]
    )
    assert [c.type for c in seen] == ["MODIFIED", "DELETED"]
    with pytest.raises(ApiError) as info:
        store.get(SERVICES, "default", "a")
    assert info.value.code == 404


def test_namespace_deletion_terminates_then_empties(store: Store) -> None:
    """A deleted namespace turns Terminating, loses its content, then goes itself."""
    store.create(NAMESPACES, None, {"metadata": {"name": "team"}})
    store.create(SERVICES, "team", _svc("a"))
    seen = _record(store)
    result = store.delete(NAMESPACES, None, "team")
    assert not result.deferred
    assert [(c.type, c.resource.plural) for c in seen] == [
        ("MODIFIED", "namespaces"),
        ("DELETED", "services"),
        ("DELETED", "namespaces"),
    ]
    assert seen[0].object["status"]["phase"] == "Terminating"
    with pytest.raises(ApiError) as info:
        store.delete(NAMESPACES, None, "kube-system")
    assert info.value.code == 403


def test_status_and_spec_are_written_separately(store: Store) -> None:
    """The main resource keeps the old status; /status keeps everything but status."""
    store.create(SERVICES, "default", _svc("a"))
    ingress = {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}
    main = store.patch(SERVICES, "default", "a", MERGE_PATCH, {"status": ingress})
    assert main["status"] == {"loadBalancer": {}}
    sub = store.patch(
        SERVICES,
        "default",
        "a",
        MERGE_PATCH,
        {"status": ingress, "spec": {"type": "NodePort"}},
        subresource="status",
    )
    assert sub["status"]["loadBalancer"]["ingress"] == [{"ip": "192.0.2.1", "ipMode": "VIP"}]
    assert sub["spec"]["type"] == "ClusterIP"


def test_paginated_list_reads_a_snapshot(store: Store) -> None:
    """A continue token lists the state as of the first page, even after later writes."""
    for name in ("a", "b", "c"):
        store.create(SERVICES, "default", _svc(name))
    first = store.list(SERVICES, Filter(), limit=2)
    assert [o["metadata"]["name"] for o in first.items] == ["a", "b"] and first.remaining == 1
    store.delete(SERVICES, "default", "c")
    rest = store.list(SERVICES, Filter(), continue_token=first.continue_token)
    assert [o["metadata"]["name"] for o in rest.items] == ["c"]
    assert rest.resource_version == first.resource_version


def test_generate_name_and_name_validation(store: Store) -> None:
    """generateName gets a random suffix; names must be DNS labels or subdomains."""
    made = store.create(
        ENDPOINT_SLICES,
        "default",
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"generateName": "web-"},
            "addressType": "IPv4",
        },
    )
    assert made["metadata"]["name"].startswith("web-") and len(made["metadata"]["name"]) == 9
    with pytest.raises(ApiError) as info:
        store.create(SERVICES, "default", _svc("Not_Valid"))
    assert info.value.code == 422


# --- services ---------------------------------------------------------------------


def test_service_allocations_survive_updates(store: Store) -> None:
    """Allocated IP and node ports stay when an update omits them; taken ones are refused."""
    created = store.create(SERVICES, "default", _svc("a", type="NodePort"))
    port = created["spec"]["ports"][0]["nodePort"]
    body = {**_svc("a", type="NodePort"), "metadata": {"name": "a"}}
    updated = store.update(SERVICES, "default", "a", body)
    assert updated["spec"]["ports"][0]["nodePort"] == port
    assert updated["spec"]["clusterIP"] == created["spec"]["clusterIP"]
    with pytest.raises(ApiError) as info:
        store.create(
            SERVICES, "default", _svc("b", type="NodePort", ports=[{"port": 80, "nodePort": port}])
        )
    assert "already allocated" in info.value.message
    with pytest.raises(ApiError):
        store.patch(SERVICES, "default", "a", MERGE_PATCH, {"spec": {"clusterIP": "198.18.9.9"}})
    cluster = store.patch(SERVICES, "default", "a", MERGE_PATCH, {"spec": {"type": "ClusterIP"}})
    assert "nodePort" not in cluster["spec"]["ports"][0]


# --- selectors and paths ----------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("a=1", {"a": "1"}, True),
        ("a==1", {"a": "2"}, False),
        ("a!=1", {}, True),
        ("a", {"a": ""}, True),
        ("!a", {"a": "1"}, False),
        ("a in (1, 2),b", {"a": "2", "b": "x"}, True),
        ("a notin (1,2)", {"a": "3"}, True),
        ("example.com/role=edge", {"example.com/role": "edge"}, True),
    ],
)
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    """Equality- and set-based label selectors match as documented."""
    assert parse_label_selector(selector).matches(labels) is expected


@pytest.mark.parametrize("selector", ["a in (1", "=x", "a=b c", ",", "a in ()x"])
def test_bad_label_selectors_are_400(selector: str) -> None:
    """Unparseable selectors are 400 BadRequest."""
    with pytest.raises(ApiError) as info:
        parse_label_selector(selector)
    assert info.value.code == 400


def test_paths() -> None:
    """REST paths map to resource, namespace, name and subresource like the real API."""
    t = parse_path("/api/v1/namespaces/ns/services/web/status")
    assert t is not None and (t.resource, t.namespace, t.name, t.subresource) == (
        SERVICES,
        "ns",
        "web",
        "status",
    )
    t = parse_path("/api/v1/services")
    assert t is not None and (t.resource, t.namespace, t.name) == (SERVICES, None, None)
    t = parse_path("/api/v1/namespaces/ns")
    assert t is not None and (t.resource, t.name) == (NAMESPACES, "ns")
    t = parse_path("/api/v1/namespaces/ns/status")
    assert t is not None and (t.resource, t.name, t.subresource) == (NAMESPACES, "ns", "status")
    t = parse_path("/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices")
    assert t is not None and (t.resource, t.namespace) == (ENDPOINT_SLICES, "ns")
    assert parse_path("/api/v1/services/web") is None  # namespaced object without namespace
    assert parse_path("/api/v1/namespaces/ns/nodes") is None
    assert parse_path("/apis/apps/v1/deployments") is None


# --- patches ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [  # RFC 7386, appendix A
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_rfc7386(target: Any, patch: Any, result: Any) -> None:
    """JSON merge patch follows RFC 7386's examples."""
    assert merge_patch(target, patch) == result


def test_json_patch_rfc6902() -> None:
    """JSON patch applies add/remove/replace/move/copy/test with JSON pointers."""
    doc = {"foo": ["bar", "baz"], "a/b": 1, "m~n": 2}
    out = json_patch(
        doc,
        [
            {"op": "add", "path": "/foo/1", "value": "qux"},
            {"op": "add", "path": "/foo/-", "value": "end"},
            {"op": "remove", "path": "/foo/0"},
            {"op": "replace", "path": "/a~1b", "value": 10},
            {"op": "move", "from": "/m~0n", "path": "/moved"},
            {"op": "copy", "from": "/foo", "path": "/copy"},
            {"op": "test", "path": "/moved", "value": 2},
        ],
    )
    assert out == {
        "foo": ["qux", "baz", "end"],
        "a/b": 10,
        "moved": 2,
        "copy": ["qux", "baz", "end"],
    }
    assert doc == {"foo": ["bar", "baz"], "a/b": 1, "m~n": 2}  # untouched
    for bad in (
        [{"op": "test", "path": "/a~1b", "value": True}],  # 1 is not true in JSON
        [{"op": "remove", "path": "/missing"}],
        [{"op": "replace", "path": "/foo/9", "value": 0}],
        [{"op": "add", "path": "/nope/x", "value": 0}],
    ):
        with pytest.raises(ApiError) as info:
            json_patch(doc, bad)
        assert info.value.code == 422
    with pytest.raises(ApiError) as info:
        json_patch(doc, {"op": "add"})
    assert info.value.code == 400


def test_strategic_merge_patch_known_lists() -> None:
    """SMP merges finalizers as a set and Service ports by port; other lists are replaced."""
    svc = {
        "kind": "Service",
        "metadata": {"finalizers": ["a"]},
        "spec": {
            "ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}],
            "externalIPs": ["x"],
        },
    }
    out = strategic_merge_patch(
        svc,
        {
            "metadata": {"finalizers": ["b", "a"]},
            "spec": {
                "ports": [
                    {"port": 80, "name": "web"},
                    {"port": 443, "$patch": "delete"},
                    {"port": 8080},
                ],
                "externalIPs": ["y"],
                "$setElementOrder/ports": [{"port": 80}],
            },
        },
        "Service",
    )
    assert out["metadata"]["finalizers"] == ["a", "b"]
    assert out["spec"]["ports"] == [{"port": 80, "name": "web"}, {"port": 8080}]
    assert out["spec"]["externalIPs"] == ["y"]
    replaced = strategic_merge_patch(
        svc, {"spec": {"ports": [{"$patch": "replace"}, {"port": 1}]}}, "Service"
    )
    assert replaced["spec"]["ports"] == [{"port": 1}]
    deleted = strategic_merge_patch(
        svc, {"spec": {"$patch": "replace", "type": "ClusterIP"}}, "Service"
    )
    assert deleted["spec"] == {"type": "ClusterIP"}


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=10,
)


@given(_json_values, _json_values)
def test_merge_patch_is_idempotent(target: Any, patch: Any) -> None:
    """Applying the same merge patch twice gives the same result as once (RFC 7386)."""
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once


@given(
    st.dictionaries(st.text(max_size=4), _json_values, max_size=4),
    st.text(max_size=4),
    _json_values,
)
def test_json_patch_add_then_remove_restores(doc: dict[str, Any], key: Any, value: Any) -> None:
    """Adding a new member and removing it again restores the document."""
    pointer = "/" + key.replace("~", "~0").replace("/", "~1")
    if key in doc:
        return
    added = json_patch(doc, [{"op": "add", "path": pointer, "value": value}])
    assert json_patch(added, [{"op": "remove", "path": pointer}]) == doc


def test_write_order_is_drawn_per_write_from_the_seed_and_not_at_all_by_default() -> None:
    """The same seed draws the same orders; at ``watch_first=0`` (the default) nothing is
    drawn, so the old order and every other use of randomness stay as they were."""
    first = Settings(watch_first=0.5, order_rng=random.Random(14))
    second = Settings(watch_first=0.5, order_rng=random.Random(14))
    drawn = [first.watch_goes_first() for _ in range(64)]
    assert drawn == [second.watch_goes_first() for _ in range(64)]
    assert True in drawn and False in drawn
    rng = random.Random(14)
    state = rng.getstate()
    default = Settings(order_rng=rng)
    assert not any(default.watch_goes_first() for _ in range(16))
    assert rng.getstate() == state
    assert all(Settings(watch_first=1.0).watch_goes_first() for _ in range(16))
    with pytest.raises(ValueError, match="watch_first"):
        KubeEmulator(watch_first=1.5)
