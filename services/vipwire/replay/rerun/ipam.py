"""ipam, rerun: every recorded VIP decision against the allocator and the claims history implies.

The recorded allocations are themselves inputs: after each decision is
judged, the sandbox takes the claims the history says were made, so one
divergence does not drown everything after it. Which address a Service gets
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
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import msgspec

from vipwire.contracts import (
    LbRemoved,
    ServiceGone,
    ServiceSnapshot,
    VipAssigned,
    VipFailed,
    VipReleased,
    VipReleasing,
    service_subject,
    vips_text,
)
from vipwire.ipam import (
    AllocationFailure,
    Allocator,
    Owner,
    PoolSettings,
    Request,
)
from vipwire.ipam.core.claims import request_of
from vipwire.replay.rerun.history import Event, History, following
from vipwire.replay.rerun.report import Sink, describe

Ref = tuple[str, str, str]
#: Addresses a next-fit walk may look at before it gives up (a near-full huge pool).
WALK_LIMIT = 1 << 16


@dataclass
class _Held:
    """What ipam's record of one Service says, as history tells it."""

    uid: str
    vips: tuple[str, ...]
    pool: str
    group: str
    #: active, releasing (withdrawal asked) or removed (LbRemoved: claims freed).
    state: str
    since: int


def _canonical(address: str) -> str | None:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def _family(address: str) -> str:
    return "IPv6" if ":" in address else "IPv4"


class _Inflight(NamedTuple):
    vips: frozenset[str]
    undone: bool


