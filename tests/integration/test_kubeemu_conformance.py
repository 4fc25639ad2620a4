"""The Kubernetes API emulator, driven through kubernetes_asyncio as a controller would.

Each test names the documented API behaviour it checks (Kubernetes "API
Concepts": efficient detection of changes, resource versions, watch bookmarks,
410 Gone; "Finalizers"; optimistic concurrency; subresources).

kubernetes_asyncio traps these tests work around: its ``Watch`` yields
BOOKMARK events as raw dicts, retries a 410 once with the same stale
resourceVersion (only when no ``timeout_seconds`` is given), and lets aiohttp's
``ClientPayloadError`` escape when a connection breaks mid-stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from vipwire.kubeemu import ApiError, KubeEmulator, WatchBrokenError, write_kubeconfig
from vipwire.testing import eventually

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
FINALIZER = "vipwire.io/load-balancer"


@pytest.fixture
async def emu() -> AsyncIterator[KubeEmulator]:
    emulator = KubeEmulator("conformance", bookmark_interval=0.2, history_limit=50)
    await emulator.start()
    yield emulator
    await emulator.stop()


async def _api_client(path: Path, context: str | None = None) -> client.ApiClient:
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(path), context=context, client_configuration=cfg)
    return client.ApiClient(cfg)


@pytest.fixture
async def api(emu: KubeEmulator, tmp_path: Path) -> AsyncIterator[client.ApiClient]:
    path = emu.write_kubeconfig(tmp_path / "kubeconfig", context_name="conformance")
    async with await _api_client(path) as api_client:
        yield api_client


@pytest.fixture
def v1(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


def _service(name: str, **spec: Any) -> dict[str, Any]:
    labels = spec.pop("labels", {"app": name})
    body_spec = {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80}], **spec}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": body_spec,
    }


def _status(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


async def _events(stream: watch.Watch, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The first ``count`` events of a watch stream (type + raw object)."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        async for event in stream:
            seen.append({"type": event["type"], "object": event["raw_object"]})
            if len(seen) == count:
                break
    return seen


async def _drain(stream: watch.Watch, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every event until the server ends the stream (the watch carries ``timeout_seconds``)."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        async for event in stream:
            seen.append({"type": event["type"], "object": event["raw_object"]})
    return seen


def _rv(obj: Any) -> int:
    meta = obj["metadata"] if isinstance(obj, dict) else obj.metadata
    value = meta["resourceVersion"] if isinstance(meta, dict) else meta.resource_version
    return int(value)


# --- efficient detection of changes --------------------------------------------


async def test_list_then_watch_from_list_rv_sees_only_later_changes(v1: client.CoreV1Api) -> None:
    """A watch from a list's resourceVersion delivers exactly the changes made after that list."""
    await v1.create_namespaced_service("default", _service("before"))
    listed = await v1.list_namespaced_service("default")
    assert [s.metadata.name for s in listed.items] == ["before"]
    await v1.create_namespaced_service("default", _service("after"))
    await v1.patch_namespaced_service("before", "default", {"metadata": {"labels": {"x": "1"}}})

    async with watch.Watch() as w:
        stream = w.stream(
            v1.list_namespaced_service,
            "default",
            resource_version=listed.metadata.resource_version,
            timeout_seconds=1,
        )
        events = await _drain(stream)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "after"),
        ("MODIFIED", "before"),
    ]
    assert all(_rv(e["object"]) > int(listed.metadata.resource_version) for e in events)


async def test_watch_from_rv_replays_changes_after_it_in_order(v1: client.CoreV1Api) -> None:
    """Watching from resourceVersion N replays every change after N, in resourceVersion order."""
    first = await v1.create_namespaced_service("default", _service("a"))
    await v1.patch_namespaced_service("a", "default", {"metadata": {"labels": {"step": "2"}}})
    await v1.create_namespaced_service("default", _service("b"))
    await v1.delete_namespaced_service("b", "default")

    async with watch.Watch() as w:
        stream = w.stream(
            v1.list_namespaced_service,
            "default",
            resource_version=first.metadata.resource_version,
            timeout_seconds=1,
        )
        events = await _drain(stream)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("MODIFIED", "a"),
        ("ADDED", "b"),
        ("DELETED", "b"),
    ]
    versions = [_rv(e["object"]) for e in events]
    assert versions == sorted(versions) and len(set(versions)) == 3


async def test_watch_without_rv_starts_with_synthetic_added_events(
    v1: client.CoreV1Api, emu: KubeEmulator
) -> None:
    """A watch without resourceVersion starts with ADDED for each existing object, then changes."""
    await v1.create_namespaced_service("default", _service("one"))
    await v1.create_namespaced_service("default", _service("two"))
    async with watch.Watch() as w:
        stream = w.stream(v1.list_namespaced_service, "default", timeout_seconds=2)
        initial = await _events(stream, 2)
        await emu.patch("services", "default", "one", {"metadata": {"labels": {"live": "yes"}}})
        live = await _events(stream, 1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in initial] == [
        ("ADDED", "one"),
        ("ADDED", "two"),
    ]
    assert live[0]["type"] == "MODIFIED"
    assert live[0]["object"]["metadata"]["labels"]["live"] == "yes"


