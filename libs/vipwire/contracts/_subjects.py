"""Subject names: built from validated parts, parsed back into them.

``vipwire.<cluster>.<family>.<ns>.<name>`` for per-Service families,
``vipwire.<cluster>.<family>.<node>`` for per-node ones and
``vipwire.<cluster>.<family>.all`` for per-cluster ones (one subject per cluster:
``pools``). A node name is a DNS
subdomain and may hold dots, which NATS reads as token separators, so its
token carries each ``.`` as ``_`` (no DNS name holds ``_``).
"""

from __future__ import annotations

import re
from typing import Final, Literal

import msgspec

ROOT: Final = "vipwire"

ServiceFamily = Literal["service", "endpoints", "vip", "lb", "status"]
NodeFamily = Literal["node", "applied"]
ClusterFamily = Literal["pools"]
Family = ServiceFamily | NodeFamily | ClusterFamily

SERVICE_FAMILIES: Final[frozenset[str]] = frozenset({"service", "endpoints", "vip", "lb", "status"})
NODE_FAMILIES: Final[frozenset[str]] = frozenset({"node", "applied"})
CLUSTER_FAMILIES: Final[frozenset[str]] = frozenset({"pools"})
#: The last token of a per-cluster subject.
CLUSTER_TOKEN: Final = "all"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class SubjectError(ValueError):
    """A subject, or a part of one, is not what the contract allows."""


def validate_cluster(cluster: str) -> str:
    if not _DNS_LABEL.match(cluster):
        raise SubjectError(f"cluster name {cluster!r} is not a DNS label (RFC 1123)")
    return cluster


def validate_namespace(namespace: str) -> str:
    if not _DNS_LABEL.match(namespace):
        raise SubjectError(f"namespace {namespace!r} is not a DNS label (RFC 1123)")
    return namespace


def validate_service_name(name: str) -> str:
    if not _DNS_LABEL.match(name):
        raise SubjectError(f"service name {name!r} is not a DNS label (RFC 1123)")
    return name


def validate_node_name(node: str) -> str:
    if len(node) > 253 or not all(_DNS_SUBDOMAIN_LABEL.match(p) for p in node.split(".")):
        raise SubjectError(f"node name {node!r} is not a DNS subdomain (RFC 1123)")
    return node


def node_token(node: str) -> str:
    return validate_node_name(node).replace(".", "_")


def node_from_token(token: str) -> str:
    return validate_node_name(token.replace("_", "."))


def service_subject(family: ServiceFamily, cluster: str, namespace: str, name: str) -> str:
    if family not in SERVICE_FAMILIES:
        raise SubjectError(f"{family!r} is not a per-Service subject family")
    validate_cluster(cluster)
    validate_namespace(namespace)
    validate_service_name(name)
    return f"{ROOT}.{cluster}.{family}.{namespace}.{name}"


def node_subject(family: NodeFamily, cluster: str, node: str) -> str:
    if family not in NODE_FAMILIES:
        raise SubjectError(f"{family!r} is not a per-node subject family")
    validate_cluster(cluster)
    return f"{ROOT}.{cluster}.{family}.{node_token(node)}"


def cluster_subject(family: ClusterFamily, cluster: str) -> str:
    if family not in CLUSTER_FAMILIES:
        raise SubjectError(f"{family!r} is not a per-cluster subject family")
    validate_cluster(cluster)
    return f"{ROOT}.{cluster}.{family}.{CLUSTER_TOKEN}"


def family_filter(family: Family, cluster: str | None = None) -> str:
    """A subscription filter for one family, in one cluster or in all of them."""
    if family not in SERVICE_FAMILIES | NODE_FAMILIES | CLUSTER_FAMILIES:
        raise SubjectError(f"unknown subject family {family!r}")
    scope = "*" if cluster is None else validate_cluster(cluster)
    return f"{ROOT}.{scope}.{family}.>"


class Subject(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed subject. ``key`` is ``ns/name`` for Services, the node name for nodes
    and the cluster name for per-cluster subjects."""

    raw: str
    cluster: str
    family: Family
    namespace: str | None = None
    name: str | None = None
    node: str | None = None

    @property
    def key(self) -> str:
        if self.node is not None:
            return self.node
        if self.namespace is None:
            return self.cluster
        return f"{self.namespace}/{self.name}"


def parse_subject(subject: str) -> Subject:
    parts = subject.split(".")
    if len(parts) < 4 or parts[0] != ROOT:
        raise SubjectError(f"subject {subject!r} is not a vipwire subject")
    cluster, family = parts[1], parts[2]
    validate_cluster(cluster)
    if family in SERVICE_FAMILIES:
        if len(parts) != 5:
            raise SubjectError(
                f"subject {subject!r}: expected {ROOT}.<cluster>.{family}.<ns>.<name>"
            )
        return Subject(
            raw=subject,
            cluster=cluster,
            family=family,  # type: ignore[arg-type]
            namespace=validate_namespace(parts[3]),
            name=validate_service_name(parts[4]),
        )
    if family in NODE_FAMILIES:
        if len(parts) != 4:
            raise SubjectError(f"subject {subject!r}: expected {ROOT}.<cluster>.{family}.<node>")
        return Subject(
            raw=subject,
            cluster=cluster,
            family=family,  # type: ignore[arg-type]
            node=node_from_token(parts[3]),
        )
    if family in CLUSTER_FAMILIES:
        if len(parts) != 4 or parts[3] != CLUSTER_TOKEN:
            raise SubjectError(
                f"subject {subject!r}: expected {ROOT}.<cluster>.{family}.{CLUSTER_TOKEN}"
            )
        return Subject(raw=subject, cluster=cluster, family=family)  # type: ignore[arg-type]
    raise SubjectError(f"subject {subject!r}: unknown family {family!r}")
