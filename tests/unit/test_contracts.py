"""The bus contract: subjects, codec, and the errors bad input gets."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vipwire.contracts import (
    EndpointsSnapshot,
    LbFailed,
    LbProgrammed,
    LbRemoved,
    MalformedMessage,
    Member,
    Message,
    NodeApplied,
    NodeGone,
    NodeSnapshot,
    PoolsServed,
    ServiceGone,
    ServicePort,
    ServiceSnapshot,
    StatusWritten,
    SubjectError,
    SubjectMismatch,
    VipAssigned,
    VipFailed,
    VipReleased,
    VipReleasing,
    cluster_subject,
    decode,
    encode,
    family_filter,
    node_subject,
    node_token,
    parse_subject,
    service_subject,
    subject_disagreements,
    subject_for,
)

SVC = {"cluster": "east", "namespace": "shop", "name": "web", "uid": "u-1"}
EXAMPLES: list[Message] = [
    ServiceSnapshot(**SVC, resource_version="7", ports=(ServicePort(port=80),)),
    ServiceGone(**SVC),
    EndpointsSnapshot(cluster="east", namespace="shop", name="web"),
    NodeSnapshot(cluster="east", node="n1.rack-2.example", addresses=("192.0.2.11",)),
    NodeGone(cluster="east", node="n1"),
    VipAssigned(
        **SVC,
        vips=("198.51.100.7",),
        pool="default",
        appliance_group="dc1",
        ports=(ServicePort(port=443),),
    ),
    VipReleasing(**SVC, vips=("198.51.100.7",), appliance_group="dc1"),
    VipReleased(**SVC),
    VipFailed(**SVC, reason="AllocationFailed", message="pool default is full (254/254)"),
    LbProgrammed(
        **SVC,
        appliance="f5-a",
        vips=("198.51.100.7",),
        ports=(ServicePort(port=443),),
        members=(Member(node="n1", address="192.0.2.11"),),
    ),
    LbFailed(**SVC, appliance="f5-a", reason="ApplianceUnavailable", message="timeout"),
    LbRemoved(**SVC, appliance="f5-a"),
    NodeApplied(cluster="east", node="n1", generation=3, vips=("198.51.100.7",)),
    StatusWritten(**SVC, vips=("198.51.100.7",), trace_id="0af7651916cd43dd8448eb211c80319c"),
    PoolsServed(cluster="east", ranges=("198.51.100.0/24", "2001:db8::/120"), pools=("lab",)),
]


class TestSubjects:
    def test_service_subject_round_trips(self) -> None:
        """A per-Service subject parses back into the parts it was built from."""
        subject = service_subject("vip", "east", "shop", "web")
        assert subject == "vipwire.east.vip.shop.web"
        parsed = parse_subject(subject)
        assert (parsed.cluster, parsed.family, parsed.key) == ("east", "vip", "shop/web")

    def test_node_names_with_dots_travel_as_underscores(self) -> None:
        """A dotted node name becomes one subject token and comes back unchanged."""
        subject = node_subject("applied", "east", "n1.rack-2.example")
        assert subject == "vipwire.east.applied.n1_rack-2_example"
        assert parse_subject(subject).node == "n1.rack-2.example"
        assert node_token("n1.example") == "n1_example"

    @pytest.mark.parametrize(
        "cluster", ["East", "a.b", "-east", "", "x" * 64, "east_1", "east*", "east>"]
    )
    def test_cluster_must_be_a_dns_label(self, cluster: str) -> None:
        """Cluster names that are not DNS labels are refused (they would break subjects)."""
        with pytest.raises(SubjectError, match="DNS label"):
            service_subject("service", cluster, "default", "web")

    @pytest.mark.parametrize(
        "subject",
        [
            "vipwire.east.service.default",
            "vipwire.east.service.default.web.extra",
            "vipwire.east.unknown.default.web",
            "other.east.service.default.web",
            "vipwire.east.node.bad_name_",
        ],
    )
    def test_bad_subjects_are_refused(self, subject: str) -> None:
        """Subjects outside the contract's shapes raise SubjectError."""
        with pytest.raises(SubjectError):
            parse_subject(subject)

    def test_pools_is_one_subject_per_cluster(self) -> None:
        """The pools family has one subject per cluster, built and parsed back."""
        subject = cluster_subject("pools", "east")
        assert subject == "vipwire.east.pools.all"
        parsed = parse_subject(subject)
        assert (parsed.cluster, parsed.family, parsed.key) == ("east", "pools", "east")
        assert family_filter("pools", "east") == "vipwire.east.pools.>"
        for bad in ("vipwire.east.pools.other", "vipwire.east.pools.all.x"):
            with pytest.raises(SubjectError):
                parse_subject(bad)

    def test_family_filter_spans_one_or_all_clusters(self) -> None:
        """Filters scope a family to one cluster or to every cluster."""
        assert family_filter("lb", "east") == "vipwire.east.lb.>"
        assert family_filter("service") == "vipwire.*.service.>"


