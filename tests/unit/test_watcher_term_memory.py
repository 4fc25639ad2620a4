"""The watcher's term memory: what one term knows it published, and what the rest said."""

from __future__ import annotations

import msgspec

from vipwire.contracts import (
    LbProgrammed,
    LbRemoved,
    Member,
    NodeGone,
    NodeSnapshot,
    PortError,
    ServiceGone,
    ServicePort,
    ServiceSnapshot,
    VipAssigned,
)
from vipwire.watcher.core.events import EventSpec
from vipwire.watcher.core.term_memory import (
    DeferredEvent,
    TermMemory,
    compact,
    message_fingerprint,
)
from vipwire.watcher.core.translate import SliceEndpoints

KEY = "shop/web"
PORT = ServicePort(port=80, protocol="TCP")
N1 = Member(node="n1", address="192.0.2.11")
N2 = Member(node="n2", address="192.0.2.12")


def snapshot(uid: str = "u-1", *, rv: str = "1", deleting: bool = False) -> ServiceSnapshot:
    return ServiceSnapshot(
        cluster="east",
        namespace="shop",
        name="web",
        uid=uid,
        resource_version=rv,
        ports=(PORT,),
        deleting=deleting,
    )


def gone(uid: str = "u-1") -> ServiceGone:
    return ServiceGone(cluster="east", namespace="shop", name="web", uid=uid)


def node(name: str = "n1") -> NodeSnapshot:
    return NodeSnapshot(cluster="east", node=name, addresses=("192.0.2.11",))


def assigned(uid: str = "u-1", vips: tuple[str, ...] = ("198.51.100.7",)) -> VipAssigned:
    return VipAssigned(
        cluster="east",
        namespace="shop",
        name="web",
        uid=uid,
        vips=vips,
        pool="default",
        appliance_group="dc1",
        ports=(PORT,),
    )


def programmed(
    uid: str = "u-1", members: tuple[Member, ...] = (N1,), vips: tuple[str, ...] = ("198.51.100.7",)
) -> LbProgrammed:
    return LbProgrammed(
        cluster="east",
        namespace="shop",
        name="web",
        uid=uid,
        vips=vips,
        appliance="sim-1",
        ports=(PORT,),
        members=members,
    )


