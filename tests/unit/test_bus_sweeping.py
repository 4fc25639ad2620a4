"""Which subjects of deleted Services and Nodes the stream sweep purges (pure)."""

from __future__ import annotations

from vipwire.bus._sweeping import LastOnSubject, Purge, ended_subjects
from vipwire.contracts import (
    LbRemoved,
    Message,
    NodeApplied,
    NodeGone,
    ServiceGone,
    ServiceSnapshot,
    VipReleased,
    subject_for,
)

DAY_NS = 24 * 3600 * 10**9
NOW = 10 * DAY_NS


def on(seq: int, message: Message, *, age_ns: int = 2 * DAY_NS) -> LastOnSubject:
    return LastOnSubject(subject_for(message), seq, NOW - age_ns, message)


def web_ended(**kw: int) -> list[LastOnSubject]:
    ref = {"cluster": "east", "namespace": "shop", "name": "web", "uid": "u1"}
    return [
        on(3, VipReleased(**ref), **kw),
        on(4, LbRemoved(**ref, appliance="f5-a"), **kw),
        on(5, ServiceGone(**ref), **kw),
    ]


def sweep(last: list[LastOnSubject], *, acked_through: int | None = 100) -> list[Purge]:
    return ended_subjects(last, now_ns=NOW, max_age_s=24 * 3600, acked_through=acked_through)


def test_an_old_acknowledged_end_purges_every_subject_of_the_service_below_what_was_read() -> None:
    """ServiceGone older than the age, acknowledged: vip, lb and service go, each below
    the sequence after its last message (anything newer stays)."""
    purges = sweep(web_ended())
    assert sorted(purges) == [
        Purge("vipwire.east.lb.shop.web", 5),
        Purge("vipwire.east.service.shop.web", 6),
        Purge("vipwire.east.vip.shop.web", 4),
    ]


def test_a_recent_end_stays() -> None:
    """An end younger than the age is kept (replay still shows the deleted Service)."""
    assert sweep(web_ended(age_ns=DAY_NS // 2)) == []


def test_an_end_a_durable_consumer_has_not_acknowledged_stays() -> None:
    """A consumer down for longer than the age must still read the end."""
    assert sweep(web_ended(), acked_through=4) == []
    assert sweep(web_ended(), acked_through=None) != []  # no durable consumer at all


def test_a_service_that_came_back_is_not_ended() -> None:
    """A new snapshot after the ServiceGone: the Service lives, nothing of it goes."""
    back = ServiceSnapshot(
        cluster="east", namespace="shop", name="web", uid="u2", resource_version="9"
    )
    last = [*web_ended()[:2], on(6, back)]
    assert sweep(last) == []


def test_an_unreadable_subject_of_the_service_keeps_all_of_it() -> None:
    """Unknown is not absent: garbage last on its lb subject keeps every subject."""
    ended = web_ended()
    garbage = LastOnSubject("vipwire.east.lb.shop.web", 4, NOW - 2 * DAY_NS, None)
    assert sweep([ended[0], garbage, ended[2]]) == []


def test_an_end_on_another_subject_than_its_own_is_ignored() -> None:
    """A ServiceGone naming another Service than its subject purges nothing."""
    stray = ServiceGone(cluster="east", namespace="shop", name="api", uid="u9")
    last = [LastOnSubject("vipwire.east.service.shop.web", 5, NOW - 2 * DAY_NS, stray)]
    assert sweep(last) == []


def test_a_gone_node_takes_its_applied_reports_with_it() -> None:
    """NodeGone: the node and applied subjects of that node go; another node's stay."""
    last = [
        on(7, NodeApplied(cluster="east", node="n1", generation=3, vips=())),
        on(8, NodeGone(cluster="east", node="n1")),
        on(9, NodeApplied(cluster="east", node="n2", generation=1, vips=())),
    ]
    assert sorted(sweep(last)) == [
        Purge("vipwire.east.applied.n1", 8),
        Purge("vipwire.east.node.n1", 9),
    ]
