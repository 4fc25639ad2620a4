"""Fences: how a test knows a component has handled everything up to now.

A test that asserts something did *not* happen must first know that the
component got as far as where it would have happened; a sleep only hopes so.
These read what the component itself reports: the CONSUMER span it ends once
its handler returned (per subject, in order), and the watcher's own
``settled_through`` for Kubernetes changes.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from vipwire.kubeemu import KubeEmulator
from vipwire.lbdriver import LbdriverService
from vipwire.testing import eventually
from vipwire.watcher import WatcherService

#: The emulator's bookmark interval for tests that use ``watcher_settled``: a watch
#: with no change of its own learns the newest resourceVersion only from a bookmark,
#: so the fence waits up to one interval per round (0.5 s made each about that long).
BOOKMARK_INTERVAL_S = 0.05

SEQ = "messaging.nats.stream.sequence"
SUBJECT = "messaging.destination.name"


def now_ns() -> int:
    """A point in time to compare span start times with (``since_ns`` below)."""
    return time.time_ns()


def _family(subject: str) -> str:
    parts = subject.split(".")
    return parts[2] if len(parts) > 2 else ""


def _attr(span: ReadableSpan, name: str) -> Any:
    return (span.attributes or {}).get(name)


def last_published(spans: InMemorySpanExporter, families: Collection[str]) -> dict[str, int]:
    """The newest stream sequence published on each subject of ``families`` (by anyone)."""
    newest: dict[str, int] = {}
    for span in spans.get_finished_spans():
        if span.kind != SpanKind.PRODUCER or _attr(span, SEQ) is None:
            continue
        subject = str(_attr(span, SUBJECT))
        if _family(subject) in families:
            newest[subject] = max(newest.get(subject, 0), int(_attr(span, SEQ)))
    return newest


def handled_by(spans: InMemorySpanExporter, service: str, since_ns: int = 0) -> dict[str, int]:
    """The newest sequence ``service`` finished handling on each subject since ``since_ns``.

    ``service`` is the span resource's service.name: ``vipwire-<runtime name>``.
    """
    newest: dict[str, int] = {}
    for span in spans.get_finished_spans():
        if (
            span.kind != SpanKind.CONSUMER
            or (span.start_time or 0) < since_ns
            or span.resource.attributes.get("service.name") != service
        ):
            continue
        subject = str(_attr(span, SUBJECT))
        newest[subject] = max(newest.get(subject, 0), int(_attr(span, SEQ) or 0))
    return newest


def caught_up(
    spans: InMemorySpanExporter, service: str, families: Collection[str], since_ns: int = 0
) -> bool:
    """Whether ``service`` has handled the newest message on every subject of ``families``."""
    done = handled_by(spans, service, since_ns)
    return all(done.get(s, 0) >= seq for s, seq in last_published(spans, families).items())


#: The families the watcher consumes for the whole term with a span per delivery (the
#: node agents' reports have none: see :func:`reports_taken_in`).
WATCHER_FAMILIES = frozenset({"vip", "lb"})


def reports_taken_in(watcher: WatcherService, spans: InMemorySpanExporter) -> bool:
    """Whether the watcher's term has finished with the newest report of every node agent
    (waited for with a status gate, where a report can open a Service's status)."""
    if watcher.settings.status_gate == "none":
        return True
    done = watcher.reports_handled()
    return all(done.get(s, 0) >= seq for s, seq in last_published(spans, {"applied"}).items())


async def watcher_settled(
    watcher: WatcherService,
    emu: KubeEmulator,
    spans: InMemorySpanExporter,
    *,
    since_ns: int = 0,
) -> None:
    """Fence: the watcher has handled every message and every Kubernetes change so far.

    Bus and API feed each other (a delivery writes status, a write comes back as
    a watch event), so the two waits repeat until a round published nothing new.
    Watches must allow bookmarks at a short interval: a reflector with no change of
    its own learns the newest resourceVersion from one.
    ``since_ns``: only handling that started after it counts (a restart or a new
    term handles the newest message on each subject again).
    """
    families = WATCHER_FAMILIES
    reports = {"applied"} if watcher.settings.status_gate != "none" else set()
    service = f"vipwire-{watcher.runtime.name}"
    while True:
        published = last_published(spans, families | reports)
        await eventually(
            lambda: caught_up(spans, service, families, since_ns),
            every=0.02,
            what=f"{service} handled the newest message on every subject of {sorted(families)}",
        )
        await eventually(
            lambda: reports_taken_in(watcher, spans),
            every=0.02,
            what=f"{service} took in the newest report of every node agent",
        )
        rv = int(emu.resource_version)
        await eventually(
            lambda rv=rv: watcher.settled_through(rv),
            every=0.02,
            what=f"{service} handled every Kubernetes change through resourceVersion {rv}",
        )
        # The Lease moves the resourceVersion on and on: only the bus says a round changed
        # nothing (a write of ours that mattered to someone was answered on it).
        if last_published(spans, families | reports) == published:
            return


#: What the lbdriver consumes.
LBDRIVER_FAMILIES = frozenset({"vip", "endpoints", "node"})


async def lbdriver_settled(
    lbdriver: LbdriverService, spans: InMemorySpanExporter, *, since_ns: int = 0
) -> None:
    """Fence: the lbdriver handled the newest message on each of its subjects, and no
    Service waits for a reconcile or is in one: no write to an appliance is on its way."""
    service = f"vipwire-{lbdriver.runtime.name}"
    await eventually(
        lambda: caught_up(spans, service, LBDRIVER_FAMILIES, since_ns),
        every=0.02,
        what=f"{service} handled the newest message on every subject it reads",
    )
    await eventually(lambda: lbdriver.idle, what=f"{service} has no reconcile pending or running")
