"""What the lbdriver knows of the clusters it serves, rebuilt from the stream: per
cluster its nodes, per Service its assignment, the nodes holding its ready
endpoints, and what became of the Service on the appliances (where it was
written, whether that worked, what was last reported).

Pure: the shell notes every message here and asks which Services it affects;
the answers to "what does this Service need now", "may a drift pass compare
it" and "may the start-up adopt it" are decided here without I/O.
"""

from __future__ import annotations

import functools
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Set

import msgspec

from vipwire.contracts import (
    EndpointsSnapshot,
    Member,
    NodeGone,
    NodeSnapshot,
    ServicePort,
    ServiceRef,
    VipAssigned,
    VipReleasing,
    encode,
)
from vipwire.lbdriver.core.desired import InvalidAssignment, desired_virtual_servers, owner_of
from vipwire.lbdriver.core.diff import diff
from vipwire.lbdriver.core.drain import DrainKey, draining_of, with_draining
from vipwire.lbdriver.core.drift import owned_scope
from vipwire.lbdriver.core.listing import Listing, digest
from vipwire.lbdriver.core.outcomes import Assignment, fingerprint, outcome
from vipwire.lbdriver.core.profiles import ProfileSettings
from vipwire.lbdriver.core.virtual_servers import VirtualServer


class ServiceState:
    """What is kept about one Service with an assigned (or releasing) VIP.

    One object per Service rather than an entry per fact in a dict each: at
    10,000 Services every byte here is 10 KB.
    """

    __slots__ = (
        "assigned_seq",
        "assignment",
        "attempts",
        "drain_since",
        "draining",
        "drift",
        "generation",
        "healthy",
        "placed",
        "published",
        "publishes",
        "requeue_after_s",
        "written",
    )

    def __init__(self, assignment: Assignment, seq: int) -> None:
        self.assignment = assignment
        #: Stream sequence of the assignment (names the cause of our own reconciles).
        self.assigned_seq = seq
        #: Fingerprint of the last report published (or found on the stream at start).
        self.published: bytes | None = None
        self.publishes = 0
        #: Where the last successful reconcile wrote, and whether the last one succeeded.
        self.placed: str | None = None
        self.healthy: bool | None = None
        #: Digest of the objects the last successful reconcile left on ``placed``.
        self.written: int | None = None
        self.attempts = 0  # failed reconciles in a row
        self.generation = 0  # reconciles started
        #: What a verification found changed on the appliance, until a reconcile has
        #: written it again (None: nothing found). See ``core.drift``.
        self.drift: str | None = None
        #: Graceful drain (``core.drain``): per virtual server, the members the last
        #: successful reconcile left disabled, when each started draining, and in how
        #: many seconds the first drain ends (None: none is draining).
        self.draining: dict[str, tuple[Member, ...]] = {}
        self.drain_since: dict[DrainKey, float] = {}
        self.requeue_after_s: float | None = None


# Services with the same nodes ready share one set (and its node names).
@functools.lru_cache(maxsize=1 << 12)
def _shared_nodes(nodes: frozenset[str]) -> frozenset[str]:
    return nodes


# Most Services have one of a few port lists (80, 443, ...): one tuple for each.
@functools.lru_cache(maxsize=1 << 12)
def _shared_ports(ports: tuple[ServicePort, ...]) -> tuple[ServicePort, ...]:
    return ports


def compact(message: Assignment) -> Assignment:
    """The assignment as kept for as long as the Service lives: the strings every
    Service of a cluster or pool repeats, and its ports, shared with the others."""
    shared = {
        "cluster": sys.intern(message.cluster),
        "namespace": sys.intern(message.namespace),
        "appliance_group": sys.intern(message.appliance_group),
    }
    if isinstance(message, VipAssigned):
        shared["pool"] = sys.intern(message.pool)
        return msgspec.structs.replace(message, ports=_shared_ports(message.ports), **shared)
    return msgspec.structs.replace(message, **shared)


