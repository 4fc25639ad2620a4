"""Two views of one Event: core/v1 and events.k8s.io/v1.

The API server keeps one kind of Event and serves it in both groups, field by field
("Event v1 events.k8s.io" in the Kubernetes API reference,
https://kubernetes.io/docs/reference/kubernetes-api/cluster-resources/event-v1/: note is
message, regarding is involvedObject, reportingController is reportingComponent, and
the deprecated* fields are the core ones). vipwire's watcher writes events.k8s.io/v1,
while ``kubectl describe`` and ``kubectl events`` read core/v1 with selectors on
``involvedObject.*``.

The emulator stores each Event in the group it was written in and serves it to the
other group's reads (get, list and watch) through these conversions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vipwire.kubeemu import _resources as res
from vipwire.kubeemu._resources import ResourceType

Obj = dict[str, Any]

# events.k8s.io/v1 field -> core/v1 field (the rest have the same name in both).
_TO_CORE = {
    "regarding": "involvedObject",
    "note": "message",
    "reportingController": "reportingComponent",
    "deprecatedSource": "source",
    "deprecatedFirstTimestamp": "firstTimestamp",
    "deprecatedLastTimestamp": "lastTimestamp",
    "deprecatedCount": "count",
}
_TO_EVENTS = {core: new for new, core in _TO_CORE.items()}
_SHARED = ("metadata", "eventTime", "series", "related", "action", "reason", "type")


def _renamed(obj: Obj, names: dict[str, str], api_version: str) -> Obj:
    out: Obj = {"kind": "Event", "apiVersion": api_version}
    for field, value in obj.items():
        if field in names:
            out[names[field]] = value
        elif field in _SHARED or field == "reportingInstance":
            out[field] = value
    return out


def core_event(obj: Obj) -> Obj:
    """The core/v1 view of an events.k8s.io/v1 Event."""
    out = _renamed(obj, _TO_CORE, "v1")
    out.setdefault("involvedObject", {})
    # Core clients read the occurrence count and times from count/firstTimestamp/
    # lastTimestamp; an Event with a series counts series.count times.
    series = obj.get("series")
    if isinstance(series, dict) and "count" not in out and isinstance(series.get("count"), int):
        out["count"] = series["count"]
    if "source" not in out and obj.get("reportingController"):
        out["source"] = {"component": obj["reportingController"]}
    return out


def events_event(obj: Obj) -> Obj:
    """The events.k8s.io/v1 view of a core/v1 Event."""
    out = _renamed(obj, _TO_EVENTS, "events.k8s.io/v1")
    out.setdefault("regarding", {})
    if "reportingController" not in out:
        source = obj.get("source")
        if isinstance(source, dict) and source.get("component"):
            out["reportingController"] = source["component"]
    return out


# A resource -> the other resource whose objects it also shows, and how it shows them.
OTHER_VIEW: dict[ResourceType, tuple[ResourceType, Callable[[Obj], Obj]]] = {
    res.CORE_EVENTS: (res.EVENTS, core_event),
    res.EVENTS: (res.CORE_EVENTS, events_event),
}
