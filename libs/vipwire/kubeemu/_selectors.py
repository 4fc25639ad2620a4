"""Label and field selectors, parsed the way the API server parses them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from vipwire.kubeemu._errors import ApiError
from vipwire.kubeemu._resources import ResourceType

Op = Literal["=", "!=", "in", "notin", "exists", "!"]

# Label keys: optional DNS-subdomain prefix, then a name part; values are short tokens.
_KEY = r"(?:[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_KEY_RE = re.compile(_KEY)
_VALUE_RE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_SET_RE = re.compile(rf"^({_KEY})\s+(in|notin)\s+\((.*)\)$")
_EQ_RE = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*(.*)$")


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: Op
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # "!=" and "notin" also match objects without the label, as documented.
        return not present or labels[self.key] not in self.values


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``( )``."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_label_selector(text: str | None) -> LabelSelector:
    if not text or not text.strip():
        return LabelSelector()
    reqs: list[Requirement] = []
    for raw in _split_top_level(text):
        term = raw.strip()
        if not term:
            raise ApiError.bad_request(f"unable to parse requirement: empty term in {text!r}")
        if m := _SET_RE.match(term):
            values = [v.strip() for v in m.group(3).split(",")]
            _check_values(values, text)
            op: Op = "in" if m.group(2) == "in" else "notin"
            reqs.append(Requirement(m.group(1), op, frozenset(values)))
        elif m := _EQ_RE.match(term):
            value = m.group(3).strip()
            _check_values([value], text)
            eq: Op = "!=" if m.group(2) == "!=" else "="
            reqs.append(Requirement(m.group(1), eq, frozenset([value])))
        elif term.startswith("!") and _KEY_RE.fullmatch(term[1:].strip()):
            reqs.append(Requirement(term[1:].strip(), "!"))
        elif _KEY_RE.fullmatch(term):
            reqs.append(Requirement(term, "exists"))
        else:
            raise ApiError.bad_request(f"unable to parse requirement: {term!r}")
    return LabelSelector(tuple(reqs))


def _check_values(values: list[str], text: str) -> None:
    for v in values:
        if len(v) > 63 or not _VALUE_RE.fullmatch(v):
            raise ApiError.bad_request(
                f"unable to parse requirement: invalid label value {v!r} in {text!r}"
            )


# Field selectors: every resource supports metadata.name and metadata.namespace, and each
# kind a few fields of its own, the ones kube-apiserver's field label conversion accepts
# ("Field selectors", https://kubernetes.io/docs/concepts/overview/working-with-objects/field-selectors/:
# "Supported field selectors vary by Kubernetes resource type"; an unsupported one is a
# 400 "field label not supported"). A field maps to the path of the value it compares.
_COMMON: dict[str, tuple[str, ...]] = {
    "metadata.name": ("metadata", "name"),
    "metadata.namespace": ("metadata", "namespace"),
}


def _object_reference_fields(prefix: str, path: str) -> dict[str, tuple[str, ...]]:
    subfields = ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
    return {f"{prefix}.{sub}": (path, sub) for sub in subfields}


_BY_KIND: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {
    # core/v1 Events: what `kubectl describe` and `kubectl events --for` select on.
    ("", "Event"): {
        **_object_reference_fields("involvedObject", "involvedObject"),
        "reason": ("reason",),
        "reportingComponent": ("reportingComponent",),
        "source": ("source", "component"),
        "type": ("type",),
    },
    # events.k8s.io/v1 Events: the same selectors under the new names.
    ("events.k8s.io", "Event"): {
        **_object_reference_fields("regarding", "regarding"),
        "reason": ("reason",),
        "reportingController": ("reportingController",),
        "type": ("type",),
    },
    ("", "Service"): {"spec.clusterIP": ("spec", "clusterIP"), "spec.type": ("spec", "type")},
    ("", "Node"): {"spec.unschedulable": ("spec", "unschedulable")},
    ("", "Namespace"): {"status.phase": ("status", "phase")},
}


def _field_value(obj: Mapping[str, Any], path: tuple[str, ...]) -> str:
    value: Any = obj
    for part in path:
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True, slots=True)
class FieldSelector:
    terms: tuple[tuple[tuple[str, ...], bool, str], ...] = ()  # (path, equal?, value)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all((_field_value(obj, path) == value) == equal for path, equal, value in self.terms)


def parse_field_selector(text: str | None, resource: ResourceType | None = None) -> FieldSelector:
    """``resource`` names the kind whose own fields are accepted (None: only metadata)."""
    if not text or not text.strip():
        return FieldSelector()
    fields = dict(_COMMON)
    if resource is not None:
        fields.update(_BY_KIND.get((resource.group, resource.kind), {}))
    terms: list[tuple[tuple[str, ...], bool, str]] = []
    for raw in text.split(","):
        term = raw.strip()
        m = re.fullmatch(r"([A-Za-z0-9.]+)\s*(==|=|!=)\s*(.*)", term)
        if m is None:
            raise ApiError.bad_request(f"invalid selector: {text!r}; can't understand {term!r}")
        field, op, value = m.group(1), m.group(2), m.group(3).strip()
        if field not in fields:
            raise ApiError.bad_request(f'field label not supported: "{field}"')
        terms.append((fields[field], op != "!=", value))
    return FieldSelector(tuple(terms))


@dataclass(frozen=True, slots=True)
class Filter:
    """Which objects a list or watch request asks for."""

    namespace: str | None = None
    labels: LabelSelector = LabelSelector()
    fields: FieldSelector = FieldSelector()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return self.labels.matches(meta.get("labels")) and self.fields.matches(obj)

    @classmethod
    def parse(
        cls,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource: ResourceType | None = None,
    ) -> Filter:
        return cls(
            namespace,
            parse_label_selector(label_selector),
            parse_field_selector(field_selector, resource),
        )