class IpamCheck:
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
        self.allocator = Allocator(pools)
        self.exact = exact
        self.settle_ns = settle_ns
        self.known = history.complete
        self.holders: dict[Ref, _Held] = {}
        self.live: dict[str, ServiceSnapshot] = {}
        self.echoes: dict[str, set[bytes]] = {}
        self.cursor: dict[tuple[str, str], int] = {}
        #: Service subject → a fresh request not yet answered.
        self.inflight: dict[str, _Inflight] = {}

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
        if isinstance(message, ServiceSnapshot) and not message.deleting:
            self.live[message.uid] = message
            self.echoes.setdefault(message.uid, set()).add(_echo_of(message))
            held = self.holders.get(ref)
            holds = held is not None and held.uid == message.uid and held.state != "removed"
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
        held = self.holders.get(ref)
        if held is not None and held.uid == message.uid and held.state == "releasing":
            self._leave_all(Owner(*ref, held.uid))
            held.state = "removed"

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
        held = self.holders.get(ref)
        holds = held is not None and held.uid == v.uid and held.state != "removed"
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
        if holds:
            assert held is not None
            self._on_kept(event, v, held, snap)
            return
        if held is not None and held.state != "removed":
            # A new incarnation of the name: ipam drops the old one's record.
            self._leave_all(Owner(*ref, held.uid))
        if snap is not None:
            self._judge_fresh(event, v, snap)
        self._commit(v, snap, owner)
        self.holders[ref] = _Held(
            uid=v.uid,
            vips=v.vips,
            pool=v.pool,
            group=v.appliance_group,
            state="active",
            since=event.seq,
        )

    def _on_kept(
        self, event: Event, v: VipAssigned, held: _Held, snap: ServiceSnapshot | None
    ) -> None:
        if set(v.vips) != set(held.vips) or (v.pool, v.appliance_group) != (
            held.pool,
            held.group,
        ):
            self._diverge(
                event,
                "ipam.stable",
                v,
                f"VipAssigned {vips_text(held.vips)} (pool {held.pool} → {held.group}), "
                f"held since seq {held.since}",
                "a Service keeps its VIPs until they are released",
            )
        held.state = "active"  # back before the appliance was cleaned
        if snap is not None:
            refreshed = self.allocator.refresh(request_of(snap))
            if not isinstance(refreshed, AllocationFailure):
                for update in refreshed:
                    self.allocator.claim(update.address, update.after)

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
            asked = {_canonical(a) for a in snap.requested_ips}
            if asked != {_canonical(a) for a in v.vips}:
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
        if self.exact:
            self._judge_next_fit(event, v, request)

    def _what_instead(self, event: Event, v: VipAssigned, snap: ServiceSnapshot) -> str:
        """What the allocator would have answered this snapshot with (for the report)."""
        request = request_of(snap)
        expected = self.allocator.choose(request)
        if isinstance(expected, AllocationFailure):
            return f"VipFailed {expected.code}: {expected.message}"
        if snap.requested_ips:
            return f"VipAssigned {vips_text(expected.addresses)} (as requested)"
        if not self.exact:
            example = vips_text(expected.addresses)
            return f"VipAssigned free addresses of pool {expected.pool} (such as {example})"
        skip, budget = self._concurrent(event)
        chosen = []
        for address in expected.addresses:
            fit = None
            if address in expected.new:
                fit = self._next_fit(expected.pool, _family(address), skip, budget)
            chosen.append(fit[0] if fit else address)
        return f"VipAssigned {vips_text(chosen)} (pool {expected.pool})"

    def _judge_next_fit(self, event: Event, v: VipAssigned, request: Request) -> None:
        expected = self.allocator.choose(request)
        if isinstance(expected, AllocationFailure):
            self._diverge(
                event,
                "ipam.next-fit",
                v,
                f"VipFailed {expected.code}: {expected.message}",
                "the allocator finds no room for this Service",
            )
            return
        if expected.pool != v.pool or len(expected.addresses) != len(v.vips):
            self._diverge(
                event,
                "ipam.next-fit",
                v,
                f"VipAssigned from pool {expected.pool} ({len(expected.addresses)} VIPs)",
                "the allocator picks another pool or another number of families",
            )
            return
        skip, budget = self._concurrent(event)
        # Were another allocation recorded with one of these very VIPs, that is a
        # conflict found there, not a reason to pass over them here.
        skip -= {a for a in map(_canonical, v.vips) if a is not None}
        for want, got in zip(expected.addresses, v.vips, strict=True):
            if want in expected.joined:
                if _canonical(got) != want:
                    self._diverge(
                        event,
                        "ipam.next-fit",
                        v,
                        f"VipAssigned sharing {want}",
                        "the allocator shares the lowest VIP of the sharing key that fits",
                    )
                    return
                continue
            if want not in expected.new:
                continue
            family = _family(want)
            acceptable = self._next_fit(v.pool, family, skip, budget)
            if acceptable is None or _canonical(got) in acceptable:
                continue
            # After an ipam restart its cursor starts at the pool's start again.
            restarted = self._next_fit(v.pool, family, skip, budget, from_start=True)
            if restarted is None or _canonical(got) in restarted:
                continue
            if acceptable:
                others = f" (or {', '.join(acceptable[1:])})" if len(acceptable) > 1 else ""
                self._diverge(
                    event,
                    "ipam.next-fit",
                    v,
                    f"VipAssigned {acceptable[0]}{others}",
                    f"next fit in pool {v.pool} from where its last allocation left off"
                    + (f", passing over {', '.join(sorted(skip))}" if skip else "")
                    + (f" (after an ipam restart: {restarted[0]})" if restarted else ""),
                )
                return

    def _inflight(self, event: Event, ref: Ref) -> _Inflight:
        """What history says became of a request: the VIPs its answer names, or that it
        got none (an allocation undone because the Service went away meanwhile)."""
        history = self.history
        answer = following(history.positions(service_subject("vip", *ref)), event.pos)
        message = history.events[answer].message if answer is not None else None
        if isinstance(message, VipAssigned):
            vips = frozenset(a for a in map(_canonical, message.vips) if a is not None)
            return _Inflight(vips, undone=False)
        return _Inflight(frozenset(), undone=not isinstance(message, VipFailed))

    def _concurrent(self, event: Event) -> tuple[set[str], int]:
        """Requests in flight at ``event`` (but its own): the addresses they will be
        recorded with, and how many may have taken an address and given it back."""
        own = _service_subject_of(event)
        skip: set[str] = set()
        budget = 0
        for subject, request in self.inflight.items():
            if subject != own:
                skip |= request.vips
                budget += request.undone
        return skip, budget

    def _next_fit(
        self, pool: str, family: str, skip: set[str], budget: int, *, from_start: bool = False
    ) -> list[str] | None:
        """Addresses next fit may give now, from the cursor (or the pool's start); None:
        unknown (no such pool, or too far to walk)."""
        settings = self.pools.get(pool)
        if settings is None:
            return None
        blocks = sorted((b.first, b.last) for b in settings.blocks() if b.family == family)
        if not blocks:
            return None
        start = blocks[0][0] if from_start else self.cursor.get((pool, family), blocks[0][0])
        return self._walk(blocks, family, start, skip, budget + 1)

    def _walk(
        self,
        blocks: list[tuple[int, int]],
        family: str,
        start: int,
        skip: set[str],
        wanted: int,
    ) -> list[str] | None:
        make = ipaddress.IPv4Address if family == "IPv4" else ipaddress.IPv6Address
        # Circular order, as the allocator's cursor goes: from start up, then around.
        segments = [(max(first, start), last) for first, last in blocks if last >= start]
        segments += [(first, min(last, start - 1)) for first, last in blocks if first < start]
        found: list[str] = []
        steps = 0
        for lo, hi in segments:
            for value in range(lo, hi + 1):
                steps += 1
                if steps > WALK_LIMIT:
                    return None
                text = str(make(value))
                if text in skip or self.allocator.claim_of(text) is not None:
                    continue
                if not self.allocator.usable(text):
                    continue
                found.append(text)
                if len(found) >= wanted:
                    return found
        return found

    def _commit(self, v: VipAssigned, snap: ServiceSnapshot | None, owner: Owner) -> None:
        """Take the recorded allocation as what happened."""
        request = (
            request_of(snap)
            if snap is not None
            else Request(cluster=v.cluster, namespace=v.namespace, name=v.name, uid=v.uid)
        )
        for raw in v.vips:
            address = _canonical(raw)
            if address is None:
                continue
            claim = self.allocator.claim_of(address)
            if claim is None:
                self.allocator.claim(address, request.claim(v.pool, v.appliance_group))
                asked = snap is not None and bool(snap.requested_ips)
                if not asked:
                    family = _family(address)
                    self.cursor[(v.pool, family)] = int(ipaddress.ip_address(address)) + 1
            elif not claim.holds(owner):
                self.allocator.claim(address, claim.with_sharer(request.sharer()))

    def _leave_all(self, owner: Owner) -> None:
        for address in self.allocator.held_by(owner):
            self.allocator.leave(address, owner)

    def _on_failed(self, event: Event, v: VipFailed) -> None:
        self.sink.decision("ipam", event)
        snap = self._request(event, v.uid, describe(v))
        if snap is None or not self.known:
            return
        ref = (v.cluster, v.namespace, v.name)
        held = self.holders.get(ref)
        request = request_of(snap)
        if held is not None and held.uid == v.uid and held.state != "removed":
            refreshed = self.allocator.refresh(request)
            if not isinstance(refreshed, AllocationFailure):
                self._diverge(
                    event,
                    "ipam.failed",
                    v,
                    f"VipAssigned {vips_text(held.vips)} (the change fits its shared VIPs)",
                    "only a change that no longer fits the other sharers is refused",
                )
            return
        probe = self.allocator.choose(request)
        if isinstance(probe, AllocationFailure):
            return
        own = _service_subject_of(event)
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
        held = self.holders.get(ref)
        if held is None or held.uid != v.uid or held.state == "removed":
            if self.known:
                self._diverge(
                    event,
                    "ipam.releasing",
                    v,
                    "VipReleased (this incarnation holds no VIPs)",
                    "only VIPs a Service holds are withdrawn",
                )
            self.holders[ref] = _Held(
                uid=v.uid,
                vips=v.vips,
                pool="",
                group=v.appliance_group,
                state="releasing",
                since=event.seq,
            )
            return
        if set(v.vips) != set(held.vips):
            self._diverge(
                event,
                "ipam.releasing",
                v,
                f"VipReleasing {vips_text(held.vips)} (held since seq {held.since})",
                "a withdrawal names exactly the VIPs held",
            )
        held.state = "releasing"

    def _on_released(self, event: Event, v: VipReleased) -> None:
        self.sink.decision("ipam", event)
        ref = (v.cluster, v.namespace, v.name)
        held = self.holders.get(ref)
        if held is not None and held.uid == v.uid:
            if held.state != "removed":
                self._diverge(
                    event,
                    "ipam.release-order",
                    v,
                    f"VipReleasing {vips_text(held.vips)}, and VipReleased only after LbRemoved",
                    "claims are held until the appliance reports the Service gone",
                )
                self._leave_all(Owner(*ref, held.uid))
            elif v.vips and set(v.vips) != set(held.vips):
                self._diverge(
                    event,
                    "ipam.released",
                    v,
                    f"VipReleased {vips_text(held.vips)}",
                    "a release names the VIPs that were held",
                )
            del self.holders[ref]
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


def _service_subject_of(event: Event) -> str:
    s = event.subject
    assert s.namespace is not None and s.name is not None
    return service_subject("service", s.cluster, s.namespace, s.name)


_echo_encoder = msgspec.json.Encoder()


def _echo_of(message: ServiceSnapshot | VipAssigned) -> bytes:
    """What ipam copies from a snapshot into VipAssigned, as one comparable value."""
    return _echo_encoder.encode(
        (message.ports, message.external_traffic_policy, message.health_check_node_port)
    )


def _echo_text(snap: ServiceSnapshot) -> str:
    ports = ",".join(f"{p.port}/{p.protocol}" for p in snap.ports) or "no ports"
    return f"{ports} {snap.external_traffic_policy}"
