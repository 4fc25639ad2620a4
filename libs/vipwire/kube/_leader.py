"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection does.

One Lease names the leader (``holderIdentity``) and when it last proved it is
alive (``renewTime``). Candidates read it every ``retry_period``; one takes it
over only when the holder has not renewed for ``leaseDurationSeconds`` *by the
candidate's own clock* (the time it first saw the current record), so no
clocks need to agree. Every write carries the resourceVersion it read, so of
two candidates racing for an expired lease exactly one wins (the other gets
409 Conflict).

The leader renews every ``retry_period`` (one write over the Lease as it last
wrote it; a read only when that write is refused); if it cannot for ``renew_deadline``
(shorter than the lease duration) it steps down before anybody else may take
over. Unlike client-go it also steps down at once when it reads another
holder, and :attr:`LeaderElector.is_leader` turns false by itself once the
renew deadline has passed since the last successful renew, even while a
renew request hangs: whoever fences its writes on it stops writing in time.

The decisions are the pure functions :func:`may_acquire` and :func:`lease_spec`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from kubernetes_asyncio.client import ApiClient, CoordinationV1Api

from vipwire.aio import cancel_and_wait
from vipwire.kube._api import request_json
from vipwire.kube._errors import KubeApiError, KubeError

log = logging.getLogger("vipwire.kube.leader")

#: Extra random wait on top of ``retry_period`` for candidates (client-go's JitterFactor).
JITTER: Final = 1.2


class LeaseRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The parts of a Lease that election reads."""

    holder: str = ""
    duration_s: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0
    resource_version: str = ""

    @classmethod
    def of(cls, lease: dict[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        meta = lease.get("metadata") or {}
        duration = spec.get("leaseDurationSeconds")
        transitions = spec.get("leaseTransitions")
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration_s=duration if isinstance(duration, int) else 0,
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=transitions if isinstance(transitions, int) else 0,
            resource_version=str(meta.get("resourceVersion") or ""),
        )

    def same_record(self, other: LeaseRecord | None) -> bool:
        """Whether nothing was written in between (the holder did not renew)."""
        return other is not None and self.resource_version == other.resource_version


def may_acquire(identity: str, record: LeaseRecord | None, observed_at: float, now: float) -> bool:
    """Whether ``identity`` may write the Lease now.

    ``observed_at`` is when (our monotonic clock) we first saw ``record``
    unchanged; the holder's own timestamps are never compared with our clock.
    """
    if record is None or not record.holder or record.holder == identity:
        return True
    return now >= observed_at + max(record.duration_s, 1)


def lease_spec(
    identity: str, record: LeaseRecord | None, *, duration_s: int, now: str
) -> dict[str, Any]:
    """The spec that makes ``identity`` the holder (acquiring, or renewing what it holds)."""
    taking_over = record is None or record.holder != identity
    transitions = 0 if record is None else record.transitions + (1 if taking_over else 0)
    acquired = now if taking_over or record is None else (record.acquire_time or now)
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": duration_s,
        "acquireTime": acquired,
        "renewTime": now,
        "leaseTransitions": transitions,
    }


def micro_time(moment: datetime | None = None) -> str:
    """A MicroTime: RFC 3339 with microseconds, as Lease and Event times are written."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    # isoformat, not strftime: the same text at a fraction of the cost (once per status
    # write and Event).
    return moment.isoformat(timespec="microseconds").removesuffix("+00:00") + "Z"