async def test_all_namespaces_watch_sees_every_namespace(
    v1: client.CoreV1Api, emu: KubeEmulator
) -> None:
    """/api/v1/services lists and watches Services across namespaces."""
    await emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}})
    listed = await v1.list_service_for_all_namespaces()
    await v1.create_namespaced_service("team-a", _service("x"))
    await v1.create_namespaced_service("default", _service("y"))
    async with watch.Watch() as w:
        stream = w.stream(
            v1.list_service_for_all_namespaces,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=1,
        )
        events = await _drain(stream)
    assert [
        (e["object"]["metadata"]["namespace"], e["object"]["metadata"]["name"]) for e in events
    ] == [
        ("team-a", "x"),
        ("default", "y"),
    ]


async def test_watch_bookmarks_carry_only_the_current_resource_version(
    v1: client.CoreV1Api, emu: KubeEmulator
) -> None:
    """allowWatchBookmarks: BOOKMARK objects hold only kind, apiVersion and the current RV."""
    created = await v1.create_namespaced_service("default", _service("quiet"))
    await emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "elsewhere"}})
    async with watch.Watch() as w:
        stream = w.stream(
            v1.list_namespaced_service,
            "default",
            resource_version=created.metadata.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=3,
        )
        events = await _events(stream, 1)
        # kubernetes_asyncio hands bookmarks over as raw dicts and continues from them.
        assert w.resource_version == emu.resource_version
    bookmark = events[0]["object"]
    assert events[0]["type"] == "BOOKMARK"
    assert bookmark == {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": emu.resource_version},
    }
    # The namespace write moved the cluster RV past the service's own.
    assert int(emu.resource_version) > int(created.metadata.resource_version)


async def test_no_bookmarks_unless_asked(v1: client.CoreV1Api) -> None:
    """The server sends BOOKMARK events only to watches that set allowWatchBookmarks."""
    async with watch.Watch() as w:
        stream = w.stream(
            v1.list_namespaced_service, "default", resource_version="1", timeout_seconds=1
        )
        events = await _drain(stream)
    assert [e["type"] for e in events] == []


async def test_timeout_seconds_ends_the_watch(v1: client.CoreV1Api) -> None:
    """timeoutSeconds bounds a watch: the server ends the stream after it, not before.

    Ended by the server: ``_drain`` returns (its own 5 s timeout would raise).
    """
    started = time.monotonic()
    async with watch.Watch() as w:
        await _drain(w.stream(v1.list_namespaced_service, "default", timeout_seconds=1))
    assert time.monotonic() - started >= 0.9


# --- 410 Gone -------------------------------------------------------------------


async def test_watch_from_compacted_rv_gets_410_error_event(
    v1: client.CoreV1Api, emu: KubeEmulator
) -> None:
    """A watch from a compacted RV gets HTTP 200, then an ERROR event with a 410 Expired Status."""
    stale = emu.resource_version
    await v1.create_namespaced_service("default", _service("churn"))
    emu.compact()

    resp = await v1.list_namespaced_service(
        "default", watch=True, resource_version=stale, _preload_content=False
    )
    async with resp:
        assert resp.status == 200
        event = json.loads(await resp.content.readline())
        assert await resp.content.readline() == b""  # the stream ends after the error
    assert event["type"] == "ERROR"
    assert event["object"]["kind"] == "Status"
    assert event["object"]["code"] == 410
    assert event["object"]["reason"] == "Expired"

    # Through Watch: an ApiException with status 410 (after its one retry, in watch-forever mode).
    for kwargs in ({"timeout_seconds": 5}, {}):
        async with watch.Watch() as w:
            with pytest.raises(ApiException) as info:
                await _events(
                    w.stream(
                        v1.list_namespaced_service, "default", resource_version=stale, **kwargs
                    ),
                    1,
                )
        assert info.value.status == 410

    # Watching from the current resourceVersion is still fine.
    async with watch.Watch() as w:
        stream = w.stream(
            v1.list_namespaced_service,
            "default",
            resource_version=emu.resource_version,
            timeout_seconds=1,
        )
        assert await _drain(stream) == []


async def test_bounded_history_expires_old_resource_versions(
    v1: client.CoreV1Api, emu: KubeEmulator
) -> None:
    """The server keeps a bounded window of changes; a watch from before it gets 410."""
    await v1.create_namespaced_service("default", _service("busy"))
    start = emu.resource_version
    for i in range(55):  # history_limit is 50
        await emu.patch("services", "default", "busy", {"metadata": {"labels": {"n": str(i)}}})
    async with watch.Watch() as w:
        with pytest.raises(ApiException) as info:
            await _events(
                w.stream(
                    v1.list_namespaced_service, "default", resource_version=start, timeout_seconds=2
                ),
                1,
            )
    assert info.value.status == 410
    # A resourceVersion still inside the window replays from there.
    recent = str(int(emu.resource_version) - 3)
    async with watch.Watch() as w:
        events = await _drain(
            w.stream(
                v1.list_namespaced_service, "default", resource_version=recent, timeout_seconds=1
            )
        )
    assert [e["object"]["metadata"]["labels"]["n"] for e in events] == ["52", "53", "54"]


