"""The node agent's shell: bus in, applier out, ``NodeApplied`` back to the bus.

State is rebuilt from the bus on every start (ephemeral consumer, last message
per subject), so the agent keeps nothing on disk. It applies nothing until it
has caught up with the stream: applying a half-read VIP set would briefly
withdraw the other VIPs on every restart.

A message only updates the pure :class:`~vipwire.nodeagent.core.changes.Changes`
(O(its VIPs)) and marks what it changed; one task applies what is marked
(after ``coalesce_ms``, so a burst is applied together;
:mod:`~vipwire.nodeagent.io.writing`) and reports
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
from collections.abc import Sequence

from opentelemetry.trace import SpanContext

from vipwire.aio import cancel_and_wait
from vipwire.bus import DONE, BusError, ConsumerGroup, ConsumerSpec, Delivery, Unreadable, Verdict
from vipwire.contracts import FeedService, family_filter
from vipwire.nodeagent.core.changes import Changes, Recorded
from vipwire.nodeagent.core.desired import (
    Network,
    VipRanges,
    node_state,
    parse_ranges,
    ruleset,
    vip_strings,
)
from vipwire.nodeagent.core.plan import Known, known, note_applied, plan, plan_delta, simulate
from vipwire.nodeagent.core.retry import backoff_s
from vipwire.nodeagent.io.apply import Applier, make_applier
from vipwire.nodeagent.io.feed import FeedReader
from vipwire.nodeagent.io.ranges import PoolsReader, Refusals
from vipwire.nodeagent.io.reporting import MAX_LINKS, Reporter, last_generation
from vipwire.nodeagent.io.writing import Writer
from vipwire.nodeagent.settings import NodeagentSettings
from vipwire.runtime import ConfigError, Runtime

log = logging.getLogger("vipwire.nodeagent")

#: Stands in :attr:`NodeagentService._unknown` for the feed table while none is held.
_FEED_TABLE = "the node feed table"


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
        self._writer = Writer(self.settings, runtime, self._applier)
        configured = parse_ranges(self.settings.vip_ranges)[0] if self.settings.vip_ranges else None
        self._changes = Changes(
            standalone=self.settings.mode == "standalone", ranges=VipRanges(config=configured)
        )
        self._refusals = Refusals(runtime, self.settings.cluster)
        table = self.settings.feed == "table"
        self._pools = PoolsReader(runtime, self.settings.cluster, self._on_pools, live=table)
        self._feed = (
            FeedReader(
                runtime,
                self.settings.cluster,
                self._on_feed,
                self._on_table_missing,
                check_s=self.settings.resync_interval_s or 30.0,
            )
            if table
            else None
        )
        self._known = Known()
        self._causes: list[SpanContext] = []
        self._wake = asyncio.Event()
        self._live = False
        self._ready = asyncio.Event()
        self._problem: str | None = None
        # The VIP set changed since the last report (or none was made yet).
        self._unreported = True
        self._reporter = Reporter(self.settings, runtime, dry_run=self._applier.dry_run)
        self._warned: set[str] = set()
        #: Subjects whose last message cannot be read, with no valid one before it:
        #: while any is, no address is taken off the node (it may be theirs).
        self._unknown: set[str] = set()
        self._consumer: ConsumerGroup | None = None
        self._started = False
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self._writer.generation

    async def start(self) -> None:
        s = self.settings
        self._writer.resume(await last_generation(s, self._runtime))
        # With the feed, no consumer per node (endpoints aside, in standalone mode).
        filters = [] if self._feed is not None else [family_filter("lb", s.cluster)]
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
        await self._pools.start()  # read before the first apply
        # One consumer per family (the server checks a consumer's one filter).
        if filters:
            self._consumer = self._runtime.bus.consumer_group(
                spec, self._handle, on_unreadable=self._on_unreadable
            )
            await self._consumer.start()
        if self._feed is not None:
            await self._feed.start()
        self._started = True
        self._task = asyncio.create_task(self._run(), name=f"nodeagent-{s.node}")
        log.info(
            "node agent for %s in cluster %s started (%s mode, %s feed%s)",
            s.node,
            s.cluster,
            s.mode,
            s.feed,
            ", dry run" if self._applier.dry_run else "",
        )

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        if self._feed is not None:
            await self._feed.stop()
        if self._consumer is not None:
            await self._consumer.stop()
        await self._pools.stop()

    def readiness(self) -> str | None:
        if not self._started:
            return "not started"
        if not self._ready.is_set():
            return self._problem or "catching up with the bus"
        return None

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the first apply after catching up is done."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def _run(self) -> None:
        if self._consumer is not None:
            await self._consumer.caught_up()
        if self._feed is not None:
            await self._feed.caught_up()
            self._problem = None
        await self._pools.caught_up()
        if not self._changes.ranges.known:
            self._refusals.unknown()
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
                    await self._reporter.report(
                        vips, self._writer.generation, self._changes.refused_vips()
                    )
                    self._unreported = vips != vip_strings(self._changes.desired.refs)
                break
            except Exception as exc:
                self._problem = f"first apply failed: {exc}"
                log.warning("first apply failed (attempt %d): %s", attempt, exc, exc_info=exc)
                self._changes.full = True
                await asyncio.sleep(backoff_s(attempt))
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
                    retry_at = loop.time() + backoff_s(failures)
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

    async def _on_unreadable(self, u: Unreadable) -> None:
        # Logged and counted by the consumer, which handed us the last valid message
        # (it stays in force) if there is one. With none, what the Service needs is
        # unknown: full plans remove nothing until a valid message arrives.
        subject = u.subject
        if subject.family == "lb" and subject.cluster == self.settings.cluster and not u.in_force:
            self._unknown.add(subject.raw)

    async def _handle(self, d: Delivery) -> Verdict:
        if d.subject.cluster != self.settings.cluster:
            return DONE
        if self._unknown and d.subject.raw in self._unknown:
            self._unknown.discard(d.subject.raw)
            self._changes.full = True  # what was kept for it may go now
            if self._live:
                self._wake.set()
        self._recorded(self._changes.record(d.message), d.subject.raw, d.span_context())
        return DONE

    def _on_feed(
        self,
        put: Sequence[FeedService],
        gone: Sequence[str],
        table: bool,
        where: str,
        cause: SpanContext | None,
    ) -> None:
        self._recorded(self._changes.feed(put, gone, table=table), where, cause)

    def _on_table_missing(self, why: str | None) -> None:
        """No feed table held (``why``): full plans take nothing off; None: one is."""
        if why is not None:
            self._unknown.add(_FEED_TABLE)
            if not self._ready.is_set():
                self._problem = (
                    f"waiting for the node feed table ({why}): is the lbdriver publishing "
                    "it? Until it does, set nodeagent.feed: lb"
                )
        elif _FEED_TABLE in self._unknown:
            self._unknown.discard(_FEED_TABLE)
            self._changes.full = True
            if self._live:
                self._wake.set()

    def _recorded(self, recorded: Recorded | None, subject: str, cause: SpanContext | None) -> None:
        if recorded is not None:
            self._noted(recorded, subject)
            if recorded.vips:
                self._unreported = True
            for reason in recorded.ignored:
                if reason not in self._warned:
                    log.warning("ignored: %s", reason)
                    self._warned.add(reason)
            if cause is not None and cause.is_valid and len(self._causes) < MAX_LINKS:
                self._causes.append(cause)
            if self._live:
                self._wake.set()

    def _on_pools(self, networks: tuple[Network, ...], subject: str) -> None:
        recorded = self._changes.set_ranges(self._changes.ranges._replace(pools=networks))
        if recorded is None:
            return
        self._noted(recorded, subject)
        self._unreported = True
        if self._live:
            self._wake.set()

    def _noted(self, recorded: Recorded, subject: str) -> None:
        if recorded.refused:
            self._refusals.refused(recorded.refused, self._changes.ranges, subject)
        if self._changes.refused_vips() != self._reporter.refused:
            self._unreported = True

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
                # Ranges not known yet: keep what the node serves (it was checked when
                # added) rather than take VIPs off on a restart before ipam's pools.
                keep = bool(self._unknown) or not self._changes.ranges.known
                actions = plan(current, desired, keep=keep)
                if self._unknown:
                    log.warning(
                        "taking no address off %s while %d subject(s) cannot be read: %s",
                        s.loopback_interface,
                        len(self._unknown),
                        ", ".join(sorted(self._unknown)[:5]),
                    )
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
                await self._writer.write(actions, causes, vips=len(self._changes.desired.refs))
        except BaseException:
            # Nothing is lost: the next attempt reads the node and plans in full.
            self._changes.full = True
            self._causes = causes + self._causes
            raise
        if full:
            self._known = known(after)
        else:
            note_applied(self._known, actions)
        self._writer.serving(len(self._changes.desired.refs))
        if causes:
            self._reporter.caused_by(causes)

    def _warn(self, ignored: tuple[str, ...]) -> None:
        for reason in ignored:
            if reason not in self._warned:
                log.warning("ignored: %s", reason)
        # Warn once per problem while it lasts, and again if it comes back.
        self._warned = set(ignored)

    async def _try_report(self, vips: tuple[str, ...]) -> None:
        try:
            await self._reporter.report(vips, self._writer.generation, self._changes.refused_vips())
        except BusError:
            self._unreported = True
            self._reporter.next_at = asyncio.get_running_loop().time() + backoff_s(1)
