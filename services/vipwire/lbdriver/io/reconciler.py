"""Reconciles: make an appliance hold what a Service needs now, and report it.

A reconcile is always "make the appliance hold what the Service needs now",
whatever triggered it; a failed one is retried by us with backoff and jitter
(the bus message was acknowledged long ago: state, not messages, is what we
retry, and a restart rebuilds it from the stream). What the Service needs,
the writes that get there and what is reported are decided in the core
(``inventory``, ``diff``, ``outcomes``); this module lists, writes and publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link

from vipwire.aio import cancel_and_wait
from vipwire.bus import BusError, passes
from vipwire.contracts import LbMessage, PortError, ServiceRef, encode
from vipwire.lbdriver.core.coalesce import Flush
from vipwire.lbdriver.core.desired import InvalidAssignment, owner_of
from vipwire.lbdriver.core.diff import diff
from vipwire.lbdriver.core.drain import DrainPlan, plan_drain
from vipwire.lbdriver.core.drift import drift_found, drift_unrepaired, owned_scope
from vipwire.lbdriver.core.inventory import Inventory, ServiceState
from vipwire.lbdriver.core.outcomes import (
    Assignment,
    Explanation,
    appliance_failure,
    failure,
    failure_is_news,
    fingerprint,
    invalid_assignment,
    message_id,
    outcome,
    success_is_news,
    unknown_group,
)
from vipwire.lbdriver.core.partial import by_server, held, port_errors
from vipwire.lbdriver.core.resilience import backoff_delay
from vipwire.lbdriver.core.virtual_servers import Operation, VirtualServer, op_name
from vipwire.lbdriver.io.adoption import StartUp
from vipwire.lbdriver.io.appliance_client import ApplianceClient, CircuitOpen
from vipwire.lbdriver.io.drivers import ApplianceAuthError, ApplianceError, ApplianceRejected
from vipwire.lbdriver.io.failover import Failover
from vipwire.lbdriver.io.fencing import NotLeader
from vipwire.lbdriver.io.schedule import Cause, Schedule
from vipwire.lbdriver.settings import LbdriverSettings
from vipwire.runtime import Runtime

log = logging.getLogger("vipwire.lbdriver")

#: Reconciles started per turn of the event loop. Each runs synchronously up to its
#: first wait (span, desired state, comparison, write), so thousands started at once
#: (a new term: every Service) held the loop for seconds and starved the lease renewal.
START_SLICE: Final = 32


def explain(exc: ApplianceError) -> Explanation:
    """The reason and message to publish for a failed call.

    A call refused by an open breaker reports the failure that opened it, so a
    Service's status keeps the appliance's own reason (and stays unchanged,
    hence is not republished, while the breaker is open).
    """
    error = exc.last if isinstance(exc, CircuitOpen) and exc.last is not None else exc
    refused = error.appliance if isinstance(error, ApplianceAuthError) else None
    return appliance_failure(error.reason, str(error), credentials_of=refused)


class Reconciler:
    """Runs the schedule's due reconciles, each in its own task and span."""

    def __init__(
        self,
        settings: LbdriverSettings,
        runtime: Runtime,
        *,
        inventory: Inventory,
        schedule: Schedule,
        clients: Mapping[str, ApplianceClient],
        failover: Failover,
        start_up: StartUp,
        incarnation: str,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self._inventory = inventory
        self._schedule = schedule
        self._clients = clients
        self._failover = failover
        self._start_up = start_up
        self._incarnation = incarnation
        self._rng = random.Random()
        self._inflight: set[asyncio.Task[None]] = set()
        self._m_reconciles = runtime.metrics.counter(
            "lbdriver_reconciles_total",
            "Service reconciles, by result (written, unchanged, failed)",
            ["result"],
        )

    async def run(self) -> None:
        """Start every reconcile when it falls due, for ever."""
        coalescer, wake = self._schedule.coalescer, self._schedule.wake
        while True:
            wake.clear()
            due_now = coalescer.take_due(time.monotonic(), limit=START_SLICE)
            for key, flush in due_now:
                task = asyncio.create_task(self._run(key, flush), name=f"reconcile {key}")
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            if len(due_now) == START_SLICE:
                # More are due (a new term marks every Service): let these take their
                # first steps, and the lease renewal its turn, before starting more.
                await asyncio.sleep(0)
                continue
            due = coalescer.next_due()
            timeout = None if due is None else max(0.0, due - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await wake.wait()

    async def drain(self, grace_s: float) -> None:
        """Let reconciles in flight finish for up to ``grace_s``, then cancel them.

        A reconcile cut short leaves nothing wrong behind (a restart redoes it),
        but one finished is one fewer write for the next instance.
        """
        if self._inflight:
            _, late = await asyncio.wait(set(self._inflight), timeout=grace_s)
            await cancel_and_wait(late)

    async def _run(self, key: ServiceRef, flush: Flush[Cause]) -> None:
        """One reconcile of one Service, in its own span, retried by schedule if it fails."""
        cause = flush.cause
        links = [
            Link(span)
            for c in flush.causes
            if c is not cause
            and c.context is not None
            and (span := trace.get_current_span(c.context).get_span_context()).is_valid
        ]
        state = self._inventory.services.get(key)
        if state is not None:
            state.generation += 1
        result: BaseException | None
        try:
            with self.runtime.tracer.start_as_current_span(
                "reconcile",
                context=cause.context if cause.context is not None else Context(),
                links=links,
                attributes={
                    "vipwire.cluster": key.cluster,
                    "k8s.namespace.name": key.namespace,
                    "k8s.service.name": key.name,
                    "vipwire.trigger": cause.trigger,
                    "vipwire.coalesced_events": flush.events,
                },
            ):
                result = await self.reconcile(key, cause, force=flush.force)
        except NotLeader as exc:
            # Our lease ran out: the write was not sent; a new term compares it again.
            log.debug("reconcile of %s/%s/%s stopped: %s", *key, exc)
            result = exc
        except BusError as exc:
            # The bus did not take the report (a NATS server gone, the stream between
            # leaders, a loaded server): an outage to wait out, said below with the
            # retry, not a defect to show a traceback for. Too large is one.
            if not passes(exc):
                log.exception("reconcile of %s/%s/%s failed", *key)
            result = exc
        except Exception as exc:
            log.exception("reconcile of %s/%s/%s failed", *key)
            result = exc
        finally:
            now = time.monotonic()
            self._schedule.coalescer.done(key, now)
            self._start_up.finished(key)
        state = self._inventory.services.get(key)
        if state is None:
            pass
        elif result is None:
            state.attempts = 0
            if state.requeue_after_s is not None:
                # A drain ends then: the member is removed by that reconcile.
                self._schedule.requeue(key, state.requeue_after_s, "drain")
        else:
            state.healthy = False
            state.attempts += 1
            attempt = state.attempts
            delay = backoff_delay(
                attempt,
                initial=self.settings.retry_initial_s,
                maximum=self.settings.retry_max_s,
                jitter=self.settings.retry_jitter,
                rand=self._rng.random(),
            )
            if passes(result):
                log.warning(
                    "reconcile of %s/%s/%s: the bus failed it (%s); again in %.1fs (attempt %d)",
                    *key,
                    result,
                    delay,
                    attempt,
                )
            self._schedule.coalescer.retry(key, now, delay, flush)
        self._schedule.wake.set()

    async def reconcile(
        self, key: ServiceRef, cause: Cause, *, force: bool
    ) -> ApplianceError | None:
        """Make the appliance hold exactly what the Service needs now; report it.

        Returns the appliance error that stopped it (already reported as
        LbFailed), or None. Raises on anything else (a bus failure).
        """
        state = self._inventory.services.get(key)
        if state is None:
            return None
        state.requeue_after_s = None  # set again below by a write that leaves a drain going
        assignment = state.assignment
        target = self._failover.target(assignment.appliance_group)
        if target is None:
            # Not retried: only a configuration change (and so a restart) can help.
            state.healthy = False
            why = unknown_group(assignment.appliance_group)
            await self._report_failure(key, assignment, cause, force=force, appliance="", why=why)
            return None
        client = self._clients[target]
        owner = owner_of(*key)
        try:
            desired = self._inventory.desired(key, assignment)
        except InvalidAssignment as exc:
            state.healthy = False
            why = invalid_assignment(exc)
            await self._report_failure(
                key, assignment, cause, force=force, appliance=target, why=why
            )
            return None
        partition = key.cluster
        drift = state.drift
        if drift is not None and state.attempts == 0:
            # A verification found the objects changed: the last report is no longer
            # true, and is corrected before the repair (which reports success again).
            why = drift_found(drift)
            await self._report_failure(
                key, assignment, cause, force=force, appliance=target, why=why
            )
        try:
            # The listing is not held across the write: every write makes a new one,
            # and in a burst hundreds of writes wait, each holding its own copy.
            scope = owned_scope(await client.actual(partition), owner, desired)
            drain = self._plan_drain(key, state, desired, scope)
            desired = drain.servers
            ops = diff(desired, scope, self.settings.prefix)
            refused: dict[str, str] = {}
            if ops:
                try:
                    await client.apply(partition, ops)
                except ApplianceRejected as exc:
                    if len(desired) < 2:
                        raise  # one port: nothing is served, LbFailed says why
                    refused = await self._apply_by_server(client, partition, ops, desired, exc)
        except ApplianceError as exc:
            self._m_reconciles.inc(result="failed")
            why = explain(exc)
            client.note_error(f"{why.reason}: {why.message}")
            level = logging.DEBUG if isinstance(exc, CircuitOpen) else logging.WARNING
            log.log(level, "programming %s on %s failed: %s", owner, target, exc)
            if state.drift is not None:
                why = drift_unrepaired(state.drift, why)
            await self._report_failure(
                key, assignment, cause, force=force, appliance=target, why=why
            )
            return exc
        errors: tuple[PortError, ...] = ()
        if refused:
            errors = port_errors(desired, refused, reason=ApplianceRejected.reason)
            desired = held(desired, scope, refused)
            log.warning(
                "%s on %s/%s: %d of %d virtual server(s) refused: %s",
                owner,
                target,
                partition,
                len(refused),
                len(desired) + len(refused),
                "; ".join(f"{name}: {text}" for name, text in sorted(refused.items())),
            )
        state = self._inventory.note_written(key, target, desired)
        if state is None:
            return None  # released meanwhile: nothing left to report about it
        state.drain_since = drain.since
        state.requeue_after_s = drain.requeue_after_s
        if state.drift is not None:
            log.info("%s on %s/%s: drift repaired", owner, target, partition)
            state.drift = None
        self._m_reconciles.inc(result="written" if ops else "unchanged")
        if ops:
            log.info("%s on %s/%s: %d operation(s)", owner, target, partition, len(ops))
        result = outcome(key, assignment, target, desired, errors)
        stamp = fingerprint(encode(result))
        answered = force and self._inventory.answered_after(key, cause.seq)
        if success_is_news(state.published, stamp, force=force, answered=answered):
            await self._publish(key, result, stamp, cause)
        if refused:
            # Served in part: retried with backoff (a refusal may be lifted).
            state.healthy = False
            return ApplianceRejected(target, f"{len(refused)} virtual server(s) refused")
        return None

    async def _apply_by_server(
        self,
        client: ApplianceClient,
        partition: str,
        ops: Sequence[Operation],
        desired: Mapping[str, VirtualServer],
        first: ApplianceRejected,
    ) -> dict[str, str]:
        """After a refused batch: write one virtual server at a time, so the ports the
        appliance accepts are served. Returns the refused ones (name → the appliance's
        answer); raises ``first`` when none of the Service's ports would be served or a
        delete is refused (a leftover must not hide behind a success), or any other
        failure."""
        groups = by_server(ops)
        refused: dict[str, str] = {}
        if len(groups) == 1:
            refused[op_name(groups[0][0])] = first.message  # the same write: not again
        else:
            for group in groups:
                try:
                    await client.apply(partition, group)
                except ApplianceRejected as exc:
                    refused[op_name(group[0])] = exc.message
        if not refused.keys() <= desired.keys() or refused.keys() >= desired.keys():
            raise first
        return refused

    def _plan_drain(
        self,
        key: ServiceRef,
        state: ServiceState,
        desired: Mapping[str, VirtualServer],
        scope: Mapping[str, VirtualServer],
    ) -> DrainPlan:
        """Which leaving members stay disabled a while (graceful drain, ``core.drain``)."""
        plan = plan_drain(
            desired,
            scope,
            since=state.drain_since,
            now=time.monotonic(),
            timeout_s=self.settings.drain_timeout_s,
            present=self._inventory.present_nodes(key.cluster),
        )
        started = plan.since.keys() - state.drain_since.keys()
        if started:
            nodes = sorted({member.node for _, member in started})
            log.info(
                "%s/%s/%s: draining %s for %gs (disabled: established connections continue)",
                *key,
                ", ".join(nodes),
                self.settings.drain_timeout_s,
            )
        return plan

    async def _report_failure(
        self,
        key: ServiceRef,
        assignment: Assignment,
        cause: Cause,
        *,
        force: bool,
        appliance: str,
        why: Explanation,
    ) -> None:
        failed = failure(key, assignment, appliance, why)
        stamp = fingerprint(encode(failed))
        state = self._inventory.services.get(key)
        if failure_is_news(
            None if state is None else state.published,
            stamp,
            known=state is not None,
            force=force,
            ready=self._start_up.ready,
            answered=self._inventory.answered_after(key, cause.seq),
        ):
            await self._publish(key, failed, stamp, cause)

    async def _publish(
        self, key: ServiceRef, message: LbMessage, stamp: bytes, cause: Cause
    ) -> None:
        state = self._inventory.services.get(key)
        count = state.publishes if state is not None else 0
        msg_id = message_id(
            key,
            cause_subject=cause.subject,
            cause_seq=cause.seq,
            cause_family=cause.family,
            incarnation=self._incarnation,
            count=count,
            stamp=stamp,
        )
        seq = await self.runtime.bus.publish(message, msg_id=msg_id)
        state = self._inventory.services.get(key)
        if state is not None:
            state.publishes = count + 1
            state.published = stamp
        if not self._start_up.ready:
            self._inventory.reports[key] = (stamp, seq)  # the stream's last word now
