"""What one term of the watcher remembers: what was published, and what the rest said.

Pure: no I/O, no clock, no asyncio. A term (see :mod:`vipwire.watcher.service`)
starts empty and fills this from the replay of the bus, then from its own
publishes and the live messages. Two things make it more than a few dicts:

- Every entry keeps the stream sequence of the message it holds, and a
  message older than the one held changes nothing: the bus redelivers, and
  the replay of our own families may come back after we published anew.
- The end of an object (a ServiceGone, a NodeGone) is a *tombstone*: its
  entry is dropped only once the end came back to us and the object is
  absent from the cluster (``absent``: the reflector has listed and does not
  hold it). When our own publish has not recorded the end yet (it came back
  first), the sequence of the end is remembered, so that the late record of
  an older message cannot bring the entry back.

It is over 500 lines on purpose: :class:`TermMemory` is one object whose
indexes (VIP -> Services, the shared member sets and lists, the moving set)
must change together with the entries they index; split across modules, each
half would have to keep the other's invariants. The next split, if it grows:
the applied-report bookkeeping (``observe_applied`` and its indexes) as a
class of its own that the memory holds.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable, Mapping
from typing import Any, Generic, Literal, NamedTuple, TypeVar

import msgspec

from vipwire.contracts import (
    LbMessage,
    LbProgrammed,
    Member,
    Message,
    NodeGone,
    NodeSnapshot,
    ServiceGone,
    ServiceRejected,
    ServiceSnapshot,
    VipAssigned,
    VipMessage,
)
from vipwire.watcher.core.bus_view import BusView, before, observe, superseded
from vipwire.watcher.core.events import EventSpec, ObjectRef
from vipwire.watcher.core.packed import Interned, PackedDict
from vipwire.watcher.core.translate import SliceEndpoints, service_fingerprint

M = TypeVar("M", bound=Message)

#: Our families whose end is a tombstone (endpoints end with their Service).
Family = Literal["service", "node"]

#: The families whose messages may call for an Event, in the order they are emitted.
#: Per family, one Event held back: that of the family's last message, and (``!``)
#: that of a message of the family that could not be read, and (``~``) the Warning
#: of a VipAssigned that could not keep the Service's status VIPs, and (``^``) the Warning
#: of a VipAssigned that could not share its sharing key's VIP.
EVENT_FAMILIES: tuple[str, ...] = ("vip", "lb", "vip!", "lb!", "vip~", "vip^")

#: Deleted Services whose last reference is kept for the Event of their release. Each
#: goes once it is told or its end is (``forget_service``); this bounds the rest.
DEPARTED_LIMIT = 1024


def message_fingerprint(message: Message) -> bytes:
    """16 bytes that tell two messages apart (their encoding is canonical)."""
    return hashlib.blake2b(msgspec.json.encode(message), digest_size=16).digest()


def compact(message: VipMessage | LbMessage) -> VipMessage | LbMessage:
    """The message as kept in a view: without what no decision reads of it.

    Ports are for Events, which are made of the message as delivered (and for the
    status's per-port errors: kept while the appliance refuses one). Of the members (an
    LbProgrammed of a 50-node cluster lists 50) only whether each IP family has any
    (NoMembers) is kept, as its first; a status gate and the member-node check read
    the full list, which :class:`TermMemory` keeps once per distinct list.
    """
    if isinstance(message, VipAssigned):
        return msgspec.structs.replace(message, ports=())
    if isinstance(message, LbProgrammed):
        ports = message.ports if message.port_errors else ()
        return msgspec.structs.replace(
            message, ports=ports, members=_first_per_family(message.members)
        )
    return message


def _first_per_family(members: tuple[Member, ...]) -> tuple[Member, ...]:
    """The first member of each IP family (what NoMembers per family needs)."""
    seen: dict[bool, Member] = {}
    for member in members:
        seen.setdefault(":" in member.address, member)
    return tuple(sorted(seen.values()))


class Published(msgspec.Struct, Generic[M], kw_only=True):
    """The last message on one of our Node subjects."""

    message: M
    seq: int


class ServiceRecord(msgspec.Struct, kw_only=True, gc=False):
    """What we keep of the last message on a Service's subject (one per Service, so
    not the snapshot itself): whose Service it was, and enough to tell whether a
    new snapshot says anything new."""

    seq: int
    uid: str
    #: :func:`~vipwire.watcher.core.translate.service_fingerprint` of a
    #: ServiceSnapshot (of a ServiceRejected: of the snapshot still in force); None:
    #: the subject ended with a ServiceGone, or a Service never valid was rejected.
    fingerprint: bytes | None
    deleting: bool = False
    #: Sequence of the last snapshot that was not ``deleting``.
    live_seq: int = 0
    #: The last message is a ServiceRejected: the subject needs a snapshot once the
    #: Service is fixed (even one alike the snapshot in force), or an end once it goes.
    rejected: bool = False

    @property
    def live(self) -> bool:
        """A snapshot of a Service we serve (not ending, not gone)."""
        return self.fingerprint is not None and not self.deleting


class DeferredEvent(msgspec.Struct, kw_only=True):
    """An Event called for by a message that arrived before its Service was known."""

    spec: EventSpec
    uid: str
    cause: str
    trace_id: str | None
    #: Called for by the replay at the start of a term (not a live message).
    replayed: bool = False


class Observation(NamedTuple):
    """What a ``vip`` or ``lb`` delivery did to the view of its Service."""

    #: False: a redelivery overtaken by a newer message on its subject (ignore it).
    fresh: bool
    #: What the message's subject said before it (judges its Event).
    before: VipMessage | LbMessage | None


class AppliedReport(NamedTuple):
    """The Services a node agent's report concerns. ``judge``: the node is new (its first
    report), or it lost one of their VIPs: judge them now. ``gained``: it only gained
    their VIPs, which can make no node missing (:mod:`.node_vips` decides whether the
    status can change at all)."""

    judge: tuple[str, ...] = ()
    gained: tuple[str, ...] = ()

    @property
    def concerned(self) -> list[str]:
        """Every Service the report concerns, sorted."""
        return sorted((*self.judge, *self.gained))


class TermMemory:
    """Everything one term knows, keyed by subject key (``namespace/name`` or node).

    ``gating``: the node agents' reports and the members of each LbProgrammed
    matter (a status gate is configured, or member nodes are checked for the
    VIP: ``node_vip_grace_s``).
    """

    def __init__(self, *, gating: bool) -> None:
        self.gating = gating
        # What we (or a predecessor) last published, per subject key.
        self.services: dict[str, ServiceRecord] = {}
        # Of endpoints only equality is asked: (sequence, fingerprint) instead of the snapshot.
        self.endpoints: dict[str, tuple[int, bytes]] = {}
        self.nodes: dict[str, Published[NodeSnapshot | NodeGone]] = {}
        # What the rest of the system said.
        self.views: PackedDict[BusView] = PackedDict(BusView)
        self.applied: dict[str, frozenset[str]] = {}
        self.applied_seq: dict[str, int] = {}
        # One copy of each distinct report: in DSR every node of a cluster ends up
        # with the same VIPs, and a set of 2,000 takes about 100 KB, per node without this.
        self._applied_sets: Interned[frozenset[str]] = Interned()
        # With a status gate: the member nodes of each Service's LbProgrammed, so that a
        # node's report finds the Services it may open without decoding every view.
        self.gated: dict[str, frozenset[str]] = {}
        # VIP -> Services: a report of one node, for one changed VIP, finds its Services
        # without a scan of every Service. (Not node -> Services: whether the node is a
        # member is one lookup in ``gated``, and that index cost a set entry per Service
        # and node, 3 KB per Service at 50 nodes.)
        self._gated_by_vip: dict[str, set[str]] = {}
        self._gated_vips: dict[str, tuple[str, ...]] = {}
        # One copy of each member set, and how many Services hold it: in DSR most
        # Services of a cluster have the same members (every node), and a set of 50
        # names takes 2 KB, per Service without this.
        self._member_sets: Interned[frozenset[str]] = Interned()
        # With a gate, the full member list of each Service's LbProgrammed, kept out of
        # its (packed) view and once per distinct list: each view would otherwise hold
        # two lists of the cluster's size (``lb`` and the one it replaced), about 4 KB
        # per Service at 50 nodes. :meth:`view` puts it back.
        self._members: dict[str, tuple[Member, ...]] = {}
        self._member_lists: Interned[tuple[Member, ...]] = Interned()
        # Services whose last VipAssigned moves them to other VIPs (a node gaining a VIP
        # can let the move's status through): known without decoding their view.
        self.moving: set[str] = set()
        # Service -> its EndpointSlices (a tuple: nearly always one).
        self.slice_index: dict[str, tuple[str, ...]] = {}
        # Services found invalid: key -> (uid, problems) last reported.
        self.invalid: dict[str, tuple[str, tuple[str, ...]]] = {}
        # Services whose snapshot the bus refused as too large: key -> (uid, the refused
        # snapshot's fingerprint, the note told). Not retried until the Service changes.
        self.too_large: dict[str, tuple[str, bytes, str]] = {}
        self.deferred: dict[str, DeferredEvent] = {}
        # Services of ours the API server deleted: who they were, for the Event that
        # tells their release (it may come after the watch DELETED event).
        self.departed: dict[str, ObjectRef] = {}
        # (family, key) -> sequence of the end message after which an entry was dropped.
        self._ended: dict[tuple[Family, str], int] = {}

    # --- our own subjects -------------------------------------------------------------

    def _current(self, family: Family, key: str) -> ServiceRecord | Published[Any] | None:
        return self.services.get(key) if family == "service" else self.nodes.get(key)

    def newer(self, family: Family, key: str, seq: int) -> bool:
        """Whether a message at ``seq`` on one of our subjects is newer than what we know
        (and its subject did not end after it, see :meth:`forget_tombstone`)."""
        ended = self._ended.pop((family, key), None)
        if ended is not None and seq <= ended:
            return False
        current = self._current(family, key)
        return current is None or seq > current.seq

    def recorded(self, family: Family, key: str, seq: int) -> bool:
        """Whether the message at ``seq`` (or a newer one) is recorded already."""
        current = self._current(family, key)
        return current is not None and current.seq >= seq

    def remember_service(
        self, key: str, message: ServiceSnapshot | ServiceGone | ServiceRejected, seq: int
    ) -> None:
        """Record a message on a Service's subject unless we know a newer one."""
        if not self.newer("service", key, seq):
            return
        current = self.services.get(key)
        live_seq = current.live_seq if current is not None else 0
        if isinstance(message, ServiceRejected):
            kept = message.in_force
            record = ServiceRecord(
                seq=seq,
                uid=message.uid,
                fingerprint=service_fingerprint(kept) if kept is not None else None,
                deleting=kept.deleting if kept is not None else False,
                live_seq=live_seq,
                rejected=True,
            )
        elif isinstance(message, ServiceGone):
            record = ServiceRecord(seq=seq, uid=message.uid, fingerprint=None, live_seq=live_seq)
        else:
            record = ServiceRecord(
                seq=seq,
                uid=message.uid,
                fingerprint=service_fingerprint(message),
                deleting=message.deleting,
                live_seq=live_seq if message.deleting else seq,
            )
        self.services[key] = record

    def remember_node(self, key: str, message: NodeSnapshot | NodeGone, seq: int) -> None:
        """Record a message on a Node's subject unless we know a newer one."""
        if self.newer("node", key, seq):
            self.nodes[key] = Published(message=message, seq=seq)

    def remember_endpoints(self, key: str, fingerprint: bytes, seq: int) -> None:
        """Record an endpoints message unless we know a newer one."""
        current = self.endpoints.get(key)
        if current is None or seq > current[0]:
            self.endpoints[key] = (seq, fingerprint)

    def forget_tombstone(
        self,
        family: Family,
        key: str,
        seq: int,
        *,
        recorded: bool,
        absent: bool,
        caught_up: bool,
    ) -> None:
        """Drop an object's entry once its end came back to us and nothing newer is known:
        every older message of its subject has been delivered by then.

        ``recorded``: our own publish recorded the end before it came back;
        ``absent``: the object is listed as gone from the cluster;
        ``caught_up``: the replay that starts the term is over.
        """
        current = self._current(family, key)
        if current is None or current.seq > seq or not absent:
            return
        if caught_up and not recorded:
            # Our own publish has not recorded it yet (the message came back before
            # the publish was acknowledged): that must not bring the entry back.
            self._ended[(family, key)] = seq
        if family == "service":
            del self.services[key]
            self.endpoints.pop(key, None)
        else:
            del self.nodes[key]
            self.forget_applied(key)

    def own_message(
        self,
        key: str,
        message: ServiceSnapshot | ServiceGone | ServiceRejected | NodeSnapshot | NodeGone,
        seq: int,
        *,
        absent: bool,
        caught_up: bool,
    ) -> None:
        """One of our own Service or Node messages came back to us (replayed or live)."""
        if isinstance(message, ServiceSnapshot | ServiceGone | ServiceRejected):
            recorded = self.recorded("service", key, seq)
            self.remember_service(key, message, seq)
            if isinstance(message, ServiceGone):
                self.forget_tombstone(
                    "service", key, seq, recorded=recorded, absent=absent, caught_up=caught_up
                )
                self.forget_service(key, absent=absent)
        else:
            recorded = self.recorded("node", key, seq)
            self.remember_node(key, message, seq)
            if isinstance(message, NodeGone):
                self.forget_tombstone(
                    "node", key, seq, recorded=recorded, absent=absent, caught_up=caught_up
                )

    def forget_service(self, key: str, *, absent: bool) -> None:
        """Drop what we keep about a Service that no longer exists anywhere: absent from
        the cluster and its last snapshot ended."""
        if not absent or self.snapshot_of(key) is not None or self.rejected(key):
            return
        self.views.pop(key, None)
        self.moving.discard(key)
        self._set_members(key, ())
        self._set_gated(key, frozenset(), ())
        self.gated.pop(key, None)
        self.invalid.pop(key, None)
        self.too_large.pop(key, None)
        self.departed.pop(key, None)
        for family in EVENT_FAMILIES:
            self.deferred.pop(f"{key}|{family}", None)

    def serves(self, key: str, service_uid: str) -> bool:
        """Whether the last snapshot we published of ``key`` is live, of ``service_uid``."""
        record = self.services.get(key)
        return record is not None and record.live and record.uid == service_uid

    def rejected(self, key: str) -> bool:
        """Whether the last message on ``key``'s subject is a ServiceRejected (it needs a
        snapshot when fixed, an end when the Service goes)."""
        record = self.services.get(key)
        return record is not None and record.rejected

    def snapshot_of(self, key: str) -> ServiceRecord | None:
        """What we know of the last ServiceSnapshot of ``key`` (None: gone or never)."""
        record = self.services.get(key)
        return record if record is not None and record.fingerprint is not None else None

    def was_ours(self, key: str, service_uid: str) -> bool:
        """Whether the last snapshot of ``key`` was of the Service ``service_uid``."""
        record = self.snapshot_of(key)
        return record is not None and record.uid == service_uid

    def published_alike(self, key: str, snapshot: ServiceSnapshot) -> bool:
        """Whether the last snapshot of ``key`` said what ``snapshot`` says."""
        record = self.snapshot_of(key)
        return (
            record is not None
            and not record.rejected
            and record.fingerprint == service_fingerprint(snapshot)
        )

    def refused_alike(self, key: str, snapshot: ServiceSnapshot) -> bool:
        """Whether the bus refused this very snapshot of ``key`` as too large."""
        refused = self.too_large.get(key)
        return refused is not None and refused[1] == service_fingerprint(snapshot)

    def live_seq(self, key: str) -> int:
        """Sequence of the last snapshot of ``key`` that was not ``deleting`` (0: none)."""
        record = self.services.get(key)
        return record.live_seq if record is not None else 0

    def endpoints_unchanged(self, key: str, fingerprint: bytes) -> bool:
        """Whether the last endpoints snapshot of ``key`` has this fingerprint."""
        previous = self.endpoints.get(key)
        return previous is not None and previous[1] == fingerprint

    # --- what the rest of the system said --------------------------------------------

    def observe(self, key: str, message: VipMessage | LbMessage, seq: int) -> Observation:
        """Take in a ``vip`` or ``lb`` message of the Service ``key``."""
        old = self.views.get(key, BusView())
        if superseded(old, message, seq):
            return Observation(fresh=False, before=None)
        prior = before(old, message, seq)
        # Stored with one member per family (what NoMembers and the Events of what it
        # replaced read); with a gate the full list is kept aside (_members).
        view = observe(old, compact(message), seq)
        if view is not old:
            self.views[key] = view
            if isinstance(view.vip, VipAssigned) and view.vip.moving_from:
                self.moving.add(key)
            else:
                self.moving.discard(key)
            if self.gating and view.lb is not old.lb:
                members = message.members if isinstance(message, LbProgrammed) else ()
                vips = message.vips if isinstance(message, LbProgrammed) else ()
                self._set_members(key, members)
                self._set_gated(key, frozenset(m.node for m in members), vips)
        return Observation(fresh=True, before=prior)

    def view(self, key: str) -> BusView:
        """What the bus last said about the Service ``key`` (with a gate, its
        LbProgrammed with every member)."""
        view = self.views.get(key, BusView())
        members = self._members.get(key)
        if members is not None and isinstance(view.lb, LbProgrammed):
            view = msgspec.structs.replace(
                view, lb=msgspec.structs.replace(view.lb, members=members)
            )
        return view

    def _set_members(self, key: str, members: tuple[Member, ...]) -> None:
        """Keep ``members`` as the full member list of ``key``'s LbProgrammed (one copy
        per distinct list); empty: none kept."""
        held = self._members.pop(key, None)
        if held is not None:
            self._member_lists.release(held)
        if members:
            self._members[key] = self._member_lists.take(members)

    def observe_applied(self, node: str, vips: Iterable[str], seq: int) -> AppliedReport:
        """Take in a node agent's report; returns the Services it may concern: those with
        the node among their members and, once the node has reported before, a VIP that
        came or went with this report. Without ``gating`` reports are not kept."""
        if not self.gating:
            return AppliedReport()
        if seq < self.applied_seq.get(node, 0):
            return AppliedReport()  # a redelivery overtaken by a newer report
        self.applied_seq[node] = seq
        old = self.applied.get(node)
        # The VIP strings interned, and the set shared with every node that reports
        # the same: held once instead of per node.
        new = self.applied[node] = self._applied_sets.take(frozenset(map(sys.intern, vips)))
        if old is not None:
            self._applied_sets.release(old)
        gated = self.gated
        if old is None:
            # Its first report (once per node and term): every Service it is a member
            # of is judged from now.
            return AppliedReport(judge=tuple(sorted(k for k, n in gated.items() if node in n)))
        if old == new:
            return AppliedReport()
        lost: set[str] = set()
        for vip in old - new:
            lost.update(self._gated_by_vip.get(vip, ()))
        gained: set[str] = set()
        for vip in new - old:
            gained.update(self._gated_by_vip.get(vip, ()))
        lost = {k for k in lost if node in gated.get(k, ())}
        gained = {k for k in gained if node in gated.get(k, ())} - lost
        return AppliedReport(judge=tuple(sorted(lost)), gained=tuple(sorted(gained)))

    def _set_gated(self, key: str, nodes: frozenset[str], vips: tuple[str, ...]) -> None:
        """Record (or, with no nodes, drop) the member nodes and VIPs of ``key``'s last
        LbProgrammed, in ``gated`` and the VIP index."""
        held = self.gated.pop(key, frozenset())
        if held:
            self._member_sets.release(held)
        for vip in self._gated_vips.pop(key, ()):
            keys = self._gated_by_vip.get(vip)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._gated_by_vip[vip]
        if not nodes:
            self.gated[key] = nodes
            return
        nodes = self._member_sets.take(nodes)
        self.gated[key] = nodes
        self._gated_vips[key] = vips
        for vip in vips:
            self._gated_by_vip.setdefault(vip, set()).add(key)

    def forget_applied(self, node: str) -> None:
        held = self.applied.pop(node, None)
        if held is not None:
            self._applied_sets.release(held)
        self.applied_seq.pop(node, None)

    # --- Events held back -------------------------------------------------------------

    def defer(self, key: str, family: str, event: DeferredEvent) -> None:
        """Hold an Event back until the Service ``key`` is known (the newest per family)."""
        self.deferred[f"{key}|{family}"] = event

    def take_deferred(self, key: str, family: str) -> DeferredEvent | None:
        """The Event held back for ``key`` by a message of ``family``; forgotten here."""
        return self.deferred.pop(f"{key}|{family}", None)

    # --- Services deleted by the API server ------------------------------------------

    def depart(self, key: str, ref: ObjectRef) -> None:
        """The Service ``key`` was deleted; ``ref`` is the last we knew of it."""
        departed = self.departed
        departed.pop(key, None)
        departed[key] = ref
        while len(departed) > DEPARTED_LIMIT:
            del departed[next(iter(departed))]

    def departed_ref(self, key: str) -> ObjectRef | None:
        return self.departed.get(key)

    def forget_departed(self, key: str, service_uid: str) -> None:
        """The release of the deleted Service ``service_uid`` was told: nothing is left
        to tell about it."""
        ref = self.departed.get(key)
        if ref is not None and ref.uid == service_uid:
            del self.departed[key]

    # --- EndpointSlices ---------------------------------------------------------------

    def index_slice(
        self, slice_key: str, obj: SliceEndpoints | None, old: SliceEndpoints | None
    ) -> set[str]:
        """Keep the Service -> slices index; returns the Services affected."""
        affected: set[str] = set()
        for source, adding in ((old, False), (obj, True)):
            if source is None:
                continue
            service_key = source.service
            if service_key is None:
                continue
            affected.add(service_key)
            members = self.slice_index.get(service_key, ())
            if adding and slice_key not in members:
                self.slice_index[service_key] = (*members, slice_key)
            elif not adding and slice_key in members:
                rest = tuple(k for k in members if k != slice_key)
                if rest:
                    self.slice_index[service_key] = rest
                else:
                    del self.slice_index[service_key]
        return affected

    def reindex_slices(self, objects: Mapping[str, SliceEndpoints]) -> set[str]:
        """Rebuild the index after a list; returns the Services whose endpoints to check
        (every one with slices, and every one we published endpoints of)."""
        self.slice_index.clear()
        for slice_key, obj in objects.items():
            self.index_slice(slice_key, obj, None)
        return set(self.slice_index) | set(self.endpoints)

    def slices_of(self, key: str) -> list[str]:
        """The EndpointSlices of the Service ``key``, sorted."""
        return sorted(self.slice_index.get(key, ()))