class TestOwnSubjects:
    def test_an_older_message_changes_nothing(self) -> None:
        """A snapshot older than the one recorded (a late replay) is not remembered."""
        memory = TermMemory(gating=False)
        memory.remember_service(KEY, snapshot(rv="2"), 7)
        memory.remember_service(KEY, snapshot(rv="1", deleting=True), 5)
        record = memory.services[KEY]
        assert (record.seq, record.deleting) == (7, False)

    def test_a_record_says_whom_it_serves_and_since_when(self) -> None:
        """live_seq stays at the last live snapshot while the Service is deleting."""
        memory = TermMemory(gating=False)
        memory.remember_service(KEY, snapshot(), 3)
        assert memory.serves(KEY, "u-1") and not memory.serves(KEY, "u-2")
        memory.remember_service(KEY, snapshot(deleting=True), 4)
        assert not memory.serves(KEY, "u-1")
        assert memory.live_seq(KEY) == 3
        assert memory.was_ours(KEY, "u-1")
        memory.remember_service(KEY, gone(), 5)
        assert memory.snapshot_of(KEY) is None and not memory.was_ours(KEY, "u-1")
        assert memory.live_seq(KEY) == 3

    def test_published_alike_ignores_the_resource_version(self) -> None:
        """Our own status writes bump the resourceVersion: that alone is nothing new."""
        memory = TermMemory(gating=False)
        memory.remember_service(KEY, snapshot(rv="1"), 3)
        assert memory.published_alike(KEY, snapshot(rv="9"))
        assert not memory.published_alike(KEY, snapshot(rv="9", deleting=True))

    def test_a_tombstone_stays_while_the_object_is_not_listed_gone(self) -> None:
        """The end of a Service is kept until the cluster is listed without it."""
        memory = TermMemory(gating=False)
        memory.own_message(KEY, snapshot(), 3, absent=False, caught_up=True)
        memory.own_message(KEY, gone(), 4, absent=False, caught_up=True)
        assert memory.services[KEY].fingerprint is None

    def test_a_tombstone_goes_with_the_endpoints_once_absent(self) -> None:
        """An end that came back, of an object listed gone: its entries are dropped."""
        memory = TermMemory(gating=False)
        memory.own_message(KEY, snapshot(), 3, absent=True, caught_up=False)
        memory.remember_endpoints(KEY, b"f", 4)
        memory.own_message(KEY, gone(), 5, absent=True, caught_up=False)
        assert KEY not in memory.services and KEY not in memory.endpoints
        # During the replay nothing older can come after it: no end is remembered.
        memory.remember_service(KEY, snapshot(), 3)
        assert KEY in memory.services

    def test_an_end_that_came_back_first_fences_the_late_record(self) -> None:
        """When our end comes back before our publish recorded it, the publish's late
        record (and anything older) cannot bring the entry back."""
        memory = TermMemory(gating=False)
        memory.remember_service(KEY, snapshot(), 3)
        memory.own_message(KEY, gone(), 5, absent=True, caught_up=True)
        assert KEY not in memory.services
        memory.remember_service(KEY, gone(), 5)  # the publish acknowledged, late
        assert KEY not in memory.services
        memory.remember_service(KEY, snapshot(uid="u-2"), 6)  # a new life: newer
        assert memory.serves(KEY, "u-2")

    def test_an_end_we_recorded_first_leaves_no_fence(self) -> None:
        """When our publish recorded the end before it came back, nothing is fenced."""
        memory = TermMemory(gating=False)
        memory.remember_service(KEY, gone(), 5)
        memory.forget_tombstone("service", KEY, 5, recorded=True, absent=True, caught_up=True)
        assert KEY not in memory.services
        memory.remember_service(KEY, snapshot(), 4)
        assert KEY in memory.services

    def test_a_newer_message_keeps_its_entry(self) -> None:
        """An end older than what is recorded drops nothing."""
        memory = TermMemory(gating=False)
        memory.remember_service(KEY, snapshot(uid="u-2"), 9)
        memory.forget_tombstone("service", KEY, 5, recorded=True, absent=True, caught_up=True)
        assert memory.serves(KEY, "u-2")

    def test_a_node_tombstone_takes_its_reports_along(self) -> None:
        """A Node gone from the cluster takes what its agent applied with it."""
        memory = TermMemory(gating=True)
        memory.own_message("n1", node(), 2, absent=False, caught_up=True)
        memory.observe_applied("n1", ["198.51.100.7"], 3)
        memory.own_message(
            "n1", NodeGone(cluster="east", node="n1"), 4, absent=True, caught_up=True
        )
        assert "n1" not in memory.nodes
        assert "n1" not in memory.applied and "n1" not in memory.applied_seq

    def test_service_and_node_fences_are_apart(self) -> None:
        """A Service and a Node of the same key fence only their own subject."""
        memory = TermMemory(gating=False)
        memory.remember_service("x", snapshot(), 3)
        memory.own_message("x", gone(), 5, absent=True, caught_up=True)
        memory.remember_node("x", node("x"), 4)
        assert "x" in memory.nodes