async def test_paginated_list_continues_from_a_consistent_snapshot(
    v1: client.CoreV1Api, emu: KubeEmulator
) -> None:
    """limit/continue pages read one snapshot; a continue token past history is HTTP 410."""
    for name in ("a", "b", "c"):
        await v1.create_namespaced_service("default", _service(name))
    page = await v1.list_namespaced_service("default", limit=2)
    assert [s.metadata.name for s in page.items] == ["a", "b"]
    assert page.metadata.remaining_item_count == 1
    await v1.delete_namespaced_service("c", "default")
    await v1.create_namespaced_service("default", _service("d"))
    rest = await v1.list_namespaced_service("default", limit=2, _continue=page.metadata._continue)
    assert [s.metadata.name for s in rest.items] == ["c"]  # as of the first page
    assert rest.metadata.resource_version == page.metadata.resource_version
    assert rest.metadata._continue is None

    emu.compact()
    await emu.patch("services", "default", "a", {"metadata": {"labels": {"moved": "on"}}})
    with pytest.raises(ApiException) as info:
        await v1.list_namespaced_service("default", limit=2, _continue=page.metadata._continue)
    assert info.value.status == 410
    assert _status(info.value)["reason"] == "Expired"


# --- optimistic concurrency -------------------------------------------------------


async def test_merge_patch_with_stale_resource_version_is_409_conflict(
    v1: client.CoreV1Api,
) -> None:
    """A patch whose metadata.resourceVersion differs from the object's fails with 409 Conflict."""
    created = await v1.create_namespaced_service("default", _service("occ"))
    await v1.patch_namespaced_service("occ", "default", {"metadata": {"labels": {"v": "2"}}})
    stale = {
        "metadata": {"resourceVersion": created.metadata.resource_version, "labels": {"v": "3"}}
    }
    with pytest.raises(ApiException) as info:
        await v1.patch_namespaced_service("occ", "default", stale, _content_type=MERGE)
    assert info.value.status == 409
    status = _status(info.value)
    assert status["kind"] == "Status" and status["reason"] == "Conflict"
    assert status["details"] == {"name": "occ", "kind": "services"}
    current = await v1.read_namespaced_service("occ", "default")
    assert current.metadata.labels["v"] == "2"
    # The same precondition with the current resourceVersion succeeds.
    fresh = {
        "metadata": {"resourceVersion": current.metadata.resource_version, "labels": {"v": "3"}}
    }
    updated = await v1.patch_namespaced_service("occ", "default", fresh, _content_type=MERGE)
    assert updated.metadata.labels["v"] == "3"


async def test_put_with_stale_resource_version_is_409_conflict(api: client.ApiClient) -> None:
    """A PUT carrying an old resourceVersion is 409 Conflict (what leader election relies on)."""
    leases = client.CoordinationV1Api(api)
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "vipwire-watcher"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }
    created = await leases.create_namespaced_lease("kube-system", lease)
    created.spec.holder_identity = "b"
    renewed = await leases.replace_namespaced_lease("vipwire-watcher", "kube-system", created)
    assert renewed.spec.holder_identity == "b"
    assert _rv(renewed) > _rv(created)
    created.spec.holder_identity = "c"  # still carries the old resourceVersion
    with pytest.raises(ApiException) as info:
        await leases.replace_namespaced_lease("vipwire-watcher", "kube-system", created)
    assert info.value.status == 409
    assert (
        await leases.read_namespaced_lease("vipwire-watcher", "kube-system")
    ).spec.holder_identity == "b"


async def test_create_duplicate_is_409_already_exists(v1: client.CoreV1Api) -> None:
    """Creating an object whose name is taken fails with 409 AlreadyExists."""
    await v1.create_namespaced_service("default", _service("dup"))
    with pytest.raises(ApiException) as info:
        await v1.create_namespaced_service("default", _service("dup"))
    assert info.value.status == 409
    status = _status(info.value)
    assert status["reason"] == "AlreadyExists"
    assert status["message"] == 'services "dup" already exists'


async def test_noop_patch_keeps_resource_version_and_emits_nothing(
    v1: client.CoreV1Api, emu: KubeEmulator
) -> None:
    """A write that changes nothing does not bump resourceVersion and produces no watch event."""
    created = await v1.create_namespaced_service("default", _service("same", labels={"k": "v"}))
    before = emu.resource_version
    again = await v1.patch_namespaced_service(
        "same", "default", {"metadata": {"labels": {"k": "v"}}}
    )
    assert again.metadata.resource_version == created.metadata.resource_version
    assert emu.resource_version == before
    async with watch.Watch() as w:
        stream = w.stream(
            v1.list_namespaced_service,
            "default",
            resource_version=created.metadata.resource_version,
            timeout_seconds=1,
        )
        assert await _drain(stream) == []


# --- subresources ---------------------------------------------------------------


