"""The resource types the emulator serves and how request paths map onto them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str
    subresources: tuple[str, ...] = ()
    short_names: tuple[str, ...] = ()
    # Whether DELETE answers with the object (its OpenAPI says so) or a Status.
    delete_returns_object: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """``services`` or ``endpointslices.discovery.k8s.io``, as error messages spell it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources


SERVICES = ResourceType(
    "",
    "v1",
    "services",
    "Service",
    True,
    "service",
    ("status",),
    ("svc",),
    delete_returns_object=True,
)
NODES = ResourceType("", "v1", "nodes", "Node", False, "node", ("status",), ("no",))
NAMESPACES = ResourceType(
    "", "v1", "namespaces", "Namespace", False, "namespace", ("status",), ("ns",)
)
CORE_EVENTS = ResourceType("", "v1", "events", "Event", True, "event", (), ("ev",))
ENDPOINT_SLICES = ResourceType(
    "discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True, "endpointslice"
)
EVENTS = ResourceType("events.k8s.io", "v1", "events", "Event", True, "event", (), ("ev",))
LEASES = ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True, "lease")

ALL: tuple[ResourceType, ...] = (
    NAMESPACES,
    NODES,
    SERVICES,
    CORE_EVENTS,
    ENDPOINT_SLICES,
    EVENTS,
    LEASES,
)

_BY_PATH = {(rt.group, rt.version, rt.plural): rt for rt in ALL}


def by_path(group: str, version: str, plural: str) -> ResourceType | None:
    return _BY_PATH.get((group, version, plural))


def by_api_version_kind(api_version: str, kind: str) -> ResourceType | None:
    for rt in ALL:
        if rt.api_version == api_version and rt.kind == kind:
            return rt
    return None


def lookup(name: str) -> ResourceType:
    """Resolve ``services``, ``Service``, ``svc``, ``leases.coordination.k8s.io`` and the like.

    A bare ``events``/``Event`` means core v1 events; ``events.events.k8s.io``
    (as ``kubectl`` spells it) means the events.k8s.io ones.
    """
    for rt in ALL:
        if name == f"{rt.plural}.{rt.group}" and rt.group:
            return rt
    lowered = name.lower()
    for rt in ALL:
        if lowered in (rt.plural, rt.singular, rt.kind.lower(), *rt.short_names):
            return rt
    raise KeyError(f"unknown resource {name!r}")


@dataclass(frozen=True, slots=True)
class Target:
    """What a resource request path names."""

    resource: ResourceType
    namespace: str | None  # None: cluster-scoped, or all namespaces for a collection
    name: str | None  # None: the collection
    subresource: str | None = None


def parse_path(path: str) -> Target | None:
    """Map ``/api/v1/namespaces/ns/services/x/status`` and friends to a :class:`Target`.

    Returns None when the path names no resource the emulator serves.
    """
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if not rest:
        return None
    namespace: str | None = None
    # ``namespaces/{ns}/{plural}...`` is a namespaced request; ``namespaces``,
    # ``namespaces/{name}`` and ``namespaces/{name}/status`` name namespaces themselves.
    if rest[0] == "namespaces" and len(rest) >= 3 and not (group == "" and rest[2] == "status"):
        namespace, rest = rest[1], rest[2:]
    rt = by_path(group, version, rest[0])
    if rt is None:
        return None
    if namespace is not None and not rt.namespaced:
        return None
    if len(rest) == 1:
        return Target(rt, namespace, None)
    if rt.namespaced and namespace is None:
        return None  # a namespaced object needs its namespace in the path
    if len(rest) == 2:
        return Target(rt, namespace, rest[1])
    if len(rest) == 3 and rest[2] in rt.subresources:
        return Target(rt, namespace, rest[1], rest[2])
    return None
