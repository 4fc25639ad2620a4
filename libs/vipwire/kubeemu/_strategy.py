"""Per-resource defaulting, validation and allocation (the API server's "strategies").

Pure functions over plain dicts: they mutate the object being written and
raise :class:`ApiError` (422 Invalid) when it would be rejected.

Service cluster IPs come from 198.18.0.0/15 (the benchmarking range: never
routed, so an emulated address can never be mistaken for a real one); node
ports from 30000-32767, the default service node port range. Allocation is
sequential, so tests see stable values.

One module over 500 lines on purpose: a section of short functions per
resource kind and the table that maps kinds to them; one kind's rules are
read in one place, and the kinds share the field-error helpers.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from vipwire.kubeemu._errors import ApiError, FieldError
from vipwire.kubeemu._resources import (
    ENDPOINT_SLICES,
    EVENTS,
    LEASES,
    NAMESPACES,
    SERVICES,
    ResourceType,
)

Obj = dict[str, Any]

SERVICE_CIDR = ipaddress.ip_network("198.18.0.0/15")
#: .0 is the network, .1 would be the "kubernetes" service: cluster IPs start at .10.
FIRST_IP_OFFSET = 10
_CIDR_TEXT_PREFIX = "198.1"
NODE_PORT_RANGE = range(30000, 32768)
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
PROTOCOLS = ("TCP", "UDP", "SCTP")

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def name_errors(rt: ResourceType, name: Any) -> list[FieldError]:
    if not isinstance(name, str) or not name:
        return [FieldError("metadata.name", "Required value", "name or generateName is required")]
    if rt is SERVICES:
        pattern, limit, what = _DNS1035_LABEL, 63, "a DNS-1035 label"
    elif rt is NAMESPACES:
        pattern, limit, what = _DNS1123_LABEL, 63, "a lowercase RFC 1123 label"
    else:
        pattern, limit, what = _DNS1123_SUBDOMAIN, 253, "a lowercase RFC 1123 subdomain"
    if len(name) > limit or not pattern.fullmatch(name):
        return [
            FieldError(
                "metadata.name",
                "Invalid value",
                f"{what} must consist of lower case alphanumeric characters or '-'"
                + (" or '.'" if limit == 253 else "")
                + f", and be at most {limit} characters",
                name,
            )
        ]
    return []


def prepare_create(rt: ResourceType, obj: Obj, taken: Taken) -> None:
    """Default, validate and allocate a new object; ``taken``: what other Services hold."""
    if rt is SERVICES:
        _prepare_service(obj, None, taken)
    elif rt is NAMESPACES:
        obj.setdefault("spec", {})
        status = obj.setdefault("status", {})
        status["phase"] = "Active"
    _validate(rt, obj)


def prepare_update(rt: ResourceType, obj: Obj, old: Obj, taken: Taken) -> None:
    if rt is SERVICES:
        _prepare_service(obj, old, taken)
    elif rt is EVENTS and (errors := _event_update_errors(obj, old)):
        raise ApiError.invalid(rt, obj["metadata"]["name"], errors)
    _validate(rt, obj)


def prepare_status_update(rt: ResourceType, obj: Obj) -> None:
    if rt is SERVICES and (errors := _service_status_errors(obj)):
        raise ApiError.invalid(rt, obj["metadata"]["name"], errors)


def spec_changed(rt: ResourceType, new: Obj, old: Obj) -> bool:
    """Whether ``metadata.generation`` must move (services track it)."""
    return rt is SERVICES and new.get("spec") != old.get("spec")


def _validate(rt: ResourceType, obj: Obj) -> None:
    errors: list[FieldError] = []
    if rt is ENDPOINT_SLICES:
        errors = _endpoint_slice_errors(obj)
    elif rt is EVENTS:
        errors = _event_errors(obj)
    elif rt is LEASES:
        errors = _lease_errors(obj)
    if errors:
        raise ApiError.invalid(rt, obj["metadata"]["name"], errors)


# --- services ------------------------------------------------------------------


def _needs_node_ports(spec: Obj) -> bool:
    if spec.get("type") == "NodePort":
        return True
    return spec.get("type") == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts", True)


def _needs_health_check_port(spec: Obj) -> bool:
    return spec.get("type") == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"


def _prepare_service(obj: Obj, old: Obj | None, taken: Taken) -> None:
    name = obj["metadata"]["name"]
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        spec = obj["spec"] = {}
    old_spec: Obj = (old or {}).get("spec") or {}
    errors: list[FieldError] = []

    svc_type = spec.setdefault("type", "ClusterIP")
    if svc_type not in SERVICE_TYPES:
        supported = ", ".join(f'"{t}"' for t in SERVICE_TYPES)
        errors.append(
            FieldError("spec.type", "Unsupported value", f"supported values: {supported}", svc_type)
        )
        raise ApiError.invalid(SERVICES, name, errors)
    external_name = svc_type == "ExternalName"

    # Fields that only make sense for other types are dropped when the type changes away.
    if old is not None and old_spec.get("type") != svc_type:
        if svc_type != "LoadBalancer":
            for key in (
                "loadBalancerClass",
                "allocateLoadBalancerNodePorts",
                "healthCheckNodePort",
            ):
                if spec.get(key) == old_spec.get(key):
                    spec.pop(key, None)
        if svc_type in ("ClusterIP", "ExternalName"):
            spec.pop("externalTrafficPolicy", None)
            for port in spec.get("ports") or []:
                if isinstance(port, dict):
                    port.pop("nodePort", None)

    spec.setdefault("sessionAffinity", "None")
    if svc_type in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if svc_type == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    if not external_name:
        spec.setdefault("internalTrafficPolicy", "Cluster")
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")

    used_ips = _InUse(taken.has_ip, taken.ip_start)
    used_ports = _InUse(taken.has_port, taken.port_start)

    # Ports.
    ports = spec.get("ports")
    if ports is None:
        ports = spec["ports"] = []
    if not isinstance(ports, list) or not all(isinstance(p, dict) for p in ports):
        errors.append(FieldError("spec.ports", "Invalid value", "must be a list of ports"))
        raise ApiError.invalid(SERVICES, name, errors)
    if not ports and not external_name:
        errors.append(FieldError("spec.ports", "Required value"))
    seen_names: set[str] = set()
    seen_ports: set[tuple[Any, Any]] = set()
    for i, port in enumerate(ports):
        path = f"spec.ports[{i}]"
        port.setdefault("protocol", "TCP")
        number = port.get("port")
        if not isinstance(number, int) or isinstance(number, bool) or not 0 < number < 65536:
            errors.append(
                FieldError(f"{path}.port", "Invalid value", "must be between 1 and 65535", number)
            )
        port.setdefault("targetPort", number)
        if port["protocol"] not in PROTOCOLS:
            errors.append(FieldError(f"{path}.protocol", "Unsupported value", "", port["protocol"]))
        pname = port.get("name", "")
        if len(ports) > 1 and not pname:
            errors.append(FieldError(f"{path}.name", "Required value"))
        elif pname in seen_names:
            errors.append(FieldError(f"{path}.name", "Duplicate value", "", pname))
        seen_names.add(pname)
        if (number, port["protocol"]) in seen_ports:
            errors.append(
                FieldError(f"{path}", "Duplicate value", "", f"{number}/{port['protocol']}")
            )
        seen_ports.add((number, port["protocol"]))

    # Values the server allocated stay when an update leaves them out (like the real server).
    if old is not None and _needs_node_ports(old_spec) and _needs_node_ports(spec):
        old_by_name = {p.get("name", ""): p.get("nodePort") for p in old_spec.get("ports") or []}
        for port in ports:
            if not port.get("nodePort") and old_by_name.get(port.get("name", "")):
                port["nodePort"] = old_by_name[port.get("name", "")]
    if (
        old is not None
        and _needs_health_check_port(old_spec)
        and _needs_health_check_port(spec)
        and not spec.get("healthCheckNodePort")
    ):
        spec["healthCheckNodePort"] = old_spec.get("healthCheckNodePort")
    if (
        old is not None
        and not external_name
        and not spec.get("clusterIP")
        and old_spec.get("clusterIP")
    ):
        spec["clusterIP"] = old_spec["clusterIP"]

    # Node ports.
    wants_node_ports = _needs_node_ports(spec)
    for i, port in enumerate(ports):
        node_port = port.get("nodePort")
        if not node_port:
            port.pop("nodePort", None)
            if wants_node_ports:
                port["nodePort"] = _next_free_port(used_ports)
                used_ports.add(port["nodePort"])
            continue
        if svc_type in ("ClusterIP", "ExternalName"):
            errors.append(
                FieldError(
                    f"spec.ports[{i}].nodePort",
                    "Forbidden",
                    f"may not be used when `type` is '{svc_type}'",
                )
            )
        elif node_port not in NODE_PORT_RANGE:
            errors.append(
                FieldError(
                    f"spec.ports[{i}].nodePort",
                    "Invalid value",
                    "provided port is not in the valid range. The range of valid ports "
                    "is 30000-32767",
                    node_port,
                )
            )
        elif node_port in used_ports and not _owned(node_port, old_spec):
            errors.append(
                FieldError(
                    f"spec.ports[{i}].nodePort",
                    "Invalid value",
                    "provided port is already allocated",
                    node_port,
                )
            )
        used_ports.add(node_port)

    # Traffic policy and health check node port.
    etp = spec.get("externalTrafficPolicy")
    if etp is not None:
        if svc_type not in ("NodePort", "LoadBalancer"):
            errors.append(
                FieldError(
                    "spec.externalTrafficPolicy",
                    "Invalid value",
                    "may only be set when `type` is 'NodePort' or 'LoadBalancer'",
                    etp,
                )
            )
        elif etp not in ("Cluster", "Local"):
            errors.append(FieldError("spec.externalTrafficPolicy", "Unsupported value", "", etp))
    if _needs_health_check_port(spec):
        hc = spec.get("healthCheckNodePort")
        if not hc:
            spec["healthCheckNodePort"] = _next_free_port(used_ports)
        elif hc not in NODE_PORT_RANGE or (
            hc in used_ports and hc != old_spec.get("healthCheckNodePort")
        ):
            errors.append(
                FieldError(
                    "spec.healthCheckNodePort",
                    "Invalid value",
                    "provided port is already allocated or out of range",
                    hc,
                )
            )
    elif spec.get("healthCheckNodePort"):
        errors.append(
            FieldError(
                "spec.healthCheckNodePort",
                "Forbidden",
                "may only be set when `type` is 'LoadBalancer' and "
                "`externalTrafficPolicy` is 'Local'",
            )
        )

    # loadBalancerClass: only for LoadBalancer, and fixed once set.
    lbc = spec.get("loadBalancerClass")
    if lbc is not None and svc_type != "LoadBalancer":
        errors.append(
            FieldError(
                "spec.loadBalancerClass",
                "Forbidden",
                "may only be used when `type` is 'LoadBalancer'",
            )
        )
    if (
        old is not None
        and old_spec.get("type") == "LoadBalancer"
        and svc_type == "LoadBalancer"
        and lbc != old_spec.get("loadBalancerClass")
    ):
        errors.append(
            FieldError("spec.loadBalancerClass", "Invalid value", "may not change once set", lbc)
        )

    # Cluster IP.
    cluster_ip = spec.get("clusterIP")
    if external_name:
        if not spec.get("externalName"):
            errors.append(FieldError("spec.externalName", "Required value"))
        if cluster_ip:
            errors.append(
                FieldError("spec.clusterIP", "Forbidden", "must be empty for ExternalName services")
            )
    elif old is not None and old_spec.get("clusterIP") and cluster_ip != old_spec.get("clusterIP"):
        if old_spec.get("type") != "ExternalName":
            errors.append(
                FieldError("spec.clusterIP", "Invalid value", "field is immutable", cluster_ip)
            )
    elif not cluster_ip:
        spec["clusterIP"] = _next_free_ip(used_ips)
    elif cluster_ip != "None" and (old is None or cluster_ip != old_spec.get("clusterIP")):
        if not _in_service_cidr(cluster_ip):
            errors.append(
                FieldError(
                    "spec.clusterIP",
                    "Invalid value",
                    f"the provided IP is not in the range {SERVICE_CIDR}",
                    cluster_ip,
                )
            )
        elif cluster_ip in used_ips:
            errors.append(
                FieldError(
                    "spec.clusterIP",
                    "Invalid value",
                    "provided IP is already allocated",
                    cluster_ip,
                )
            )
    if not external_name and spec.get("clusterIP"):
        spec["clusterIPs"] = [spec["clusterIP"]]
    else:
        spec.pop("clusterIPs", None)

    errors.extend(_service_status_errors(obj))
    if errors:
        raise ApiError.invalid(SERVICES, name, errors)


def _service_status_errors(obj: Obj) -> list[FieldError]:
    status = obj.get("status")
    if not isinstance(status, dict):
        status = obj["status"] = {}
    lb = status.setdefault("loadBalancer", {})
    errors: list[FieldError] = []
    for i, ingress in enumerate((lb or {}).get("ingress") or []):
        path = f"status.loadBalancer.ingress[{i}]"
        if not isinstance(ingress, dict):
            errors.append(FieldError(path, "Invalid value", "must be an object"))
            continue
        ip = ingress.get("ip")
        if ip:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                errors.append(
                    FieldError(f"{path}.ip", "Invalid value", "must be a valid IP address", ip)
                )
            # Defaulted since ipMode went GA (Kubernetes 1.32).
            ingress.setdefault("ipMode", "VIP")
        elif ingress.get("ipMode"):
            errors.append(
                FieldError(
                    f"{path}.ipMode", "Forbidden", "may not be specified when `ip` is not set"
                )
            )
        if ingress.get("ipMode") not in (None, "VIP", "Proxy"):
            errors.append(FieldError(f"{path}.ipMode", "Unsupported value", "", ingress["ipMode"]))
    errors.extend(_condition_errors(status.get("conditions"), "status.conditions"))
    return errors


_QUALIFIED_NAME = re.compile(
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)
_CONDITION_REASON = re.compile(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?")


def _condition_errors(conditions: Any, path: str) -> list[FieldError]:
    """metav1.Condition validation (ValidateConditions), as for Service status."""
    if conditions is None:
        return []
    if not isinstance(conditions, list):
        return [FieldError(path, "Invalid value", "must be a list")]
    errors: list[FieldError] = []
    seen: set[Any] = set()
    for i, cond in enumerate(conditions):
        where = f"{path}[{i}]"
        if not isinstance(cond, dict):
            errors.append(FieldError(where, "Invalid value", "must be an object"))
            continue
        kind = cond.get("type")
        if not isinstance(kind, str) or not _QUALIFIED_NAME.fullmatch(kind):
            errors.append(
                FieldError(f"{where}.type", "Invalid value", "must be a qualified name", kind)
            )
        elif kind in seen:
            errors.append(FieldError(f"{where}.type", "Duplicate value", "", kind))
        seen.add(kind)
        if cond.get("status") not in ("True", "False", "Unknown"):
            supported = 'supported values: "False", "True", "Unknown"'
            errors.append(
                FieldError(f"{where}.status", "Unsupported value", supported, cond.get("status"))
            )
        if not cond.get("lastTransitionTime"):
            errors.append(
                FieldError(f"{where}.lastTransitionTime", "Required value", "must be set")
            )
        reason = cond.get("reason")
        if not reason:
            errors.append(FieldError(f"{where}.reason", "Required value"))
        elif (
            not isinstance(reason, str)
            or len(reason) > 1024
            or not _CONDITION_REASON.fullmatch(reason)
        ):
            errors.append(
                FieldError(
                    f"{where}.reason",
                    "Invalid value",
                    "a condition reason must start with alphabetic character, optionally "
                    "followed by a string of alphanumeric characters or '_,:', and must end "
                    "with an alphanumeric character or '_'",
                    reason,
                )
            )
        message = cond.get("message")
        if isinstance(message, str) and len(message) > 32768:
            errors.append(
                FieldError(f"{where}.message", "Too long", "may not be more than 32768 bytes")
            )
    return errors


def _service_node_ports(spec: Obj) -> set[int]:
    ports = {p.get("nodePort") for p in spec.get("ports") or [] if isinstance(p, dict)}
    ports.add(spec.get("healthCheckNodePort"))
    return {p for p in ports if isinstance(p, int)}


def _owned(node_port: int, old_spec: Obj) -> bool:
    return node_port in _service_node_ports(old_spec)


def _next_free_port(used: _InUse) -> int:
    for port in range(max(used.start, NODE_PORT_RANGE.start), NODE_PORT_RANGE.stop):
        if port not in used:
            return port
    raise ApiError(500, "InternalError", "range of valid node ports is full")


def _next_free_ip(used: _InUse) -> str:
    # .0 is the network, .1 would be the "kubernetes" service; start at .10.
    for offset in range(max(used.start, FIRST_IP_OFFSET), SERVICE_CIDR.num_addresses - 1):
        ip = _ip_at(offset)
        if ip not in used:
            return ip
    raise ApiError(500, "InternalError", "range of valid cluster IPs is full")


def _ip_at(offset: int) -> str:
    return str(SERVICE_CIDR.network_address + offset)


def _ip_offset(ip: Any) -> int | None:
    """The offset of ``ip`` in :data:`SERVICE_CIDR`; None when it is not in it."""
    if not isinstance(ip, str) or not ip.startswith(_CIDR_TEXT_PREFIX):
        return None  # cheap test first: this runs for every Service write
    try:
        offset = int(ipaddress.IPv4Address(ip)) - int(SERVICE_CIDR.network_address)
    except ValueError:
        return None
    return offset if 0 <= offset < SERVICE_CIDR.num_addresses else None


class _InUse:
    """What a Service may not take: what the others hold, plus what it took itself."""

    def __init__(self, taken_by_others: Callable[[Any], bool], start: int) -> None:
        self._others = taken_by_others
        self._mine: set[Any] = set()
        #: Where a search for a free value may start: everything below is held by others.
        self.start = start

    def __contains__(self, value: object) -> bool:
        return value in self._mine or self._others(value)

    def add(self, value: Any) -> None:
        self._mine.add(value)


class ServiceIndex:
    """The cluster IPs and node ports every stored Service holds, kept by the store as it
    commits, so a Service write costs the same with 10 or 10,000 Services around it."""

    def __init__(self) -> None:
        self._ips: dict[Any, int] = {}
        self._ports: dict[int, int] = {}
        # Lowest port / IP offset that may be free (everything below is held).
        self._port_floor = NODE_PORT_RANGE.start
        self._ip_floor = FIRST_IP_OFFSET

    def replace(self, before: Obj | None, after: Obj | None) -> None:
        """A stored Service changed from ``before`` to ``after`` (None: absent)."""
        if before is not None and after is not None and _holdings(before) == _holdings(after):
            return  # the common write (metadata, status) holds what it held
        if before is not None:
            self.remove(before)
        if after is not None:
            self.add(after)

    def add(self, obj: Obj) -> None:
        spec = obj.get("spec") or {}
        ip = spec.get("clusterIP")
        if ip:
            self._ips[ip] = self._ips.get(ip, 0) + 1
            while _ip_at(self._ip_floor) in self._ips:
                self._ip_floor += 1
        for port in _service_node_ports(spec):
            self._ports[port] = self._ports.get(port, 0) + 1
        while self._port_floor in self._ports:
            self._port_floor += 1

    def remove(self, obj: Obj) -> None:
        spec = obj.get("spec") or {}
        ip = spec.get("clusterIP")
        if ip and _release(self._ips, ip):
            offset = _ip_offset(ip)
            if offset is not None:
                self._ip_floor = min(self._ip_floor, max(offset, FIRST_IP_OFFSET))
        for port in _service_node_ports(spec):
            if _release(self._ports, port) and port in NODE_PORT_RANGE:
                self._port_floor = min(self._port_floor, port)

    def taken(self, own: Obj | None) -> Taken:
        """What the Services other than ``own`` (the stored state of the one written) hold."""
        return Taken(self, own)


def _holdings(obj: Obj) -> tuple[Any, set[int]]:
    spec = obj.get("spec") or {}
    return spec.get("clusterIP"), _service_node_ports(spec)


def _release(counts: dict[Any, int], value: Any) -> bool:
    """Drop one holder of ``value``; True when none is left."""
    left = counts.get(value, 0) - 1
    if left > 0:
        counts[value] = left
        return False
    counts.pop(value, None)
    return True


class Taken:
    """Cluster IPs and node ports held by every Service but the one being written."""

    def __init__(self, index: ServiceIndex, own: Obj | None) -> None:
        self._index = index
        spec = (own or {}).get("spec") or {}
        self._own_ip = spec.get("clusterIP") or None
        self._own_ports = _service_node_ports(spec)
        own_offset = _ip_offset(self._own_ip)
        # What the written Service holds itself is free for it: a search starts low enough.
        self.port_start = min([index._port_floor, *self._own_ports])
        self.ip_start = min(index._ip_floor, own_offset if own_offset is not None else 1 << 32)

    def has_ip(self, ip: Any) -> bool:
        held = self._index._ips.get(ip, 0)
        return held - (1 if ip is not None and ip == self._own_ip else 0) > 0

    def has_port(self, port: Any) -> bool:
        held = self._index._ports.get(port, 0)
        return held - (1 if port in self._own_ports else 0) > 0


def _in_service_cidr(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in SERVICE_CIDR
    except ValueError:
        return False


# --- endpoint slices and events ------------------------------------------------


def _endpoint_slice_errors(obj: Obj) -> list[FieldError]:
    errors: list[FieldError] = []
    address_type = obj.get("addressType")
    if address_type not in ("IPv4", "IPv6", "FQDN"):
        kind = "Required value" if address_type is None else "Unsupported value"
        errors.append(FieldError("addressType", kind, "", address_type))
    endpoints = obj.setdefault("endpoints", [])
    if not isinstance(endpoints, list):
        errors.append(FieldError("endpoints", "Invalid value", "must be a list"))
        return errors
    for i, ep in enumerate(endpoints):
        addresses = ep.get("addresses") if isinstance(ep, dict) else None
        if not isinstance(addresses, list) or not 0 < len(addresses) <= 100:
            errors.append(
                FieldError(
                    f"endpoints[{i}].addresses", "Required value", "must hold 1 to 100 addresses"
                )
            )
    return errors


def _event_errors(obj: Obj) -> list[FieldError]:
    # What events.k8s.io/v1 requires of a new Event.
    errors = [
        FieldError(field, "Required value")
        for field in ("eventTime", "reportingController", "reportingInstance", "action", "reason")
        if not obj.get(field)
    ]
    if obj.get("type") not in ("Normal", "Warning"):
        supported = 'supported values: "Normal", "Warning"'
        errors.append(FieldError("type", "Unsupported value", supported, obj.get("type")))
    for field in ("action", "reason", "reportingInstance"):
        if isinstance(obj.get(field), str) and len(obj[field]) > 128:
            errors.append(FieldError(field, "Too long", "must have at most 128 bytes"))
    if isinstance(obj.get("note"), str) and len(obj["note"].encode()) > 1024:
        errors.append(FieldError("note", "Too long", "must have at most 1024 bytes"))
    series = obj.get("series")
    if series is not None:
        count = series.get("count") if isinstance(series, dict) else None
        if not isinstance(count, int) or count < 2:
            errors.append(
                FieldError("series.count", "Invalid value", "should be at least 2", count)
            )
        if not isinstance(series, dict) or not series.get("lastObservedTime"):
            errors.append(FieldError("series.lastObservedTime", "Required value"))
    return errors


# What an update of an events.k8s.io/v1 Event may not change (only series and
# metadata may move: a repeat is counted, never rewritten).
_EVENT_IMMUTABLE = (
    "action",
    "reason",
    "note",
    "regarding",
    "related",
    "eventTime",
    "reportingController",
    "reportingInstance",
    "type",
)


def _event_update_errors(obj: Obj, old: Obj) -> list[FieldError]:
    return [
        FieldError(field, "Invalid value", "field is immutable", obj.get(field))
        for field in _EVENT_IMMUTABLE
        if obj.get(field) != old.get(field)
    ]


def _lease_errors(obj: Obj) -> list[FieldError]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return []
    errors: list[FieldError] = []
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and (not isinstance(duration, int) or duration <= 0):
        errors.append(
            FieldError(
                "spec.leaseDurationSeconds", "Invalid value", "must be greater than 0", duration
            )
        )
    transitions = spec.get("leaseTransitions")
    if transitions is not None and (not isinstance(transitions, int) or transitions < 0):
        errors.append(
            FieldError(
                "spec.leaseTransitions",
                "Invalid value",
                "must be greater than or equal to 0",
                transitions,
            )
        )
    return errors