class TestCodec:
    @pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
    def test_every_message_round_trips_on_its_subject(self, message: Message) -> None:
        """Each contract message encodes and decodes to itself on its own subject."""
        assert decode(subject_for(message), encode(message)) == message

    def test_garbage_names_the_subject(self) -> None:
        """An undecodable payload raises MalformedMessage naming the subject."""
        with pytest.raises(MalformedMessage, match=r"vipwire\.east\.service\.shop\.web"):
            decode("vipwire.east.service.shop.web", b"{not json")

    def test_wrong_kind_for_the_subject_is_malformed(self) -> None:
        """A valid message of another family is refused on this family's subject."""
        payload = encode(NodeGone(cluster="east", node="n1"))
        with pytest.raises(MalformedMessage):
            decode("vipwire.east.service.shop.web", payload)

    def test_payload_must_match_its_subject(self) -> None:
        """A message filed under another object's subject is refused, not misapplied."""
        payload = encode(ServiceGone(**SVC))
        with pytest.raises(MalformedMessage, match="belongs on"):
            decode("vipwire.east.service.shop.other", payload)

    def test_unknown_schema_version_is_refused(self) -> None:
        """A payload from a newer schema is malformed for this consumer, with a hint."""
        payload = encode(ServiceGone(**SVC, v=99))
        with pytest.raises(MalformedMessage, match="schema version 99"):
            decode(subject_for(ServiceGone(**SVC)), payload)

    @given(
        vips=st.lists(st.ip_addresses().map(str), max_size=4).map(tuple),
        port=st.integers(1, 65535),
        generation=st.integers(0, 2**40),
    )
    def test_arbitrary_values_round_trip(
        self, vips: tuple[str, ...], port: int, generation: int
    ) -> None:
        """Field values of any legal shape survive the wire unchanged."""
        for message in (
            NodeApplied(cluster="c", node="n", generation=generation, vips=vips),
            LbRemoved(**SVC, appliance="a", vips=vips),
            VipAssigned(
                **SVC,
                vips=vips,
                pool="p",
                appliance_group="g",
                ports=(ServicePort(port=port, protocol="UDP"),),
            ),
        ):
            assert decode(subject_for(message), encode(message)) == message


def test_every_message_has_a_one_line_summary() -> None:
    """Each contract message summarises to one non-empty line (replay and the dashboard show it)."""
    from vipwire.contracts import summary

    for message in EXAMPLES:
        line = summary(message)
        assert line and "\n" not in line


class TestSubjectAgreement:
    @pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
    def test_a_payload_on_its_own_subject_agrees(self, message: Message) -> None:
        """Every message type agrees with the subject built from its own fields."""
        assert subject_disagreements(message, parse_subject(subject_for(message))) == ()

    @pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
    def test_each_disagreeing_field_is_named(self, message: Message) -> None:
        """Another cluster, namespace, name or node in the payload than in the subject
        is found, named with both values, and refused by the decoder as a mismatch."""
        fields: tuple[str, ...] = ("cluster", "namespace", "name")
        if hasattr(message, "node"):
            fields = ("cluster", "node")
        elif isinstance(message, PoolsServed):
            fields = ("cluster",)
        for field in fields:
            forged = msgspec.structs.replace(message, **{field: "forged"})
            subject = parse_subject(subject_for(message))
            found = subject_disagreements(forged, subject)
            assert len(found) == 1 and found[0].startswith(f"{field} 'forged'"), found
            with pytest.raises(SubjectMismatch, match=f"{field} 'forged'"):
                decode(subject.raw, encode(forged))

    def test_another_family_on_the_subject_is_named(self) -> None:
        """A message of one family on another family's subject names the family."""
        gone = ServiceGone(**SVC)
        found = subject_disagreements(gone, parse_subject("vipwire.east.vip.shop.web"))
        assert found == ("family 'service' (subject says 'vip')",)
