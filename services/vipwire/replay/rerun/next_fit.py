"""ipam, rerun: next fit, the one choice of ipam's that depends on its history.

With one ipam replica and the whole history, a fresh allocation gets, per
family, the next free address from where the previous allocation in that pool
left off (or from the pool's start, as after an ipam restart), passing over
addresses taken by allocations answered later but requested earlier
(concurrent ones). Mixed into :class:`~vipwire.replay.rerun.ipam.IpamCheck`.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from vipwire.contracts import (
    ServiceSnapshot,
    VipAssigned,
    VipFailed,
    VipReleased,
    VipReleasing,
    service_subject,
    vips_text,
)
from vipwire.ipam import AllocationFailure, Allocator, PoolSettings, Request
from vipwire.ipam.core.claims import request_of
from vipwire.replay.rerun.history import Event, History, following

#: Addresses a next-fit walk may look at before it gives up (a near-full huge pool).
WALK_LIMIT = 1 << 16

Ref = tuple[str, str, str]


class Inflight(NamedTuple):
    vips: frozenset[str]
    undone: bool


def canonical(address: str) -> str | None:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def family_of(address: str) -> str:
    return "IPv6" if ":" in address else "IPv4"


def service_subject_of(event: Event) -> str:
    s = event.subject
    assert s.namespace is not None and s.name is not None
    return service_subject("service", s.cluster, s.namespace, s.name)


class NextFitChecks:
    """Where next fit puts a fresh allocation, and what else was in flight then."""

    history: History
    pools: dict[str, PoolSettings]
    exact: bool
    cursor: dict[tuple[str, str], int]
    inflight: dict[str, Inflight]

    @property
    def allocator(self) -> Allocator:
        raise NotImplementedError

    def _diverge(
        self,
        event: Event,
        check: str,
        recorded: VipAssigned | VipFailed | VipReleasing | VipReleased,
        recomputed: str,
        detail: str,
    ) -> None:
        raise NotImplementedError

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
                fit = self._next_fit(expected.pool, family_of(address), skip, budget)
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
        skip -= {a for a in map(canonical, v.vips) if a is not None}
        for want, got in zip(expected.addresses, v.vips, strict=True):
            if want in expected.joined:
                if canonical(got) != want:
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
            fam = family_of(want)
            acceptable = self._next_fit(v.pool, fam, skip, budget)
            if acceptable is None or canonical(got) in acceptable:
                continue
            # After an ipam restart its cursor starts at the pool's start again.
            restarted = self._next_fit(v.pool, fam, skip, budget, from_start=True)
            if restarted is None or canonical(got) in restarted:
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

    def _inflight(self, event: Event, ref: Ref) -> Inflight:
        """What history says became of a request: the VIPs its answer names, or that it
        got none (an allocation undone because the Service went away meanwhile)."""
        history = self.history
        answer = following(history.positions(service_subject("vip", *ref)), event.pos)
        message = history.events[answer].message if answer is not None else None
        if isinstance(message, VipAssigned):
            vips = frozenset(a for a in map(canonical, message.vips) if a is not None)
            return Inflight(vips, undone=False)
        return Inflight(frozenset(), undone=not isinstance(message, VipFailed))

    def _concurrent(self, event: Event) -> tuple[set[str], int]:
        """Requests in flight at ``event`` (but its own): the addresses they will be
        recorded with, and how many may have taken an address and given it back."""
        own = service_subject_of(event)
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
