"""OpenAPI v3 documents for the kinds the emulator serves, and strict field validation.

``kubectl apply`` (and ``create``, ``replace``) validate by default: kubectl reads
``/openapi/v3`` and the group-version document of the object's kind, and when the
kind's PATCH operation takes the ``fieldValidation`` query parameter, it leaves
validation to the server and sends ``fieldValidation=Strict``
("Field validation", https://kubernetes.io/docs/reference/using-api/api-concepts/#field-validation;
"OpenAPI V3", https://kubernetes.io/docs/concepts/overview/kubernetes-api/#openapi-v3).
The server then refuses an object with an unknown or duplicated field (400 BadRequest,
"strict decoding error: unknown field ..."), with ``Warn`` it answers a ``Warning``
header instead, with ``Ignore`` neither; ``Warn`` is the default. (kube-apiserver also
drops the unknown fields it let through; the emulator keeps them, since its schemas
describe only what vipwire uses. Duplicated fields are not detected.)

The schemas are written by hand for the fields vipwire and its users write, not
generated: small, but with the list and map markers (``x-kubernetes-patch-merge-key``
and friends) that kubectl's strategic merge patches read. A part of an object they do
not describe field by field (a Node's status) is marked
``x-kubernetes-preserve-unknown-fields``, and is not checked.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from vipwire.kubeemu import _resources as res
from vipwire.kubeemu._resources import ResourceType

Obj = dict[str, Any]

_STRING: Obj = {"type": "string"}
_INT: Obj = {"type": "integer", "format": "int32"}
_INT64: Obj = {"type": "integer", "format": "int64"}
_BOOL: Obj = {"type": "boolean"}
_TIME: Obj = {"type": "string", "format": "date-time"}
_ANY: Obj = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def _obj(required: tuple[str, ...] = (), **properties: Obj) -> Obj:
    schema: Obj = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def _map(value: Obj = _STRING) -> Obj:
    return {"type": "object", "additionalProperties": value}


def _list(items: Obj, *, merge_key: str | None = None, map_keys: tuple[str, ...] = ()) -> Obj:
    schema: Obj = {"type": "array", "items": items}
    if merge_key is not None:
        schema["x-kubernetes-patch-merge-key"] = merge_key
        schema["x-kubernetes-patch-strategy"] = "merge"
    if map_keys:
        schema["x-kubernetes-list-type"] = "map"
        schema["x-kubernetes-list-map-keys"] = list(map_keys)
    return schema


def _ref(name: str) -> Obj:
    return {"$ref": f"#/components/schemas/{name}"}


_INT_OR_STRING: Obj = {"x-kubernetes-int-or-string": True}

OBJECT_META = _obj(
    name=_STRING,
    generateName=_STRING,
    namespace=_STRING,
    uid=_STRING,
    resourceVersion=_STRING,
    generation=_INT64,
    creationTimestamp=_TIME,
    deletionTimestamp=_TIME,
    deletionGracePeriodSeconds=_INT64,
    labels=_map(),
    annotations=_map(),
    finalizers={**_list(_STRING), "x-kubernetes-patch-strategy": "merge"},
    ownerReferences=_list(
        _obj(
            ("apiVersion", "kind", "name", "uid"),
            apiVersion=_STRING,
            kind=_STRING,
            name=_STRING,
            uid=_STRING,
            controller=_BOOL,
            blockOwnerDeletion=_BOOL,
        ),
        merge_key="uid",
    ),
    managedFields=_list(_ANY),
)

OBJECT_REFERENCE = _obj(
    kind=_STRING,
    namespace=_STRING,
    name=_STRING,
    uid=_STRING,
    apiVersion=_STRING,
    resourceVersion=_STRING,
    fieldPath=_STRING,
)

_CONDITION = _obj(
    ("type", "status"),
    type=_STRING,
    status=_STRING,
    observedGeneration=_INT64,
    lastTransitionTime=_TIME,
    lastHeartbeatTime=_TIME,
    reason=_STRING,
    message=_STRING,
)


def _conditions() -> Obj:
    return _list(_CONDITION, merge_key="type", map_keys=("type",))


def _kind(group: str, version: str, kind: str, **properties: Obj) -> Obj:
    schema: Obj = {
        "type": "object",
        "properties": {
            "apiVersion": _STRING,
            "kind": _STRING,
            "metadata": _ref("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
            **properties,
        },
    }
    schema["x-kubernetes-group-version-kind"] = [{"group": group, "version": version, "kind": kind}]
    return schema


SERVICE = _kind(
    "",
    "v1",
    "Service",
    spec=_obj(
        ports=_list(
            _obj(
                ("port",),
                name=_STRING,
                protocol=_STRING,
                appProtocol=_STRING,
                port=_INT,
                targetPort=_INT_OR_STRING,
                nodePort=_INT,
            ),
            merge_key="port",
            map_keys=("port", "protocol"),
        ),
        selector={**_map(), "x-kubernetes-map-type": "atomic"},
        clusterIP=_STRING,
        clusterIPs={**_list(_STRING), "x-kubernetes-list-type": "atomic"},
        type=_STRING,
        externalIPs=_list(_STRING),
        sessionAffinity=_STRING,
        loadBalancerIP=_STRING,
        loadBalancerSourceRanges=_list(_STRING),
        externalName=_STRING,
        externalTrafficPolicy=_STRING,
        healthCheckNodePort=_INT,
        publishNotReadyAddresses=_BOOL,
        sessionAffinityConfig=_obj(clientIP=_obj(timeoutSeconds=_INT)),
        ipFamilies={**_list(_STRING), "x-kubernetes-list-type": "atomic"},
        ipFamilyPolicy=_STRING,
        allocateLoadBalancerNodePorts=_BOOL,
        loadBalancerClass=_STRING,
        internalTrafficPolicy=_STRING,
        trafficDistribution=_STRING,
    ),
    status=_obj(
        loadBalancer=_obj(
            ingress={
                **_list(
                    _obj(
                        ip=_STRING,
                        hostname=_STRING,
                        ipMode=_STRING,
                        ports=_list(
                            _obj(
                                ("port", "protocol"),
                                port=_INT,
                                protocol=_STRING,
                                error=_STRING,
                            )
                        ),
                    )
                ),
                "x-kubernetes-list-type": "atomic",
            }
        ),
        conditions=_conditions(),
    ),
)

NODE = _kind(
    "",
    "v1",
    "Node",
    spec=_obj(
        podCIDR=_STRING,
        podCIDRs=_list(_STRING),
        providerID=_STRING,
        unschedulable=_BOOL,
        taints=_list(
            _obj(("key", "effect"), key=_STRING, value=_STRING, effect=_STRING, timeAdded=_TIME)
        ),
    ),
    status=_ANY,  # written by kubelets, not by hand
)

NAMESPACE = _kind(
    "",
    "v1",
    "Namespace",
    spec=_obj(finalizers=_list(_STRING)),
    status=_obj(phase=_STRING, conditions=_conditions()),
)

_EVENT_SERIES = _obj(count=_INT, lastObservedTime=_TIME)

CORE_EVENT = _kind(
    "",
    "v1",
    "Event",
    involvedObject=_ref("io.k8s.api.core.v1.ObjectReference"),
    reason=_STRING,
    message=_STRING,
    source=_obj(component=_STRING, host=_STRING),
    firstTimestamp=_TIME,
    lastTimestamp=_TIME,
    count=_INT,
    type=_STRING,
    eventTime=_TIME,
    series=_EVENT_SERIES,
    action=_STRING,
    related=_ref("io.k8s.api.core.v1.ObjectReference"),
    reportingComponent=_STRING,
    reportingInstance=_STRING,
)
CORE_EVENT["required"] = ["metadata", "involvedObject"]

EVENT = _kind(
    "events.k8s.io",
    "v1",
    "Event",
    eventTime=_TIME,
    series=_EVENT_SERIES,
    reportingController=_STRING,
    reportingInstance=_STRING,
    action=_STRING,
    reason=_STRING,
    regarding=_ref("io.k8s.api.core.v1.ObjectReference"),
    related=_ref("io.k8s.api.core.v1.ObjectReference"),
    note=_STRING,
    type=_STRING,
    deprecatedSource=_obj(component=_STRING, host=_STRING),
    deprecatedFirstTimestamp=_TIME,
    deprecatedLastTimestamp=_TIME,
    deprecatedCount=_INT,
)
EVENT["required"] = ["eventTime"]

ENDPOINT_SLICE = _kind(
    "discovery.k8s.io",
    "v1",
    "EndpointSlice",
    addressType=_STRING,
    endpoints={
        **_list(
            _obj(
                ("addresses",),
                addresses={**_list(_STRING), "x-kubernetes-list-type": "set"},
                conditions=_obj(ready=_BOOL, serving=_BOOL, terminating=_BOOL),
                hostname=_STRING,
                targetRef=_ref("io.k8s.api.core.v1.ObjectReference"),
                deprecatedTopology=_map(),
                nodeName=_STRING,
                zone=_STRING,
                hints=_obj(
                    forZones=_list(_obj(("name",), name=_STRING)),
                    forNodes=_list(_obj(("name",), name=_STRING)),
                ),
            )
        ),
        "x-kubernetes-list-type": "atomic",
    },
    ports={
        **_list(_obj(name=_STRING, protocol=_STRING, port=_INT, appProtocol=_STRING)),
        "x-kubernetes-list-type": "atomic",
    },
)
ENDPOINT_SLICE["required"] = ["addressType", "endpoints"]

LEASE = _kind(
    "coordination.k8s.io",
    "v1",
    "Lease",
    spec=_obj(
        holderIdentity=_STRING,
        leaseDurationSeconds=_INT,
        acquireTime={"type": "string", "format": "date-time"},
        renewTime={"type": "string", "format": "date-time"},
        leaseTransitions=_INT,
        strategy=_STRING,
        preferredHolder=_STRING,
    ),
)

# Each served kind's schema, under the name kube-apiserver's documents give it.
SCHEMAS: dict[ResourceType, tuple[str, Obj]] = {
    res.SERVICES: ("io.k8s.api.core.v1.Service", SERVICE),
    res.NODES: ("io.k8s.api.core.v1.Node", NODE),
    res.NAMESPACES: ("io.k8s.api.core.v1.Namespace", NAMESPACE),
    res.CORE_EVENTS: ("io.k8s.api.core.v1.Event", CORE_EVENT),
    res.EVENTS: ("io.k8s.api.events.v1.Event", EVENT),
    res.ENDPOINT_SLICES: ("io.k8s.api.discovery.v1.EndpointSlice", ENDPOINT_SLICE),
    res.LEASES: ("io.k8s.api.coordination.v1.Lease", LEASE),
}
_SHARED: dict[str, Obj] = {
    "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": OBJECT_META,
    "io.k8s.api.core.v1.ObjectReference": OBJECT_REFERENCE,
}


# --- the documents -----------------------------------------------------------------


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def group_versions() -> list[tuple[str, str]]:
    return sorted({(rt.group, rt.version) for rt in SCHEMAS})


_WRITE_PARAMS: list[Obj] = [
    {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
    for name in ("dryRun", "fieldManager", "fieldValidation")
]
_PATCH_MEDIA = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
)


def _operation(rt: ResourceType, action: str, schema: str, *, body: str | None = None) -> Obj:
    op: Obj = {
        "operationId": f"{action}{rt.kind}",
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {
            "group": rt.group,
            "version": rt.version,
            "kind": rt.kind,
        },
        "responses": {"200": {"content": {"application/json": {"schema": _ref(schema)}}}},
    }
    if body is not None:
        op["parameters"] = list(_WRITE_PARAMS)
        media = _PATCH_MEDIA if body == "patch" else ("application/json",)
        op["requestBody"] = {
            "required": True,
            "content": {m: {"schema": _ref(schema) if body != "patch" else _ANY} for m in media},
        }
    return op


def group_version_document(group: str, version: str) -> Obj:
    """The OpenAPI v3 document of one group-version (``/openapi/v3/api/v1`` and the like)."""
    paths: Obj = {}
    schemas: Obj = dict(_SHARED)
    for rt, (name, schema) in SCHEMAS.items():
        if (rt.group, rt.version) != (group, version):
            continue
        schemas[name] = schema
        base = "/" + _gv_path(group, version)
        ns = "/namespaces/{namespace}" if rt.namespaced else ""
        collection = f"{base}{ns}/{rt.plural}"
        paths[collection] = {
            "get": _operation(rt, "list", name),
            "post": _operation(rt, "post", name, body="object"),
        }
        item = {
            "get": _operation(rt, "get", name),
            "put": _operation(rt, "put", name, body="object"),
            "patch": _operation(rt, "patch", name, body="patch"),
            "delete": _operation(rt, "delete", name),
        }
        paths[f"{collection}/{{name}}"] = item
        for sub in rt.subresources:
            paths[f"{collection}/{{name}}/{sub}"] = {
                k: v for k, v in item.items() if k in ("get", "put", "patch")
            }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (kubeemu)", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


_DOCUMENTS = {
    _gv_path(g, v): msgspec.json.encode(group_version_document(g, v)) for g, v in group_versions()
}


def document(path: str) -> bytes | None:
    """The encoded document at ``/openapi/v3/<path>``, None if there is none."""
    return _DOCUMENTS.get(path.strip("/"))


def root() -> Obj:
    """``/openapi/v3``: where each group-version's document is, with a hash for caching."""
    return {
        "paths": {
            path: {
                "serverRelativeURL": f"/openapi/v3/{path}?hash="
                + hashlib.sha512(doc).hexdigest()[:32].upper()
            }
            for path, doc in _DOCUMENTS.items()
        }
    }


# --- strict field validation -------------------------------------------------------


def unknown_fields(rt: ResourceType, body: Any) -> list[str]:
    """The paths of the fields in ``body`` that ``rt``'s schema does not know, as the
    API server words them (``spec.portz``, ``spec.ports[0].prot``). Keys starting with
    ``$`` are strategic merge patch directives, not fields."""
    found: list[str] = []
    entry = SCHEMAS.get(rt)
    if entry is not None:
        _walk(entry[1], body, "", found)
    return found


def _resolve(schema: Obj) -> Obj:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[1]
        return _SHARED.get(name) or next(s for n, s in SCHEMAS.values() if n == name)
    return schema


def _walk(schema: Obj, value: Any, path: str, found: list[str]) -> None:
    schema = _resolve(schema)
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key.startswith("$"):
                continue
            where = f"{path}.{key}" if path else key
            if properties is not None and key in properties:
                _walk(properties[key], item, where, found)
            elif isinstance(extra, dict):
                _walk(extra, item, where, found)
            elif properties is not None:
                found.append(where)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _walk(schema["items"], item, f"{path}[{i}]", found)