class Inventory:
    """Nodes, endpoints and Services of every cluster, as the stream told them."""

    def __init__(
        self,
        prefix: str,
        *,
        profiles: Mapping[str, ProfileSettings] | None = None,
        drain_on_cordon: bool = False,
    ) -> None:
        #: The owned-object prefix (starts every virtual server name we write).
        self.prefix = prefix
        #: The configured appliance profiles by name (a name not in it is invalid).
        self.profiles: Mapping[str, ProfileSettings] = dict(profiles or {})
        #: A cordoned node is no member (``LbdriverSettings.drain_on_cordon``).
        self.drain_on_cordon = drain_on_cordon
        self.nodes: dict[str, dict[str, NodeSnapshot]] = {}
        # Of endpoints only the nodes holding a serving one matter here (ready, or
        # terminating but still serving).
        self.ready_nodes: dict[ServiceRef, frozenset[str]] = {}
        self.services: dict[ServiceRef, ServiceState] = {}
        # Services with a state, by cluster, in order of arrival (a dict as ordered set).
        self.by_cluster: dict[str, dict[ServiceRef, None]] = {}
        #: Every cluster seen in a VIP message: our partitions.
        self.clusters: set[str] = set()
        #: Until the start-up is over: per Service, the fingerprint and stream sequence
        #: of the last report the stream holds (read before the replay).
        self.reports: dict[ServiceRef, tuple[bytes, int]] = {}
        #: Services whose last VIP message cannot be read, with no valid one before it:
        #: what they need is unknown, never "nothing", so their objects are no orphans.
        self.unknown: set[ServiceRef] = set()

    def __len__(self) -> int:
        return len(self.services)

    # --- what the stream says ------------------------------------------------------

    def note_node(self, message: NodeSnapshot | NodeGone) -> list[ServiceRef]:
        """Note a Node; returns the Services whose members it may change."""
        nodes = self.nodes.setdefault(message.cluster, {})
        if isinstance(message, NodeSnapshot):
            if nodes.get(message.node) == message:
                return []
            nodes[message.node] = message
        elif nodes.pop(message.node, None) is None:
            return []
        return [
            key
            for key in self.by_cluster.get(message.cluster, ())
            if isinstance(self.services[key].assignment, VipAssigned)
        ]

    def note_endpoints(self, message: EndpointsSnapshot) -> list[ServiceRef]:
        """Note a Service's endpoints; returns it if its members may change."""
        key = ServiceRef(message.cluster, message.namespace, message.name)
        before = self.ready_nodes.get(key)
        ready = self.ready_nodes[key] = _shared_nodes(message.serving_nodes)
        state = self.services.get(key)
        if state is None or not isinstance(state.assignment, VipAssigned):
            return []
        if state.assignment.external_traffic_policy != "Local":
            return []  # with Cluster every eligible node is a member, endpoints or not
        if before is not None and before == ready:
            return []
        return [key]

    def note_assignment(self, message: Assignment, seq: int) -> ServiceRef:
        """Note a VipAssigned or VipReleasing (stream sequence ``seq``)."""
        message = compact(message)
        key = ServiceRef(message.cluster, message.namespace, message.name)
        self.clusters.add(message.cluster)
        self.unknown.discard(key)
        state = self.services.get(key)
        if state is None:
            state = self.services[key] = ServiceState(message, seq)
            self.by_cluster.setdefault(key.cluster, {})[key] = None
            report = self.reports.get(key)
            if report is not None:
                state.published = report[0]
        else:
            state.assignment, state.assigned_seq = message, seq
        return key

    def note_cluster(self, cluster: str) -> None:
        """A VIP message of ``cluster`` arrived: its partition is ours."""
        self.clusters.add(cluster)

    def note_unknown(self, key: ServiceRef) -> None:
        """The Service's last VIP message cannot be read and none before it can: its
        objects stay (whatever it had) until a valid message says what it needs."""
        self.unknown.add(key)
        self.clusters.add(key.cluster)

    def forget(self, key: ServiceRef) -> None:
        """The Service's VIP is released: nothing of it is kept."""
        self.unknown.discard(key)
        if self.services.pop(key, None) is not None:
            keys = self.by_cluster[key.cluster]
            del keys[key]
            if not keys:
                del self.by_cluster[key.cluster]

    # --- questions -------------------------------------------------------------------

    def partitions(self) -> set[str]:
        """Partitions that are ours: one per cluster we have VIP messages of."""
        return self.clusters | self.by_cluster.keys()

    def desired(self, key: ServiceRef, assignment: Assignment) -> dict[str, VirtualServer]:
        """What the Service needs on its appliance now (raises InvalidAssignment)."""
        if isinstance(assignment, VipReleasing):
            return {}  # nothing may remain
        servers = desired_virtual_servers(
            assignment,
            self.nodes.get(key.cluster, {}),
            self.ready_nodes.get(key),
            prefix=self.prefix,
            profiles=self.profiles,
            drain_on_cordon=self.drain_on_cordon,
        )
        state = self.services.get(key)
        if state is not None and state.draining:
            servers = with_draining(servers, state.draining)
        return servers

    def present_nodes(self, cluster: str) -> Set[str]:
        """The names of the cluster's nodes that exist (a NodeGone removes one)."""
        return self.nodes.get(cluster, {}).keys()

    def in_group(self, group: str) -> Iterator[tuple[ServiceRef, ServiceState]]:
        """The Services whose assignment points at appliance group ``group``."""
        for key, state in list(self.services.items()):
            if state.assignment.appliance_group == group:
                yield key, state

    def owners_in_group(self, group: str) -> set[str]:
        """The owner tags of the Services of appliance group ``group``."""
        return {owner_of(*key) for key, _ in self.in_group(group)}

    def in_partition(self, partition: str, group: str) -> list[ServiceRef]:
        """The Services of one partition (cluster) assigned to appliance group ``group``."""
        return [
            k
            for k in self.by_cluster.get(partition, ())
            if self.services[k].assignment.appliance_group == group
        ]

    def staying(self, appliance: str, group: str, partition: str, *, active: bool) -> set[str]:
        """Owner tags whose objects on this appliance are no orphans: the Services placed
        here (when it is its group's ``active`` one: a standby holds nothing of ours),
        those whose VIP message cannot be read (:attr:`unknown`), and (make before
        break) those whose last write went here, until they have been programmed where
        they are going (failover, new group)."""
        placed = self.in_partition(partition, group) if active else []
        owners = {owner_of(*k) for k in placed}
        owners.update(owner_of(*k) for k in self.unknown if k.cluster == partition)
        owners.update(
            owner_of(*k)
            for k in self.by_cluster.get(partition, ())
            if self.services[k].placed == appliance
        )
        return owners

    def settled(self, key: ServiceRef, appliance: str) -> bool:
        """Its last write went to ``appliance`` and succeeded (the caller knows whether
        anything newer is pending or running)."""
        state = self.services.get(key)
        return state is not None and state.placed == appliance and state.healthy is True

    def answered_after(self, key: ServiceRef, seq: int) -> bool:
        """The stream's last report of the Service (at start-up) came after ``seq``."""
        report = self.reports.get(key)
        return report is not None and report[1] > seq

    def answered(self, key: ServiceRef, state: ServiceState) -> bool:
        """At start-up: the stream's last report is what we last published (or found),
        and it answers the current assignment."""
        report = self.reports.get(key)
        return (
            report is not None and report[0] == state.published and report[1] > state.assigned_seq
        )

    def placed_counts(self) -> Counter[str]:
        """Services per appliance holding their objects."""
        return Counter(s.placed for s in self.services.values() if s.placed is not None)

    def failing(self) -> int:
        """Services whose last reconcile failed."""
        return sum(1 for s in self.services.values() if s.healthy is False)

    # --- decisions over a listing ------------------------------------------------------

    def drift_candidate(
        self,
        key: ServiceRef,
        generation: int,
        appliance: str,
        group: str,
        actual: Listing,
    ) -> dict[str, VirtualServer] | None:
        """What a settled Service needs, if a drift pass must compare it with ``actual``.

        None when it changed since the pass began (``generation``: its own
        reconcile is the authority), when its objects are exactly those it last
        wrote (same digest: no drift, and the costly part of a pass is skipped)
        or when its assignment cannot be programmed anyway.
        """
        state = self.services.get(key)
        if (
            state is None
            or state.generation != generation
            or not self.settled(key, appliance)
            or state.assignment.appliance_group != group
        ):
            return None
        owner = owner_of(*key)
        if state.written is not None and digest(actual.of(owner).values()) == state.written:
            return None
        try:
            return self.desired(key, state.assignment)
        except InvalidAssignment:
            return None

    def adoptable(
        self,
        key: ServiceRef,
        state: ServiceState,
        assignment: Assignment,
        appliance: str,
        actual: Mapping[str, VirtualServer],
    ) -> dict[str, VirtualServer] | None:
        """At start-up: what the Service needs, if ``actual`` already holds exactly that
        and its report would be the one last published (so its reconcile would find
        nothing to write and nothing to say); else None."""
        if self.services.get(key) is not state or state.assignment is not assignment:
            return None  # changed while the appliance was listed
        try:
            desired = self.desired(key, assignment)
        except InvalidAssignment:
            return None
        owner = owner_of(*key)
        if diff(desired, owned_scope(actual, owner, desired), self.prefix):
            return None
        if fingerprint(encode(outcome(key, assignment, appliance, desired))) != state.published:
            return None
        return desired

    # --- what became of a Service --------------------------------------------------------

    def note_written(
        self, key: ServiceRef, appliance: str, desired: Mapping[str, VirtualServer]
    ) -> ServiceState | None:
        """The Service's objects on ``appliance`` are now ``desired``; its state, or None
        if it was released meanwhile."""
        state = self.services.get(key)
        if state is None:
            return None
        state.placed = appliance
        state.healthy = True
        state.written = digest(desired.values())
        state.draining = draining_of(desired)
        return state
