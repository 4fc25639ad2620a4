"""What kubectl reads from the emulator: Tables, field selectors, Event views, OpenAPI."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from vipwire.kubeemu import KubeEmulator, _openapi, _tables, _views
from vipwire.kubeemu import _resources as res
from vipwire.kubeemu._errors import ApiError
from vipwire.kubeemu._selectors import parse_field_selector

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def service(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "creationTimestamp": "2026-01-01T11:55:00Z"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.9", **spec},
    }


def cells(obj: dict[str, Any], rt: res.ResourceType = res.SERVICES) -> dict[str, Any]:
    table = _tables.table(rt, [obj], NOW, list_meta={})
    names = [c["name"] for c in table["columnDefinitions"]]
    return dict(zip(names, table["rows"][0]["cells"], strict=True))


def test_service_row_has_kubectl_columns_and_the_vip_under_external_ip() -> None:
    """A LoadBalancer Service's row: its ingress IP as External-IP, ports with node ports."""
    svc = service(ports=[{"port": 80, "nodePort": 30080, "protocol": "TCP"}])
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}]}}
    assert cells(svc) == {
        "Name": "web",
        "Type": "LoadBalancer",
        "Cluster-IP": "10.0.0.9",
        "External-IP": "203.0.113.5",
        "Port(s)": "80:30080/TCP",
        "Age": "5m",
        "Selector": "<none>",
    }


def test_external_ip_is_pending_without_ingress_and_none_for_cluster_ip() -> None:
    """No ingress yet: <pending>; a ClusterIP Service without externalIPs: <none>."""
    assert cells(service())["External-IP"] == "<pending>"
    assert cells(service(type="ClusterIP"))["External-IP"] == "<none>"


def test_wants_table_reads_kubectls_accept_header() -> None:
    """kubectl get's Accept asks for a Table; a plain JSON Accept does not."""
    accept = (
        "application/json;as=Table;v=v1;g=meta.k8s.io,"
        "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
    )
    assert _tables.wants_table(accept)
    assert not _tables.wants_table("application/json")


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (5, "5s"),
        (119, "119s"),
        (150, "2m30s"),
        (900, "15m"),
        (5 * 3600 + 60, "5h1m"),
        (86400, "24h"),
    ],
)
def test_human_duration_as_kubectl_prints_ages(seconds: int, shown: str) -> None:
    """Ages read as kubectl prints them."""
    assert _tables.human_duration(seconds) == shown


def test_core_event_selectors_match_involved_object() -> None:
    """kubectl describe's selector (involvedObject.*) matches the core view of an Event."""
    event = _views.core_event(
        {
            "metadata": {"name": "web.1", "namespace": "default"},
            "regarding": {"kind": "Service", "name": "web", "namespace": "default", "uid": "u1"},
            "note": "allocated",
            "reason": "IPAllocated",
            "reportingController": "vipwire.io/watcher",
        }
    )
    assert event["message"] == "allocated"
    assert event["source"] == {"component": "vipwire.io/watcher"}
    selector = parse_field_selector(
        "involvedObject.name=web,involvedObject.kind=Service,involvedObject.uid=u1",
        res.CORE_EVENTS,
    )
    assert selector.matches(event)
    assert not parse_field_selector("involvedObject.uid=u2", res.CORE_EVENTS).matches(event)


def test_field_labels_are_per_kind() -> None:
    """regarding.* is an events.k8s.io selector, involvedObject.* a core one; elsewhere 400."""
    parse_field_selector("regarding.name=web", res.EVENTS)
    with pytest.raises(ApiError, match="field label not supported"):
        parse_field_selector("involvedObject.name=web", res.EVENTS)
    with pytest.raises(ApiError, match="field label not supported"):
        parse_field_selector("involvedObject.name=web", res.SERVICES)


def test_event_views_round_trip() -> None:
    """core/v1 → events.k8s.io/v1 → core/v1 keeps the fields both views have."""
    core = {
        "metadata": {"name": "e"},
        "involvedObject": {"kind": "Service", "name": "web"},
        "message": "m",
        "reason": "R",
        "type": "Normal",
        "count": 3,
        "source": {"component": "c"},
    }
    back = _views.core_event(_views.events_event(core))
    assert {k: back[k] for k in core} == core


def test_unknown_fields_are_found_by_path() -> None:
    """A misspelled field is named by its path; maps, directives and status are not flagged."""
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x", "labels": {"any": "thing"}},
        "spec": {"ports": [{"port": 80, "protocl": "TCP"}], "selectr": {}, "$retainKeys": []},
        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}},
    }
    assert _openapi.unknown_fields(res.SERVICES, body) == ["spec.ports[0].protocl", "spec.selectr"]


def test_openapi_root_names_a_document_per_group_version_with_field_validation() -> None:
    """/openapi/v3 lists each served group-version; a kind's PATCH takes fieldValidation."""
    paths = _openapi.root()["paths"]
    assert set(paths) == {
        "api/v1",
        "apis/discovery.k8s.io/v1",
        "apis/events.k8s.io/v1",
        "apis/coordination.k8s.io/v1",
    }
    doc = _openapi.group_version_document("", "v1")
    patch = doc["paths"]["/api/v1/namespaces/{namespace}/services/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"]["kind"] == "Service"
    assert "fieldValidation" in {p["name"] for p in patch["parameters"]}


async def test_a_core_events_watch_sees_events_k8s_io_events() -> None:
    """kubectl events -w watches core/v1 Events: an events.k8s.io/v1 Event, existing or
    new, reaches it in the core view (message, involvedObject)."""
    emu = KubeEmulator("east")

    def event(name: str) -> dict[str, Any]:
        return {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": "default"},
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "reportingController": "vipwire.io/watcher",
            "reportingInstance": "w-0",
            "action": "Allocate",
            "reason": "IPAllocated",
            "type": "Normal",
            "regarding": {"kind": "Service", "namespace": "default", "name": "web"},
            "note": f"note of {name}",
        }

    await emu.create(event("before"))
    session = emu.watch("events", "default", field_selector="involvedObject.name=web")
    await emu.create(event("after"))
    seen = []
    async with asyncio.timeout(5):  # a bound on a hang, not on speed: both are queued
        while len(seen) < 2:
            item = await session.next()
            assert item is not None
            seen.append(item)
    session.close()
    assert [(e["type"], e["object"]["apiVersion"], e["object"]["message"]) for e in seen] == [
        ("ADDED", "v1", "note of before"),
        ("ADDED", "v1", "note of after"),
    ]
