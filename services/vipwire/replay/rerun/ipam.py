"""ipam, rerun: every recorded VIP decision against ipam's own core and the claims history implies.

ipam's rules are not restated here: its records and claims are kept by
ipam's :class:`~vipwire.ipam.core.sandbox.Sandbox`, what it would answer is
:func:`~vipwire.ipam.core.decide.decide`'s plan, and which addresses it may
give is its :class:`~vipwire.ipam.core.allocator.Allocator`'s. The recorded
allocations are themselves inputs: after each decision is judged, the
sandbox takes the claims the history says were made, so one divergence does
not drown everything after it. Which address a Service gets
may legitimately depend on the order ipam handled things in (concurrent
Services, several replicas, restarts), so what is checked is what must hold
in any order, plus, where the choice is deterministic, the choice itself:

* ``ipam.request``: a VipAssigned/VipFailed answers a live snapshot of that
  Service incarnation (same uid), and echoes its ports and traffic policy;
* ``ipam.admissible``: every VIP is in the named pool, that pool may serve
  the Service (cluster, namespace, labels), is not avoided, has its appliance
  group, fits the IP family policy, and is held by no other Service (unless
  shared by the rules of sharing) — the allocator itself is asked, with the
  recorded VIPs as the requested ones;
* ``ipam.requested`` / ``ipam.auto-assign``: a Service that asked for
  addresses got them; one that named no pool got an auto-assign pool;
* ``ipam.stable``: an incarnation keeps the same VIPs, pool and group until
  it is released;
* ``ipam.next-fit`` (complete history, one ipam replica): a fresh allocation
  gets the pool the allocator picks and, per family, the next free address
  from where the previous allocation in that pool left off (or from the
  pool's start, as after an ipam restart), passing over addresses taken by
  allocations answered later but requested earlier (concurrent ones);
* ``ipam.failed``: a VipFailed where the allocator would have succeeded (with
  no other allocation in flight that could have taken the room);
* ``ipam.releasing`` / ``ipam.released`` / ``ipam.release-order``: a withdrawal
  names exactly the VIPs held; VipReleased comes only after LbRemoved for
  that incarnation and names what it held (nothing, if it held nothing);
* ``ipam.answer``: every Service snapshot or deletion gets a ``vip`` answer,
  unless a newer one followed within ``settle`` or the history ends within it.

Over 500 lines: it replays every ipam decision kind (assign, share, move, refuse,
release) against ipam's own core; each kind is a small function, kept together so one
reader sees every case the rerun checks.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import msgspec

from vipwire.contracts import (
    LbRemoved,
    ServiceGone,
    ServiceRef,
    ServiceSnapshot,
    VipAssigned,
    VipFailed,
    VipReleased,
    VipReleasing,
    service_subject,
    vips_text,
)
from vipwire.ipam import AllocationFailure, Allocator, Owner, PoolSettings, Request
from vipwire.ipam.core.claims import request_of
from vipwire.ipam.core.decide import decide, withdrawal
from vipwire.ipam.core.records import ServiceRecord
from vipwire.ipam.core.sandbox import Sandbox
from vipwire.replay.rerun.history import Event, History, following
from vipwire.replay.rerun.next_fit import (
    Inflight,
    NextFitChecks,
    canonical,
    family_of,
    service_subject_of,
)
from vipwire.replay.rerun.report import Sink, describe

Ref = tuple[str, str, str]


class IpamCheck(NextFitChecks):
    def __init__(
        self,
        history: History,
        sink: Sink,
        pools: Sequence[PoolSettings],
        *,
        exact: bool,
        settle_ns: int,
    ) -> None:
        self.history = history
        self.sink = sink
        self.pools = {p.name: p for p in pools}
        #: ipam's records and claims as history implies them.
        self.ipam = Sandbox(pools)
        self.exact = exact
        self.settle_ns = settle_ns
        self.known = history.complete
        #: Seq of the decision each record dates from (for the report).
        self.since: dict[Ref, int] = {}
        #: Records released on LbRemoved whose VipReleased is still to come.
        self.cleaned: dict[Ref, ServiceRecord] = {}
        self.live: dict[str, ServiceSnapshot] = {}
        self.echoes: dict[str, set[bytes]] = {}
        self.cursor: dict[tuple[str, str], int] = {}
        #: Service subject → a fresh request not yet answered.
        self.inflight: dict[str, Inflight] = {}

    @property
    def allocator(self) -> Allocator:
        return self.ipam.allocator

    def _record(self, ref: Ref, uid: str) -> ServiceRecord | None:
        """The record of this very incarnation, if history says ipam has one."""
        record = self.ipam.records.get(ServiceRef(*ref))
        return record if record is not None and record.uid == uid else None

    # --- the sweep ---------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        message = event.message
        match message:
            case ServiceSnapshot() | ServiceGone():
                self._on_service(event, message)
            case VipAssigned():
                self._answered(event)
                self._on_assigned(event, message)
            case VipFailed():
                self._answered(event)
                self._on_failed(event, message)
            case VipReleasing():
                self._answered(event)
                self._on_releasing(event, message)
            case VipReleased():
                self._answered(event)
                self._on_released(event, message)
            case LbRemoved():
                self._on_lb_removed(message)
            case _:
                pass

    def finish(self) -> None:
        return None

    # --- inputs ---------------------------------------------------------------------------

    def _on_service(self, event: Event, message: ServiceSnapshot | ServiceGone) -> None:
        ref = (message.cluster, message.namespace, message.name)
        self.ipam.last_service[ServiceRef(*ref)] = message
        if isinstance(message, ServiceSnapshot) and not message.deleting:
            self.live[message.uid] = message
            self.echoes.setdefault(message.uid, set()).add(_echo_of(message))
            holds = self._record(ref, message.uid) is not None
            if not holds and event.subject.raw not in self.inflight:
                self.inflight[event.subject.raw] = self._inflight(event, ref)
        self._check_answer(event, ref)

    def _check_answer(self, event: Event, ref: Ref) -> None:
        history = self.history
        vip_subject = service_subject("vip", *ref)
        answer = following(history.positions(vip_subject), event.pos)
        if answer is not None:
            return
        newer = following(history.positions(event.subject.raw), event.pos)
        until = history.clock(newer) if newer is not None else history.end_ns
        quiet = until - history.clock(event.pos)
        if quiet < self.settle_ns:
            return  # superseded soon, or the history ends before ipam could answer
        live = isinstance(event.message, ServiceSnapshot) and not event.message.deleting
        expected = "VipAssigned or VipFailed" if live else "VipReleasing or VipReleased"
        self.sink.diverge(
            "ipam",
            event,
            "ipam.answer",
            recorded=f"no vip message for {'/'.join(ref)} after this (for {quiet / 1e9:.1f}s)",
            recomputed=f"{expected} on {vip_subject}",
        )

    def _answered(self, event: Event) -> None:
        s = event.subject
        assert s.namespace is not None and s.name is not None
        self.inflight.pop(service_subject("service", s.cluster, s.namespace, s.name), None)

    def _on_lb_removed(self, message: LbRemoved) -> None:
        ref = (message.cluster, message.namespace, message.name)
        record = self._record(ref, message.uid)
        if record is None:
            # An incarnation replaced while withdrawn: its claims go now.
            self.ipam.forget(Owner(*ref, message.uid))
            return
        plan = decide(message, record, self.allocator)
        if plan.action in ("release", "reassign"):
            # The appliance is clean: ipam deletes the record and leaves its claims.
            self.ipam.drop(ServiceRef(*ref))
            self.cleaned[ref] = record

    # --- decisions ----------------------------------------------------------------------

    def _request(self, event: Event, uid: str, what: str) -> ServiceSnapshot | None:
        snap = self.live.get(uid)
        if snap is None and self.known:
            self.sink.diverge(
                "ipam",
                event,
                "ipam.request",
                recorded=what,
                recomputed="nothing: no live snapshot of this Service incarnation came before",
                detail=f"uid {uid}",
            )
        return snap

    def _on_assigned(self, event: Event, v: VipAssigned) -> None:
        self.sink.decision("ipam", event)
        ref = (v.cluster, v.namespace, v.name)
        owner = Owner(*ref, v.uid)
        snap = self._request(event, v.uid, describe(v))
        held = self._record(ref, v.uid)
        if snap is not None and _echo_of(v) not in self.echoes.get(v.uid, set()):
            self._diverge(
                event,
                "ipam.request",
                v,
                f"VipAssigned with the ports and policy of {v.uid}'s snapshot "
                f"(last: {_echo_text(snap)})",
                "its ports, externalTrafficPolicy or healthCheckNodePort match no snapshot",
            )
            snap = None  # judged; do not judge it twice
        if held is not None:
            self._on_kept(event, v, held, snap)
            return
        self.cleaned.pop(ref, None)
        other = self.ipam.records.get(ServiceRef(*ref))
        if other is not None and (
            snap is None or decide(snap, other, self.allocator).action == "replace"
        ):
            # A new incarnation of the name: ipam drops the old one's record first,
            # and its claims too unless it is being withdrawn (they wait for LbRemoved).
            if other.state == "releasing":
                del self.ipam.records[ServiceRef(*ref)]
            else:
                self.ipam.drop(ServiceRef(*ref))
        if snap is not None:
            self._judge_fresh(event, v, snap)
        self._commit(v, snap, owner)
        self.ipam.records[ServiceRef(*ref)] = ServiceRecord(
            uid=v.uid, vips=v.vips, pool=v.pool, appliance_group=v.appliance_group
        )
        self.since[ref] = event.seq

    def _on_kept(
        self, event: Event, v: VipAssigned, held: ServiceRecord, snap: ServiceSnapshot | None
    ) -> None:
        ref = (v.cluster, v.namespace, v.name)
        if self._moving(v, held, snap):
            return
        if set(v.vips) != set(held.vips) or (v.pool, v.appliance_group) != (
            held.pool,
            held.appliance_group,
        ):
            since = self.since.get(ref, 0)
            self._diverge(
                event,
                "ipam.stable",
                v,
                f"VipAssigned {vips_text(held.vips)} (pool {held.pool} → "
                f"{held.appliance_group}), held since seq {since}",
                "a Service keeps its VIPs until they are released",
            )
        # Back before the appliance was cleaned, if it was going: active again.
        kept = msgspec.structs.replace(held, state="active", reassign=False)
        self.ipam.records[ServiceRef(*ref)] = kept
        if snap is not None:
            # The claims follow the Service's change, as ipam's keep plan says.
            plan = decide(snap, kept, self.allocator)
            for update in plan.updates:
                self.allocator.claim(update.address, update.after)

    def _moving(self, v: VipAssigned, held: ServiceRecord, snap: ServiceSnapshot | None) -> bool:
        """A step of a move (see vipwire.ipam.core.moves), taken as it happened: adding
        (the new VIPs claimed next to the old), withdrawing (the old ones no longer
        announced), done (their claims left). False: not a move's step."""
        ref = (v.cluster, v.namespace, v.name)
        owner = Owner(*ref, v.uid)
        have, said, old = set(held.vips), set(v.vips), set(v.moving_from)
        if v.moving_from and old <= have and said >= have:  # adding
            self._commit(v, snap, owner)
            after = msgspec.structs.replace(
                held, vips=v.vips, pool=v.pool, move="adding", moving_from=v.moving_from
            )
        elif v.moving_from and old <= have and not said & old:  # withdrawing
            after = msgspec.structs.replace(
                held, pool=v.pool, move="withdrawing", moving_from=v.moving_from
            )
        elif held.moving_from and said == have - set(held.moving_from):  # done
            for address in held.moving_from:
                self.allocator.leave(address, owner)
            after = msgspec.structs.replace(held, vips=v.vips, move="", moving_from=())
        else:
            return False
        self.ipam.records[ServiceRef(*ref)] = after
        return True

    def _judge_fresh(self, event: Event, v: VipAssigned, snap: ServiceSnapshot) -> None:
        request = request_of(snap)
        probe = self.allocator.choose(msgspec.structs.replace(request, requested_ips=v.vips))
        if isinstance(probe, AllocationFailure):
            self._diverge(
                event,
                "ipam.admissible",
                v,
                self._what_instead(event, v, snap),
                f"the allocator refuses these VIPs to this Service ({probe.code}: {probe.message})",
            )
            return
        where = {self.allocator.pool_of(a) for a in v.vips}
        if where != {v.pool} or probe.appliance_group != v.appliance_group:
            self._diverge(
                event,
                "ipam.admissible",
                v,
                f"VIPs of pool {', '.join(sorted(str(w) for w in where))} → "
                f"{probe.appliance_group}",
                "the pool or appliance group named is not where these VIPs are",
            )
            return
        if snap.requested_ips:
            asked = {canonical(a) for a in snap.requested_ips}
            if asked != {canonical(a) for a in v.vips}:
                self._diverge(
                    event,
                    "ipam.requested",
                    v,
                    f"VipAssigned {vips_text(snap.requested_ips)} (asked for)",
                    "the Service asked for these addresses",
                )
            return
        if snap.pool is None:
            pool = self.pools.get(v.pool)
            if pool is not None and not pool.auto_assign:
                self._diverge(
                    event,
                    "ipam.auto-assign",
                    v,
                    "VIPs from an auto-assign pool",
                    f"pool {v.pool} assigns only on request, and the Service named no pool",
                )
                return
        if _from_status(snap, v.vips):
            return  # given back from the Service's status (a lost store): not next fit
        if self.exact:
            self._judge_next_fit(event, v, msgspec.structs.replace(request, status_vips=()))

    def _commit(self, v: VipAssigned, snap: ServiceSnapshot | None, owner: Owner) -> None:
        """Take the recorded allocation as what happened."""
        request = (
            request_of(snap)
            if snap is not None
            else Request(cluster=v.cluster, namespace=v.namespace, name=v.name, uid=v.uid)
        )
        for raw in v.vips:
            address = canonical(raw)
            if address is None:
                continue
            claim = self.allocator.claim_of(address)
            if claim is None:
                self.allocator.claim(address, request.claim(v.pool, v.appliance_group))
                asked = snap is not None and (
                    bool(snap.requested_ips) or _from_status(snap, (address,))
                )
                if not asked:
                    self.cursor[(v.pool, family_of(address))] = (
                        int(ipaddress.ip_address(address)) + 1
                    )
            elif not claim.holds(owner):
                self.allocator.claim(address, claim.with_sharer(claim.entry(request)))

    def _on_failed(self, event: Event, v: VipFailed) -> None:
        self.sink.decision("ipam", event)
        snap = self._request(event, v.uid, describe(v))
        if snap is None or not self.known:
            return
        ref = (v.cluster, v.namespace, v.name)
        held = self._record(ref, v.uid)
        request = request_of(snap)
        if held is not None:
            plan = decide(snap, held, self.allocator)
            # A refused move is a VipFailed too (the Service keeps what it holds).
            refused = any(isinstance(o.message, VipFailed) for o in plan.publish)
            if plan.failure is None and not refused:
                self._diverge(
                    event,
                    "ipam.failed",
                    v,
                    f"VipAssigned {vips_text(held.vips)} (the change fits its shared VIPs)",
                    "only a change that no longer fits the other sharers, or asks for other "
                    "VIPs, is refused",
                )
            return
        probe = self.allocator.choose(request)
        if isinstance(probe, AllocationFailure):
            return
        own = service_subject_of(event)
        if any(s != own for s in self.inflight):
            return  # they may have taken the room first
        self._diverge(
            event,
            "ipam.failed",
            v,
            f"VipAssigned {vips_text(probe.addresses)} (pool {probe.pool})",
            "the allocator has room for this Service",
        )

    def _on_releasing(self, event: Event, v: VipReleasing) -> None:
        self.sink.decision("ipam", event)
        ref = (v.cluster, v.namespace, v.name)
        held = self._record(ref, v.uid)
        if held is None:
            if self.known:
                self._diverge(
                    event,
                    "ipam.releasing",
                    v,
                    "VipReleased (this incarnation holds no VIPs)",
                    "only VIPs a Service holds are withdrawn",
                )
            self.cleaned.pop(ref, None)
            self.ipam.records[ServiceRef(*ref)] = ServiceRecord(
                uid=v.uid,
                vips=v.vips,
                pool="",
                appliance_group=v.appliance_group,
                state="releasing",
            )
            self.since[ref] = event.seq
            return
        plan = withdrawal(ServiceRef(*ref), held)
        (expected,) = plan.publish
        assert isinstance(expected.message, VipReleasing)
        if set(v.vips) != set(expected.message.vips):
            since = self.since.get(ref, 0)
            self._diverge(
                event,
                "ipam.releasing",
                v,
                f"VipReleasing {vips_text(held.vips)} (held since seq {since})",
                "a withdrawal names exactly the VIPs held",
            )
        self.ipam.records[ServiceRef(*ref)] = plan.record or held

    def _on_released(self, event: Event, v: VipReleased) -> None:
        self.sink.decision("ipam", event)
        ref = (v.cluster, v.namespace, v.name)
        cleaned = self.cleaned.get(ref)
        if cleaned is not None and cleaned.uid == v.uid:
            if v.vips and set(v.vips) != set(cleaned.vips):
                self._diverge(
                    event,
                    "ipam.released",
                    v,
                    f"VipReleased {vips_text(cleaned.vips)}",
                    "a release names the VIPs that were held",
                )
            del self.cleaned[ref]
            return
        held = self._record(ref, v.uid)
        if held is not None:
            self._diverge(
                event,
                "ipam.release-order",
                v,
                f"VipReleasing {vips_text(held.vips)}, and VipReleased only after LbRemoved",
                "claims are held until the appliance reports the Service gone",
            )
            self.ipam.drop(ServiceRef(*ref))
            return
        if v.vips and self.known:
            self._diverge(
                event,
                "ipam.released",
                v,
                "VipReleased with no VIPs (this incarnation held none)",
                "a release names the VIPs that were held",
            )

    def _diverge(
        self,
        event: Event,
        check: str,
        recorded: VipAssigned | VipFailed | VipReleasing | VipReleased,
        recomputed: str,
        detail: str,
    ) -> None:
        self.sink.diverge(
            "ipam", event, check, recorded=describe(recorded), recomputed=recomputed, detail=detail
        )


_echo_encoder = msgspec.json.Encoder()


def _from_status(snap: ServiceSnapshot, vips: Sequence[str]) -> bool:
    """Whether any of ``vips`` is in the Service's status (ipam gives those back)."""
    held = {c for a in snap.status_vips if (c := canonical(a)) is not None}
    return any(canonical(a) in held for a in vips)


def _echo_of(message: ServiceSnapshot | VipAssigned) -> bytes:
    """What ipam copies from a snapshot into VipAssigned, as one comparable value."""
    return _echo_encoder.encode(
        (message.ports, message.external_traffic_policy, message.health_check_node_port)
    )


def _echo_text(snap: ServiceSnapshot) -> str:
    ports = ",".join(f"{p.port}/{p.protocol}" for p in snap.ports) or "no ports"
    return f"{ports} {snap.external_traffic_policy}"
