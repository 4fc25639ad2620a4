"""Changing the node: each apply in its own span, counted, logged and numbered.

The generation counts the applies that changed the node. The shell starts it
where this node's last report left it
(:func:`~vipwire.nodeagent.io.reporting.last_generation`), so it never goes back.
"""

from __future__ import annotations

import logging

from opentelemetry.trace import SpanContext

from vipwire.nodeagent.core.plan import Action
from vipwire.nodeagent.io.apply import Applier
from vipwire.nodeagent.io.reporting import span_parent
from vipwire.nodeagent.settings import NodeagentSettings
from vipwire.runtime import Runtime

log = logging.getLogger("vipwire.nodeagent")


class Writer:
    """Hands planned actions to the applier, with the node agent's traces and metrics."""

    def __init__(self, settings: NodeagentSettings, runtime: Runtime, applier: Applier) -> None:
        self._settings = settings
        self._runtime = runtime
        self._applier = applier
        #: Applies that changed the node (continued from the last report).
        self.generation = 0
        m = runtime.metrics
        self._m_applies = m.counter(
            "nodeagent_applies_total", "Applies that changed the node, by result", ["result"]
        )
        self._m_actions = m.counter(
            "nodeagent_actions_total", "Actions applied to the node, by kind", ["action"]
        )
        self._m_vips = m.gauge("nodeagent_vips", "VIPs this node serves now")
        self._m_generation = m.gauge("nodeagent_generation", "Generation of the last apply")

    def resume(self, generation: int) -> None:
        """Continue counting from ``generation``."""
        self.generation = generation
        self._m_generation.set(generation)

    def serving(self, vips: int) -> None:
        """The node now serves this many VIPs."""
        self._m_vips.set(vips)

    async def write(
        self, actions: tuple[Action, ...], causes: list[SpanContext], *, vips: int
    ) -> None:
        """Apply the actions in the trace of their first cause; ``vips`` is for the log."""
        s = self._settings
        parent, links = span_parent(causes)
        with self._runtime.tracer.start_as_current_span(
            "nodeagent apply",
            context=parent,
            links=links,
            attributes={
                "k8s.node.name": s.node,
                "vipwire.cluster": s.cluster,
                "vipwire.actions": len(actions),
                "vipwire.dry_run": self._applier.dry_run,
            },
        ):
            try:
                await self._applier.apply(actions)
            except Exception:
                self._m_applies.inc(result="failed")
                raise
        self.generation += 1
        self._m_applies.inc(result="applied")
        for action in actions:
            self._m_actions.inc(action=str(type(action).__struct_config__.tag))
        self._m_generation.set(self.generation)
        log.info(
            "generation %d: applied %d actions, %d VIPs%s",
            self.generation,
            len(actions),
            vips,
            " (dry run)" if self._applier.dry_run else "",
        )
