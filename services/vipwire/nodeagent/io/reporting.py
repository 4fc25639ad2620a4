"""Telling the bus what the node serves: ``NodeApplied``, in the traces that caused it.

At start, the last ``NodeApplied`` of this node gives the generation to continue.

The first message an apply or report serves is its trace parent, the others
(up to :data:`MAX_LINKS`) are links: each agent gets every message of its
cluster, so it makes no span per delivery.
"""

from __future__ import annotations

import asyncio
import logging

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext

from vipwire.bus import BusError
from vipwire.contracts import MalformedMessage, NodeApplied, decode, node_subject
from vipwire.nodeagent.settings import NodeagentSettings
from vipwire.runtime import Runtime

log = logging.getLogger("vipwire.nodeagent")

#: Traces one apply or report links to at most (the first is its parent).
MAX_LINKS = 32


def span_parent(causes: list[SpanContext]) -> tuple[Context | None, list[Link]]:
    """The context of the first cause, and links to the others."""
    if not causes:
        return None, []
    parent = trace.set_span_in_context(NonRecordingSpan(causes[0]))
    return parent, [Link(c) for c in causes[1:MAX_LINKS]]


async def last_generation(settings: NodeagentSettings, runtime: Runtime) -> int:
    """The generation this node last reported (0 if none), so the count never goes back."""
    s = settings
    subject = node_subject("applied", s.cluster, s.node)
    stored = await runtime.bus.last_message(subject)
    if stored is None:
        return 0
    try:
        last = decode(subject, stored.data)
    except MalformedMessage as exc:
        log.warning("ignoring the last applied message of %s: %s", s.node, exc)
        return 0
    return last.generation if isinstance(last, NodeApplied) else 0


class Reporter:
    """Publishes the VIP set of one node, once per change, no sooner than it may."""

    def __init__(self, settings: NodeagentSettings, runtime: Runtime, *, dry_run: bool) -> None:
        self._settings = settings
        self._runtime = runtime
        self._dry_run = dry_run
        #: The VIP set last published (None: none yet).
        self.reported: tuple[str, ...] | None = None
        #: The refused VIPs last published.
        self.refused: tuple[str, ...] = ()
        #: Loop time before which the next report may not go out.
        self.next_at = 0.0
        self._causes: list[SpanContext] = []

    def caused_by(self, causes: list[SpanContext]) -> None:
        """Applies that changed the node for these messages: the next report serves them."""
        self._causes.extend(causes[: MAX_LINKS - len(self._causes)])

    async def report(
        self, vips: tuple[str, ...], generation: int, refused: tuple[str, ...] = ()
    ) -> None:
        """Publish the VIP set the node serves now, and the VIPs it refuses (nothing if
        already published)."""
        s = self._settings
        if vips == self.reported and refused == self.refused:
            return
        causes, self._causes = self._causes, []
        message = NodeApplied(
            cluster=s.cluster,
            node=s.node,
            generation=generation,
            vips=vips,
            mode=s.mode,
            dry_run=self._dry_run,
            refused=refused,
        )
        parent, links = span_parent(causes)
        try:
            with self._runtime.tracer.start_as_current_span(
                "nodeagent report",
                context=parent,
                links=links,
                attributes={"k8s.node.name": s.node, "vipwire.vips": len(vips)},
            ):
                await self._runtime.bus.publish(message)
        except BusError:
            log.warning("could not report generation %d; will retry", generation)
            self._causes = causes + self._causes
            raise
        self.reported = vips
        self.refused = refused
        self.next_at = asyncio.get_running_loop().time() + s.report_interval_s
