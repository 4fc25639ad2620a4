"""Whether the member nodes hold a Service's VIPs, as their node agents report.

Pure: no I/O, no clock (the shell passes ``now``, a monotonic time). The
appliance sends a Service's traffic to its member nodes; a node whose agent
reports it without the VIP (withdrawn, or never applied) drops that traffic.
A node is judged only once its agent has reported at all: a cluster without
node agents is not a cluster of nodes missing every VIP. A node gets a grace
period (``node_vip_grace_s``) from the moment it is first found without the
VIP, since applying one takes a moment; past it, the Service's condition
turns False (``NodesMissingVip``) with a Warning Event, and it clears (True, a
Normal Event) once every member reports the VIP again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from vipwire.contracts import LbProgrammed
from vipwire.watcher.core.condition import NODES_MISSING, Condition, Gate, current_condition
from vipwire.watcher.core.events import EventSpec
from vipwire.watcher.core.translate import Obj


def nodes_without(lb: LbProgrammed, applied: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """The member nodes whose agent's last report lacks one of the Service's VIPs."""
    vips = frozenset(lb.vips)
    return frozenset(
        m.node for m in lb.members if (held := applied.get(m.node)) is not None and not vips <= held
    )


def gain_needs_status(gate: Gate, *, moving: bool, nodes_known: bool) -> bool:
    """Whether a member node newly holding a Service's VIP can change its status other
    than through the NodesMissingVip verdict (:meth:`MissingVips.found`): only a status
    gate (any/all), or a move to other VIPs (``moving``), which waits for every member
    node."""
    return gate != "none" or (moving and nodes_known)


class Verdict(NamedTuple):
    """The nodes missing the VIP past their grace, and when to judge again (None:
    nothing is waiting out a grace period)."""

    overdue: frozenset[str]
    recheck_at: float | None


class MissingVips:
    """Since when each Service's member nodes have been found without its VIP."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._since: dict[str, dict[str, float]] = {}

    def judge(self, key: str, missing: frozenset[str], now: float) -> Verdict:
        """The verdict on the Service ``key`` whose member nodes ``missing`` lack its VIP
        now; a node found again keeps the time it was first found."""
        if not missing:
            self._since.pop(key, None)
            return Verdict(frozenset(), None)
        before = self._since.get(key, {})
        since = {node: before.get(node, now) for node in missing}
        self._since[key] = since
        due = {node: at + self.grace_s for node, at in since.items()}
        overdue = frozenset(node for node, at in due.items() if at <= now)
        waiting = [at for at in due.values() if at > now]
        return Verdict(overdue, min(waiting) if waiting else None)

    def found(self, key: str, node: str, now: float) -> tuple[bool, bool]:
        """The member ``node`` of ``key`` holds its VIP now (its agent's report gained it):
        forgotten without judging every member again. Returns whether the verdict changes
        (the node was overdue: the condition names it), and whether the Service still has
        nodes waiting out their grace or overdue."""
        since = self._since.get(key)
        if since is None:
            return False, False
        at = since.pop(node, None)
        if not since:
            del self._since[key]
        return at is not None and at + self.grace_s <= now, bool(since)

    def forget(self, key: str) -> None:
        self._since.pop(key, None)

    def __len__(self) -> int:
        return len(self._since)


def written_condition(patch: Mapping[str, object] | None) -> tuple[bool, Condition | None]:
    """Whether a status patch sets our condition, and to what (None: removed)."""
    if patch is None:
        return False, None
    status = patch.get("status")
    if not isinstance(status, Mapping) or "conditions" not in status:
        return False, None
    return True, current_condition({"status": {"conditions": status["conditions"] or []}})


def node_event(service: Obj, patch: Mapping[str, object] | None) -> EventSpec | None:
    """The Event a status write calls for when it turns the condition to or from
    ``NodesMissingVip`` (the other reasons come with a bus message, and their Events
    with it). ``service``: as it was before the write."""
    sets, after = written_condition(patch)
    if not sets:
        return None
    before = current_condition(service)
    if after is not None and after.reason == NODES_MISSING:
        if before is not None and before.reason == NODES_MISSING and before == after:
            return None
        return EventSpec(
            type="Warning", reason=NODES_MISSING, action="VerifyNodes", note=after.message
        )
    if (
        before is not None
        and before.reason == NODES_MISSING
        and after is not None
        and after.status == "True"
    ):
        return EventSpec(
            type="Normal",
            reason="NodesHoldVip",
            action="VerifyNodes",
            note=f"every member node holds the VIP again: {after.message}",
        )
    return None
