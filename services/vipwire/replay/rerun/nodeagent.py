"""nodeagent, rerun: every recorded NodeApplied against the node agent's pure core.

A node's VIP set is what the node feed gives it: each LbProgrammed goes through the
lbdriver's feed core (:class:`~vipwire.lbdriver.core.feed.ClusterFeed`), out as a
``FeedDelta`` (encoded and decoded, as on the wire), into the agent's
:class:`~vipwire.nodeagent.core.changes.Changes`: the set over the last LbProgrammed
of every Service of its cluster (LbRemoved takes one away; LbFailed changes
nothing). Agents on ``feed: lb`` compute the same set from the messages themselves.
Checks:

* ``nodeagent.vips``: a NodeApplied reports exactly the recomputed set for
  the ``lb`` messages before it; or else every VIP that all versions of the
  Services' ``lb`` state within ``lag`` agree on is there, and none that no
  version would give (an agent handles subjects in parallel lanes);
* ``nodeagent.generation``: a node's generation never goes back;
* ``nodeagent.settle``: once the cluster's VIP set has been still for
  ``settle``, every node whose agent reports (and whose Node is not gone) has
  reported that set before it changes again.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Final

from vipwire.contracts import (
    FeedDelta,
    LbProgrammed,
    LbRemoved,
    NodeApplied,
    NodeGone,
    decode_feed,
    encode_feed,
    node_subject,
    vips_text,
)
from vipwire.lbdriver.core.feed import ClusterFeed
from vipwire.nodeagent.core.changes import Changes
from vipwire.nodeagent.core.desired import VipRanges, parse_ranges
from vipwire.replay.rerun.history import Event, History, between, candidates, latest
from vipwire.replay.rerun.report import Sink

ServiceKey = str  # ns/name


#: Every address: the rerun checks the feed, not the pools (ipam's check does).
_ANYWHERE: Final = VipRanges(config=parse_ranges(("0.0.0.0/0", "::/0"))[0])


@lru_cache(maxsize=1 << 16)
def vip_set(lb: LbProgrammed) -> frozenset[str]:
    """The VIPs one programmed Service puts on every node of its cluster, through the
    node feed: publisher core, the delta on the wire, the agent's core."""
    feed = ClusterFeed(lb.cluster)
    feed.note(lb)
    wire = decode_feed("rerun", encode_feed(feed.take()), cluster=lb.cluster)
    assert isinstance(wire, FeedDelta)
    changes = Changes(standalone=False, ranges=_ANYWHERE)
    changes.feed(wire.put, wire.gone, table=False)
    return frozenset(changes.desired.refs)


def _lb_state(event: Event) -> LbProgrammed | None:
    message = event.message
    return message if isinstance(message, LbProgrammed) else None


class _Cluster:
    def __init__(self) -> None:
        self.programmed: dict[ServiceKey, frozenset[str]] = {}
        self.count: Counter[str] = Counter()
        #: Positions of LbProgrammed/LbRemoved in this cluster (for windows).
        self.changes: list[int] = []
        #: Position from which the current set held, and the set.
        self.since: int | None = None

    @property
    def vips(self) -> frozenset[str]:
        return frozenset(self.count)

    def put(self, key: ServiceKey, vips: frozenset[str]) -> None:
        for vip in self.programmed.pop(key, frozenset()):
            self.count[vip] -= 1
            if self.count[vip] <= 0:
                del self.count[vip]
        if vips:
            self.programmed[key] = vips
            self.count.update(vips)


