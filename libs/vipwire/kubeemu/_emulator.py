"""``KubeEmulator``: one emulated cluster, served over HTTP and driven in-process."""

from __future__ import annotations

import asyncio
import builtins
import copy
import os
import random
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from vipwire.aio import HttpServer, serve_http
from vipwire.kubeemu import _resources as res
from vipwire.kubeemu._errors import ApiError
from vipwire.kubeemu._http import AuditEntry, Denial, Fault, KubeApp, Settings
from vipwire.kubeemu._patch import JSON_PATCH, MERGE_PATCH, PATCH_TYPES, STRATEGIC_MERGE_PATCH
from vipwire.kubeemu._resources import ResourceType
from vipwire.kubeemu._selectors import Filter
from vipwire.kubeemu._store import Store
from vipwire.kubeemu._watch import WatchHub, WatchSession

Obj = dict[str, Any]

_PATCH_ALIASES = {"merge": MERGE_PATCH, "strategic": STRATEGIC_MERGE_PATCH, "json": JSON_PATCH}


class KubeEmulator:
    """One emulated Kubernetes API server (one cluster).

    The in-process methods go through the same store as HTTP requests, so
    their writes bump the same resourceVersion and reach the same watches.
    They return deep copies: modifying a result never touches the store.
    """

    def __init__(
        self,
        name: str = "kubeemu",
        *,
        history_limit: int = 1000,
        bookmark_interval: float = 60.0,
        watch_timeout: float | None = None,
        token: str | None = None,
        latency: float = 0.0,
        namespaces: tuple[str, ...] = ("default", "kube-system"),
        clock: Callable[[], datetime] | None = None,
        watch_first: float = 0.0,
        seed: int | None = None,
        watch_lead_s: float = 0.02,
    ) -> None:
        """``history_limit``: changes kept per resource type for watches from a resourceVersion
        (the API server's watch cache is per resource too).

        ``bookmark_interval``: seconds between BOOKMARK events on watches that allow them.
        ``watch_timeout``: seconds after which a watch without ``timeoutSeconds`` ends
        (None: never). ``token``: require this bearer token. ``latency``: seconds added
        before each HTTP request is served. ``clock``: returns an aware ``datetime``.

        ``watch_first``: the chance, drawn per HTTP write from a ``random.Random(seed)``,
        that the write's watch events reach the open watches before its reply is sent
        (held until they are on the wire, then ``watch_lead_s`` more for the client
        to read them). The real API server promises no order between the two: the
        reply leaves once etcd has committed the write, while watches are served from
        the watch cache, which etcd's own watch feeds. Kubernetes "API Concepts"
        orders the events within one watch and nothing against another request, and
        against kube-apiserver v1.36 a controller that removed a Service's last
        finalizer saw the DELETED event before the reply (vipwire issue 14). The
        default 0 keeps the emulator's old, deterministic order:
        the reply first, then the watch events.
        """
        if not 0.0 <= watch_first <= 1.0:
            raise ValueError(f"watch_first must be a probability in [0, 1], not {watch_first}")
        self.name = name
        self._store = Store(history_limit=history_limit, namespaces=namespaces, clock=clock)
        self._hub = WatchHub(self._store)
        self._settings = Settings(
            latency=latency,
            token=token,
            bookmark_interval=bookmark_interval,
            watch_timeout=watch_timeout,
            watch_first=watch_first,
            order_rng=random.Random(seed),
            watch_lead_s=watch_lead_s,
        )
        self._server: HttpServer | None = None
        self._url: str | None = None

    # --- lifecycle -------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: a free port); returns the URL."""
        if self._server is not None:
            raise RuntimeError(f"kubeemu {self.name!r} is already running")
        app = KubeApp(self._store, self._hub, self._settings).build()
        # A watch whose client hangs up is cancelled at once instead of lingering
        # until its next write.
        self._server = await serve_http(
            app, host=host, port=port, shutdown_timeout_s=5.0, handler_cancellation=True
        )
        shown = f"[{host}]" if ":" in host else host
        self._url = f"http://{shown}:{self._server.port}"
        return self._url

    async def stop(self) -> None:
        """End every watch stream cleanly, then close the server and its connections."""
        self._hub.close_all()
        server, self._server, self._url = self._server, None, None
        if server is not None:
            await asyncio.sleep(0)  # let the watch handlers write their last chunk
            await server.close()

    async def __aenter__(self) -> KubeEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError(f"kubeemu {self.name!r} is not running")
        return self._url

    @property
    def resource_version(self) -> str:
        """The cluster's current resourceVersion."""
        return str(self._store.resource_version)

    @property
    def token(self) -> str | None:
        """The bearer token the server requires, if any."""
        return self._settings.token

    @property
    def store(self) -> Store:
        """The underlying object store (for white-box tests)."""
        return self._store

    def write_kubeconfig(
        self, path: str | os.PathLike[str], context_name: str | None = None
    ) -> Path:
        """Write a kubeconfig with one context for this cluster; returns its path."""
        return write_kubeconfig(path, {context_name or self.name: self})

    # --- objects ---------------------------------------------------------------

    async def create(self, obj: Mapping[str, Any], namespace: str | None = None) -> Obj:
        """Create ``obj`` (its ``apiVersion``/``kind`` say which resource)."""
        rt = _resource_of(obj)
        if rt.namespaced and namespace is None:
            meta = obj.get("metadata") or {}
            namespace = meta.get("namespace") or "default"
        return copy.deepcopy(self._store.create(rt, namespace, dict(obj)))

    def get(self, resource: str, namespace: str | None, name: str) -> Obj:
        """The object, or :class:`ApiError` 404."""
        return copy.deepcopy(self._store.get(res.lookup(resource), namespace, name))

    def find(self, resource: str, namespace: str | None, name: str) -> Obj | None:
        """The object, or None."""
        try:
            return self.get(resource, namespace, name)
        except ApiError as err:
            if err.code == 404:
                return None
            raise

    def list(
        self,
        resource: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> builtins.list[Obj]:
        rt = res.lookup(resource)
        flt = Filter.parse(namespace, label_selector, field_selector, rt)
        return copy.deepcopy(self._store.list(rt, flt).items)

    async def replace(self, obj: Mapping[str, Any], *, subresource: str | None = None) -> Obj:
        """PUT: replace the object ``obj`` names (409 if its resourceVersion is stale)."""
        rt = _resource_of(obj)
        meta = obj.get("metadata") or {}
        namespace = (meta.get("namespace") or "default") if rt.namespaced else None
        updated = self._store.update(
            rt, namespace, meta.get("name", ""), dict(obj), subresource=subresource
        )
        return copy.deepcopy(updated)

    async def patch(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> Obj:
        """PATCH; ``patch_type`` is "merge", "strategic", "json" or a content type."""
        content_type = _PATCH_ALIASES.get(patch_type, patch_type)
        if content_type not in PATCH_TYPES:
            raise ValueError(f"unknown patch type {patch_type!r}")
        rt = res.lookup(resource)
        patched = self._store.patch(
            rt, namespace, name, content_type, patch, subresource=subresource
        )
        return copy.deepcopy(patched)

    async def delete(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        *,
        uid: str | None = None,
        resource_version: str | None = None,
    ) -> Obj:
        """Delete (or, with finalizers, mark for deletion); returns the object's last state."""
        result = self._store.delete(
            res.lookup(resource), namespace, name, uid=uid, resource_version=resource_version
        )
        return copy.deepcopy(result.object)

    def watch(
        self,
        resource: str,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        allow_bookmarks: bool = False,
        timeout: float | None = None,
    ) -> WatchSession:
        """An in-process watch with the HTTP semantics; use as ``async with`` + ``async for``.

        Raises :class:`ApiError` 410 at once when ``resource_version`` is too old.
        """
        rt = res.lookup(resource)
        return self._hub.open(
            rt,
            Filter.parse(namespace, label_selector, field_selector, rt),
            resource_version=resource_version,
            allow_bookmarks=allow_bookmarks,
            bookmark_interval=self._settings.bookmark_interval,
            timeout=timeout,
        )

    # --- helpers ---------------------------------------------------------------

    async def add_node(
        self,
        name: str,
        internal_ip: str,
        *,
        labels: Mapping[str, str] | None = None,
        ready: bool = True,
        external_ip: str | None = None,
        unschedulable: bool = False,
        taints: builtins.list[Obj] | None = None,
    ) -> Obj:
        """Register a Node as a kubelet would: addresses, Ready condition, node info."""
        addresses = [{"type": "InternalIP", "address": internal_ip}]
        if external_ip:
            addresses.append({"type": "ExternalIP", "address": external_ip})
        addresses.append({"type": "Hostname", "address": name})
        spec: Obj = {}
        if unschedulable:
            spec["unschedulable"] = True
        if taints:
            spec["taints"] = copy.deepcopy(taints)
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    **(labels or {}),
                },
            },
            "spec": spec,
            "status": {
                "addresses": addresses,
                "conditions": [_ready_condition(ready, self._store)],
                # Every field the API marks required, so typed clients can read it.
                "nodeInfo": {
                    "architecture": "amd64",
                    "bootID": f"kubeemu-{name}",
                    "containerRuntimeVersion": "containerd://2.0.0",
                    "kernelVersion": "6.1.0",
                    "kubeProxyVersion": "",
                    "kubeletVersion": "v1.33.0",
                    "machineID": f"kubeemu-{name}",
                    "operatingSystem": "linux",
                    "osImage": "kubeemu",
                    "systemUUID": f"kubeemu-{name}",
                },
            },
        }
        return await self.create(node)

    async def set_node_ready(self, name: str, ready: bool) -> Obj:
        """Flip the node's Ready condition through its status subresource."""
        patch = {"status": {"conditions": [_ready_condition(ready, self._store)]}}
        return await self.patch(
            "nodes", None, name, patch, patch_type="strategic", subresource="status"
        )

    # --- fault injection -------------------------------------------------------

    def compact(self) -> None:
        """Drop all history: any resourceVersion older than the current one now gets 410."""
        self._store.compact()

    async def break_watches(self) -> int:
        """Abort every open watch connection mid-stream; returns how many were open."""
        count = self._hub.break_all()
        await asyncio.sleep(0)
        return count

    @property
    def open_watches(self) -> int:
        return self._hub.open_count

    @property
    def watch_first(self) -> float:
        """The chance that a write's watch events go out before its reply (see ``__init__``)."""
        return self._settings.watch_first

    @watch_first.setter
    def watch_first(self, chance: float) -> None:
        if not 0.0 <= chance <= 1.0:
            raise ValueError(f"watch_first must be a probability in [0, 1], not {chance}")
        self._settings.watch_first = chance

    @property
    def latency(self) -> float:
        """Seconds the server waits before serving each HTTP request."""
        return self._settings.latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._settings.latency = seconds

    def record_requests(self) -> builtins.list[AuditEntry]:
        """Start recording every resource request over HTTP, in RBAC's terms (verb, group,
        resource, subresource, namespace, name); returns the list that fills up."""
        if self._settings.audit is None:
            self._settings.audit = []
        return self._settings.audit

    def deny(self, verb: str, resource: str, namespace: str | None = None) -> Denial:
        """Refuse ``verb`` (``*``: every verb) on ``resource`` (a plural, or
        ``services/status``), in ``namespace`` or every one, with the 403 a real API
        server's RBAC answers, until :meth:`allow` removes it."""
        denial = Denial(verb, resource, namespace)
        self._settings.denials.append(denial)
        return denial

    def allow(self, denial: Denial | None = None) -> None:
        """Lift one denial (None: every one)."""
        denials = self._settings.denials
        if denial is None:
            denials.clear()
        elif denial in denials:
            denials.remove(denial)

    def inject_failure(
        self,
        status: int = 500,
        *,
        reason: str = "InternalError",
        count: int = 1,
        method: str | None = None,
        resource: str | None = None,
    ) -> None:
        """Answer the next ``count`` matching HTTP requests with a ``status`` Status."""
        plural = res.lookup(resource).plural if resource is not None else None
        self._settings.faults.append(Fault(status, reason, count, method, plural))


