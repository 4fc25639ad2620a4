"""Kubernetes objects (the API's camelCase JSON, as plain dicts) to contract messages.

Pure: no I/O, no clock. Whatever the API server might hand us, the result is
a message every consumer can decode: unknown enum values are dropped or
defaulted here, never put on the bus.

Over 500 lines: one pure translation of a Service and its annotations into the snapshot,
with each field's validation next to its reading; a split by field group (access,
profiles, sharing) is the next step if it grows.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, cast

import msgspec

from vipwire.contracts import (
    Endpoint,
    EndpointPort,
    EndpointsSnapshot,
    NodeEndpoints,
    NodeSnapshot,
    ServicePort,
    ServiceSnapshot,
)

Obj = Mapping[str, Any]

#: The finalizer every load-balancer controller puts on the Services it serves.
FINALIZER: Final = "service.kubernetes.io/load-balancer-cleanup"
POOL_ANNOTATION: Final = "vipwire.io/pool"
IPS_ANNOTATION: Final = "vipwire.io/ips"
SHARING_KEY_ANNOTATION: Final = "vipwire.io/sharing-key"
#: Kubernetes' beta annotation for source ranges; ``spec.loadBalancerSourceRanges`` wins.
SOURCE_RANGES_ANNOTATION: Final = "service.beta.kubernetes.io/load-balancer-source-ranges"
#: ``sessionAffinityConfig.clientIP.timeoutSeconds`` when unset, and its bounds (as Kubernetes).
DEFAULT_AFFINITY_TIMEOUT_S: Final = 10800
MAX_AFFINITY_TIMEOUT_S: Final = 86400
#: The appliance profile (monitor, timeouts, method) the Service picks; ipam knows them.
PROFILE_ANNOTATION: Final = "vipwire.io/profile"
#: The other namespaces (or ``*``) whose Services may share this one's VIP (both sides say so).
SHARE_NAMESPACES_ANNOTATION: Final = "vipwire.io/share-with-namespaces"
#: Written by us: the trace of the last change we wrote back (``kubectl describe`` shows it).
TRACE_ANNOTATION: Final = "vipwire.io/last-trace-id"
#: Written by us together with the finalizer: which vipwire cluster put it there. The
#: finalizer alone proves nothing (every load-balancer controller uses it), and once
#: the type changed away the class is gone too; this tells the Service was ours.
CLUSTER_ANNOTATION: Final = "vipwire.io/cluster"
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
EXCLUDE_LB_LABEL: Final = "node.kubernetes.io/exclude-from-external-load-balancers"
TO_BE_DELETED_TAINT: Final = "ToBeDeletedByClusterAutoscaler"

_PROTOCOLS: Final = ("TCP", "UDP", "SCTP")
_FAMILIES: Final = ("IPv4", "IPv6")
_POLICIES: Final = ("SingleStack", "PreferDualStack", "RequireDualStack")
# strconv.ParseBool, which Kubernetes uses for boolean label values.
_FALSE: Final = frozenset({"0", "f", "F", "false", "FALSE", "False"})

Protocol = Literal["TCP", "UDP", "SCTP"]


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str_map(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in _map(value).items() if v is not None}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _port(value: Any) -> int | None:
    number = _int(value)
    return number if number is not None and 0 < number < 65536 else None


def metadata(obj: Obj) -> Mapping[str, Any]:
    return _map(obj.get("metadata"))


def object_key(obj: Obj) -> str:
    """``namespace/name`` for a namespaced object, ``name`` for a cluster-scoped one."""
    meta = metadata(obj)
    namespace = meta.get("namespace")
    name = str(meta.get("name") or "")
    return f"{namespace}/{name}" if namespace else name


def resource_version(obj: Obj) -> str:
    return str(metadata(obj).get("resourceVersion") or "")


def uid(obj: Obj) -> str:
    return str(metadata(obj).get("uid") or "")


def being_deleted(obj: Obj) -> bool:
    return bool(metadata(obj).get("deletionTimestamp"))


def finalizers(obj: Obj) -> list[str]:
    return [str(f) for f in _list(metadata(obj).get("finalizers"))]


def has_finalizer(obj: Obj) -> bool:
    return FINALIZER in finalizers(obj)


# --- what the watcher keeps of an object ----------------------------------------

_LAST_APPLIED: Final = "kubectl.kubernetes.io/last-applied-configuration"
_SERVICE_META: Final = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "deletionTimestamp",
    "labels",
    "annotations",
    "finalizers",
)
_SERVICE_SPEC: Final = (
    "type",
    "loadBalancerClass",
    "ports",
    "ipFamilies",
    "ipFamilyPolicy",
    "externalTrafficPolicy",
    "healthCheckNodePort",
    "loadBalancerIP",
    "loadBalancerSourceRanges",
    "sessionAffinity",
    "sessionAffinityConfig",
)


def _pick(source: Any, keys: Iterable[str]) -> dict[str, Any]:
    src = _map(source)
    return {k: src[k] for k in keys if k in src}


def slim_service(service: Obj) -> dict[str, Any]:
    """What the watcher reads of a Service (all of spec it translates, its metadata but
    managedFields and the last applied configuration, its load balancer status and
    conditions): what it keeps of each (encoded, see :mod:`vipwire.watcher.core.packed`)."""
    meta = _pick(service.get("metadata"), _SERVICE_META)
    annotations = meta.get("annotations")
    if isinstance(annotations, Mapping) and _LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != _LAST_APPLIED}
    slim = {
        "metadata": meta,
        "spec": _pick(service.get("spec"), _SERVICE_SPEC),
        "status": _pick(service.get("status"), ("loadBalancer", "conditions")),
    }
    return slim


def slim_node(node: Obj) -> dict[str, Any]:
    """What :func:`node_snapshot` reads of a Node (not its images, capacity, nodeInfo)."""
    meta = _pick(node.get("metadata"), ("name", "resourceVersion", "deletionTimestamp"))
    labels = _str_map(metadata(node).get("labels"))
    if EXCLUDE_LB_LABEL in labels:
        meta["labels"] = {EXCLUDE_LB_LABEL: labels[EXCLUDE_LB_LABEL]}
    status = _map(node.get("status"))
    slim = {
        "metadata": meta,
        "spec": _pick(node.get("spec"), ("taints", "unschedulable")),
        "status": {
            "addresses": _list(status.get("addresses")),
            "conditions": [_pick(c, ("type", "status")) for c in _list(status.get("conditions"))],
        },
    }
    return slim


# --- Services -------------------------------------------------------------------


def is_ours(service: Obj, load_balancer_class: str, *, classless: bool = False) -> bool:
    """A ``type: LoadBalancer`` Service whose ``loadBalancerClass`` is the one we serve
    (or, with ``classless``, that names none)."""
    spec = _map(service.get("spec"))
    if spec.get("type") != "LoadBalancer":
        return False
    wanted = spec.get("loadBalancerClass")
    return wanted == load_balancer_class or (classless and wanted is None)


def marked_by(service: Obj, cluster: str) -> bool:
    """Whether we put our finalizer on it (our cluster annotation sits next to it)."""
    annotations = _str_map(metadata(service).get("annotations"))
    return has_finalizer(service) and annotations.get(CLUSTER_ANNOTATION) == cluster


def _canonical_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text  # ipam judges it and says why it is refused


def requested_ips(service: Obj) -> tuple[str, ...]:
    """The ``vipwire.io/ips`` annotation (comma-separated) then ``spec.loadBalancerIP``."""
    annotations = _str_map(metadata(service).get("annotations"))
    wanted = [p.strip() for p in annotations.get(IPS_ANNOTATION, "").split(",")]
    legacy = _map(service.get("spec")).get("loadBalancerIP")
    if isinstance(legacy, str):
        wanted.append(legacy.strip())
    seen: dict[str, None] = {}
    for ip in wanted:
        if ip:
            seen.setdefault(_canonical_ip(ip), None)
    return tuple(seen)


def share_namespaces(annotations: Mapping[str, str]) -> tuple[str, ...]:
    """The namespaces ``vipwire.io/share-with-namespaces`` names (sorted, each once; ``*``:
    any namespace of the cluster)."""
    names = {n.strip() for n in annotations.get(SHARE_NAMESPACES_ANNOTATION, "").split(",")}
    names.discard("")
    return ("*",) if "*" in names else tuple(sorted(names))


def raw_source_ranges(service: Obj) -> tuple[str, ...]:
    """Where the source ranges come from and each range as written (trimmed, blanks left out).

    ``spec.loadBalancerSourceRanges`` when it lists any, else the annotation
    ``service.beta.kubernetes.io/load-balancer-source-ranges`` (comma-separated):
    the order Kubernetes documents."""
    spec_ranges = [
        str(r).strip() for r in _list(_map(service.get("spec")).get("loadBalancerSourceRanges"))
    ]
    spec_ranges = [r for r in spec_ranges if r]
    if spec_ranges:
        return ("spec.loadBalancerSourceRanges", *spec_ranges)
    annotations = _str_map(metadata(service).get("annotations"))
    written = [r.strip() for r in annotations.get(SOURCE_RANGES_ANNOTATION, "").split(",")]
    return (SOURCE_RANGES_ANNOTATION, *(r for r in written if r))


def parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """A CIDR as Kubernetes reads one (Go's ``net.ParseCIDR``): an address, ``/``, a
    prefix length; host bits may be set (they are cleared). None when it is not one."""
    if "/" not in text or "%" in text:
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def source_ranges(service: Obj) -> tuple[str, ...]:
    """The Service's source ranges, normalised (host bits cleared), each once, IPv4
    first then by address and prefix; an invalid one is left out (the watcher refuses
    the Service, see :func:`vipwire.watcher.core.validate.service_problems`).
    Empty: every source may connect."""
    networks = {n for n in map(parse_cidr, raw_source_ranges(service)[1:]) if n is not None}
    ordered = sorted(networks, key=lambda n: (n.version, int(n.network_address), n.prefixlen))
    return tuple(str(n) for n in ordered)


def affinity_timeout_s(service: Obj) -> int | None:
    """``sessionAffinity: ClientIP``: its ``timeoutSeconds`` (10800 when unset or out of
    Kubernetes' bounds 1..86400, which the watcher also reports); None without affinity."""
    spec = _map(service.get("spec"))
    if spec.get("sessionAffinity") != "ClientIP":
        return None
    config = _map(_map(spec.get("sessionAffinityConfig")).get("clientIP"))
    timeout = _int(config.get("timeoutSeconds"))
    if timeout is None or not 0 < timeout <= MAX_AFFINITY_TIMEOUT_S:
        return DEFAULT_AFFINITY_TIMEOUT_S
    return timeout


def status_vips(service: Obj) -> tuple[str, ...]:
    """The addresses ``status.loadBalancer.ingress[].ip`` holds now, canonical, in order,
    each once; a hostname or anything that is not an IP address is left out.

    What the cluster says the Service's VIPs are: when the bus store is lost, ipam
    gives them back to it (see ``ServiceSnapshot.status_vips``).
    """
    seen: dict[str, None] = {}
    for entry in ingress(service):
        ip = _map(entry).get("ip")
        if not isinstance(ip, str):
            continue
        try:
            seen.setdefault(str(ipaddress.ip_address(ip.strip())), None)
        except ValueError:
            continue
    return tuple(seen)


def _service_ports(spec: Mapping[str, Any]) -> tuple[ServicePort, ...]:
    ports: list[ServicePort] = []
    for raw in _list(spec.get("ports")):
        p = _map(raw)
        port = _port(p.get("port"))
        protocol = p.get("protocol") or "TCP"
        if port is None or protocol not in _PROTOCOLS:
            continue
        target = p.get("targetPort")
        if not isinstance(target, str):
            target = _port(target)
        ports.append(
            ServicePort(
                port=port,
                protocol=cast(Protocol, protocol),
                name=str(p.get("name") or ""),
                target_port=target,
                node_port=_port(p.get("nodePort")),
            )
        )
    return tuple(ports)


def service_snapshot(
    service: Obj,
    *,
    cluster: str,
    load_balancer_class: str,
    was_ours: bool = False,
    classless: bool = False,
) -> ServiceSnapshot | None:
    """The snapshot to publish for a Service, or None when it is none of our business.

    A Service stays ours, as ``deleting``, while it is being deleted, and
    also after its type or class changed away from us for as long as it
    still carries the finalizer; ``was_ours`` says we published it before
    (the finalizer alone proves nothing: every load-balancer controller uses
    the same one).
    """
    if is_ours(service, load_balancer_class, classless=classless):
        deleting = being_deleted(service)
    elif was_ours and has_finalizer(service):
        deleting = True
    else:
        return None
    meta = metadata(service)
    spec = _map(service.get("spec"))
    annotations = _str_map(meta.get("annotations"))
    families = tuple(f for f in _list(spec.get("ipFamilies")) if f in _FAMILIES) or ("IPv4",)
    policy = spec.get("ipFamilyPolicy")
    etp = spec.get("externalTrafficPolicy")
    return ServiceSnapshot(
        cluster=cluster,
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=uid(service),
        resource_version=resource_version(service),
        ports=_service_ports(spec),
        ip_families=cast(tuple[Literal["IPv4", "IPv6"], ...], families),
        ip_family_policy=policy if policy in _POLICIES else "SingleStack",
        external_traffic_policy="Local" if etp == "Local" else "Cluster",
        health_check_node_port=_port(spec.get("healthCheckNodePort")),
        pool=annotations.get(POOL_ANNOTATION, "").strip() or None,
        requested_ips=requested_ips(service),
        sharing_key=annotations.get(SHARING_KEY_ANNOTATION, "").strip() or None,
        share_namespaces=share_namespaces(annotations),
        # Labels only choose a pool for a new VIP; a Service going away needs none, and
        # its deletion must not hang on labels too large for the bus (the finalizer could
        # never come off): a deleting snapshot carries none.
        labels={} if deleting else _str_map(meta.get("labels")),
        deleting=deleting,
        status_vips=() if deleting else status_vips(service),
        source_ranges=source_ranges(service),
        affinity_timeout_s=affinity_timeout_s(service),
        profile=annotations.get(PROFILE_ANNOTATION, "").strip() or None,
    )


# Sorted: two equal snapshots whose labels arrived in another order encode alike.
_canonical = msgspec.json.Encoder(order="sorted").encode


def service_fingerprint(snapshot: ServiceSnapshot) -> bytes:
    """16 bytes, equal for two snapshots equal in everything but ``resource_version``
    and ``status_vips`` (both changed by our own status writes), short of a hash
    collision: what the watcher keeps of each snapshot it published, instead of
    the snapshot.

    A status write alone publishes nothing: ``status_vips`` matters only to a
    Service ipam holds no claim for (its store was lost), and then the watcher
    starts from an empty bus and publishes every Service, status and all."""
    blank = msgspec.structs.replace(snapshot, resource_version="", status_vips=())
    return hashlib.blake2b(_canonical(blank), digest_size=16).digest()


def ingress(service: Obj) -> list[Any]:
    """``status.loadBalancer.ingress`` as it is now (empty when unset)."""
    status = _map(service.get("status"))
    return _list(_map(status.get("loadBalancer")).get("ingress"))


# --- EndpointSlices -------------------------------------------------------------


def slice_service(endpoint_slice: Obj) -> str | None:
    """``namespace/service`` an EndpointSlice belongs to (its service-name label)."""
    meta = metadata(endpoint_slice)
    name = _str_map(meta.get("labels")).get(SERVICE_NAME_LABEL)
    namespace = meta.get("namespace")
    if not name or not namespace:
        return None
    return f"{namespace}/{name}"


def _endpoint_ports(endpoint_slice: Obj) -> tuple[EndpointPort, ...]:
    ports: list[EndpointPort] = []
    for raw in _list(endpoint_slice.get("ports")):
        p = _map(raw)
        port = _port(p.get("port"))
        protocol = p.get("protocol") or "TCP"
        if port is None or protocol not in _PROTOCOLS:
            continue  # a nil port means "all ports": nothing a member can be checked on
        ports.append(
            EndpointPort(
                port=port, protocol=cast(Protocol, protocol), name=str(p.get("name") or "")
            )
        )
    return tuple(sorted(ports, key=lambda x: (x.port, x.protocol, x.name)))


def _endpoint_order(e: Endpoint) -> tuple[Any, ...]:
    ports = tuple((p.port, p.protocol, p.name) for p in e.ports)
    return (e.addresses, e.ready, e.serving, e.terminating, ports)


class SliceEndpoints(msgspec.Struct, frozen=True, kw_only=True):
    """What the watcher keeps of an EndpointSlice: its Service and its endpoints by node.

    Parsed once when the slice arrives, instead of keeping the decoded
    object (a dict per endpoint and per set of conditions, a targetRef...).
    """

    #: ``namespace/service`` (its service-name label); None: no Service's.
    service: str | None = None
    endpoints: tuple[tuple[str, Endpoint], ...] = ()


def slice_endpoints(endpoint_slice: Obj) -> SliceEndpoints:
    """An EndpointSlice parsed for :func:`merge_endpoints`.

    Endpoints without a node cannot be reached through a node and are left
    out, as are FQDN slices. Unset conditions read as the API defines them:
    ready and serving true, terminating false.
    """
    service = slice_service(endpoint_slice)
    if endpoint_slice.get("addressType") not in _FAMILIES:
        return SliceEndpoints(service=service)
    ports = _endpoint_ports(endpoint_slice)
    endpoints: list[tuple[str, Endpoint]] = []
    for raw in _list(endpoint_slice.get("endpoints")):
        ep = _map(raw)
        node = ep.get("nodeName")
        addresses = tuple(str(a) for a in _list(ep.get("addresses")))
        if not isinstance(node, str) or not node or not addresses:
            continue
        conditions = _map(ep.get("conditions"))
        ready = conditions.get("ready") is not False
        serving = conditions.get("serving")
        endpoint = Endpoint(
            addresses=addresses,
            ready=ready,
            serving=ready if serving is None else bool(serving),
            terminating=bool(conditions.get("terminating")),
            ports=ports,
        )
        endpoints.append((node, endpoint))
    return SliceEndpoints(service=service, endpoints=tuple(endpoints))


def endpoints_snapshot(
    slices: Iterable[Obj],
    *,
    cluster: str,
    namespace: str,
    name: str,
) -> EndpointsSnapshot:
    """All EndpointSlices of one Service merged, per node, in a stable order."""
    return merge_endpoints(
        map(slice_endpoints, slices), cluster=cluster, namespace=namespace, name=name
    )


def merge_endpoints(
    slices: Iterable[SliceEndpoints],
    *,
    cluster: str,
    namespace: str,
    name: str,
) -> EndpointsSnapshot:
    """Parsed EndpointSlices of one Service merged, per node, in a stable order."""
    per_node: dict[str, set[Endpoint]] = {}
    for parsed in slices:
        for node, endpoint in parsed.endpoints:
            per_node.setdefault(node, set()).add(endpoint)
    nodes = tuple(
        NodeEndpoints(
            node=node,
            endpoints=tuple(sorted(eps, key=_endpoint_order)),
        )
        for node, eps in sorted(per_node.items())
    )
    return EndpointsSnapshot(cluster=cluster, namespace=namespace, name=name, nodes=nodes)


# --- Nodes ----------------------------------------------------------------------


def _label_true(value: str) -> bool:
    return value not in _FALSE


def node_snapshot(node: Obj, *, cluster: str) -> NodeSnapshot:
    """A Node's InternalIP addresses (both families), eligibility, readiness and cordon.

    Not eligible while being deleted, while labelled
    ``node.kubernetes.io/exclude-from-external-load-balancers`` (unless the
    value parses as false), or while the cluster autoscaler is draining it.
    """
    meta = metadata(node)
    spec = _map(node.get("spec"))
    status = _map(node.get("status"))
    addresses: dict[str, None] = {}
    for raw in _list(status.get("addresses")):
        a = _map(raw)
        if a.get("type") == "InternalIP" and isinstance(a.get("address"), str):
            addresses.setdefault(_canonical_ip(a["address"]), None)
    labels = _str_map(meta.get("labels"))
    excluded = EXCLUDE_LB_LABEL in labels and _label_true(labels[EXCLUDE_LB_LABEL])
    draining = any(_map(t).get("key") == TO_BE_DELETED_TAINT for t in _list(spec.get("taints")))
    ready = any(
        _map(c).get("type") == "Ready" and _map(c).get("status") == "True"
        for c in _list(status.get("conditions"))
    )
    return NodeSnapshot(
        cluster=cluster,
        node=str(meta.get("name") or ""),
        addresses=tuple(addresses),
        eligible=not (being_deleted(node) or excluded or draining),
        ready=ready,
        # ``kubectl cordon``: the lbdriver drains it where drain_on_cordon is on.
        cordoned=spec.get("unschedulable") is True,
    )
