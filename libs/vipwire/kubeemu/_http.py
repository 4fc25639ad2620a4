"""The aiohttp application: Kubernetes REST paths, verbs and wire formats over the store.

Over 500 lines on purpose: it is the one table of REST routes and how each verb answers
(with the kubectl Table and field-selector views); the views themselves live in
``_views.py`` and ``_openapi.py``. Splitting the routes would scatter the API surface a
reader checks against the Kubernetes docs.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
from aiohttp import web

from vipwire.kubeemu import _openapi, _tables, _views
from vipwire.kubeemu import _resources as res
from vipwire.kubeemu._errors import ApiError
from vipwire.kubeemu._patch import JSON_PATCH, PATCH_TYPES
from vipwire.kubeemu._resources import ResourceType, Target, parse_path
from vipwire.kubeemu._selectors import Filter
from vipwire.kubeemu._store import ListResult, Store
from vipwire.kubeemu._watch import WatchBrokenError, WatchHub

Obj = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SERVER_VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0-vipwire-kubeemu",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.24.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(slots=True)
class Fault:
    """An injected failure for the next ``count`` matching requests."""

    status: int
    reason: str
    count: int = 1
    method: str | None = None  # e.g. "PATCH"; None: any
    resource: str | None = None  # a plural, e.g. "services"; None: any


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One resource request in RBAC's terms: verb, API group, resource, subresource."""

    verb: str
    group: str
    resource: str
    subresource: str | None
    namespace: str | None
    name: str | None


_OTHER_VIEW = _views.OTHER_VIEW  # core/v1 and events.k8s.io/v1 Events: one another's views

_VERB_OF_METHOD = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def audit_entry(request: web.Request, target: Target) -> AuditEntry:
    """The RBAC verb of a request (get/list/watch for GET, deletecollection, ...)."""
    if request.method == "GET":
        if target.name is not None:
            verb = "get"
        else:
            verb = "watch" if _truthy(request.query.get("watch")) else "list"
    elif request.method == "DELETE" and target.name is None:
        verb = "deletecollection"
    else:
        verb = _VERB_OF_METHOD.get(request.method, request.method.lower())
    rt = target.resource
    return AuditEntry(verb, rt.group, rt.plural, target.subresource, target.namespace, target.name)


@dataclass(frozen=True, slots=True)
class Denial:
    """A request RBAC refuses: a verb on a resource (``services/status`` for a
    subresource), in one namespace or every one (None)."""

    verb: str
    resource: str
    namespace: str | None = None
    user: str = "system:serviceaccount:vipwire-system:vipwire-watcher"

    def refuses(self, entry: AuditEntry) -> bool:
        resource = entry.resource + (f"/{entry.subresource}" if entry.subresource else "")
        return (
            self.verb in ("*", entry.verb)
            and self.resource == resource
            and self.namespace in (None, entry.namespace)
        )

    def error(self, entry: AuditEntry) -> ApiError:
        """The 403 kube-apiserver's RBAC authorizer answers, worded as it words it."""
        resource = entry.resource + (f"/{entry.subresource}" if entry.subresource else "")
        group_resource = f"{entry.resource}.{entry.group}" if entry.group else entry.resource
        what = f'{group_resource} "{entry.name}"' if entry.name else group_resource
        where = (
            f'in the namespace "{entry.namespace}"' if entry.namespace else "at the cluster scope"
        )
        details: dict[str, Any] = {"kind": entry.resource}
        if entry.name:
            details["name"] = entry.name
        if entry.group:
            details["group"] = entry.group
        return ApiError(
            403,
            "Forbidden",
            f'{what} is forbidden: User "{self.user}" cannot {entry.verb} resource '
            f'"{resource}" in API group "{entry.group}" {where}',
            details,
        )


