"""The node agent's shell: bus in, applier out, ``NodeApplied`` back to the bus.

State is rebuilt from the bus on every start (ephemeral consumer, last message
per subject), so the agent keeps nothing on disk. It applies nothing until it
has caught up with the stream: applying a half-read VIP set would briefly
withdraw the other VIPs on every restart.

A message only updates the pure :class:`~vipwire.nodeagent.core.changes.Changes`
(O(its VIPs)) and marks what it changed; one task applies what is marked
(after ``coalesce_ms``, so a burst is applied together) and reports
(:mod:`~vipwire.nodeagent.io.reporting`). The first
apply and every resync read the node and plan in full; in between, the agent
trusts what it applied and plans only the changed addresses. A failed apply is
retried by that task (with backoff, as a full plan), so the consumer needs no
acknowledgements: nothing is ever redelivered to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Protocol

from opentelemetry.trace import SpanContext

from vipwire.aio import cancel_and_wait
from vipwire.bus import DONE, BusError, ConsumerSpec, Delivery, Verdict
from vipwire.contracts import MalformedMessage, NodeApplied, decode, family_filter, node_subject
from vipwire.nodeagent.core.changes import Changes
from vipwire.nodeagent.core.desired import node_state, ruleset, vip_strings
from vipwire.nodeagent.core.plan import (
    Action,
    Known,
    known,
    note_applied,
    plan,
    plan_delta,
    simulate,
)
from vipwire.nodeagent.io.apply import Applier, make_applier
from vipwire.nodeagent.io.reporting import MAX_LINKS, Reporter, span_parent
from vipwire.nodeagent.settings import NodeagentSettings
from vipwire.runtime import ConfigError, Runtime

log = logging.getLogger("vipwire.nodeagent")


class _Consumer(Protocol):
    async def start(self) -> None: ...

    async def caught_up(self, timeout: float | None = None) -> None: ...

    async def stop(self) -> None: ...


def _backoff(attempt: int) -> float:
    return float(min(0.25 * 2 ** max(attempt - 1, 0), 30.0))


class NodeagentService:
    """Keeps this node's VIPs (and, standalone, its DNAT rules) in line with the appliance."""

    def __init__(
        self,
        settings: NodeagentSettings,
        runtime: Runtime,
        applier: Applier | None = None,
    ) -> None:
        try:
            self.settings = settings.for_this_node()
        except ValueError as exc:
            raise ConfigError(f"nodeagent: {exc}") from exc
        self._runtime = runtime
        self._applier = applier if applier is not None else make_applier(self.settings)
        self._changes = Changes(standalone=self.settings.mode == "standalone")
        self._known = Known()
        self._causes: list[SpanContext] = []
        self._wake = asyncio.Event()
        self._live = False
        self._ready = asyncio.Event()
        self._problem: str | None = None
        self._generation = 0
        # The VIP set changed since the last report (or none was made yet).
        self._unreported = True
        self._reporter = Reporter(self.settings, runtime, dry_run=self._applier.dry_run)
        self._warned: set[str] = set()
        self._consumer: _Consumer | None = None
        self._task: asyncio.Task[None] | None = None
        m = runtime.metrics
        self._m_applies = m.counter(
            "nodeagent_applies_total", "Applies that changed the node, by result", ["result"]
        )
        self._m_actions = m.counter(
            "nodeagent_actions_total", "Actions applied to the node, by kind", ["action"]
        )
        self._m_vips = m.gauge("nodeagent_vips", "VIPs this node serves now")
        self._m_generation = m.gauge("nodeagent_generation", "Generation of the last apply")

    # --- lifecycle ---------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self._generation

    async def start(self) -> None:
        s = self.settings
        self._generation = await self._last_generation()
        self._m_generation.set(self._generation)
        filters = [family_filter("lb", s.cluster)]
        if s.mode == "standalone":
            filters.append(family_filter("endpoints", s.cluster))
        # No acknowledgements: the handler never fails (it only records), and a
        # failed apply is retried by the apply task, not by a redelivery.
        # No CONSUMER span per message either (each agent gets every message of its
        # cluster, most of which change nothing): the apply joins the trace of the
        # first message it serves, and links to the others.
        spec = ConsumerSpec(
            filters=tuple(filters), deliver="last_per_subject", ack="none", traced=False
        )
        consumer = self._runtime.bus.consumer(spec, self._handle)
        self._consumer = consumer
        await consumer.start()
        self._task = asyncio.create_task(self._run(consumer), name=f"nodeagent-{s.node}")
        log.info(
            "node agent for %s in cluster %s started (%s mode%s)",
            s.node,
            s.cluster,
            s.mode,
            ", dry run" if self._applier.dry_run else "",
        )

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()

    def readiness(self) -> str | None:
        if self._consumer is None:
            return "not started"
        if not self._ready.is_set():
            return self._problem or "catching up with the bus"
        return None

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the first apply after catching up is done."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def _last_generation(self) -> int:
        """Continue the generation this node last reported, so it never goes back."""
        s = self.settings
        subject = node_subject("applied", s.cluster, s.node)
        stored = await self._runtime.bus.last_message(subject)
        if stored is None:
            return 0
        try:
            last = decode(subject, stored.data)
        except MalformedMessage as exc:
            log.warning("ignoring the last applied message of %s: %s", s.node, exc)
            return 0
        return last.generation if isinstance(last, NodeApplied) else 0

    async def _run(self, consumer: _Consumer) -> None:
        await consumer.caught_up()
        self._live = True
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._runtime.tracer.start_as_current_span("nodeagent initial apply"):
                    # What was read while catching up is history, not a cause.
                    self._causes.clear()
                    # Taken as the apply starts: exactly the set it establishes, even if
                    # messages arrive while it runs.
                    vips = vip_strings(self._changes.desired.refs)
                    await self._apply()
                    await self._reporter.report(vips, self._generation)
                    self._unreported = vips != vip_strings(self._changes.desired.refs)
                break
            except Exception as exc:
                self._problem = f"first apply failed: {exc}"
                log.warning("first apply failed (attempt %d): %s", attempt, exc, exc_info=exc)
                self._changes.full = True
                await asyncio.sleep(_backoff(attempt))
        self._problem = None
        self._ready.set()
        await self._loop()

    async def _loop(self) -> None:
        """Apply what changed, report at most once per ``report_interval_s``, resync."""
        loop = asyncio.get_running_loop()
        s = self.settings
        interval = s.resync_interval_s
        next_resync = loop.time() + interval if interval > 0 else math.inf
        retry_at = 0.0
        failures = 0
        while True:
            now = loop.time()
            if now >= next_resync:
                # Repairs drift and retries what failed, without any message to prompt it.
                self._changes.full = True
                next_resync = now + interval
            pending = self._changes.pending
            if pending and now >= retry_at:
                if s.coalesce_ms and not self._changes.full:
                    await asyncio.sleep(s.coalesce_ms / 1000)
                # A report that is due goes out with this apply, carrying exactly the
                # set it establishes, so a steady stream of changes cannot hold it back.
                vips = None
                if self._unreported and loop.time() >= self._reporter.next_at:
                    vips = vip_strings(self._changes.desired.refs)
                    self._unreported = False
                try:
                    await self._apply()
                except Exception as exc:
                    failures += 1
                    retry_at = loop.time() + _backoff(failures)
                    self._unreported = self._unreported or vips is not None
                    log.warning("apply failed (attempt %d): %s", failures, exc, exc_info=exc)
                    continue
                failures, retry_at = 0, 0.0
                if vips is not None:
                    await self._try_report(vips)
                continue
            if self._unreported and not pending and now >= self._reporter.next_at:
                self._unreported = False
                await self._try_report(vip_strings(self._changes.desired.refs))
                continue
            deadlines = [next_resync]
            if pending:
                deadlines.append(retry_at)
            elif self._unreported:
                deadlines.append(self._reporter.next_at)
            delay = min(deadlines) - loop.time()
            if delay <= 0:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), None if delay == math.inf else delay)

    # --- handling ----------------------------------------------------------------

    async def _handle(self, d: Delivery) -> Verdict:
        if d.subject.cluster != self.settings.cluster:
            return DONE
        recorded = self._changes.record(d.message)
        if recorded is not None:
            if recorded.vips:
                self._unreported = True
            for reason in recorded.ignored:
                if reason not in self._warned:
                    log.warning("ignored: %s", reason)
                    self._warned.add(reason)
            if len(self._causes) < MAX_LINKS:
                cause = d.span_context()
                if cause.is_valid:
                    self._causes.append(cause)
            if self._live:
                self._wake.set()
        return DONE

    async def _apply(self) -> None:
        """Bring the node to the desired state: in full (read, plan) or only what changed."""
        s = self.settings
        full, changed = self._changes.take()
        causes, self._causes = self._causes, []
        try:
            if full:
                desired = node_state(
                    self._changes.desired,
                    node=s.node,
                    mode=s.mode,
                    interface=s.loopback_interface,
                    uplink=s.uplink_interface,
                    table=s.nft_table,
                )
                self._warn(desired.ignored)
                current = await self._applier.current()
                actions = plan(current, desired)
                after = simulate(current, actions)
                vips = desired.vips
                if vips != self._reporter.reported:
                    self._unreported = True
            else:
                state = self._changes.desired
                nft = None
                if s.mode == "standalone":
                    ignored = [r for e in state.services.values() for r in e.ignored]
                    nft = ruleset(state, node=s.node, table=s.nft_table, ignored=ignored)
                    self._warn(tuple(ignored))
                actions = plan_delta(
                    self._known, state, changed, interface=s.loopback_interface, nft=nft
                )
            if actions:
                await self._write(actions, causes)
        except BaseException:
            # Nothing is lost: the next attempt reads the node and plans in full.
            self._changes.full = True
            self._causes = causes + self._causes
            raise
        if full:
            self._known = known(after)
        else:
            note_applied(self._known, actions)
        self._m_vips.set(len(self._changes.desired.refs))
        if causes:
            self._reporter.caused_by(causes)

    async def _write(self, actions: tuple[Action, ...], causes: list[SpanContext]) -> None:
        s = self.settings
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
        self._generation += 1
        self._m_applies.inc(result="applied")
        for action in actions:
            self._m_actions.inc(action=str(type(action).__struct_config__.tag))
        self._m_generation.set(self._generation)
        log.info(
            "generation %d: applied %d actions, %d VIPs%s",
            self._generation,
            len(actions),
            len(self._changes.desired.refs),
            " (dry run)" if self._applier.dry_run else "",
        )

    def _warn(self, ignored: tuple[str, ...]) -> None:
        for reason in ignored:
            if reason not in self._warned:
                log.warning("ignored: %s", reason)
        # Warn once per problem while it lasts, and again if it comes back.
        self._warned = set(ignored)

    async def _try_report(self, vips: tuple[str, ...]) -> None:
        try:
            await self._reporter.report(vips, self._generation)
        except BusError:
            self._unreported = True
            self._reporter.next_at = asyncio.get_running_loop().time() + _backoff(1)
