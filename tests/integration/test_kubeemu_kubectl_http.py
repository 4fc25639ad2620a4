"""The emulator's answers to what kubectl sends, over HTTP (no kubectl binary needed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from vipwire.kubeemu import KubeEmulator

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
SERVICES = "/api/v1/namespaces/default/services"


def service(name: str, **port: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, **port}]},
    }


@pytest.fixture
async def http() -> AsyncIterator[tuple[KubeEmulator, aiohttp.ClientSession]]:
    async with KubeEmulator("east") as emu, aiohttp.ClientSession(emu.url) as session:
        yield emu, session


async def test_field_validation_strict_warn_ignore(
    http: tuple[KubeEmulator, aiohttp.ClientSession],
) -> None:
    """Strict refuses an unknown field (400), Warn (the default) answers a Warning
    header, Ignore neither; another directive is a 400."""
    emu, session = http
    async with session.post(
        SERVICES, params={"fieldValidation": "Strict"}, json=service("a", prot="TCP")
    ) as resp:
        assert resp.status == 400
        body = await resp.json()
        assert 'strict decoding error: unknown field "spec.ports[0].prot"' in body["message"]
    assert emu.find("services", "default", "a") is None
    async with session.post(SERVICES, json=service("b", prot="TCP")) as resp:
        assert resp.status == 201
        assert resp.headers.getall("Warning") == ['299 - "unknown field \\"spec.ports[0].prot\\""']
    async with session.post(
        SERVICES, params={"fieldValidation": "Ignore"}, json=service("c", prot="TCP")
    ) as resp:
        assert resp.status == 201
        assert "Warning" not in resp.headers
    async with session.post(
        SERVICES, params={"fieldValidation": "Loud"}, json=service("d")
    ) as resp:
        assert resp.status == 400


async def test_get_as_table_and_core_events_by_involved_object(
    http: tuple[KubeEmulator, aiohttp.ClientSession],
) -> None:
    """A Table of Services on request; an events.k8s.io Event listed as a core Event
    by involvedObject.name, as kubectl describe asks (limit ignored, list whole)."""
    emu, session = http
    await emu.create(service("web"))
    async with session.get(SERVICES, headers={"Accept": TABLE}) as resp:
        table = await resp.json()
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]][:6] == [
        "Name",
        "Type",
        "Cluster-IP",
        "External-IP",
        "Port(s)",
        "Age",
    ]
    assert table["rows"][0]["object"]["metadata"]["name"] == "web"
    await emu.create(
        {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": "web.1", "namespace": "default"},
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "reportingController": "vipwire.io/watcher",
            "reportingInstance": "w-0",
            "action": "Allocate",
            "reason": "IPAllocated",
            "type": "Normal",
            "regarding": {"kind": "Service", "namespace": "default", "name": "web"},
            "note": "allocated",
        }
    )
    selector = "involvedObject.name=web,involvedObject.kind=Service"
    async with session.get(
        "/api/v1/namespaces/default/events", params={"fieldSelector": selector, "limit": "500"}
    ) as resp:
        assert resp.status == 200
        listed = await resp.json()
    assert [(e["apiVersion"], e["reason"], e["message"]) for e in listed["items"]] == [
        ("v1", "IPAllocated", "allocated")
    ]
    async with session.get("/api/v1/namespaces/default/events/web.1") as resp:
        assert (await resp.json())["involvedObject"]["name"] == "web"