class TestWhatTheRestSaid:
    def test_an_overtaken_redelivery_is_not_fresh(self) -> None:
        """A message older than the view's is ignored, and says what it would replace."""
        memory = TermMemory(gating=False)
        first = memory.observe(KEY, assigned(), 4)
        assert first.fresh and first.before is None
        assert memory.observe(KEY, assigned(vips=("198.51.100.8",)), 6).fresh
        assert not memory.observe(KEY, assigned(), 4).fresh

    def test_a_redelivery_is_judged_against_the_same_past(self) -> None:
        """The same message delivered twice sees the same ``before``."""
        memory = TermMemory(gating=False)
        memory.observe(KEY, assigned(), 4)
        newer = assigned(vips=("198.51.100.8",))
        once = memory.observe(KEY, newer, 6)
        again = memory.observe(KEY, newer, 6)
        assert once.before == again.before
        assert isinstance(once.before, VipAssigned) and once.before.vips == ("198.51.100.7",)

    def test_the_view_keeps_no_ports_nor_members_without_a_gate(self) -> None:
        """Without a gate the view keeps no ports and only its first member (whether there
        is one: NoMembers); with one, every member."""
        plain = TermMemory(gating=False)
        plain.observe(KEY, programmed(members=(N1, N2)), 4)
        lb = plain.view(KEY).lb
        assert isinstance(lb, LbProgrammed) and lb.ports == () and lb.members == (N1,)
        assert plain.gated == {}
        gated = TermMemory(gating=True)
        gated.observe(KEY, programmed(), 4)
        lb = gated.view(KEY).lb
        assert isinstance(lb, LbProgrammed) and lb.members == (N1,)
        assert gated.gated == {KEY: frozenset({"n1"})}

    def test_compact_drops_what_no_decision_reads(self) -> None:
        """An assignment loses its ports; a programming with one member keeps it."""
        kept = compact(assigned())
        assert isinstance(kept, VipAssigned) and kept.ports == ()
        gated = compact(programmed())
        assert isinstance(gated, LbProgrammed) and gated.members == (N1,)

    def test_compact_keeps_one_member_per_family_and_the_ports_of_a_refusal(self) -> None:
        """One member of each IP family is kept (NoMembers per family reads it; the full
        list is the memory's), and the ports while the appliance refused one (the status
        lists them)."""
        v6 = Member(node="n1", address="2001:db8::11")
        dual = msgspec.structs.replace(programmed(), members=(N1, N2, v6))
        kept = compact(dual)
        assert isinstance(kept, LbProgrammed) and kept.members == (N1, v6)
        assert kept.ports == ()
        error = PortError(vip="198.51.100.7", port=80, error="in use")
        refused = compact(msgspec.structs.replace(dual, port_errors=(error,)))
        assert isinstance(refused, LbProgrammed) and refused.ports == dual.ports

    def test_a_report_opens_the_services_of_its_node(self) -> None:
        """A node's report names the gated Services it is a member of; older ones none."""
        memory = TermMemory(gating=True)
        memory.observe(KEY, programmed(), 4)
        memory.observe("shop/other", programmed(members=()), 5)
        assert memory.observe_applied("n1", ["198.51.100.7"], 10).concerned == [KEY]
        assert memory.applied["n1"] == frozenset({"198.51.100.7"})
        assert memory.observe_applied("n1", [], 9).concerned == []
        assert memory.applied["n1"] == frozenset({"198.51.100.7"})

    def test_services_with_the_same_members_share_one_set_until_none_holds_it(self) -> None:
        """Two Services programmed on the same nodes hold one member set (in DSR, most of
        a cluster's); once neither does, it is not kept for nobody."""
        memory = TermMemory(gating=True)
        memory.observe(KEY, programmed(members=(N1, N2)), 4)
        memory.observe("shop/other", programmed(uid="u-2", members=(N2, N1)), 5)
        assert memory.gated[KEY] is memory.gated["shop/other"]
        assert len(memory._member_sets) == 1
        memory.observe(KEY, programmed(members=(N1,)), 6)
        assert memory.gated[KEY] == frozenset({"n1"})
        assert len(memory._member_sets) == 2
        memory.observe("shop/other", programmed(uid="u-2", members=(N1,)), 7)
        assert memory.gated[KEY] is memory.gated["shop/other"]
        assert list(memory._member_sets) == [frozenset({"n1"})]

    def test_a_gated_view_gives_every_member_but_stores_one_per_family(self) -> None:
        """With a gate a view reads with every member of its LbProgrammed, while what is
        stored (packed) holds one per family: the full list is kept once per distinct
        list, and dropped with the last Service that has it."""
        memory = TermMemory(gating=True)
        memory.observe(KEY, programmed(members=(N1, N2)), 4)
        memory.observe("shop/other", programmed(uid="u-2", members=(N1, N2)), 5)
        lb = memory.view(KEY).lb
        assert isinstance(lb, LbProgrammed) and lb.members == (N1, N2)
        stored = memory.views[KEY].lb
        assert isinstance(stored, LbProgrammed) and stored.members == (N1,)
        assert len(memory._member_lists) == 1
        memory.observe(KEY, assigned(), 6)  # a vip message leaves the members as they are
        lb = memory.view(KEY).lb
        assert isinstance(lb, LbProgrammed) and lb.members == (N1, N2)
        for key, uid in ((KEY, "u-1"), ("shop/other", "u-2")):
            gone = LbRemoved(cluster="east", namespace="shop", name="web", uid=uid, appliance="a")
            memory.observe(key, gone, 9)
        assert len(memory._member_lists) == 0 and memory._members == {}
        assert memory.gated == {KEY: frozenset(), "shop/other": frozenset()}

    def test_nodes_that_report_the_same_vips_share_one_set_until_none_holds_it(self) -> None:
        """Nodes whose last reports name the same VIPs (in DSR, every node of a cluster
        once converged) hold one set; a node that moves on or goes leaves no set behind
        for nobody."""
        memory = TermMemory(gating=True)
        memory.observe_applied("n1", ["198.51.100.7", "198.51.100.8"], 10)
        memory.observe_applied("n2", ["198.51.100.8", "198.51.100.7"], 11)
        assert memory.applied["n1"] is memory.applied["n2"]
        assert len(memory._applied_sets) == 1
        memory.observe_applied("n1", ["198.51.100.7"], 12)
        assert memory.applied["n1"] == frozenset({"198.51.100.7"})
        assert len(memory._applied_sets) == 2
        memory.forget_applied("n2")
        assert list(memory._applied_sets) == [frozenset({"198.51.100.7"})]
        memory.forget_applied("n1")
        assert len(memory._applied_sets) == 0

    def test_without_a_gate_reports_are_not_kept(self) -> None:
        """Without a gate a node's report is not worth keeping."""
        memory = TermMemory(gating=False)
        assert memory.observe_applied("n1", ["198.51.100.7"], 10).concerned == []
        assert memory.applied == {}

    def test_a_service_gone_everywhere_is_forgotten(self) -> None:
        """Once absent and ended, a Service's view, invalidity and held Events go."""
        memory = TermMemory(gating=True)
        memory.remember_service(KEY, snapshot(), 3)
        memory.observe(KEY, programmed(), 4)
        memory.invalid[KEY] = ("u-1", ("bad",))
        spec = EventSpec(type="Normal", reason="R", action="A", note="n")
        memory.defer(KEY, "lb", DeferredEvent(spec=spec, uid="u-1", cause="c", trace_id=None))
        memory.forget_service(KEY, absent=True)
        assert KEY in memory.views  # its snapshot has not ended yet
        memory.remember_service(KEY, gone(), 6)
        memory.forget_service(KEY, absent=False)
        assert KEY in memory.views  # still listed
        memory.forget_service(KEY, absent=True)
        assert KEY not in memory.views and KEY not in memory.gated
        assert memory.invalid == {} and memory.deferred == {}

    def test_held_events_are_taken_once(self) -> None:
        """A held Event is handed out once, by family."""
        memory = TermMemory(gating=False)
        spec = EventSpec(type="Normal", reason="R", action="A", note="n")
        held = DeferredEvent(spec=spec, uid="u-1", cause="c", trace_id=None)
        memory.defer(KEY, "vip", held)
        assert memory.take_deferred(KEY, "lb") is None
        assert memory.take_deferred(KEY, "vip") == held
        assert memory.take_deferred(KEY, "vip") is None


