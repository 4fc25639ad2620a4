"""The operator control server: ``vipwire-ctl.ipam.<verb>.<caller>`` requests and their answers.

Requests and answers are JSON on core NATS (subjects and payloads:
:mod:`vipwire.contracts`). ``status``, ``show`` and ``release`` are
answered by one replica (a queue group: every replica sees the same KV);
``reload`` by every replica. The caller is the subject's last token (the
NATS server binds it to the requester's identity): every release and reload
is logged with it, and a release carries it to the Service's next
VipAssigned (the watcher's ``IPReleasedByOperator`` Event).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import msgspec

from vipwire.bus import Bus, BusError, Serving
from vipwire.contracts import (
    ANONYMOUS,
    IPAM_QUEUE,
    IPAM_RELEASE,
    IPAM_RELOAD,
    IPAM_SHOW,
    IPAM_STATUS,
    AddressView,
    IpamStatus,
    ReleaseReply,
    ReleaseRequest,
    ReloadReply,
    ServiceRef,
    ServiceView,
    ShowReply,
    ShowRequest,
    caller_of,
)
from vipwire.ipam.core.addresses import canonical
from vipwire.ipam.core.claims import Owner
from vipwire.ipam.core.decide import withdrawal
from vipwire.ipam.core.records import service_key
from vipwire.ipam.core.views import claim_view, ipam_status, record_view
from vipwire.ipam.io.bucket import Conflict, StoreError
from vipwire.ipam.io.claim_cache import ClaimCache
from vipwire.ipam.io.handling import Lifecycle
from vipwire.ipam.io.reload import Reloader
from vipwire.ipam.io.waiting import WaitingQueue

log = logging.getLogger("vipwire.ipam")


class OperatorControl:
    """Answers operators (and the dashboard) about the address space."""

    def __init__(
        self,
        cache: ClaimCache,
        lifecycle: Lifecycle,
        reloader: Reloader,
        waiting: WaitingQueue,
        *,
        instance: str,
        ready: Callable[[], bool],
        tracer_span: Callable[..., contextlib.AbstractContextManager[object]],
    ) -> None:
        self.cache = cache
        self.lifecycle = lifecycle
        self.reloader = reloader
        self.waiting = waiting
        self.instance = instance
        self._ready = ready
        self._span = tracer_span
        self._serving: list[Serving] = []

    async def start(self, bus: Bus) -> None:
        """Answer from the moment this returns."""
        self._serving = [
            await bus.serve(IPAM_STATUS.pattern, self._on_status_request, queue=IPAM_QUEUE),
            await bus.serve(IPAM_SHOW.pattern, self._on_show_request, queue=IPAM_QUEUE),
            await bus.serve(IPAM_RELEASE.pattern, self._on_release_request, queue=IPAM_QUEUE),
            await bus.serve(IPAM_RELOAD.pattern, self._on_reload_request),
        ]

    async def stop(self) -> None:
        for serving in self._serving:
            await serving.stop()
        self._serving.clear()

    def status(self) -> IpamStatus:
        """What ``vipwire ipam status`` (and the dashboard) shows."""
        return ipam_status(
            self.cache.allocator,
            self.reloader.settings.pools,
            instance=self.instance,
            now=time.time(),
            ready=self._ready(),
            config_path=self.reloader.config_path,
            reloaded_at=self.reloader.reloaded_at,
            waiting=len(self.waiting),
        )

    async def show(self, target: str) -> ShowReply:
        """One address or one Service, as the KV holds it and the pools judge it."""
        store = self.cache.store
        allocator = self.cache.allocator
        if "/" in target:
            try:
                ref = ServiceRef.parse(target)
            except ValueError as exc:
                return ShowReply(instance=self.instance, error=str(exc))
            got = await store.get_record(service_key(*ref))
            waiting = self.waiting.get(ref)
            view = ServiceView(service="/".join(ref), waiting=waiting.message if waiting else None)
            if got is not None:
                record, revision = got
                claims = {}
                for vip in record.vips:
                    claim = await store.get_claim(vip)
                    claims[vip] = claim_view(claim[0]) if claim else None
                view = msgspec.structs.replace(
                    view,
                    record=record_view(record),
                    revision=revision,
                    claims=claims,
                    stale=allocator.stale_reasons(Owner(*ref, record.uid)),
                )
            return ShowReply(instance=self.instance, service=view)
        try:
            address = canonical(target)
        except ValueError as exc:
            return ShowReply(instance=self.instance, error=str(exc))
        pool = allocator.pool_of(address)
        found = await store.get_claim(address)
        return ShowReply(
            instance=self.instance,
            address=AddressView(
                address=address,
                pool=pool,
                usable=pool is not None and allocator.usable(address),
                claim=claim_view(found[0]) if found else None,
                revision=found[1] if found else None,
                stale=allocator.address_stale_reasons(address) if found else (),
            ),
        )

    async def release(self, target: str, *, caller: str = ANONYMOUS) -> ReleaseReply:
        """Withdraw a Service's VIPs on ``caller``'s word; once the appliance is clean
        it gets new ones from the pools as they are now."""
        try:
            ref = ServiceRef.parse(target)
        except ValueError as exc:
            log.info("release of %r asked by %s refused: %s", target, caller, exc)
            return ReleaseReply(instance=self.instance, service=target, error=str(exc))
        service = "/".join(ref)
        key = service_key(*ref)
        lifecycle = self.lifecycle
        with self._span(
            "operator release", attributes={"vipwire.service": service, "vipwire.caller": caller}
        ):
            async with lifecycle.locks.hold(ref):
                for _ in range(lifecycle.conflict_retries):
                    current = await self.cache.store.get_record(key)
                    if current is None:
                        log.info(
                            "release of %s (key %s) asked by %s: it holds no addresses",
                            service,
                            key,
                            caller,
                        )
                        return ReleaseReply(
                            instance=self.instance,
                            service=service,
                            error=f"{service} holds no addresses",
                        )
                    record, revision = current
                    if record.state == "releasing":
                        log.info(
                            "release of %s (key %s) asked by %s: already releasing %s",
                            service,
                            key,
                            caller,
                            ", ".join(record.vips),
                        )
                        return ReleaseReply(
                            instance=self.instance,
                            service=service,
                            vips=record.vips,
                            error=f"{service} is already releasing {', '.join(record.vips)}",
                        )
                    msg_id = f"ipam-release:{service}:{record.uid}:{revision}"
                    plan = withdrawal(ref, record, reassign=True, released_by=caller)
                    try:
                        await lifecycle.withdraw(key, plan, revision, None, msg_id)
                    except Conflict:
                        lifecycle.metrics.conflicts.inc()
                        continue
                    lifecycle.metrics.operator_releases.inc()
                    log.info(
                        "operator release by %s: %s (key %s) gives up %s; new VIPs follow "
                        "once the appliance is clean",
                        caller,
                        service,
                        key,
                        ", ".join(record.vips),
                    )
                    return ReleaseReply(instance=self.instance, service=service, vips=record.vips)
        return ReleaseReply(
            instance=self.instance, service=service, error="compare-and-set conflicts; try again"
        )

    async def _on_status_request(self, data: bytes, subject: str) -> bytes:
        return msgspec.json.encode(self.status())

    async def _on_show_request(self, data: bytes, subject: str) -> bytes:
        try:
            request = msgspec.json.decode(data, type=ShowRequest)
            reply = await self.show(request.target)
        except msgspec.DecodeError as exc:
            reply = ShowReply(instance=self.instance, error=f"bad request: {exc}")
        except StoreError as exc:
            reply = ShowReply(instance=self.instance, error=str(exc))
        return msgspec.json.encode(reply)

    async def _on_release_request(self, data: bytes, subject: str) -> bytes:
        caller = caller_of(subject)
        try:
            request = msgspec.json.decode(data, type=ReleaseRequest)
            reply = await self.release(request.service, caller=caller)
        except msgspec.DecodeError as exc:
            reply = ReleaseReply(instance=self.instance, service="", error=f"bad request: {exc}")
        except (StoreError, BusError) as exc:
            reply = ReleaseReply(instance=self.instance, service="", error=str(exc))
        return msgspec.json.encode(reply)

    async def _on_reload_request(self, data: bytes, subject: str) -> bytes:
        caller = caller_of(subject)
        try:
            reply = await self.reloader.reload(caller=caller)
        except (StoreError, BusError) as exc:
            reply = ReloadReply(
                instance=self.instance, config_path=self.reloader.config_path, error=str(exc)
            )
        return msgspec.json.encode(reply)