async def test_status_subresource_and_main_resource_write_disjoint_parts(
    v1: client.CoreV1Api,
) -> None:
    """The main resource ignores status; the /status subresource ignores all but status."""
    await v1.create_namespaced_service("default", _service("lb", labels={"app": "lb"}))
    ingress = {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}}
    main = await v1.patch_namespaced_service(
        "lb", "default", {**ingress, "metadata": {"labels": {"app": "main"}}}, _content_type=MERGE
    )
    assert main.status.load_balancer.ingress is None
    assert main.metadata.labels["app"] == "main"

    status_write = {
        **ingress,
        "spec": {"ports": [{"name": "http", "port": 8080}]},
        "metadata": {"labels": {"app": "status"}},
    }
    sub = await v1.patch_namespaced_service_status(
        "lb", "default", status_write, _content_type=MERGE
    )
    assert [i.ip for i in sub.status.load_balancer.ingress] == ["192.0.2.10"]
    assert sub.status.load_balancer.ingress[0].ip_mode == "VIP"  # defaulted for an ip
    assert sub.spec.ports[0].port == 80
    assert sub.metadata.labels["app"] == "main"
    assert sub.metadata.generation == main.metadata.generation

    # PUT on /status likewise.
    sub.spec.type = "ClusterIP"
    sub.status.load_balancer.ingress = []
    replaced = await v1.replace_namespaced_service_status("lb", "default", sub)
    assert replaced.spec.type == "LoadBalancer"
    assert not replaced.status.load_balancer.ingress


async def test_spec_change_bumps_generation(v1: client.CoreV1Api) -> None:
    """metadata.generation starts at 1 and moves with spec changes, not metadata changes."""
    created = await v1.create_namespaced_service("default", _service("gen"))
    assert created.metadata.generation == 1
    labelled = await v1.patch_namespaced_service(
        "gen", "default", {"metadata": {"labels": {"a": "b"}}}
    )
    assert labelled.metadata.generation == 1
    respec = await v1.patch_namespaced_service(
        "gen", "default", {"spec": {"externalTrafficPolicy": "Local"}}
    )
    assert respec.metadata.generation == 2
    assert respec.spec.health_check_node_port is not None


# --- finalizers and deletion ----------------------------------------------------


async def test_delete_with_finalizer_marks_then_removal_deletes(
    v1: client.CoreV1Api, emu: KubeEmulator
) -> None:
    """DELETE with finalizers sets deletionTimestamp; removing the last finalizer deletes."""
    created = await v1.create_namespaced_service("default", _service("fin"))
    with_finalizer = await v1.patch_namespaced_service(
        "fin", "default", {"metadata": {"finalizers": [FINALIZER]}}
    )
    async with watch.Watch() as w:
        stream = w.stream(
            v1.list_namespaced_service,
            "default",
            resource_version=with_finalizer.metadata.resource_version,
            timeout_seconds=5,
        )
        marked = await v1.delete_namespaced_service("fin", "default")
        assert marked.metadata.deletion_timestamp is not None
        assert marked.metadata.finalizers == [FINALIZER]
        events = await _events(stream, 1)
        assert events[0]["type"] == "MODIFIED"
        assert events[0]["object"]["metadata"]["deletionTimestamp"]
        assert events[0]["object"]["metadata"]["deletionGracePeriodSeconds"] == 0

        # A second DELETE changes nothing.
        again = await v1.delete_namespaced_service("fin", "default")
        assert again.metadata.resource_version == marked.metadata.resource_version

        # New finalizers may not be added to an object being deleted.
        with pytest.raises(ApiException) as info:
            await v1.patch_namespaced_service(
                "fin",
                "default",
                {"metadata": {"finalizers": [FINALIZER, "other.io/x"]}},
                _content_type=MERGE,
            )
        assert info.value.status == 422
        assert _status(info.value)["reason"] == "Invalid"

        await v1.patch_namespaced_service(
            "fin",
            "default",
            [{"op": "remove", "path": "/metadata/finalizers/0"}],
            _content_type=JSON_PATCH,
        )
        events = await _events(stream, 1)
    assert events[0]["type"] == "DELETED"
    gone = events[0]["object"]
    assert gone["metadata"]["uid"] == created.metadata.uid
    assert _rv(gone) == int(emu.resource_version)
    with pytest.raises(ApiException) as info:
        await v1.read_namespaced_service("fin", "default")
    assert info.value.status == 404


async def test_delete_without_finalizers_is_immediate_with_new_rv(v1: client.CoreV1Api) -> None:
    """DELETE without finalizers removes at once; DELETED carries the last state at a new RV."""
    created = await v1.create_namespaced_service("default", _service("bye"))
    async with watch.Watch() as w:
        stream = w.stream(
            v1.list_namespaced_service,
            "default",
            resource_version=created.metadata.resource_version,
            timeout_seconds=2,
        )
        await v1.delete_namespaced_service("bye", "default")
        events = await _events(stream, 1)
    assert events[0]["type"] == "DELETED"
    assert events[0]["object"]["spec"]["clusterIP"] == created.spec.cluster_ip
    assert _rv(events[0]["object"]) > int(created.metadata.resource_version)


async def test_delete_missing_is_404_and_preconditions_are_409(v1: client.CoreV1Api) -> None:
    """DELETE of a missing object is 404; unmet DeleteOptions preconditions are 409."""
    with pytest.raises(ApiException) as info:
        await v1.delete_namespaced_service("nothing", "default")
    assert info.value.status == 404
    status = _status(info.value)
    assert status["reason"] == "NotFound"
    assert status["message"] == 'services "nothing" not found'

    created = await v1.create_namespaced_service("default", _service("pre"))
    wrong_uid = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="not-the-uid"))
    with pytest.raises(ApiException) as info:
        await v1.delete_namespaced_service("pre", "default", body=wrong_uid)
    assert info.value.status == 409
    wrong_rv = client.V1DeleteOptions(preconditions=client.V1Preconditions(resource_version="1"))
    with pytest.raises(ApiException) as info:
        await v1.delete_namespaced_service("pre", "default", body=wrong_rv)
    assert info.value.status == 409
    right = client.V1DeleteOptions(
        preconditions=client.V1Preconditions(
            uid=created.metadata.uid, resource_version=created.metadata.resource_version
        )
    )
    await v1.delete_namespaced_service("pre", "default", body=right)