@dataclass(slots=True)
class Settings:
    """Knobs a test may turn while the server runs."""

    latency: float = 0.0  # seconds added before every request is served
    token: str | None = None  # when set, requests must carry "Authorization: Bearer <token>"
    bookmark_interval: float = 60.0
    watch_timeout: float | None = None  # cap on watches that ask for no timeoutSeconds
    faults: list[Fault] = field(default_factory=list)
    # Requests refused as RBAC would refuse them (403), until removed.
    denials: list[Denial] = field(default_factory=list)
    # Every resource request as RBAC sees it, when recording (None: not recording).
    audit: list[AuditEntry] | None = None
    # The order of a write's reply and its watch events (see KubeEmulator): the chance
    # that the watch events go first, drawn per write from ``order_rng``.
    watch_first: float = 0.0
    order_rng: random.Random = field(default_factory=random.Random)
    # With the watch events first: how long the reply waits after they are on the wire
    # (for the client to read them), and at most for a watch that does not read.
    watch_lead_s: float = 0.02
    watch_wait_s: float = 1.0

    def watch_goes_first(self) -> bool:
        """Drawn per write; no draw at all while ``watch_first`` is 0 (the default order)."""
        return self.watch_first > 0 and self.order_rng.random() < self.watch_first

    def take_fault(self, method: str, target: Target | None) -> Fault | None:
        for fault in self.faults:
            if fault.method not in (None, method):
                continue
            if fault.resource is not None and (
                target is None or target.resource.plural != fault.resource
            ):
                continue
            fault.count -= 1
            if fault.count <= 0:
                self.faults.remove(fault)
            return fault
        return None


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(body), status=status, content_type="application/json"
    )


def _error(err: ApiError) -> web.Response:
    return _json(err.status(), err.code)


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "1")


def _int_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ApiError.bad_request(f"{name}: Invalid value: {raw!r}: must be an integer") from None


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return None
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ApiError.bad_request(f"the body of the request is not valid JSON: {exc}") from None


@dataclass(frozen=True, slots=True)
class _Body:
    value: Any
    warnings: tuple[str, ...] = ()


_FIELD_VALIDATION = ("Ignore", "Warn", "Strict")


async def _validated_body(request: web.Request, rt: ResourceType, *, check: bool = True) -> _Body:
    """The request's JSON body, its fields checked as ``fieldValidation`` asks: Strict
    refuses an unknown field (400), Warn (the default) answers a warning, Ignore
    neither ("Field validation",
    https://kubernetes.io/docs/reference/using-api/api-concepts/#field-validation)."""
    directive = request.query.get("fieldValidation") or "Warn"
    if directive not in _FIELD_VALIDATION:
        raise ApiError.bad_request(
            f'fieldValidation: Unsupported value: "{directive}": supported values: '
            + ", ".join(f'"{d}"' for d in _FIELD_VALIDATION)
        )
    value = await _body(request)
    if not check or directive == "Ignore":
        return _Body(value)
    unknown = [f'unknown field "{path}"' for path in _openapi.unknown_fields(rt, value)]
    if unknown and directive == "Strict":
        raise ApiError.bad_request(
            f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
            f"strict decoding error: {', '.join(unknown)}"
        )
    return _Body(value, tuple(unknown))


def _warned(response: web.Response, body: _Body) -> web.Response:
    """Add the ``Warning: 299`` headers of a body's unknown fields (fieldValidation=Warn)."""
    for text in body.warnings:
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        response.headers.add("Warning", f'299 - "{escaped}"')
    return response


