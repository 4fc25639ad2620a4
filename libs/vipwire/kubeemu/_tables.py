"""Server-side printing: objects as a meta.k8s.io/v1 ``Table``.

``kubectl get`` asks for ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io`` and
prints the columns the server chooses ("Receiving resources as Tables",
https://kubernetes.io/docs/reference/using-api/api-concepts/#receiving-resources-as-tables).
The columns here are the ones kube-apiserver prints for each kind (``kubectl get svc``:
NAME, TYPE, CLUSTER-IP, EXTERNAL-IP, PORT(S), AGE; SELECTOR with ``-o wide``, which
is priority 1). Each row carries the object's metadata as a PartialObjectMetadata,
or the whole object with ``includeObject=Object``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from vipwire.kubeemu import _resources as res
from vipwire.kubeemu._resources import ResourceType

Obj = dict[str, Any]
Column = tuple[str, str, int]  # (name, type, priority)
Cells = Callable[[Obj, datetime], list[Any]]

TABLE_MEDIA = "as=table"


def wants_table(accept: str) -> bool:
    """Whether an Accept header asks for a meta.k8s.io v1 Table (v1beta1 is the same shape)."""
    for media in accept.lower().replace(" ", "").split(","):
        params = set(media.split(";")[1:])
        if TABLE_MEDIA in params and "g=meta.k8s.io" in params:
            return True
    return False


def human_duration(seconds: float) -> str:
    """An age as kubectl prints it: 45s, 3m12s, 14m, 5h3m, 20h, 3d4h, 45d, 2y100d."""
    s = max(int(seconds), 0)
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if h < 24 * 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    y = d // 365
    if d < 365 * 8:
        return f"{y}y{d % 365}d" if d % 365 else f"{y}y"
    return f"{y}y"


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _age(value: Any, now: datetime) -> str:
    moment = _parse_time(value)
    return "<unknown>" if moment is None else human_duration((now - moment).total_seconds())


def _meta(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _spec(obj: Obj) -> Obj:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def _joined(values: Iterable[str]) -> str:
    text = ",".join(v for v in values if v)
    return text or "<none>"


# --- Services --------------------------------------------------------------------


def _service_external_ip(obj: Obj) -> str:
    spec = _spec(obj)
    kind = spec.get("type") or "ClusterIP"
    external = [str(ip) for ip in spec.get("externalIPs") or []]
    if kind == "ExternalName":
        return str(spec.get("externalName") or "<none>")
    if kind == "LoadBalancer":
        status = obj.get("status") or {}
        ingress = (status.get("loadBalancer") or {}).get("ingress") or []
        found = [str(i.get("ip") or i.get("hostname") or "") for i in ingress]
        found = [f for f in found if f] + external
        return ",".join(found) if found else "<pending>"
    return _joined(external)


def _service_ports(obj: Obj) -> str:
    shown = []
    for port in _spec(obj).get("ports") or []:
        text = str(port.get("port"))
        if port.get("nodePort"):
            text += f":{port['nodePort']}"
        shown.append(f"{text}/{port.get('protocol') or 'TCP'}")
    return _joined(shown)


def _service_cells(obj: Obj, now: datetime) -> list[Any]:
    spec = _spec(obj)
    selector = spec.get("selector") or {}
    return [
        _meta(obj).get("name", ""),
        spec.get("type") or "ClusterIP",
        spec.get("clusterIP") or "<none>",
        _service_external_ip(obj),
        _service_ports(obj),
        _age(_meta(obj).get("creationTimestamp"), now),
        _joined(f"{k}={v}" for k, v in sorted(selector.items())),
    ]


# --- Nodes -----------------------------------------------------------------------


def _node_cells(obj: Obj, now: datetime) -> list[Any]:
    status = obj.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    state = "Unknown"
    if ready is not None:
        state = "Ready" if ready.get("status") == "True" else "NotReady"
    if _spec(obj).get("unschedulable"):
        state += ",SchedulingDisabled"
    labels = _meta(obj).get("labels") or {}
    roles = sorted(
        key.split("/", 1)[1] for key in labels if key.startswith("node-role.kubernetes.io/")
    )
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    info = status.get("nodeInfo") or {}
    return [
        _meta(obj).get("name", ""),
        state,
        _joined(roles),
        _age(_meta(obj).get("creationTimestamp"), now),
        info.get("kubeletVersion", ""),
        addresses.get("InternalIP") or "<none>",
        addresses.get("ExternalIP") or "<none>",
        info.get("osImage", ""),
        info.get("kernelVersion", ""),
        info.get("containerRuntimeVersion", ""),
    ]


# --- EndpointSlices, Leases, Namespaces -------------------------------------------


def _endpoint_slice_cells(obj: Obj, now: datetime) -> list[Any]:
    ports = [str(p.get("port")) for p in obj.get("ports") or [] if p.get("port") is not None]
    addresses = [a for e in obj.get("endpoints") or [] for a in e.get("addresses") or []]
    shown = ",".join(addresses[:3]) + (f" + {len(addresses) - 3} more..." if addresses[3:] else "")
    return [
        _meta(obj).get("name", ""),
        obj.get("addressType", ""),
        _joined(ports),
        shown or "<unset>",
        _age(_meta(obj).get("creationTimestamp"), now),
    ]


def _lease_cells(obj: Obj, now: datetime) -> list[Any]:
    return [
        _meta(obj).get("name", ""),
        _spec(obj).get("holderIdentity") or "",
        _age(_meta(obj).get("creationTimestamp"), now),
    ]


def _namespace_cells(obj: Obj, now: datetime) -> list[Any]:
    return [
        _meta(obj).get("name", ""),
        (obj.get("status") or {}).get("phase", ""),
        _age(_meta(obj).get("creationTimestamp"), now),
    ]


# --- Events (both groups: one printer over either view) ---------------------------


def _event_cells(obj: Obj, now: datetime) -> list[Any]:
    about = obj.get("involvedObject") or obj.get("regarding") or {}
    series = obj.get("series") or {}
    first = obj.get("firstTimestamp") or obj.get("deprecatedFirstTimestamp")
    last = (
        series.get("lastObservedTime")
        or obj.get("lastTimestamp")
        or obj.get("deprecatedLastTimestamp")
        or obj.get("eventTime")
        or first
    )
    count = series.get("count") or obj.get("count") or obj.get("deprecatedCount") or 1
    source = obj.get("source") or obj.get("deprecatedSource") or {}
    component = (
        obj.get("reportingController") or obj.get("reportingComponent") or source.get("component")
    )
    kind = str(about.get("kind") or "").lower()
    return [
        _age(last, now),
        obj.get("type", ""),
        obj.get("reason", ""),
        f"{kind}/{about.get('name', '')}",
        about.get("fieldPath") or "",
        component or "",
        obj.get("message") or obj.get("note") or "",
        _age(first or obj.get("eventTime"), now),
        int(count),
        _meta(obj).get("name", ""),
    ]


_NAME: Column = ("Name", "string", 0)
_AGE: Column = ("Age", "string", 0)

_PRINTERS: dict[ResourceType, tuple[list[Column], Cells]] = {
    res.SERVICES: (
        [
            _NAME,
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            _AGE,
            ("Selector", "string", 1),
        ],
        _service_cells,
    ),
    res.NODES: (
        [
            _NAME,
            ("Status", "string", 0),
            ("Roles", "string", 0),
            _AGE,
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
            ("External-IP", "string", 1),
            ("OS-Image", "string", 1),
            ("Kernel-Version", "string", 1),
            ("Container-Runtime", "string", 1),
        ],
        _node_cells,
    ),
    res.ENDPOINT_SLICES: (
        [
            _NAME,
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            _AGE,
        ],
        _endpoint_slice_cells,
    ),
    res.LEASES: ([_NAME, ("Holder", "string", 0), _AGE], _lease_cells),
    res.NAMESPACES: ([_NAME, ("Status", "string", 0), _AGE], _namespace_cells),
}
_EVENT_PRINTER: tuple[list[Column], Cells] = (
    [
        ("Last Seen", "string", 0),
        ("Type", "string", 0),
        ("Reason", "string", 0),
        ("Object", "string", 0),
        ("Subobject", "string", 1),
        ("Source", "string", 1),
        ("Message", "string", 0),
        ("First Seen", "string", 1),
        ("Count", "integer", 1),
        ("Name", "string", 1),
    ],
    _event_cells,
)
_PRINTERS[res.CORE_EVENTS] = _EVENT_PRINTER
_PRINTERS[res.EVENTS] = _EVENT_PRINTER


def table(
    rt: ResourceType,
    items: Iterable[Obj],
    now: datetime,
    *,
    list_meta: Obj,
    include_object: str = "Metadata",
) -> Obj:
    """The Table of ``items``; ``include_object`` is None, Metadata or Object, as the
    ``includeObject`` parameter asks."""
    columns, cells = _PRINTERS.get(rt, ([_NAME, _AGE], _default_cells))
    rows = []
    for obj in items:
        row: Obj = {"cells": cells(obj, now)}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": _meta(obj),
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": [
            {
                "name": name,
                "type": kind,
                "format": "name" if (name, kind, priority) == _NAME else "",
                "description": f"{name} of the {rt.kind}",
                "priority": priority,
            }
            for name, kind, priority in columns
        ],
        "rows": rows,
    }


def _default_cells(obj: Obj, now: datetime) -> list[Any]:
    return [_meta(obj).get("name", ""), _age(_meta(obj).get("creationTimestamp"), now)]