async def test_create_in_missing_namespace_is_404(v1: client.CoreV1Api) -> None:
    """Creating in a namespace that does not exist fails with 404 NotFound for the namespace."""
    with pytest.raises(ApiException) as info:
        await v1.create_namespaced_service("nowhere", _service("x"))
    assert info.value.status == 404
    assert _status(info.value)["details"] == {"name": "nowhere", "kind": "namespaces"}


async def test_namespace_deletion_removes_its_content(
    v1: client.CoreV1Api, emu: KubeEmulator
) -> None:
    """Deleting a namespace deletes its content; it is Terminating while finalizers hold some."""
    await v1.create_namespace({"metadata": {"name": "tmp"}})
    await v1.create_namespaced_service("tmp", _service("held"))
    await v1.patch_namespaced_service("held", "tmp", {"metadata": {"finalizers": [FINALIZER]}})
    await v1.delete_namespace("tmp")
    ns = await v1.read_namespace("tmp")
    assert ns.status.phase == "Terminating"
    with pytest.raises(ApiException) as info:
        await v1.create_namespaced_service("tmp", _service("late"))
    assert info.value.status == 403
    await v1.patch_namespaced_service(
        "held", "tmp", {"metadata": {"finalizers": None}}, _content_type=MERGE
    )
    assert emu.find("namespaces", None, "tmp") is None
    with pytest.raises(ApiException) as info:
        await v1.delete_namespace("default")
    assert info.value.status == 403


# --- selectors ------------------------------------------------------------------


async def test_label_selector_filters_list_and_watch(v1: client.CoreV1Api) -> None:
    """labelSelector filters lists and watches; objects leaving the selection are DELETED."""
    await v1.create_namespaced_service(
        "default", _service("a", labels={"tier": "web", "env": "prod"})
    )
    await v1.create_namespaced_service(
        "default", _service("b", labels={"tier": "db", "env": "prod"})
    )
    await v1.create_namespaced_service("default", _service("c", labels={"tier": "web"}))

    async def names(selector: str) -> list[str]:
        listed = await v1.list_namespaced_service("default", label_selector=selector)
        return [s.metadata.name for s in listed.items]

    assert await names("tier=web") == ["a", "c"]
    assert await names("tier==web,env=prod") == ["a"]
    assert await names("tier!=web") == ["b"]
    assert await names("env") == ["a", "b"]
    assert await names("!env") == ["c"]
    assert await names("tier in (db, cache)") == ["b"]
    assert await names("tier notin (db),env") == ["a"]
    fields = await v1.list_namespaced_service("default", field_selector="metadata.name=b")
    assert [s.metadata.name for s in fields.items] == ["b"]
    with pytest.raises(ApiException) as info:
        await v1.list_namespaced_service("default", label_selector="tier in (web")
    assert info.value.status == 400

    listed = await v1.list_namespaced_service("default", label_selector="tier=web")
    async with watch.Watch() as w:
        stream = w.stream(
            v1.list_namespaced_service,
            "default",
            label_selector="tier=web",
            resource_version=listed.metadata.resource_version,
            timeout_seconds=2,
        )
        await v1.patch_namespaced_service("b", "default", {"metadata": {"labels": {"env": "dev"}}})
        await v1.patch_namespaced_service("a", "default", {"metadata": {"labels": {"tier": "db"}}})
        await v1.patch_namespaced_service("b", "default", {"metadata": {"labels": {"tier": "web"}}})
        events = await _events(stream, 2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("DELETED", "a"),
        ("ADDED", "b"),
    ]


# --- fault injection --------------------------------------------------------------


async def test_break_watches_cuts_the_stream(v1: client.CoreV1Api, emu: KubeEmulator) -> None:
    """A watch connection broken mid-stream ends in a client error, not a clean end."""
    async with watch.Watch() as w:
        stream = w.stream(v1.list_namespaced_service, "default", timeout_seconds=30)
        await v1.create_namespaced_service("default", _service("pre-break"))
        assert (await _events(stream, 1))[0]["type"] == "ADDED"
        assert emu.open_watches == 1
        assert await emu.break_watches() == 1
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            await _events(stream, 1)
    assert emu.open_watches == 0


async def test_stop_ends_open_watches_cleanly(emu: KubeEmulator, tmp_path: Path) -> None:
    """Stopping the emulator ends open watch streams (the client sees the end of the stream)."""
    path = emu.write_kubeconfig(tmp_path / "kc")
    async with await _api_client(path) as api_client:
        v1 = client.CoreV1Api(api_client)
        async with watch.Watch() as w:
            stream = w.stream(v1.list_namespaced_service, "default", timeout_seconds=30)
            waiter = asyncio.create_task(_drain(stream, timeout=5))
            await eventually(lambda: emu.open_watches == 1, what="the watch is open")
            await emu.stop()
            assert await waiter == []
    assert emu.open_watches == 0
    assert asyncio.all_tasks() == {asyncio.current_task()}  # nothing left running