class KubeApp:
    """Request handling; one per emulated cluster."""

    def __init__(self, store: Store, hub: WatchHub, settings: Settings) -> None:
        self.store = store
        self.hub = hub
        self.settings = settings

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        for path in ("/version", "/version/"):  # the generated VersionApi asks for /version/
            app.router.add_get(path, self._version)
        for path in ("/healthz", "/livez", "/readyz"):
            app.router.add_get(path, self._healthz)
        for suffix in ("", "/"):
            app.router.add_get(f"/api{suffix}", self._api_versions)
            app.router.add_get(f"/apis{suffix}", self._api_groups)
            app.router.add_get(f"/apis/{{group}}{suffix}", self._api_group)
            app.router.add_get(f"/api/{{version}}{suffix}", self._resource_list)
            app.router.add_get(f"/apis/{{group}}/{{version}}{suffix}", self._resource_list)
        app.router.add_get("/openapi/v3", self._openapi_root)
        app.router.add_get("/openapi/v3/{path:.+}", self._openapi_document)
        app.router.add_route("*", "/{tail:.*}", self._resource)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.settings.latency > 0:
            await asyncio.sleep(self.settings.latency)
        token = self.settings.token
        if token is not None and request.headers.get("Authorization") != f"Bearer {token}":
            return _json(ApiError(401, "Unauthorized", "Unauthorized").status(), 401)
        target = parse_path(request.path)
        if self.settings.audit is not None and target is not None:
            self.settings.audit.append(audit_entry(request, target))
        if self.settings.denials and target is not None:
            entry = audit_entry(request, target)
            for denial in self.settings.denials:
                if denial.refuses(entry):
                    return _error(denial.error(entry))
        fault = self.settings.take_fault(request.method, target)
        if fault is not None:
            return _error(ApiError(fault.status, fault.reason, "injected failure (kubeemu)"))
        try:
            return await handler(request)
        except ApiError as err:
            return _error(err)

    # --- discovery -------------------------------------------------------------

    async def _version(self, request: web.Request) -> web.Response:
        return _json(SERVER_VERSION)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _api_versions(self, request: web.Request) -> web.Response:
        return _json(
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}
                ],
            }
        )

    async def _api_groups(self, request: web.Request) -> web.Response:
        groups = sorted({(rt.group, rt.version) for rt in res.ALL if rt.group})
        return _json(
            {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [_api_group(group, version) for group, version in groups],
            }
        )

    async def _api_group(self, request: web.Request) -> web.Response:
        group = request.match_info["group"]
        for rt in res.ALL:
            if rt.group and rt.group == group:
                return _json(
                    {"kind": "APIGroup", "apiVersion": "v1", **_api_group(group, rt.version)}
                )
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    async def _resource_list(self, request: web.Request) -> web.Response:
        group = request.match_info.get("group", "")
        version = request.match_info["version"]
        types = [rt for rt in res.ALL if rt.group == group and rt.version == version]
        if not types:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        resources: list[Obj] = []
        for rt in types:
            resources.append(
                {
                    "name": rt.plural,
                    "singularName": rt.singular,
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": _VERBS,
                    **({"shortNames": list(rt.short_names)} if rt.short_names else {}),
                    # (`kubectl get all` lists the resources of the category "all".)
                    **({"categories": ["all"]} if rt is res.SERVICES else {}),
                }
            )
            for sub in rt.subresources:
                resources.append(
                    {
                        "name": f"{rt.plural}/{sub}",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": rt.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        group_version = f"{group}/{version}" if group else version
        return _json(
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": group_version,
                "resources": resources,
            }
        )

    async def _openapi_root(self, request: web.Request) -> web.Response:
        return _json(_openapi.root())

    async def _openapi_document(self, request: web.Request) -> web.Response:
        doc = _openapi.document(request.match_info["path"])
        if doc is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return web.Response(body=doc, content_type="application/json")

    # --- resources -------------------------------------------------------------

    async def _resource(self, request: web.Request) -> web.StreamResponse:
        target = parse_path(request.path)
        if target is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if request.query.get("dryRun"):
            raise ApiError.bad_request("dryRun is not supported by kubeemu")
        written_after = self.store.resource_version
        if target.name is None:
            response = await self._collection(request, target)
        else:
            response = await self._object(request, target, target.name)
        if request.method != "GET" and self.store.resource_version > written_after:
            await self._watch_events_first()
        return response

    async def _watch_events_first(self) -> None:
        """Hold a write's reply until its watch events are sent, when the draw says so.

        The real API server gives no order between the two: the reply leaves once etcd
        has the write, the watch event once the watch cache has it from etcd's watch, so
        a client may see either first (see :class:`~vipwire.kubeemu.KubeEmulator`).
        """
        settings = self.settings
        rv = self.store.resource_version
        if not settings.watch_goes_first() or not self.hub.owing(rv):
            return  # (no watch is sent this write: nothing to hold the reply for)
        await self.hub.sent(rv, timeout=settings.watch_wait_s)
        if settings.watch_lead_s > 0:
            await asyncio.sleep(settings.watch_lead_s)

    async def _collection(self, request: web.Request, target: Target) -> web.StreamResponse:
        rt = target.resource
        query = request.query
        if request.method == "GET":
            flt = Filter.parse(
                target.namespace, query.get("labelSelector"), query.get("fieldSelector"), rt
            )
            if _truthy(query.get("watch")):
                return await self._watch(request, rt, flt)
            if rt in _OTHER_VIEW:
                return self._list_response(request, rt, self._events(rt, flt), None)
            result = self.store.list(
                rt,
                flt,
                limit=_int_param(request, "limit"),
                continue_token=query.get("continue") or None,
                resource_version=query.get("resourceVersion"),
                resource_version_match=query.get("resourceVersionMatch"),
            )
            return self._list_response(request, rt, result.items, result)
        if request.method == "POST":
            if rt.namespaced and target.namespace is None:
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method")
            body = await _validated_body(request, rt)
            return _warned(_json(self.store.create(rt, target.namespace, body.value), 201), body)
        if request.method == "DELETE":
            flt = Filter.parse(
                target.namespace, query.get("labelSelector"), query.get("fieldSelector"), rt
            )
            deleted = self.store.delete_collection(rt, flt)
            return _json(
                {
                    "kind": f"{rt.kind}List",
                    "apiVersion": rt.api_version,
                    "metadata": {"resourceVersion": str(self.store.resource_version)},
                    "items": deleted,
                }
            )
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method")

    async def _object(self, request: web.Request, target: Target, name: str) -> web.Response:
        rt, ns, sub = target.resource, target.namespace, target.subresource
        method = request.method
        if method == "GET":
            if _tables.wants_table(request.headers.get("Accept", "")):
                return self._list_response(request, rt, [self._get(rt, ns, name)], None)
            return _json(self._get(rt, ns, name))
        if method == "PUT":
            body = await _validated_body(request, rt)
            return _warned(
                _json(self.store.update(rt, ns, name, body.value, subresource=sub)), body
            )
        if method == "PATCH":
            content_type = request.content_type
            if content_type not in PATCH_TYPES:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types "
                    f"include: {', '.join(PATCH_TYPES)}",
                )
            # (A JSON patch is a list of operations: its values are not checked here.)
            patch = await _validated_body(request, rt, check=content_type != JSON_PATCH)
            return _warned(
                _json(self.store.patch(rt, ns, name, content_type, patch.value, subresource=sub)),
                patch,
            )
        if method == "DELETE" and sub is None:
            options = await _body(request) or {}
            preconditions = options.get("preconditions") if isinstance(options, dict) else None
            preconditions = preconditions or {}
            result = self.store.delete(
                rt,
                ns,
                name,
                uid=preconditions.get("uid"),
                resource_version=preconditions.get("resourceVersion"),
            )
            if result.deferred:
                return _json(result.object, 202)  # accepted: finalizers still hold it
            if rt.delete_returns_object:
                return _json(result.object)
            return _json(_success(rt, result.object))
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method")

    def _get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        """The object, or for an Event the other group's Event of that name, converted."""
        try:
            return self.store.get(rt, namespace, name)
        except ApiError as err:
            other = _OTHER_VIEW.get(rt)
            if err.code != 404 or other is None:
                raise
            try:
                found = self.store.get(other[0], namespace, name)
            except ApiError:
                raise err from None
            return other[1](found)

    def _events(self, rt: ResourceType, flt: Filter) -> list[Obj]:
        """Every Event of both groups in ``rt``'s view, as one list (see :mod:`._views`).

        Served whole, without chunks: "API Concepts" lets a server that cannot honour
        ``limit`` return the complete list (no ``continue``), which clients accept
        (https://kubernetes.io/docs/reference/using-api/api-concepts/#retrieving-large-results-sets-in-chunks).
        """
        other, convert = _OTHER_VIEW[rt]
        own = self.store.list(rt, flt).items
        seen = {(o["metadata"].get("namespace"), o["metadata"]["name"]) for o in own}
        unfiltered = Filter(flt.namespace, flt.labels)
        converted = [convert(o) for o in self.store.list(other, unfiltered).items]
        merged = own + [
            o
            for o in converted
            if (o["metadata"].get("namespace"), o["metadata"]["name"]) not in seen
            and flt.matches(o)
        ]
        merged.sort(key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        return merged

    def _list_response(
        self, request: web.Request, rt: ResourceType, items: list[Obj], result: ListResult | None
    ) -> web.Response:
        rv = result.resource_version if result is not None else self.store.resource_version
        meta: Obj = {"resourceVersion": str(rv)}
        if result is not None and result.continue_token is not None:
            meta["continue"] = result.continue_token
            meta["remainingItemCount"] = result.remaining
        if _tables.wants_table(request.headers.get("Accept", "")):
            now = datetime.fromisoformat(self.store.now().replace("Z", "+00:00"))
            include = request.query.get("includeObject") or "Metadata"
            return _json(_tables.table(rt, items, now, list_meta=meta, include_object=include))
        return _json(
            {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": meta,
                "items": items,
            }
        )

    def _table_event(self, rt: ResourceType, event: Obj) -> Obj:
        """A watch event of ``kubectl get -w``: the object as a Table of one row (a
        BOOKMARK or ERROR is sent as it is)."""
        if event.get("type") not in ("ADDED", "MODIFIED", "DELETED"):
            return event
        obj = event["object"]
        now = datetime.fromisoformat(self.store.now().replace("Z", "+00:00"))
        meta = {"resourceVersion": obj.get("metadata", {}).get("resourceVersion", "")}
        return {**event, "object": _tables.table(rt, [obj], now, list_meta=meta)}

    async def _watch(
        self, request: web.Request, rt: ResourceType, flt: Filter
    ) -> web.StreamResponse:
        query = request.query
        timeout = _int_param(request, "timeoutSeconds")
        send_initial = query.get("sendInitialEvents")
        try:
            session = self.hub.open(
                rt,
                flt,
                resource_version=query.get("resourceVersion"),
                allow_bookmarks=_truthy(query.get("allowWatchBookmarks")),
                bookmark_interval=self.settings.bookmark_interval,
                send_initial_events=None if send_initial is None else _truthy(send_initial),
                timeout=float(timeout) if timeout is not None else self.settings.watch_timeout,
            )
        except ApiError as err:
            if err.code != 410:
                raise
            # A watch that cannot start from its resourceVersion is still a 200:
            # the stream carries one ERROR event with the 410 Status, then ends.
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            await resp.write(_line({"type": "ERROR", "object": err.status()}))
            await resp.write_eof()
            return resp

        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        transport = request.transport
        if transport is not None:
            session.on_break = transport.abort
        try:
            await resp.prepare(request)
            as_table = _tables.wants_table(request.headers.get("Accept", ""))
            while (event := await session.next()) is not None:
                await resp.write(_line(self._table_event(rt, event) if as_table else event))
                session.sent(event)
            await resp.write_eof()
        except (WatchBrokenError, ConnectionError):
            # The connection is gone (cut by break_watches, or by the client);
            # aiohttp finishes quietly with a closed transport.
            if transport is not None:
                transport.abort()
        finally:
            session.close()
        return resp


def _api_group(group: str, version: str) -> Obj:
    group_version = {"groupVersion": f"{group}/{version}", "version": version}
    return {"name": group, "versions": [group_version], "preferredVersion": group_version}


def _line(event: Obj) -> bytes:
    return msgspec.json.encode(event) + b"\n"


def _success(rt: ResourceType, obj: Obj) -> Obj:
    details: Obj = {
        "name": obj["metadata"]["name"],
        "kind": rt.plural,
        "uid": obj["metadata"]["uid"],
    }
    if rt.group:
        details["group"] = rt.group
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }
