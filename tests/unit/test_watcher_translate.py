"""The watcher's pure translation: Kubernetes JSON in, contract messages out."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vipwire.contracts import Endpoint, EndpointPort, ServiceSnapshot, decode, encode, subject_for
from vipwire.runtime import section
from vipwire.watcher import WatcherSettings
from vipwire.watcher.core.condition import current_condition
from vipwire.watcher.core.translate import (
    CLUSTER_ANNOTATION,
    FINALIZER,
    endpoints_snapshot,
    is_ours,
    marked_by,
    merge_endpoints,
    node_snapshot,
    object_key,
    requested_ips,
    service_fingerprint,
    service_snapshot,
    slice_endpoints,
    slice_service,
    slim_node,
    slim_service,
    status_vips,
)
from vipwire.watcher.core.validate import service_problems
from vipwire.watcher.core.writeback import finalizer_patch

CLASS = "vipwire.io/dsr"
JUNK_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.sampled_from(["TCP", "UDP", "SCTP", "http", ""])
)


def service(**overrides: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "web",
        "namespace": "shop",
        "uid": "u-1",
        "resourceVersion": "41",
        "labels": {"app": "web"},
        "annotations": {},
    }
    spec: dict[str, Any] = {
        "type": "LoadBalancer",
        "loadBalancerClass": CLASS,
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "externalTrafficPolicy": "Cluster",
    }
    meta.update(overrides.pop("metadata", {}))
    spec.update(overrides.pop("spec", {}))
    return {"metadata": meta, "spec": spec, **overrides}


def snap(obj: dict[str, Any], was_ours: bool = False) -> ServiceSnapshot | None:
    return service_snapshot(obj, cluster="east", load_balancer_class=CLASS, was_ours=was_ours)


class TestServiceOwnership:
    def test_loadbalancer_of_our_class_is_ours(self) -> None:
        """type LoadBalancer with our loadBalancerClass gives a live snapshot."""
        s = snap(service())
        assert s is not None
        assert (s.cluster, s.namespace, s.name, s.uid, s.resource_version) == (
            "east",
            "shop",
            "web",
            "u-1",
            "41",
        )
        assert not s.deleting

    @pytest.mark.parametrize(
        "spec",
        [
            {"loadBalancerClass": "example.com/other"},
            {"loadBalancerClass": None},
            {"type": "NodePort", "loadBalancerClass": None},
        ],
    )
    def test_other_services_are_not_ours(self, spec: dict[str, Any]) -> None:
        """Another class, no class, or another type: None."""
        assert snap(service(spec=spec)) is None

    def test_deletion_timestamp_means_deleting(self) -> None:
        """A Service being deleted is published as deleting."""
        s = snap(service(metadata={"deletionTimestamp": "2025-01-01T00:00:00Z"}))
        assert s is not None and s.deleting

    def test_deleting_snapshot_carries_no_labels(self) -> None:
        """Labels choose a pool for a new VIP only: a deletion never needs (or waits on) them."""
        live = snap(service())
        assert live is not None and live.labels == {"app": "web"}
        going = snap(service(metadata={"deletionTimestamp": "2025-01-01T00:00:00Z"}))
        assert going is not None and going.deleting and going.labels == {}

    def test_type_changed_away_with_finalizer_is_deleting_if_it_was_ours(self) -> None:
        """Not a LoadBalancer any more but still holding our finalizer: deleting, if ours before."""
        obj = service(spec={"type": "ClusterIP", "loadBalancerClass": None})
        obj["metadata"]["finalizers"] = [FINALIZER]
        s = snap(obj, was_ours=True)
        assert s is not None and s.deleting
        # The same finalizer on a Service we never served belongs to another controller.
        assert snap(obj, was_ours=False) is None

    def test_classless_services_only_in_the_opt_in_mode(self) -> None:
        """A LoadBalancer without class is ours only with serve_classless; other classes never."""
        plain = service(spec={"loadBalancerClass": None})
        del plain["spec"]["loadBalancerClass"]
        kwargs: dict[str, Any] = {"cluster": "east", "load_balancer_class": CLASS}
        assert service_snapshot(plain, **kwargs) is None
        s = service_snapshot(plain, classless=True, **kwargs)
        assert s is not None and not s.deleting
        other = service(spec={"loadBalancerClass": "example.com/other"})
        assert service_snapshot(other, classless=True, **kwargs) is None
        assert is_ours(plain, CLASS, classless=True)
        assert not is_ours(
            service(spec={"type": "NodePort", "loadBalancerClass": None}), CLASS, classless=True
        )

    def test_marked_by_needs_our_finalizer_and_our_cluster(self) -> None:
        """Our mark: the finalizer plus vipwire.io/cluster naming this cluster."""
        obj = service(metadata={"annotations": {CLUSTER_ANNOTATION: "east"}})
        assert not marked_by(obj, "east")  # no finalizer
        obj["metadata"]["finalizers"] = [FINALIZER]
        assert marked_by(obj, "east")
        assert not marked_by(obj, "west")

    def test_type_changed_away_without_finalizer_is_gone(self) -> None:
        """Once the finalizer is off, a Service no longer ours translates to None."""
        obj = service(spec={"type": "ClusterIP", "loadBalancerClass": None})
        assert snap(obj, was_ours=True) is None


class TestServiceFields:
    def test_annotations_and_spec_fields(self) -> None:
        """Pool, requested IPs, sharing key, policies, ports and labels are carried over."""
        obj = service(
            metadata={
                "annotations": {
                    "vipwire.io/pool": " gold ",
                    "vipwire.io/ips": "198.51.100.7, 2001:DB8::7,,",
                    "vipwire.io/sharing-key": "team-a",
                    "vipwire.io/share-with-namespaces": " web, blog,web ",
                }
            },
            spec={
                "ipFamilies": ["IPv4", "IPv6"],
                "ipFamilyPolicy": "RequireDualStack",
                "externalTrafficPolicy": "Local",
                "healthCheckNodePort": 32000,
                "loadBalancerIP": "198.51.100.8",
                "ports": [
                    {"port": 443, "protocol": "TCP", "name": "https", "nodePort": 31443},
                    {"port": 53, "protocol": "UDP", "targetPort": "dns"},
                ],
            },
        )
        s = snap(obj)
        assert s is not None
        assert s.pool == "gold"
        assert s.requested_ips == ("198.51.100.7", "2001:db8::7", "198.51.100.8")
        assert s.sharing_key == "team-a"
        assert s.share_namespaces == ("blog", "web")
        assert s.ip_families == ("IPv4", "IPv6")
        assert s.ip_family_policy == "RequireDualStack"
        assert s.external_traffic_policy == "Local"
        assert s.health_check_node_port == 32000
        assert s.labels == {"app": "web"}
        assert [(p.port, p.protocol, p.name, p.target_port, p.node_port) for p in s.ports] == [
            (443, "TCP", "https", None, 31443),
            (53, "UDP", "", "dns", None),
        ]

    def test_defaults_when_fields_are_missing(self) -> None:
        """A sparse Service gets the API's defaults, never an undecodable value."""
        obj = {
            "metadata": {"name": "web", "namespace": "shop", "uid": "u", "resourceVersion": "1"},
            "spec": {
                "type": "LoadBalancer",
                "loadBalancerClass": CLASS,
                "ports": [{"port": 80}, {"port": 81, "protocol": "QUIC"}, {"name": "no-port"}],
                "ipFamilies": ["IPv5"],
                "ipFamilyPolicy": "Whatever",
                "externalTrafficPolicy": "Global",
            },
        }
        s = snap(obj)
        assert s is not None
        assert [p.port for p in s.ports] == [80]
        assert s.ip_families == ("IPv4",)
        assert s.ip_family_policy == "SingleStack"
        assert s.external_traffic_policy == "Cluster"
        assert s.pool is None and s.sharing_key is None and s.requested_ips == ()
        assert s.share_namespaces == ()
        assert decode(subject_for(s), encode(s)) == s

    def test_requested_ips_keep_order_and_drop_duplicates(self) -> None:
        """The annotation's order wins; loadBalancerIP joins unless already asked for."""
        obj = service(
            metadata={"annotations": {"vipwire.io/ips": "198.51.100.9,198.51.100.7"}},
            spec={"loadBalancerIP": "198.51.100.9"},
        )
        assert requested_ips(obj) == ("198.51.100.9", "198.51.100.7")

    def test_fingerprint_ignores_resource_version_only(self) -> None:
        """A new resourceVersion alone (our own status write) is no change; a spec change is."""
        a = snap(service())
        b = snap(service(metadata={"resourceVersion": "42"}))
        c = snap(service(metadata={"resourceVersion": "43"}, spec={"ports": [{"port": 81}]}))
        assert a is not None and b is not None and c is not None
        assert service_fingerprint(a) == service_fingerprint(b)
        assert service_fingerprint(a) != service_fingerprint(c)

    def test_fingerprint_ignores_the_order_labels_came_in(self) -> None:
        """Equal snapshots fingerprint alike even when their labels were decoded in
        another order (dicts compare equal whatever their order; encodings do not)."""
        a = snap(service(metadata={"labels": {"app": "web", "tier": "front"}}))
        b = snap(service(metadata={"labels": {"tier": "front", "app": "web"}}))
        c = snap(service(metadata={"labels": {"tier": "back", "app": "web"}}))
        assert a is not None and b is not None and c is not None
        assert a == b and list(a.labels) != list(b.labels)
        assert service_fingerprint(a) == service_fingerprint(b)
        assert service_fingerprint(a) != service_fingerprint(c)

    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=5),
            lambda children: (
                st.lists(children, max_size=3)
                | st.dictionaries(st.text(max_size=12), children, max_size=4)
            ),
            max_leaves=20,
        )
    )
    def test_garbage_never_crashes_or_leaks_undecodable(self, junk: Any) -> None:
        """Whatever sits in spec or annotations, the result encodes and decodes again."""
        obj = service()
        obj["spec"]["ports"] = junk
        obj["spec"]["ipFamilies"] = junk
        obj["metadata"]["labels"] = junk
        s = snap(obj)
        assert s is not None
        assert decode(subject_for(s), encode(s)) == s

    @given(
        st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "port": JUNK_SCALARS,
                    "protocol": JUNK_SCALARS,
                    "name": JUNK_SCALARS,
                    "targetPort": JUNK_SCALARS,
                    "nodePort": JUNK_SCALARS,
                },
            ),
            max_size=4,
        ),
        JUNK_SCALARS,
    )
    def test_odd_port_values_never_leak_undecodable(self, ports: Any, hc: Any) -> None:
        """Booleans, huge numbers, floats or strings in port fields are dropped or kept valid."""
        obj = service(spec={"ports": ports, "healthCheckNodePort": hc})
        s = snap(obj)
        assert s is not None
        assert decode(subject_for(s), encode(s)) == s


class TestEndpointSlices:
    def slice_(self, name: str, endpoints: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
        return {
            "metadata": {
                "name": name,
                "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "web"},
            },
            "addressType": kw.get("address_type", "IPv4"),
            "endpoints": endpoints,
            "ports": kw.get("ports", [{"name": "http", "port": 8080, "protocol": "TCP"}]),
        }

    def test_slices_merge_per_node(self) -> None:
        """Endpoints of several slices are grouped by node, sorted, with their ports."""
        a = self.slice_(
            "web-a",
            [
                {"addresses": ["10.0.0.2"], "nodeName": "n2", "conditions": {"ready": True}},
                {"addresses": ["10.0.0.1"], "nodeName": "n1", "conditions": {"ready": False}},
            ],
        )
        b = self.slice_(
            "web-b",
            [{"addresses": ["fd00::1"], "nodeName": "n1", "conditions": {}}],
            address_type="IPv6",
        )
        snapshot = endpoints_snapshot([b, a], cluster="east", namespace="shop", name="web")
        assert [n.node for n in snapshot.nodes] == ["n1", "n2"]
        n1 = snapshot.nodes[0]
        port = EndpointPort(port=8080, name="http")
        assert n1.endpoints == (
            Endpoint(addresses=("10.0.0.1",), ready=False, serving=False, ports=(port,)),
            Endpoint(addresses=("fd00::1",), ports=(port,)),
        )
        assert snapshot.ready_nodes == frozenset({"n1", "n2"})

    def test_conditions_follow_api_defaults(self) -> None:
        """Unset ready/serving read as true, terminating as false; serving may differ."""
        s = self.slice_(
            "web-a",
            [
                {
                    "addresses": ["10.0.0.1"],
                    "nodeName": "n1",
                    "conditions": {"ready": False, "serving": True, "terminating": True},
                }
            ],
        )
        ep = endpoints_snapshot([s], cluster="east", namespace="shop", name="web").nodes[0]
        assert ep.endpoints[0].ready is False
        assert ep.endpoints[0].serving is True
        assert ep.endpoints[0].terminating is True
        assert not ep.has_ready

    def test_endpoints_without_node_and_fqdn_slices_are_left_out(self) -> None:
        """No node means no member; FQDN slices hold no addresses a node can steer to."""
        s = self.slice_("web-a", [{"addresses": ["10.0.0.1"]}])
        f = self.slice_("web-f", [{"addresses": ["a.example"], "nodeName": "n1"}])
        f["addressType"] = "FQDN"
        assert endpoints_snapshot([s, f], cluster="east", namespace="shop", name="web").nodes == ()

    def test_slice_service_and_keys(self) -> None:
        """A slice belongs to the Service its label names; keys are ns/name or name."""
        s = self.slice_("web-a", [])
        assert slice_service(s) == "shop/web"
        del s["metadata"]["labels"]
        assert slice_service(s) is None
        assert object_key(s) == "shop/web-a"
        assert object_key({"metadata": {"name": "n1"}}) == "n1"


class TestNodes:
    def node(self, **kw: Any) -> dict[str, Any]:
        return {
            "metadata": {"name": "n1.rack-1", "labels": kw.get("labels", {}), **kw.get("meta", {})},
            "spec": {"taints": kw.get("taints", [])},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": "192.0.2.11"},
                    {"type": "ExternalIP", "address": "203.0.113.11"},
                    {"type": "InternalIP", "address": "2001:db8::11"},
                    {"type": "Hostname", "address": "n1"},
                ],
                "conditions": kw.get("conditions", [{"type": "Ready", "status": "True"}]),
            },
        }

    def test_a_cordoned_node_says_so_and_the_slim_copy_keeps_it(self) -> None:
        """spec.unschedulable (kubectl cordon) becomes ``cordoned``; slim_node keeps it."""
        whole = self.node()
        assert node_snapshot(whole, cluster="east").cordoned is False
        whole["spec"]["unschedulable"] = True
        assert node_snapshot(whole, cluster="east").cordoned is True
        assert node_snapshot(slim_node(whole), cluster="east").cordoned is True

    def test_internal_ips_of_both_families(self) -> None:
        """Only InternalIP addresses, IPv4 and IPv6, in the order the kubelet gave them."""
        n = node_snapshot(self.node(), cluster="east")
        assert n.node == "n1.rack-1"
        assert n.addresses == ("192.0.2.11", "2001:db8::11")
        assert n.eligible and n.ready

    @pytest.mark.parametrize(
        ("kw", "eligible"),
        [
            ({"labels": {"node.kubernetes.io/exclude-from-external-load-balancers": ""}}, False),
            (
                {"labels": {"node.kubernetes.io/exclude-from-external-load-balancers": "true"}},
                False,
            ),
            (
                {"labels": {"node.kubernetes.io/exclude-from-external-load-balancers": "false"}},
                True,
            ),
            ({"labels": {"node.kubernetes.io/exclude-from-external-load-balancers": "0"}}, True),
            (
                {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]},
                False,
            ),
            ({"taints": [{"key": "example.com/other", "effect": "NoSchedule"}]}, True),
            ({"meta": {"deletionTimestamp": "2025-01-01T00:00:00Z"}}, False),
        ],
    )
    def test_eligibility(self, kw: dict[str, Any], eligible: bool) -> None:
        """Excluded by label (unless it parses false), autoscaler taint, or deletion."""
        assert node_snapshot(self.node(**kw), cluster="east").eligible is eligible

    @pytest.mark.parametrize(
        ("conditions", "ready"),
        [
            ([{"type": "Ready", "status": "False"}], False),
            ([{"type": "Ready", "status": "Unknown"}], False),
            ([], False),
            (
                [
                    {"type": "MemoryPressure", "status": "False"},
                    {"type": "Ready", "status": "True"},
                ],
                True,
            ),
        ],
    )
    def test_ready_from_the_ready_condition(
        self, conditions: list[dict[str, str]], ready: bool
    ) -> None:
        """ready is the Ready condition being True, nothing else."""
        assert node_snapshot(self.node(conditions=conditions), cluster="east").ready is ready


class TestSettings:
    def test_cluster_must_be_a_dns_label(self) -> None:
        """A cluster name that cannot be a subject token is refused at load time."""
        with pytest.raises(msgspec.ValidationError, match="DNS label"):
            msgspec.convert({"cluster": "East.1"}, WatcherSettings)

    def test_unknown_fields_and_bad_gate_are_refused(self) -> None:
        """Typos in the config file fail loudly."""
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"cluster": "east", "clas": "x"}, WatcherSettings)
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"cluster": "east", "status_gate": "most"}, WatcherSettings)

    def test_idle_timeout_defaults_above_the_watch_timeout(self) -> None:
        """A watch is presumed dead only after the server should have ended it."""
        s = WatcherSettings(cluster="east", watch_timeout_s=60)
        assert s.idle_timeout_s == 90
        assert WatcherSettings(cluster="east", watch_idle_timeout_s=5).idle_timeout_s == 5

    def test_old_duration_names_are_accepted_with_a_warning(self) -> None:
        """The duration settings renamed to end in ``_s`` still load by their old names."""
        old = {
            "request_timeout": 3.0,
            "resync_interval": 0.0,
            "backoff_initial": 0.1,
            "backoff_max": 2.0,
            "catch_up_timeout": 4.0,
        }
        notes: list[str] = []
        s = section(
            {"watcher": {"cluster": "east", **old}}, "watcher", WatcherSettings, warn=notes.append
        )
        assert (s.request_timeout_s, s.resync_interval_s, s.catch_up_timeout_s) == (3.0, 0.0, 4.0)
        assert (s.backoff_initial_s, s.backoff_max_s) == (0.1, 2.0)
        assert len(notes) == len(old) and all("_s" in note for note in notes)


class TestWhatIsKept:
    def test_a_slim_service_translates_validates_and_patches_as_the_whole(self) -> None:
        """managedFields, the last applied configuration and unread spec are dropped; the
        snapshot, the problems, the condition and our patches are the same."""
        whole = service(
            metadata={
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{" + "x" * 500 + "}",
                    "vipwire.io/ips": "198.51.100.7",
                    "vipwire.io/bogus": "1",
                },
                "finalizers": ["example.com/x", FINALIZER],
                "deletionTimestamp": "2026-01-01T00:00:00Z",
                "generation": 3,
            },
            spec={
                "clusterIP": "198.18.0.10",
                "selector": {"app": "web"},
                "loadBalancerIP": "198.51.100.8",
                "healthCheckNodePort": 31000,
                "ports": [{"name": "http", "port": 80, "protocol": "QUIC"}],
            },
            status={
                "loadBalancer": {"ingress": [{"ip": "198.51.100.7", "ipMode": "VIP"}]},
                "conditions": [
                    {"type": "vipwire.io/Ready", "status": "True", "reason": "X", "message": "m"}
                ],
            },
        )
        slim = slim_service(whole)
        assert "managedFields" not in slim["metadata"]
        assert "clusterIP" not in slim["spec"] and "selector" not in slim["spec"]
        assert (
            "kubectl.kubernetes.io/last-applied-configuration"
            not in (slim["metadata"]["annotations"])
        )
        assert snap(slim, was_ours=True) == snap(whole, was_ours=True)
        assert object_key(slim) == object_key(whole)
        protocols: tuple[Any, ...] = ("TCP", "UDP")
        assert service_problems(slim, protocols=protocols) == service_problems(
            whole, protocols=protocols
        )
        assert current_condition(slim) == current_condition(whole)
        for present in (True, False):
            assert finalizer_patch(slim, present=present, cluster="east") == finalizer_patch(
                whole, present=present, cluster="east"
            )

    def test_a_parsed_slice_merges_as_the_whole(self) -> None:
        """A slice is kept parsed (its Service, its endpoints by node): merged, it gives
        the snapshot the whole slices give."""
        whole = {
            "metadata": {
                "name": "web-a",
                "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "web", "x": "y"},
                "managedFields": [{}],
            },
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": ["10.0.0.1"],
                    "nodeName": "n1",
                    "conditions": {"ready": False, "serving": True},
                    "targetRef": {"kind": "Pod", "name": "web-1", "uid": "p-1"},
                    "zone": "a",
                },
                {"addresses": ["10.0.0.2"], "conditions": {}},
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }
        fqdn = {**whole, "addressType": "FQDN"}
        parsed = slice_endpoints(whole)
        assert parsed.service == slice_service(whole) == "shop/web"
        assert slice_endpoints(fqdn).endpoints == ()
        assert slice_endpoints({"metadata": {"name": "x"}}).service is None
        merged = {"cluster": "east", "namespace": "shop", "name": "web"}
        assert merge_endpoints([parsed, slice_endpoints(fqdn)], **merged) == (
            endpoints_snapshot([whole, fqdn], **merged)
        )

    @pytest.mark.parametrize(
        "labels",
        [{}, {"node.kubernetes.io/exclude-from-external-load-balancers": "true"}],
    )
    def test_a_slim_node_translates_as_the_whole(self, labels: dict[str, str]) -> None:
        """Images, capacity and nodeInfo are dropped; the snapshot is the same."""
        whole = TestNodes().node(
            labels={**labels, "kubernetes.io/os": "linux"},
            taints=[{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}],
        )
        whole["status"]["images"] = [{"names": ["registry/app:1"], "sizeBytes": 1}]
        whole["status"]["nodeInfo"] = {"kubeletVersion": "v1.33.0"}
        slim = slim_node(whole)
        assert "images" not in slim["status"] and "nodeInfo" not in slim["status"]
        assert node_snapshot(slim, cluster="east") == node_snapshot(whole, cluster="east")

    @given(
        st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "loadBalancerClass",
                    "ports",
                    "ipFamilies",
                    "ipFamilyPolicy",
                    "externalTrafficPolicy",
                    "healthCheckNodePort",
                    "loadBalancerIP",
                    "other",
                ]
            ),
            JUNK_SCALARS | st.lists(JUNK_SCALARS, max_size=3),
        )
    )
    def test_whatever_the_spec_holds_the_slim_snapshot_is_the_same(
        self, spec: dict[str, Any]
    ) -> None:
        """Any spec content: the slim Service translates exactly as the whole one."""
        whole = service(spec=spec)
        assert snap(slim_service(whole), was_ours=True) == snap(whole, was_ours=True)


def test_the_snapshot_carries_the_addresses_in_status_only_valid_and_canonical() -> None:
    """status_vips: ingress[].ip of the Service, canonical, once each, in order; hostnames
    and garbage are left out; a Service going away carries none."""
    obj = service(
        status={
            "loadBalancer": {
                "ingress": [
                    {"ip": "2001:DB8::0:7", "ipMode": "VIP"},
                    {"hostname": "lb.example.com"},
                    {"ip": "192.0.2.7"},
                    {"ip": "not-an-ip"},
                    {"ip": 17},
                    "junk",
                    {"ip": "192.0.2.7"},
                ]
            }
        }
    )
    got = snap(obj)
    assert got is not None and got.status_vips == ("2001:db8::7", "192.0.2.7")
    assert status_vips(service()) == ()
    gone = snap(
        service(metadata={"deletionTimestamp": "2026-01-01T00:00:00Z"}, status=obj["status"])
    )
    assert gone is not None and gone.deleting and gone.status_vips == ()


def test_a_status_write_alone_leaves_the_fingerprint_as_it_was() -> None:
    """Our own status write changes status_vips (and the resourceVersion): not a change
    worth publishing again; anything else the Service says is."""
    before = snap(service())
    after = snap(service(status={"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}}))
    assert before is not None and after is not None and after.status_vips == ("192.0.2.7",)
    assert service_fingerprint(before) == service_fingerprint(after)
    moved = msgspec.structs.replace(after, pool="other")
    assert service_fingerprint(moved) != service_fingerprint(after)