class NodeagentCheck:
    def __init__(self, history: History, sink: Sink, *, lag_ns: int, settle_ns: int) -> None:
        self.history = history
        self.sink = sink
        self.lag_ns = lag_ns
        self.settle_ns = settle_ns
        self.settle = history.complete
        self.clusters: dict[str, _Cluster] = {}
        self.generation: dict[tuple[str, str], int] = {}
        #: Per cluster, node → positions of its NodeApplied.
        self.applied: dict[str, dict[str, list[int]]] = {}
        #: Per cluster, Service key → positions of its LbProgrammed/LbRemoved.
        self.lb_pos: dict[str, dict[ServiceKey, list[int]]] = {}
        for event in history.events:
            s = event.subject
            match event.message:
                case NodeApplied():
                    assert s.node is not None
                    self.applied.setdefault(s.cluster, {}).setdefault(s.node, []).append(event.pos)
                case LbProgrammed() | LbRemoved():
                    self.lb_pos.setdefault(s.cluster, {}).setdefault(s.key, []).append(event.pos)
                case _:
                    pass

    def on_event(self, event: Event) -> None:
        message = event.message
        match message:
            case LbProgrammed() | LbRemoved():
                cluster = self.clusters.setdefault(message.cluster, _Cluster())
                before = cluster.vips
                key = event.subject.key
                cluster.put(
                    key, vip_set(message) if isinstance(message, LbProgrammed) else frozenset()
                )
                cluster.changes.append(event.pos)
                if cluster.vips != before:
                    if self.settle and cluster.since is not None:
                        self._close(message.cluster, cluster.since, before, event.pos)
                    cluster.since = event.pos
            case NodeApplied():
                self._on_applied(event, message)
            case _:
                pass

    def finish(self) -> None:
        if not self.settle:
            return
        for name, cluster in self.clusters.items():
            if cluster.since is not None:
                self._close(name, cluster.since, cluster.vips, None)

    # --- decisions ------------------------------------------------------------------------

    def _on_applied(self, event: Event, applied: NodeApplied) -> None:
        self.sink.decision("nodeagent", event)
        node_key = (applied.cluster, applied.node)
        last = self.generation.get(node_key)
        self.generation[node_key] = max(applied.generation, last or 0)
        if last is not None and applied.generation < last:
            self.sink.diverge(
                "nodeagent",
                event,
                "nodeagent.generation",
                recorded=f"NodeApplied generation {applied.generation}",
                recomputed=f"a generation of at least {last}",
                detail="a node's generation never goes back (the agent continues the last one)",
            )
            return
        cluster = self.clusters.get(applied.cluster) or _Cluster()
        recorded = frozenset(applied.vips)
        exact = cluster.vips
        if recorded == exact:
            return
        missing, unexpected = self._bounds(event, applied.cluster, cluster, recorded)
        if not missing and not unexpected:
            return
        why = []
        if missing:
            why.append(f"missing {vips_text(sorted(missing))}")
        if unexpected:
            why.append(f"programmed for no Service within --lag: {vips_text(sorted(unexpected))}")
        self.sink.diverge(
            "nodeagent",
            event,
            "nodeagent.vips",
            recorded=f"NodeApplied {vips_text(applied.vips)}",
            recomputed=f"NodeApplied {vips_text(sorted(exact))}",
            detail="; ".join(why),
        )

    def _bounds(
        self, event: Event, name: str, cluster: _Cluster, recorded: frozenset[str]
    ) -> tuple[set[str], set[str]]:
        history = self.history
        start = history.window_start(event.pos, self.lag_ns)
        changed = {
            history.events[p].subject.key for p in between(cluster.changes, start, event.pos)
        }
        positions = self.lb_pos.get(name, {})
        # VIPs only changed Services hold now may be in doubt; the rest are certain.
        doubt: Counter[str] = Counter()
        for key in changed:
            doubt.update(cluster.programmed.get(key, frozenset()))
        certain = {v for v in cluster.count if cluster.count[v] > doubt[v]}
        possible = set(cluster.count)
        for key in changed:
            versions = [
                vip_set(lb) if lb is not None else frozenset()
                for lb in candidates(history, positions.get(key, []), start, event.pos, _lb_state)
            ]
            certain |= frozenset.intersection(*versions)
            possible |= frozenset.union(*versions)
        unexpected = recorded - possible if history.complete else set()
        return certain - recorded, set(unexpected)

    # --- settling ---------------------------------------------------------------------------

    def _close(self, name: str, start: int, vips: frozenset[str], end: int | None) -> None:
        """The cluster's VIP set was ``vips`` from ``start`` until ``end``."""
        history = self.history
        until = history.clock(end) if end is not None else history.end_ns
        still = until - history.clock(start)
        if still < self.settle_ns:
            return
        stop = end if end is not None else len(history.events)
        for node, positions in sorted(self.applied.get(name, {}).items()):
            if positions[0] >= stop or self._gone(name, node, stop):
                continue
            last_pos = latest(positions, stop)
            assert last_pos is not None
            last = history.events[last_pos].message
            assert isinstance(last, NodeApplied)
            if frozenset(last.vips) == vips:
                continue
            blamed = last_pos if last_pos > start else start
            self.sink.diverge(
                "nodeagent",
                history.events[blamed],
                "nodeagent.settle",
                recorded=f"NodeApplied {vips_text(last.vips)} from {node} (seq "
                f"{history.events[last_pos].seq})",
                recomputed=f"NodeApplied {vips_text(sorted(vips))}",
                detail=f"the cluster's VIPs stood still from seq {history.events[start].seq} "
                f"for {still / 1e9:.2f}s and {node} did not report them",
            )

    def _gone(self, cluster: str, node: str, stop: int) -> bool:
        positions = self.history.positions(node_subject("node", cluster, node))
        last = latest(positions, stop)
        return last is not None and isinstance(self.history.events[last].message, NodeGone)