def _resource_of(obj: Mapping[str, Any]) -> ResourceType:
    rt = res.by_api_version_kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
    if rt is None:
        raise ApiError.bad_request(
            f"kubeemu does not serve {obj.get('apiVersion')!r} {obj.get('kind')!r}"
        )
    return rt


def _ready_condition(ready: bool, store: Store) -> Obj:
    now = store.now()
    return {
        "type": "Ready",
        "status": "True" if ready else "False",
        "reason": "KubeletReady" if ready else "KubeletNotReady",
        "message": "kubelet is posting ready status" if ready else "kubelet stopped posting",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }


def write_kubeconfig(
    path: str | os.PathLike[str],
    clusters: Mapping[str, KubeEmulator],
    current: str | None = None,
) -> Path:
    """Write one kubeconfig with a context per running emulator (keyed by context name)."""
    if not clusters:
        raise ValueError("no clusters to write")
    config: Obj = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [],
        "users": [],
        "contexts": [],
        "current-context": current or next(iter(clusters)),
    }
    for context, emu in clusters.items():
        config["clusters"].append({"name": context, "cluster": {"server": emu.url}})
        token = emu.token
        config["users"].append({"name": context, "user": {"token": token} if token else {}})
        config["contexts"].append(
            {
                "name": context,
                "context": {"cluster": context, "user": context, "namespace": "default"},
            }
        )
    target = Path(path)
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target