async def test_latency_and_injected_failures(v1: client.CoreV1Api, emu: KubeEmulator) -> None:
    """Fault knobs: per-request latency, and injected error Status responses."""
    emu.latency = 0.2
    started = time.monotonic()
    await v1.list_namespaced_service("default")
    assert time.monotonic() - started >= 0.2
    emu.latency = 0.0
    emu.inject_failure(503, reason="ServiceUnavailable", method="GET", resource="services")
    with pytest.raises(ApiException) as info:
        await v1.list_namespaced_service("default")
    assert info.value.status == 503
    await v1.list_namespaced_service("default")  # only once


# --- other resources ----------------------------------------------------------------


async def test_service_defaults_and_allocations(v1: client.CoreV1Api) -> None:
    """A LoadBalancer Service gets a cluster IP, nodePorts, and with Local a healthCheckNodePort."""
    svc = await v1.create_namespaced_service(
        "default",
        _service(
            "alloc",
            externalTrafficPolicy="Local",
            loadBalancerClass="vipwire.io/dsr",
            ports=[{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}],
        ),
    )
    spec = svc.spec
    assert spec.cluster_ip.startswith("198.1") and spec.cluster_ips == [spec.cluster_ip]
    assert all(30000 <= p.node_port <= 32767 for p in spec.ports)
    assert [p.target_port for p in spec.ports] == [80, 53]
    assert spec.ports[0].protocol == "TCP"
    assert spec.health_check_node_port not in {p.node_port for p in spec.ports}
    assert spec.ip_families == ["IPv4"] and spec.ip_family_policy == "SingleStack"
    other = await v1.create_namespaced_service("default", _service("other"))
    assert other.spec.external_traffic_policy == "Cluster"
    assert other.spec.cluster_ip != spec.cluster_ip
    assert other.spec.ports[0].node_port not in {p.node_port for p in spec.ports}
    with pytest.raises(ApiException) as info:
        await v1.create_namespaced_service("default", _service("bad", type="Magic"))
    assert info.value.status == 422
    with pytest.raises(ApiException) as info:
        await v1.patch_namespaced_service(
            "alloc", "default", {"spec": {"loadBalancerClass": "other.io/x"}}
        )
    assert info.value.status == 422


async def test_nodes_are_cluster_scoped_with_status(
    v1: client.CoreV1Api, emu: KubeEmulator
) -> None:
    """Nodes are cluster-scoped; their Ready condition is written through /status."""
    await emu.add_node("node-1.example", "192.0.2.21", labels={"zone": "a"})
    node = await v1.read_node("node-1.example")
    assert node.metadata.namespace is None
    assert (node.status.addresses[0].type, node.status.addresses[0].address) == (
        "InternalIP",
        "192.0.2.21",
    )
    listed = await v1.list_node(label_selector="zone=a")
    assert [n.metadata.name for n in listed.items] == ["node-1.example"]
    await emu.set_node_ready("node-1.example", False)
    node = await v1.read_node_status("node-1.example")
    ready = [c for c in node.status.conditions if c.type == "Ready"]
    assert [c.status for c in ready] == ["False"]


async def test_endpoint_slices_and_events_in_their_groups(
    api: client.ApiClient, emu: KubeEmulator
) -> None:
    """EndpointSlices and events.k8s.io Events are served at their group paths, validated."""
    discovery = client.DiscoveryV1Api(api)
    await discovery.create_namespaced_endpoint_slice(
        "default",
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"generateName": "web-", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["192.0.2.30"], "nodeName": "node-1", "conditions": {"ready": True}}
            ],
            "ports": [{"port": 8080, "protocol": "TCP"}],
        },
    )
    slices = await discovery.list_endpoint_slice_for_all_namespaces(
        label_selector="kubernetes.io/service-name=web"
    )
    assert len(slices.items) == 1
    assert slices.items[0].metadata.name.startswith("web-")
    with pytest.raises(ApiException) as info:
        await discovery.create_namespaced_endpoint_slice(
            "default",
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": "bad"},
                "endpoints": [],
            },
        )
    assert info.value.status == 422

    events = client.EventsV1Api(api)
    event = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "web.1"},
        "eventTime": "2025-01-01T00:00:00.000000Z",
        "reportingController": "vipwire.io/watcher",
        "reportingInstance": "watcher-0",
        "action": "Programmed",
        "reason": "VIPAssigned",
        "type": "Normal",
        "regarding": {"kind": "Service", "namespace": "default", "name": "web"},
        "note": "assigned 203.0.113.5",
    }
    created = await events.create_namespaced_event("default", event)
    assert created.reason == "VIPAssigned"
    assert emu.get("events.events.k8s.io", "default", "web.1")["note"] == "assigned 203.0.113.5"
    with pytest.raises(ApiException) as info:
        await events.create_namespaced_event(
            "default", {**event, "metadata": {"name": "x"}, "action": ""}
        )
    assert info.value.status == 422
    # Core v1 events are just stored.
    core = await client.CoreV1Api(api).create_namespaced_event(
        "default",
        {
            "metadata": {"name": "core.1"},
            "involvedObject": {"kind": "Service", "name": "web"},
            "reason": "X",
        },
    )
    assert core.reason == "X"