class TestEndpoints:
    def test_endpoints_keep_the_newest_fingerprint(self) -> None:
        """An older endpoints message does not replace a newer one."""
        memory = TermMemory(gating=False)
        memory.remember_endpoints(KEY, b"new", 8)
        memory.remember_endpoints(KEY, b"old", 5)
        assert memory.endpoints_unchanged(KEY, b"new")
        assert not memory.endpoints_unchanged("shop/other", b"new")

    def test_fingerprints_tell_messages_apart(self) -> None:
        """Equal messages share a fingerprint; different ones do not."""
        assert message_fingerprint(node()) == message_fingerprint(node())
        assert message_fingerprint(node()) != message_fingerprint(node("n2"))

    def test_the_slice_index_follows_changes_and_lists(self) -> None:
        """Slices move between Services; a list rebuilds the index."""
        memory = TermMemory(gating=False)
        web = SliceEndpoints(service=KEY)
        other = SliceEndpoints(service="shop/other")
        assert memory.index_slice("shop/web-a", web, None) == {KEY}
        assert memory.index_slice("shop/web-b", web, None) == {KEY}
        assert memory.slices_of(KEY) == ["shop/web-a", "shop/web-b"]
        assert memory.index_slice("shop/web-b", other, web) == {KEY, "shop/other"}
        assert memory.slices_of(KEY) == ["shop/web-a"]
        assert memory.index_slice("shop/web-a", None, web) == {KEY}
        assert KEY not in memory.slice_index
        memory.remember_endpoints("shop/gone", b"f", 3)
        listed = memory.reindex_slices({"shop/web-a": web, "x": SliceEndpoints()})
        assert listed == {KEY, "shop/gone"}
        assert memory.slice_index == {KEY: ("shop/web-a",)}