class LeaderElector:
    """Campaigns for one Lease until stopped; :attr:`is_leader` says whether we hold it now.

    ``await wait_leading()`` / ``await wait_not_leading()`` let a service start
    and stop its leader-only work. ``on_change(leading)`` is called
    synchronously on every transition, before any waiter wakes.
    """

    def __init__(
        self,
        api: ApiClient,
        *,
        name: str,
        namespace: str,
        identity: str,
        lease_duration_s: int = 15,
        renew_deadline_s: float = 10.0,
        retry_period_s: float = 2.0,
        request_timeout: float = 10.0,
        release_on_stop: bool = True,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not lease_duration_s > renew_deadline_s > retry_period_s * JITTER:
            raise ValueError(
                "leader election needs lease duration > renew deadline > 1.2 x retry period"
            )
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self._api = CoordinationV1Api(api)
        self._timeout = request_timeout
        self._release_on_stop = release_on_stop
        self._on_change = on_change
        self._clock = clock
        self._leading = False
        self._renewed_at = 0.0  # when the last successful write was sent
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._written: dict[str, Any] | None = None  # the Lease as our last write left it
        self._lead_event = asyncio.Event()
        self._follow_event = asyncio.Event()
        self._follow_event.set()
        self._attempted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._held = False  # held the Lease when stopped: release() may give it up
        #: What the API server last refused us for want of a permission (a 403), in RBAC's
        #: terms; None once an attempt went through. Retrying cannot help until it is
        #: granted: a service reports it (``/readyz``) instead of campaigning silently.
        self.forbidden: str | None = None
        self._told: set[str] = set()  # refusals logged already (each once, until we lead)

    # --- state -------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """We hold the Lease and renewed it less than the renew deadline ago."""
        return self._leading and self._clock() - self._renewed_at < self.renew_deadline_s

    @property
    def holder(self) -> str:
        """The holder as last read ("" when unknown or free)."""
        return self._observed.holder if self._observed is not None else ""

    @property
    def attempted(self) -> bool:
        """At least one attempt to acquire has completed (so standby means standby)."""
        return self._attempted.is_set()

    async def wait_leading(self) -> None:
        await self._lead_event.wait()

    async def wait_not_leading(self) -> None:
        await self._follow_event.wait()

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"leader-election-{self.name}")

    async def stop(self, *, release: bool | None = None) -> None:
        """Stop campaigning and renewing: from now on :attr:`is_leader` is false.

        A leader then gives the Lease up (``release``; default: as constructed),
        so that a standby takes over at once. A service that must finish its
        writes first calls ``stop(release=False)``, then :meth:`release`.
        """
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task])
        was_leader = self._leading
        self._set_leading(False)
        self._held = self._held or was_leader
        if release if release is not None else self._release_on_stop:
            await self.release()

    async def release(self) -> None:
        """Give the Lease up if we held it when stopped (only after :meth:`stop`)."""
        if self._task is not None or not self._held:
            return
        self._held = False
        await self._release()

    async def _run(self) -> None:
        while True:
            try:
                await self._acquire()
                await self._renew()
            except Exception:
                # Never die silently: a dead elector would leave a leader that cannot renew.
                log.exception("%s: leader election failed; starting over", self.identity)
                self._set_leading(False)
                await asyncio.sleep(self.retry_period_s)

    async def _acquire(self) -> None:
        while True:
            acquired = await self._attempt()
            self._attempted.set()
            if acquired:
                self.forbidden = None
                self._told.clear()
                log.info(
                    "%s: became leader of lease %s/%s", self.identity, self.namespace, self.name
                )
                self._set_leading(True)
                return
            await asyncio.sleep(self.retry_period_s * (1 + random.random() * (JITTER - 1)))

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.retry_period_s)
            while True:
                remaining = self.renew_deadline_s - (self._clock() - self._renewed_at)
                if remaining <= 0:
                    log.warning(
                        "%s: could not renew the lease in time; stepping down", self.identity
                    )
                    self._set_leading(False)
                    return
                try:
                    async with asyncio.timeout(remaining):
                        renewed = await self._renew_once()
                except TimeoutError:
                    renewed = False
                if renewed:
                    log.debug("%s: renewed", self.identity)
                    break
                if self._observed is not None and self._observed.holder not in ("", self.identity):
                    log.warning(
                        "%s: lease %s/%s is now held by %s; stepping down",
                        self.identity,
                        self.namespace,
                        self.name,
                        self._observed.holder,
                    )
                    self._set_leading(False)
                    return
                await asyncio.sleep(min(self.retry_period_s, max(remaining, 0.0)))

    def _set_leading(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        if leading:
            self._follow_event.clear()
            self._lead_event.set()
        else:
            self._lead_event.clear()
            self._follow_event.set()
        if self._on_change is not None:
            self._on_change(leading)

    # --- one try -------------------------------------------------------------------------

    def _observe(self, record: LeaseRecord | None) -> None:
        if record is None or not record.same_record(self._observed):
            self._observed = record
            self._observed_at = self._clock()

    async def _renew_once(self) -> bool:
        """Renew with one request instead of a read and a write: write over the Lease as
        our last write left it.

        Its resourceVersion is the precondition, so if anybody wrote the Lease
        since, this fails (409) and a full attempt reads what is there. Half
        the round trips keep renewal in time when the API server, or our own
        event loop, is slow.
        """
        written, self._written = self._written, None
        if written is None:
            return await self._attempt()
        started = self._clock()
        record = LeaseRecord.of(written)
        body = {
            **written,
            "spec": lease_spec(
                self.identity, record, duration_s=self.lease_duration_s, now=micro_time()
            ),
        }
        try:
            renewed = await request_json(
                self._api.replace_namespaced_lease,
                self.name,
                self.namespace,
                body,
                timeout=self._timeout,
            )
        except KubeError as exc:
            if isinstance(exc, KubeApiError) and exc.conflict:
                return await self._attempt()
            if not self._refused(exc, "update"):
                log.warning("%s: cannot renew lease %s: %s", self.identity, self.name, exc)
            return False
        self._observe(LeaseRecord.of(renewed))
        self._written = renewed
        self._renewed_at = started
        self.forbidden = None
        return True

    async def _attempt(self) -> bool:
        """One read and (if allowed) one write; True when we hold the Lease afterwards."""
        started = self._clock()
        try:
            current = await request_json(
                self._api.read_namespaced_lease, self.name, self.namespace, timeout=self._timeout
            )
        except KubeApiError as exc:
            if not exc.not_found:
                if not self._refused(exc, "get"):
                    log.warning("%s: cannot read lease %s: %s", self.identity, self.name, exc)
                return False
            return await self._create(started)
        except KubeError as exc:
            log.warning("%s: cannot read lease %s: %s", self.identity, self.name, exc)
            return False
        record = LeaseRecord.of(current)
        self._observe(record)
        if not may_acquire(self.identity, record, self._observed_at, self._clock()):
            self.forbidden = None  # a standby that can read: nothing more to ask of it now
            return False
        current["spec"] = lease_spec(
            self.identity, record, duration_s=self.lease_duration_s, now=micro_time()
        )
        try:
            written = await request_json(
                self._api.replace_namespaced_lease,
                self.name,
                self.namespace,
                current,  # carries the resourceVersion we read: a precondition
                timeout=self._timeout,
            )
        except KubeError as exc:
            if not (isinstance(exc, KubeApiError) and exc.conflict) and not self._refused(
                exc, "update"
            ):
                log.warning("%s: cannot write lease %s: %s", self.identity, self.name, exc)
            return False
        self._observe(LeaseRecord.of(written))
        self._written = written
        self._renewed_at = started
        return True

    async def _create(self, started: float) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": lease_spec(
                self.identity, None, duration_s=self.lease_duration_s, now=micro_time()
            ),
        }
        try:
            written = await request_json(
                self._api.create_namespaced_lease, self.namespace, body, timeout=self._timeout
            )
        except KubeError as exc:
            if not (isinstance(exc, KubeApiError) and exc.already_exists) and not self._refused(
                exc, "create"
            ):
                log.warning("%s: cannot create lease %s: %s", self.identity, self.name, exc)
            return False
        self._observe(LeaseRecord.of(written))
        self._written = written
        self._renewed_at = started
        return True

    def _refused(self, exc: KubeError, verb: str) -> bool:
        """A 403 on the Lease: remember what is missing and log it, once, as an ERROR
        naming the permission. False for any other failure."""
        if not (isinstance(exc, KubeApiError) and exc.forbidden):
            return False
        missing = exc.missing_permission(
            f'{verb} leases (coordination.k8s.io) in namespace "{self.namespace}"'
        )
        self.forbidden = missing
        if missing not in self._told:
            self._told.add(missing)
            log.error(
                "%s: forbidden: cannot %s (lease %s/%s): grant it to this identity (a Role "
                "and RoleBinding in namespace %s), or elect on a Lease in a namespace where "
                "it is granted; retrying every %gs meanwhile",
                self.identity,
                missing,
                self.namespace,
                self.name,
                self.namespace,
                self.retry_period_s,
            )
        return True

    @property
    def release_on_stop(self) -> bool:
        return self._release_on_stop

    async def _release(self) -> None:
        """Empty the holder and shorten the lease, as client-go's ReleaseOnCancel does."""
        try:
            current = await request_json(
                self._api.read_namespaced_lease, self.name, self.namespace, timeout=self._timeout
            )
            if LeaseRecord.of(current).holder != self.identity:
                return
            now = micro_time()
            spec = current.setdefault("spec", {})
            spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=now, acquireTime=now)
            await request_json(
                self._api.replace_namespaced_lease,
                self.name,
                self.namespace,
                current,
                timeout=self._timeout,
            )
            log.info("%s: released lease %s/%s", self.identity, self.namespace, self.name)
        except KubeError as exc:
            log.warning("%s: could not release lease %s: %s", self.identity, self.name, exc)