async def test_strategic_merge_patch_merges_finalizers(v1: client.CoreV1Api) -> None:
    """A strategic merge patch (the client default) merges metadata.finalizers as a set."""
    await v1.create_namespaced_service("default", _service("smp"))
    await v1.patch_namespaced_service("smp", "default", {"metadata": {"finalizers": ["one.io/a"]}})
    merged = await v1.patch_namespaced_service(
        "smp", "default", {"metadata": {"finalizers": ["two.io/b"]}}
    )
    assert merged.metadata.finalizers == ["one.io/a", "two.io/b"]
    dropped = await v1.patch_namespaced_service(
        "smp", "default", {"metadata": {"$deleteFromPrimitiveList/finalizers": ["one.io/a"]}}
    )
    assert dropped.metadata.finalizers == ["two.io/b"]
    with pytest.raises(ApiException) as info:
        await v1.patch_namespaced_service(
            "smp",
            "default",
            [{"op": "test", "path": "/metadata/finalizers/0", "value": "nope"}],
            _content_type=JSON_PATCH,
        )
    assert info.value.status == 422


async def test_discovery_documents(api: client.ApiClient) -> None:
    """/version, /api, /apis and the resource lists answer as discovery clients expect."""
    version = await client.VersionApi(api).get_code()
    assert version.major == "1"
    assert (await client.CoreApi(api).get_api_versions()).versions == ["v1"]
    groups = await client.ApisApi(api).get_api_versions()
    assert {g.name for g in groups.groups} == {
        "coordination.k8s.io",
        "discovery.k8s.io",
        "events.k8s.io",
    }
    resources = await client.CoreV1Api(api).get_api_resources()
    assert {"services", "services/status", "nodes", "namespaces", "events"} <= {
        r.name for r in resources.resources
    }
    group = await client.DiscoveryApi(api).get_api_group()
    assert group.preferred_version.group_version == "discovery.k8s.io/v1"


async def test_clusters_are_independent(tmp_path: Path) -> None:
    """Each cluster has its own objects and RV counter; one kubeconfig has a context each."""
    async with KubeEmulator("east") as east, KubeEmulator("west", token="s3cret") as west:
        await east.create(_service("only-east"))
        path = write_kubeconfig(tmp_path / "kc", {"east": east, "west": west}, current="east")
        for context, expected in (("east", ["only-east"]), ("west", [])):
            async with await _api_client(path, context) as api_client:
                listed = await client.CoreV1Api(api_client).list_namespaced_service("default")
                assert [s.metadata.name for s in listed.items] == expected
        assert east.resource_version != west.resource_version
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{west.url}/api/v1/namespaces") as resp,
        ):
            assert resp.status == 401


async def test_in_process_watch_shares_the_http_event_stream(
    v1: client.CoreV1Api, emu: KubeEmulator
) -> None:
    """In-process watches share the HTTP event stream: same RVs, bookmarks, 410 and breaks."""
    start = emu.resource_version
    async with emu.watch("services", "default", resource_version=start, allow_bookmarks=True) as ws:
        created = await v1.create_namespaced_service("default", _service("shared"))
        added = await anext(ws)
        assert added["type"] == "ADDED"
        assert added["object"]["metadata"]["resourceVersion"] == created.metadata.resource_version
        bookmark = await anext(ws)
        assert bookmark["type"] == "BOOKMARK"
        assert bookmark["object"]["metadata"]["resourceVersion"] == emu.resource_version
        await emu.break_watches()
        with pytest.raises(WatchBrokenError):
            await anext(ws)
    emu.compact()
    with pytest.raises(ApiError) as info:
        emu.watch("services", resource_version=start)
    assert (info.value.code, info.value.reason) == (410, "Expired")


# --- what the watcher relies on: leases, event series, status conditions ----------


async def test_lease_race_has_exactly_one_winner(api: client.ApiClient) -> None:
    """Two candidates writing the same read Lease: one succeeds, the other gets 409 Conflict
    (coordination.k8s.io/v1; optimistic concurrency is what makes election safe)."""
    leases = client.CoordinationV1Api(api)
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "race"},
        "spec": {"holderIdentity": "", "leaseDurationSeconds": 15},
    }
    await leases.create_namespaced_lease("default", body)
    read = (await leases.read_namespaced_lease("race", "default")).to_dict()
    outcomes: list[int] = []
    for holder in ("a", "b"):
        attempt = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "race", "resourceVersion": read["metadata"]["resource_version"]},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15},
        }
        try:
            await leases.replace_namespaced_lease("race", "default", attempt)
            outcomes.append(200)
        except ApiException as exc:
            outcomes.append(exc.status)
    assert outcomes == [200, 409]
    assert (await leases.read_namespaced_lease("race", "default")).spec.holder_identity == "a"


