"""The watcher's Event decisions: whom an Event is about, and what a replay already told."""

from __future__ import annotations

from typing import Any

import msgspec

from vipwire.contracts import (
    LbProgrammed,
    Member,
    ServicePort,
    VipAssigned,
    VipReleased,
    VipReleasing,
)
from vipwire.watcher.core.events import (
    EventSpec,
    ObjectRef,
    event_for,
    event_name,
    event_subject,
    object_ref,
    ref_object,
    released_ref,
    status_vip_event,
)
from vipwire.watcher.core.term_memory import DEPARTED_LIMIT, TermMemory

SVC = {"cluster": "east", "namespace": "shop", "name": "web"}
VIP = "198.51.100.7"


def service(uid: str = "u-1", *, rv: str = "7", ips: tuple[str, ...] = ()) -> dict[str, Any]:
    status = {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"} for ip in ips]}}
    return {
        "metadata": {"namespace": "shop", "name": "web", "uid": uid, "resourceVersion": rv},
        "status": status if ips else {},
    }


def programmed(members: int) -> LbProgrammed:
    nodes = tuple(Member(node=f"n{i}", address=f"192.0.2.{i + 1}") for i in range(members))
    return LbProgrammed(
        **SVC,
        uid="u-1",
        appliance="sim-a",
        vips=(VIP,),
        ports=(ServicePort(port=80),),
        members=nodes,
    )


def test_an_event_is_about_the_service_held_or_the_last_reference_of_a_deleted_one() -> None:
    """The Service held wins; once deleted, its last reference (or the release's own
    reference) stands in; another uid never gets it; an unknown Service waits."""
    held = service()
    assert event_subject(held, "u-1") == (held, False)
    assert event_subject(held, "u-0") == (None, False)
    departed = object_ref(service(rv="9"))
    about, later = event_subject(None, "u-1", departed=departed)
    assert about == ref_object(departed) and not later
    assert about["metadata"] == {
        "namespace": "shop",
        "name": "web",
        "uid": "u-1",
        "resourceVersion": "9",
    }
    gone = ObjectRef(namespace="shop", name="web", uid="u-1")
    assert event_subject(None, "u-1", departed=object_ref(service("u-0")), gone=gone) == (
        {"metadata": {"namespace": "shop", "name": "web", "uid": "u-1"}},
        False,
    )
    assert event_subject(None, "u-1") == (None, True)
    assert event_subject(None, "u-1", departed=object_ref(service("u-0"))) == (None, True)


def test_only_a_live_release_names_its_service_by_itself() -> None:
    """A release seen live stands for its deleted Service; a replayed one, or any other
    message, does not (a new term must not tell old news)."""
    released = VipReleased(**SVC, uid="u-1", vips=(VIP,))
    assert released_ref(released, live=True) == ObjectRef(namespace="shop", name="web", uid="u-1")
    assert released_ref(released, live=False) is None
    assigned = VipAssigned(**SVC, uid="u-1", vips=(VIP,), pool="p", appliance_group="g", ports=())
    assert released_ref(assigned, live=True) is None


def test_an_event_announcing_vips_is_named_for_them_not_for_its_note() -> None:
    """A programming whose member count changed names the same Event (a new term that
    replays it finds it told); other VIPs, another uid or a Warning name another."""
    one = event_for(programmed(1), before=None)
    two = event_for(programmed(2), before=None)
    assert one is not None and two is not None
    assert one.announces == (VIP,) and one.note != two.note
    assert event_name("web", "u-1", one) == event_name("web", "u-1", two)
    assert event_name("web", "u-0", one) != event_name("web", "u-1", one)
    moved = msgspec.structs.replace(programmed(1), vips=("198.51.100.8",))
    other = event_for(moved, before=None)
    assert other is not None and event_name("web", "u-1", other) != event_name("web", "u-1", one)
    assigned = event_for(
        VipAssigned(**SVC, uid="u-1", vips=(VIP,), pool="p", appliance_group="g", ports=()),
        before=None,
    )
    assert assigned is not None and assigned.announces == (VIP,)
    released = event_for(VipReleased(**SVC, uid="u-1", vips=(VIP,)), before=None)
    assert released is not None and released.announces == ()
    # Without announces an Event is named for its note, as before.
    warned = EventSpec(type="Warning", reason="ApplianceFailed", action="A", note="timeout")
    again = EventSpec(type="Warning", reason="ApplianceFailed", action="A", note="refused")
    assert event_name("web", "u-1", warned) != event_name("web", "u-1", again)


def test_departed_services_are_kept_bounded_and_forgotten_once_told() -> None:
    """The last references of deleted Services: the newest per key, at most
    DEPARTED_LIMIT (oldest out first), each dropped once its release was told."""
    memory = TermMemory(gating=False)
    memory.depart("shop/web", object_ref(service()))
    memory.forget_departed("shop/web", "u-0")  # another Service's release: kept
    assert memory.departed_ref("shop/web") == object_ref(service())
    memory.forget_departed("shop/web", "u-1")
    assert memory.departed_ref("shop/web") is None
    for i in range(DEPARTED_LIMIT + 5):
        memory.depart(f"shop/s{i}", ObjectRef(namespace="shop", name=f"s{i}", uid=f"u{i}"))
    assert len(memory.departed) == DEPARTED_LIMIT
    assert memory.departed_ref("shop/s4") is None
    assert memory.departed_ref(f"shop/s{DEPARTED_LIMIT + 4}") is not None


def test_a_status_vip_not_kept_gets_a_warning_that_says_why_and_what_instead() -> None:
    """VipAssigned.notes: a Warning Event with the reason and the VIPs assigned, next
    to the Normal IPAllocated; a repeat of the same assignment, or none, warns nothing."""
    note = "status VIP 198.51.100.7 not kept: held by another Service (east/shop/db)"
    message = VipAssigned(
        **SVC,
        uid="u-1",
        vips=("198.51.100.9",),
        pool="lab",
        appliance_group="g",
        ports=(),
        notes=(note,),
    )
    warning = status_vip_event(message, before=None)
    assert warning is not None and warning.type == "Warning"
    assert warning.reason == "StatusVIPNotKept"
    assert warning.note == f"{note}; assigned 198.51.100.9"
    normal = event_for(message, before=None)
    assert normal is not None and normal.reason == "IPAllocated"
    assert status_vip_event(message, before=message) is None
    plain = msgspec.structs.replace(message, notes=())
    assert status_vip_event(plain, before=None) is None


def test_an_operator_release_is_told_once_naming_the_operator_and_both_addresses() -> None:
    """The VipAssigned that follows `vipwire ipam release` gives a Normal
    IPReleasedByOperator naming the operator, the old and the new VIPs; its republish
    (same VIPs) tells nothing; a plain assignment stays IPAllocated."""
    releasing = VipReleasing(**SVC, uid="u-1", vips=(VIP,), appliance_group="g")
    after = VipAssigned(
        **SVC,
        uid="u-1",
        vips=("198.51.100.9",),
        pool="lab",
        appliance_group="g",
        ports=(),
        released_by="operator-alice",
        released_vips=(VIP,),
    )
    told = event_for(after, before=releasing)
    assert told == EventSpec(
        type="Normal",
        reason="IPReleasedByOperator",
        action="ReleaseVIP",
        note=(
            "operator operator-alice released 198.51.100.7 (vipwire ipam release); "
            "198.51.100.9 allocated from pool lab (appliance group g)"
        ),
    )
    republished = msgspec.structs.replace(after, released_by=None, released_vips=())
    assert event_for(republished, before=after) is None
    assert event_for(after, before=after) is None
    plain = event_for(republished, before=releasing)
    assert plain is not None and plain.reason == "IPAllocated"
    # A replay tells the same Event again: it is named for what it says.
    replayed = event_for(after, before=None)
    assert replayed is not None and told is not None
    assert event_name("web", "u-1", replayed) == event_name("web", "u-1", told)


def test_vip_assigned_without_the_release_fields_still_decodes() -> None:
    """An older ipam's VipAssigned (no released_by) decodes, with none."""
    old = msgspec.json.encode(
        {
            "kind": "vip-assigned",
            **SVC,
            "uid": "u",
            "vips": [VIP],
            "pool": "p",
            "appliance_group": "g",
            "ports": [],
        }
    )
    message = msgspec.json.decode(old, type=VipAssigned)
    assert (message.released_by, message.released_vips) == (None, ())
