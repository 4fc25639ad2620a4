"""What a rerun found: counted decisions and divergences, each with both sides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

from vipwire.contracts import (
    LbFailed,
    LbProgrammed,
    LbRemoved,
    Member,
    Message,
    NodeApplied,
    ServicePort,
    VipAssigned,
    VipFailed,
    VipReleased,
    VipReleasing,
    members_text,
    ports_text,
    vips_text,
)
from vipwire.replay.rerun.history import Event
from vipwire.replay.timeline import Bound, Scope

Component = Literal["ipam", "lbdriver", "nodeagent"]
COMPONENTS: tuple[Component, ...] = ("ipam", "lbdriver", "nodeagent")


class Divergence(msgspec.Struct, frozen=True, kw_only=True):
    """A recorded decision (or a missing one) that the pure cores would not have made."""

    seq: int
    time: str
    subject: str
    component: Component
    #: Which rule: ``ipam.exclusive``, ``lbdriver.members``, ``nodeagent.vips``, …
    check: str
    recorded: str
    recomputed: str
    detail: str = ""


class RerunResult(msgspec.Struct, kw_only=True):
    #: Recorded decisions checked, by component.
    checked: dict[str, int]
    #: In stream order; the first one is *the* divergence.
    divergences: list[Divergence]
    #: The history started at sequence 1 (every input known).
    complete: bool
    #: Exact addresses were compared (complete history, one ipam replica).
    exact_addresses: bool
    malformed: int = 0
    notes: list[str] = []

    @property
    def total(self) -> int:
        return sum(self.checked.values())

    @property
    def first(self) -> Divergence | None:
        return self.divergences[0] if self.divergences else None


class Sink:
    """Where checks put what they find; keeps only what lies in the range and scope."""

    def __init__(
        self, *, scope: Scope, since: Bound | None = None, until: Bound | None = None
    ) -> None:
        self.scope = scope
        self.since = since
        self.until = until
        self.checked: dict[str, int] = dict.fromkeys(COMPONENTS, 0)
        self.divergences: list[Divergence] = []

    def wanted(self, event: Event) -> bool:
        if self.since is not None and self.since.before(event.seq, event.time_ns):
            return False
        if self.until is not None and self.until.after(event.seq, event.time_ns):
            return False
        s = event.subject
        return self.scope.covers(s.cluster, s.namespace, s.name)

    def decision(self, component: Component, event: Event) -> None:
        if self.wanted(event):
            self.checked[component] += 1

    def diverge(
        self,
        component: Component,
        event: Event,
        check: str,
        *,
        recorded: str,
        recomputed: str,
        detail: str = "",
    ) -> None:
        if self.wanted(event):
            self.divergences.append(
                Divergence(
                    seq=event.seq,
                    time=event.time,
                    subject=event.subject.raw,
                    component=component,
                    check=check,
                    recorded=recorded,
                    recomputed=recomputed,
                    detail=detail,
                )
            )


# --- how decisions read -------------------------------------------------------------


def describe(message: Message | None) -> str:
    """A decision in full (every VIP, port and member), for both sides of a divergence."""
    match message:
        case None:
            return "nothing"
        case VipAssigned():
            return (
                f"VipAssigned {vips_text(message.vips)} (pool {message.pool} → "
                f"{message.appliance_group}; {ports_text(message.ports)} "
                f"{message.external_traffic_policy})"
            )
        case VipReleasing():
            return f"VipReleasing {vips_text(message.vips)}"
        case VipReleased():
            return f"VipReleased {vips_text(message.vips)}"
        case VipFailed():
            return f"VipFailed {message.reason}: {message.message}"
        case LbProgrammed():
            return programmed_text(
                message.vips, message.ports, message.external_traffic_policy, message.members
            )
        case LbRemoved():
            return f"LbRemoved {vips_text(message.vips)} from {message.appliance}"
        case LbFailed():
            removing = " (removing)" if message.removing else ""
            return f"LbFailed{removing} {message.reason}: {message.message}"
        case NodeApplied():
            return f"NodeApplied generation {message.generation}: {vips_text(message.vips)}"
    return type(message).__name__


def programmed_text(
    vips: Sequence[str], ports: Sequence[ServicePort], policy: str, members: Sequence[Member]
) -> str:
    return (
        f"LbProgrammed {vips_text(vips)} {ports_text(ports)} {policy}; "
        f"members {members_text(members)}"
    )


def render(result: RerunResult) -> str:
    """The verdict for people: one line when all is well, both sides when not."""
    parts = ", ".join(f"{c} {n}" for c, n in result.checked.items())
    lines = [f"note: {note}" for note in result.notes]
    first = result.first
    if first is None:
        lines.append(f"no divergence ({result.total} decisions checked: {parts})")
        return "\n".join(lines) + "\n"
    lines += [
        f"divergence at seq {first.seq} ({first.time}) on {first.subject}",
        f"  check:      {first.check}",
        f"  recorded:   {first.recorded}",
        f"  recomputed: {first.recomputed}",
    ]
    if first.detail:
        lines.append(f"  why:        {first.detail}")
    more = len(result.divergences) - 1
    if more:
        later = ", ".join(f"seq {d.seq} {d.check}" for d in result.divergences[1:6])
        lines.append(f"({more} more after it: {later}{', …' if more > 5 else ''})")
    lines.append(f"({result.total} decisions checked: {parts})")
    return "\n".join(lines) + "\n"