async def test_lease_spec_is_validated(api: client.ApiClient) -> None:
    """leaseDurationSeconds must be greater than 0 and leaseTransitions not negative (422)."""
    leases = client.CoordinationV1Api(api)
    for spec in ({"leaseDurationSeconds": 0}, {"leaseTransitions": -1}):
        with pytest.raises(ApiException) as info:
            await leases.create_namespaced_lease(
                "default",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": "x"},
                    "spec": spec,
                },
            )
        assert info.value.status == 422


async def test_event_repeats_are_counted_in_series_and_the_rest_is_immutable(
    api: client.ApiClient,
) -> None:
    """events.k8s.io/v1: an update may set series (count at least 2, lastObservedTime);
    note, reason, action, type, regarding and the reporting fields are immutable (422)."""
    events = client.EventsV1Api(api)
    event = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "web.2"},
        "eventTime": "2025-01-01T00:00:00.000000Z",
        "reportingController": "vipwire.io/watcher",
        "reportingInstance": "watcher-0",
        "action": "AllocateVIP",
        "reason": "AllocationFailed",
        "type": "Warning",
        "regarding": {"kind": "Service", "namespace": "default", "name": "web"},
        "note": "pool gold is full",
    }
    await events.create_namespaced_event("default", event)
    series = {"series": {"count": 2, "lastObservedTime": "2025-01-01T00:01:00.000000Z"}}
    counted = await events.patch_namespaced_event("web.2", "default", series, _content_type=MERGE)
    assert counted.series.count == 2
    for bad in (
        {"note": "something else"},
        {"reason": "Other"},
        {"series": {"count": 1, "lastObservedTime": "2025-01-01T00:02:00.000000Z"}},
        {"series": {"count": 3, "lastObservedTime": None}},
    ):
        with pytest.raises(ApiException) as info:
            await events.patch_namespaced_event("web.2", "default", bad, _content_type=MERGE)
        assert info.value.status == 422, bad
    with pytest.raises(ApiException) as info:
        await events.create_namespaced_event(
            "default", {**event, "metadata": {"name": "web.3"}, "series": {"count": 1}}
        )
    assert info.value.status == 422


async def test_service_status_conditions_are_validated_and_guarded(
    v1: client.CoreV1Api,
) -> None:
    """status.conditions are metav1.Conditions (qualified type, True/False/Unknown, a CamelCase
    reason, lastTransitionTime required: else 422); a status merge patch carrying a stale
    metadata.resourceVersion is 409 Conflict."""
    created = await v1.create_namespaced_service("default", _service("cond"))
    good = {
        "type": "vipwire.io/Ready",
        "status": "False",
        "reason": "AllocationFailed",
        "message": "pool gold is full",
        "lastTransitionTime": "2025-01-01T00:00:00Z",
    }
    written = await v1.patch_namespaced_service_status(
        "cond",
        "default",
        {
            "metadata": {"resourceVersion": created.metadata.resource_version},
            "status": {"conditions": [good]},
        },
        _content_type=MERGE,
    )
    assert written.status.conditions[0].reason == "AllocationFailed"
    for bad in (
        {**good, "reason": "allocation failed!"},
        {**good, "status": "Maybe"},
        {k: v for k, v in good.items() if k != "lastTransitionTime"},
        {**good, "type": "not a/valid/type"},
    ):
        with pytest.raises(ApiException) as info:
            await v1.patch_namespaced_service_status(
                "cond", "default", {"status": {"conditions": [bad]}}, _content_type=MERGE
            )
        assert info.value.status == 422, bad
    stale = {
        "metadata": {"resourceVersion": created.metadata.resource_version},
        "status": {"conditions": None},
    }
    with pytest.raises(ApiException) as info:
        await v1.patch_namespaced_service_status("cond", "default", stale, _content_type=MERGE)
    assert info.value.status == 409


# --- the order of a write's reply and its watch events ---------------------------


async def test_watch_first_sends_each_writes_watch_event_before_its_reply(
    v1: client.CoreV1Api, emu: KubeEmulator
) -> None:
    """With ``watch_first=1`` every write answers only once an open watch has its event:
    a client removing the last finalizer has seen the DELETED before the reply, as a
    real API server may do."""
    emu.watch_first = 1.0
    listed = await v1.list_namespaced_service("default")
    seen: list[tuple[str, int]] = []

    async def read() -> None:
        async with watch.Watch() as w:
            stream = w.stream(
                v1.list_namespaced_service,
                "default",
                resource_version=listed.metadata.resource_version,
                timeout_seconds=30,
            )
            async for event in stream:
                seen.append((event["type"], _rv(event["raw_object"])))

    reader = asyncio.create_task(read())
    try:
        await eventually(lambda: emu.open_watches == 1, what="the watch is open")
        created = await v1.create_namespaced_service("default", _service("order"))
        assert seen[-1] == ("ADDED", _rv(created))
        held = await v1.patch_namespaced_service(
            "order", "default", {"metadata": {"finalizers": [FINALIZER]}}
        )
        assert seen[-1] == ("MODIFIED", _rv(held))
        marked = await v1.delete_namespaced_service("order", "default")
        assert seen[-1] == ("MODIFIED", _rv(marked))
        await v1.patch_namespaced_service(
            "order",
            "default",
            [{"op": "remove", "path": "/metadata/finalizers/0"}],
            _content_type=JSON_PATCH,
        )
        assert seen[-1] == ("DELETED", int(emu.resource_version))
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
