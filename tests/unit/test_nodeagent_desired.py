"""The node agent's pure core: desired node state, nftables rendering, and the plan."""

from __future__ import annotations

import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vipwire.contracts import (
    Endpoint,
    EndpointPort,
    EndpointsSnapshot,
    LbProgrammed,
    Member,
    NodeEndpoints,
    ServicePort,
)
from vipwire.nodeagent import (
    AddAddress,
    AppliedState,
    DeleteNftTable,
    Desired,
    InterfaceAddress,
    NftBackend,
    NodeState,
    RemoveAddress,
    ReplaceNftTable,
    ServiceVips,
    SetSysctl,
    Sysctl,
    VipAddress,
    arp_sysctls,
    describe,
    desired_state,
    known,
    node_state,
    note_applied,
    plan,
    plan_delta,
    put_endpoints,
    put_service,
    render_nft,
    ruleset,
    service_vips,
    simulate,
    vip_strings,
)

NODE = "node-a.example.com"


def lb(
    name: str,
    *vips: str,
    ports: tuple[ServicePort, ...] = (ServicePort(port=80, name="http"),),
    policy: str = "Cluster",
) -> LbProgrammed:
    return LbProgrammed(
        cluster="east",
        namespace="default",
        name=name,
        uid=f"uid-{name}",
        appliance="sim-1",
        vips=vips,
        ports=ports,
        members=(Member(node=NODE, address="198.51.100.1"),),
        external_traffic_policy=policy,  # type: ignore[arg-type]
    )


def pod(*addresses: str, port: int = 8080, name: str = "http", ready: bool = True) -> Endpoint:
    return Endpoint(addresses=addresses, ready=ready, ports=(EndpointPort(port=port, name=name),))


def eps(name: str, per_node: dict[str, tuple[Endpoint, ...]]) -> EndpointsSnapshot:
    return EndpointsSnapshot(
        cluster="east",
        namespace="default",
        name=name,
        nodes=tuple(
            NodeEndpoints(node=node, endpoints=endpoints) for node, endpoints in per_node.items()
        ),
    )


def programmed(*services: LbProgrammed) -> dict[str, LbProgrammed]:
    return {f"{s.namespace}/{s.name}": s for s in services}


def endpoints(*snapshots: EndpointsSnapshot) -> dict[str, EndpointsSnapshot]:
    return {f"{s.namespace}/{s.name}": s for s in snapshots}


def standalone(services: dict[str, LbProgrammed], snaps: dict[str, EndpointsSnapshot]) -> NodeState:
    return desired_state(services, snaps, node=NODE, mode="standalone")


def vips_only(*services: LbProgrammed) -> NodeState:
    return desired_state(programmed(*services), {}, node=NODE, mode="kube-proxy")


class TestVipSet:
    def test_every_vip_of_every_programmed_service_is_wanted_on_lo(self) -> None:
        """All VIPs of all programmed Services go on lo, once each, whatever the member list."""
        state = desired_state(
            programmed(lb("web", "192.0.2.10"), lb("api", "192.0.2.11", "192.0.2.10")),
            {},
            node=NODE,
            mode="kube-proxy",
        )
        assert state.interface == "lo"
        assert state.addresses == (
            VipAddress(address="192.0.2.10", prefix=32),
            VipAddress(address="192.0.2.11", prefix=32),
        )
        assert state.vips == ("192.0.2.10", "192.0.2.11")

    def test_ipv4_vips_are_host_routes_of_32_and_ipv6_of_128(self) -> None:
        """An IPv4 VIP is a /32, an IPv6 VIP a /128, written canonically."""
        state = vips_only(lb("web", "2001:DB8:0::10", "192.0.2.10"))
        assert state.addresses == (
            VipAddress(address="192.0.2.10", prefix=32),
            VipAddress(address="2001:db8::10", prefix=128),
        )

    def test_addresses_are_in_numeric_order_and_vips_in_string_order(self) -> None:
        """Addresses sort by family then number; the reported VIP tuple sorts as strings."""
        state = vips_only(lb("a", "192.0.2.10"), lb("b", "192.0.2.9"))
        assert [a.address for a in state.addresses] == ["192.0.2.9", "192.0.2.10"]
        assert state.vips == ("192.0.2.10", "192.0.2.9")

    def test_no_programmed_service_means_no_vips(self) -> None:
        """With nothing programmed the node holds no VIP (but still sets the ARP sysctls)."""
        state = desired_state({}, {}, node=NODE, mode="kube-proxy")
        assert state.addresses == ()
        assert state.sysctls == arp_sysctls()

    @pytest.mark.parametrize("bad", ["not-an-ip", "0.0.0.0", "127.0.0.7", "224.0.0.1", "fe80::1"])
    def test_an_address_that_would_break_the_node_is_ignored_with_a_reason(self, bad: str) -> None:
        """Garbage, loopback, multicast and link-local VIPs are skipped and reported."""
        state = vips_only(lb("web", bad, "192.0.2.10"))
        assert state.vips == ("192.0.2.10",)
        assert len(state.ignored) == 1
        assert "default/web" in state.ignored[0]

    def test_kube_proxy_mode_wants_no_nft_table(self) -> None:
        """kube-proxy steers VIP:port itself, so the agent wants no table of its own."""
        state = desired_state(
            programmed(lb("web", "192.0.2.10")),
            endpoints(eps("web", {NODE: (pod("10.0.0.5"),)})),
            node=NODE,
            mode="kube-proxy",
        )
        assert state.nft is None


class TestSysctls:
    def test_arp_sysctls_on_all(self) -> None:
        """arp_ignore=1 and arp_announce=2 are wanted on ``all``."""
        assert arp_sysctls() == (
            Sysctl(key="net.ipv4.conf.all.arp_ignore", value="1"),
            Sysctl(key="net.ipv4.conf.all.arp_announce", value="2"),
        )

    def test_uplink_gets_them_too_with_dots_written_as_slashes(self) -> None:
        """A VLAN uplink like eth0.100 is named eth0/100 in sysctl notation."""
        keys = [s.key for s in arp_sysctls("eth0.100")]
        assert "net.ipv4.conf.eth0/100.arp_ignore" in keys
        assert "net.ipv4.conf.eth0/100.arp_announce" in keys
        assert len(keys) == 4


class TestStandaloneRules:
    def test_cluster_policy_uses_ready_endpoints_of_every_node(self) -> None:
        """Cluster policy: every ready endpoint, on any node, is a backend; unready ones are not."""
        state = standalone(
            programmed(lb("web", "192.0.2.10")),
            endpoints(
                eps(
                    "web",
                    {
                        NODE: (pod("10.0.0.5"),),
                        "node-b": (pod("10.0.1.5"), pod("10.0.1.6", ready=False)),
                    },
                )
            ),
        )
        assert state.nft is not None
        (rule,) = state.nft.rules
        assert (rule.vip, rule.protocol, rule.port, rule.family) == ("192.0.2.10", "tcp", 80, "ip")
        assert rule.backends == (
            NftBackend(address="10.0.0.5", port=8080),
            NftBackend(address="10.0.1.5", port=8080),
        )

    def test_local_policy_uses_only_this_nodes_ready_endpoints(self) -> None:
        """Local policy: only this node's ready endpoints serve, keeping the client address."""
        state = standalone(
            programmed(lb("web", "192.0.2.10", policy="Local")),
            endpoints(eps("web", {NODE: (pod("10.0.0.5"),), "node-b": (pod("10.0.1.5"),)})),
        )
        assert state.nft is not None
        (rule,) = state.nft.rules
        assert rule.backends == (NftBackend(address="10.0.0.5", port=8080),)

    def test_terminating_endpoints_still_serving_take_over_when_none_is_ready(self) -> None:
        """Local: this node's only pod is terminating but still serving (the appliance keeps
        the node a member): it stays the backend; beside a ready one it takes nothing, and
        once it stops serving there is none."""

        def term(address: str, *, serving: bool = True) -> Endpoint:
            return msgspec.structs.replace(
                pod(address), ready=False, serving=serving, terminating=True
            )

        def backends(*local: Endpoint) -> tuple[NftBackend, ...]:
            state = standalone(
                programmed(lb("web", "192.0.2.10", policy="Local")),
                endpoints(eps("web", {NODE: local, "node-b": (pod("10.0.1.5"),)})),
            )
            assert state.nft is not None
            return state.nft.rules[0].backends

        assert backends(term("10.0.0.5")) == (NftBackend(address="10.0.0.5", port=8080),)
        assert backends(term("10.0.0.5"), pod("10.0.0.6")) == (
            NftBackend(address="10.0.0.6", port=8080),
        )
        assert backends(term("10.0.0.5", serving=False)) == ()

    def test_local_policy_without_a_local_endpoint_has_no_backends_and_no_dnat(self) -> None:
        """No local endpoint: the rule has no backends and renders no DNAT line."""
        state = standalone(
            programmed(lb("web", "192.0.2.10", policy="Local")),
            endpoints(eps("web", {"node-b": (pod("10.0.1.5"),)})),
        )
        assert state.nft is not None
        assert state.nft.rules[0].backends == ()
        assert "192.0.2.10 tcp dport 80" not in render_nft(state.nft)

    def test_each_family_goes_to_endpoints_of_its_own_family(self) -> None:
        """A dual-stack Service DNATs its IPv4 VIP to IPv4 pods and its IPv6 VIP to IPv6 pods."""
        state = standalone(
            programmed(lb("web", "192.0.2.10", "2001:db8::10")),
            endpoints(eps("web", {NODE: (pod("10.0.0.5"), pod("fd00::5"))})),
        )
        assert state.nft is not None
        by_vip = {r.vip: r for r in state.nft.rules}
        assert by_vip["192.0.2.10"].backends == (NftBackend(address="10.0.0.5", port=8080),)
        assert by_vip["2001:db8::10"].family == "ip6"
        assert by_vip["2001:db8::10"].backends == (NftBackend(address="fd00::5", port=8080),)

    def test_service_ports_map_to_endpoint_ports_by_name_and_protocol(self) -> None:
        """Each Service port goes to the endpoint port of the same name and protocol."""
        ports = (
            ServicePort(port=80, name="http"),
            ServicePort(port=53, name="dns", protocol="UDP"),
        )
        pod_ports = (
            EndpointPort(port=8080, name="http"),
            EndpointPort(port=5353, name="dns", protocol="UDP"),
        )
        state = standalone(
            programmed(lb("web", "192.0.2.10", ports=ports)),
            endpoints(eps("web", {NODE: (Endpoint(addresses=("10.0.0.5",), ports=pod_ports),)})),
        )
        assert state.nft is not None
        assert {(r.protocol, r.port, r.backends[0].port) for r in state.nft.rules} == {
            ("tcp", 80, 8080),
            ("udp", 53, 5353),
        }

    def test_a_vip_port_claimed_twice_is_steered_for_the_first_service_only(self) -> None:
        """Two Services on one VIP:port/proto: the first by key wins, the other is reported."""
        state = standalone(
            programmed(lb("a", "192.0.2.10"), lb("b", "192.0.2.10")),
            endpoints(eps("a", {NODE: (pod("10.0.0.5"),)}), eps("b", {NODE: (pod("10.0.0.6"),)})),
        )
        assert state.nft is not None
        assert [r.service for r in state.nft.rules] == ["default/a"]
        assert any("default/b" in reason for reason in state.ignored)

    def test_this_nodes_endpoints_are_listed_as_local(self) -> None:
        """Endpoints on this node are the ones exempt from masquerading."""
        state = standalone(
            programmed(lb("web", "192.0.2.10")),
            endpoints(eps("web", {NODE: (pod("10.0.0.5"),), "node-b": (pod("10.0.1.5"),)})),
        )
        assert state.nft is not None
        assert state.nft.local_endpoints == ("10.0.0.5",)


class TestRender:
    def inputs(self) -> tuple[dict[str, LbProgrammed], dict[str, EndpointsSnapshot]]:
        services = programmed(
            lb("web", "192.0.2.10", "2001:db8::10"), lb("api", "192.0.2.11", policy="Local")
        )
        snaps = endpoints(
            eps("web", {NODE: (pod("10.0.0.5"), pod("fd00::5")), "node-b": (pod("10.0.1.5"),)}),
            eps("api", {NODE: (pod("10.0.0.7", port=9000),)}),
        )
        return services, snaps

    def test_equal_input_in_any_order_renders_identical_text(self) -> None:
        """Shuffling the inputs changes neither the ruleset, nor its digest, nor its text."""
        services, snaps = self.inputs()
        first = standalone(services, snaps)
        rng = random.Random(3)
        for _ in range(5):
            s_items, e_items = list(services.items()), list(snaps.items())
            rng.shuffle(s_items)
            rng.shuffle(e_items)
            shuffled_snaps = {
                k: EndpointsSnapshot(
                    cluster=v.cluster,
                    namespace=v.namespace,
                    name=v.name,
                    nodes=tuple(rng.sample(v.nodes, len(v.nodes))),
                )
                for k, v in e_items
            }
            again = standalone(dict(s_items), shuffled_snaps)
            assert again == first
            assert again.nft is not None and first.nft is not None
            assert render_nft(again.nft) == render_nft(first.nft)

    def test_a_changed_endpoint_changes_digest_and_text(self) -> None:
        """A different backend gives a different digest, so the plan sees the change."""
        services, snaps = self.inputs()
        before = standalone(services, snaps).nft
        snaps["default/api"] = eps("api", {NODE: (pod("10.0.0.8", port=9000),)})
        after = standalone(services, snaps).nft
        assert before is not None and after is not None
        assert before.digest != after.digest
        assert render_nft(before) != render_nft(after)

    def test_rendered_script_replaces_the_table_atomically(self) -> None:
        """The script declares, deletes and redefines the table, and carries its digest."""
        services, snaps = self.inputs()
        ruleset = standalone(services, snaps).nft
        assert ruleset is not None
        lines = render_nft(ruleset).splitlines()
        assert lines[:3] == [
            "table inet vipwire",
            "delete table inet vipwire",
            "table inet vipwire {",
        ]
        text = "\n".join(lines)
        assert f'jump services comment "vipwire-digest {ruleset.digest}"' in text
        assert "type nat hook prerouting priority dstnat; policy accept;" in text
        assert "type nat hook output priority -100; policy accept;" in text
        # one backend: plain dnat; two: a random pick per new connection
        assert (
            "ip daddr 192.0.2.11 tcp dport 80 dnat ip to 10.0.0.7:9000 "
            'comment "default/api"' in text
        )
        assert (
            "ip daddr 192.0.2.10 tcp dport 80 dnat ip addr . port to numgen random mod 2 "
            "map { 0 : 10.0.0.5 . 8080, 1 : 10.0.1.5 . 8080 }" in text
        )
        assert "dnat ip6 to [fd00::5]:8080" in text
        assert "elements = { 10.0.0.5, 10.0.0.7 }" in text  # local endpoints


def applied(*addresses: InterfaceAddress, **kw: object) -> AppliedState:
    return AppliedState(addresses=addresses, **kw)  # type: ignore[arg-type]


def owned(address: str, prefix: int = 32, interface: str = "lo") -> InterfaceAddress:
    return InterfaceAddress(interface=interface, address=address, prefix=prefix, owned=True)


def foreign(address: str, prefix: int = 32, interface: str = "lo") -> InterfaceAddress:
    return InterfaceAddress(interface=interface, address=address, prefix=prefix, owned=False)


class TestPlan:
    def test_a_fresh_node_gets_sysctls_first_then_addresses(self) -> None:
        """ARP is silenced before any VIP appears on the node."""
        desired = vips_only(lb("web", "192.0.2.10"))
        actions = plan(AppliedState(), desired)
        assert actions == (
            SetSysctl(key="net.ipv4.conf.all.arp_ignore", value="1"),
            SetSysctl(key="net.ipv4.conf.all.arp_announce", value="2"),
            AddAddress(interface="lo", address="192.0.2.10", prefix=32),
        )

    def test_the_same_state_needs_no_action(self) -> None:
        """Once applied, planning again yields nothing: no churn."""
        services, snaps = TestRender().inputs()
        desired = standalone(services, snaps)
        after = simulate(AppliedState(), plan(AppliedState(), desired))
        assert plan(after, desired) == ()

    def test_only_the_difference_is_planned(self) -> None:
        """One VIP more and one less: one add and one remove, nothing else."""
        current = applied(owned("192.0.2.10"), owned("192.0.2.11"), sysctls=arp_sysctls())
        desired = vips_only(lb("web", "192.0.2.10"), lb("new", "192.0.2.12"))
        assert plan(current, desired) == (
            AddAddress(interface="lo", address="192.0.2.12", prefix=32),
            RemoveAddress(interface="lo", address="192.0.2.11", prefix=32),
        )

    def test_foreign_addresses_are_never_removed(self) -> None:
        """The node's own and an operator's addresses on lo stay, wanted or not."""
        current = applied(
            foreign("127.0.0.1", 8),
            foreign("::1", 128),
            foreign("192.0.2.99"),
            owned("192.0.2.10"),
            sysctls=arp_sysctls(),
        )
        desired = desired_state({}, {}, node=NODE, mode="kube-proxy")
        assert plan(current, desired) == (
            RemoveAddress(interface="lo", address="192.0.2.10", prefix=32),
        )

    def test_keep_adds_what_is_wanted_and_removes_nothing(self) -> None:
        """While some Service is unknown, an address of ours nothing wants stays."""
        current = applied(owned("192.0.2.10"), sysctls=arp_sysctls())
        desired = vips_only(lb("web", "192.0.2.11"))
        assert plan(current, desired, keep=True) == (
            AddAddress(interface="lo", address="192.0.2.11", prefix=32),
        )

    def test_a_wanted_address_already_there_but_foreign_is_left_alone(self) -> None:
        """A VIP someone else put on lo is neither added again nor ever removed by us."""
        current = applied(foreign("192.0.2.10"), sysctls=arp_sysctls())
        desired = vips_only(lb("web", "192.0.2.10"))
        assert plan(current, desired) == ()
        assert plan(current, desired_state({}, {}, node=NODE, mode="kube-proxy")) == ()

    def test_owned_addresses_on_another_interface_are_collected(self) -> None:
        """After the VIP interface changes, what we left on the old one is removed."""
        current = applied(owned("192.0.2.10", interface="dummy0"), sysctls=arp_sysctls())
        desired = desired_state(
            programmed(lb("web", "192.0.2.10")), {}, node=NODE, mode="kube-proxy", interface="lo"
        )
        assert plan(current, desired) == (
            AddAddress(interface="lo", address="192.0.2.10", prefix=32),
            RemoveAddress(interface="dummy0", address="192.0.2.10", prefix=32),
        )

    def test_a_wrong_sysctl_is_set_again(self) -> None:
        """A sysctl someone reset is set back; correct ones are not touched."""
        current = AppliedState(
            sysctls=(
                Sysctl(key="net.ipv4.conf.all.arp_ignore", value="0"),
                Sysctl(key="net.ipv4.conf.all.arp_announce", value="2"),
            )
        )
        desired = desired_state({}, {}, node=NODE, mode="kube-proxy")
        assert plan(current, desired) == (SetSysctl(key="net.ipv4.conf.all.arp_ignore", value="1"),)

    def test_changed_rules_replace_the_table_and_kube_proxy_mode_deletes_it(self) -> None:
        """A new digest replaces the table; leaving standalone mode deletes it."""
        services, snaps = TestRender().inputs()
        desired = standalone(services, snaps)
        assert desired.nft is not None
        stale = AppliedState(sysctls=arp_sysctls(), nft_digest="0000")
        actions = plan(stale, desired)
        assert ReplaceNftTable(ruleset=desired.nft) in actions
        same = AppliedState(sysctls=arp_sysctls(), nft_digest=desired.nft.digest)
        assert not any(isinstance(a, ReplaceNftTable) for a in plan(same, desired))
        kube_proxy = desired_state({}, {}, node=NODE, mode="kube-proxy")
        assert plan(same, kube_proxy) == (DeleteNftTable(table="vipwire"),)

    def test_every_action_has_a_one_line_description(self) -> None:
        """Dry-run logs name each action plainly."""
        services, snaps = TestRender().inputs()
        desired = standalone(services, snaps)
        for action in plan(applied(owned("192.0.2.99")), desired):
            text = describe(action)
            assert text and "\n" not in text
        assert describe(DeleteNftTable(table="vipwire")) == "delete nftables table inet vipwire"


_octet = st.integers(min_value=1, max_value=254)
_vip = st.builds(lambda o: f"192.0.2.{o}", _octet) | st.builds(lambda o: f"2001:db8::{o:x}", _octet)
_address = st.builds(
    lambda a, own: InterfaceAddress(
        interface="lo", address=a, prefix=128 if ":" in a else 32, owned=own
    ),
    _vip,
    st.booleans(),
)


class TestPlanProperties:
    @settings(max_examples=200, deadline=None)
    @given(
        start=st.lists(_address, max_size=8, unique_by=lambda a: a.address),
        vips=st.lists(_vip, max_size=8),
    )
    def test_plan_converges_and_spares_foreign_addresses(
        self, start: list[InterfaceAddress], vips: list[str]
    ) -> None:
        """From any state: one plan reaches the goal, a second plan is empty, no foreign loss."""
        desired = vips_only(lb("web", *vips))
        current = AppliedState(addresses=tuple(start))
        after = simulate(current, plan(current, desired))
        assert plan(after, desired) == ()
        present = {a.address for a in after.addresses}
        assert set(desired.vips) <= present
        for a in start:
            if not a.owned:
                assert a in after.addresses
            elif a.address not in desired.vips:
                assert a.address not in present


# --- incremental desired state ------------------------------------------------------

_pool_vip = st.sampled_from(
    ["192.0.2.1", "192.0.2.2", "192.0.2.10", "2001:db8::1", "2001:db8::a", "127.0.0.1", "nope"]
)
_port = st.sampled_from(
    [ServicePort(port=80, name="http"), ServicePort(port=443, name="https", protocol="TCP")]
)
_event = st.one_of(
    st.tuples(
        st.just("lb"),
        st.sampled_from(["a", "b", "c"]),
        st.lists(_pool_vip, max_size=3),
        st.lists(_port, min_size=1, max_size=2, unique=True),
        st.sampled_from(["Cluster", "Local"]),
    ),
    st.tuples(st.just("removed"), st.sampled_from(["a", "b", "c"])),
    st.tuples(
        st.just("endpoints"),
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from([NODE, "node-b"]),
        st.sampled_from(["10.0.0.1", "10.0.0.2", "fd00::1"]),
    ),
)


class TestIncremental:
    def test_a_vip_shared_by_two_services_stays_until_both_are_gone(self) -> None:
        """Only a VIP's first Service adds it and its last Service's removal takes it away."""
        state = Desired()
        assert put_service(state, "ns/a", service_vips("ns/a", lb("a", "192.0.2.1"))) == (
            ["192.0.2.1"],
            [],
        )
        assert put_service(state, "ns/b", service_vips("ns/b", lb("b", "192.0.2.1"))) == ([], [])
        assert put_service(state, "ns/a", None) == ([], [])
        assert put_service(state, "ns/b", None) == ([], ["192.0.2.1"])
        assert state.refs == {} and state.services == {}

    def test_a_service_keeps_only_what_the_node_needs(self) -> None:
        """VIPs (canonical), ports and policy are kept; the appliance's members are not."""
        entry = service_vips("default/web", lb("web", "2001:DB8::0:1", "0.0.0.0", policy="Local"))
        assert entry.vips == ("2001:db8::1",)
        assert entry.policy == "Local"
        assert entry.ports == (ServicePort(port=80, name="http"),)
        assert "members" not in ServiceVips.__struct_fields__
        assert entry.ignored == ("default/web: VIP '0.0.0.0' is not a unicast IP address",)

    def test_a_delta_never_removes_a_foreign_address_nor_re_adds_one(self) -> None:
        """An address the agent did not put there is neither added again nor removed."""
        foreign = InterfaceAddress(interface="lo", address="192.0.2.1", prefix=32)
        have = known(AppliedState(addresses=(foreign,)))
        state = Desired()
        put_service(state, "ns/a", service_vips("ns/a", lb("a", "192.0.2.1")))
        assert plan_delta(have, state, ["192.0.2.1"], interface="lo") == ()
        put_service(state, "ns/a", None)
        assert plan_delta(have, state, ["192.0.2.1"], interface="lo") == ()

    @settings(max_examples=300, deadline=None)
    @given(
        start=st.lists(_address, max_size=6, unique_by=lambda a: a.address),
        events=st.lists(_event, max_size=25),
    )
    def test_incremental_state_and_deltas_equal_a_full_recompute(
        self, start: list[InterfaceAddress], events: list[tuple[object, ...]]
    ) -> None:
        """After any events: the kept state is the full recompute, and the node the deltas
        built needs nothing from a full plan (addresses and table)."""
        services: dict[str, LbProgrammed] = {}
        snaps: dict[str, EndpointsSnapshot] = {}
        state = Desired()
        node = AppliedState(addresses=tuple(start))
        node = simulate(node, plan(node, node_state(state, node=NODE, mode="standalone")))
        have = known(node)
        for event in events:
            match event:
                case ("lb", name, vips, ports, policy):
                    message = lb(str(name), *vips, ports=tuple(ports), policy=str(policy))  # type: ignore[arg-type]
                    key = f"default/{name}"
                    services[key] = message
                    added, removed = put_service(state, key, service_vips(key, message))
                case ("removed", name):
                    key = f"default/{name}"
                    services.pop(key, None)
                    added, removed = put_service(state, key, None)
                case ("endpoints", name, where, address):
                    snap = eps(str(name), {str(where): (pod(str(address)),)})
                    snaps[snap.namespace + "/" + snap.name] = snap
                    put_endpoints(state, f"default/{name}", snap)
                    added, removed = [], []
                case _:
                    raise AssertionError(event)
            full = standalone(services, snaps)
            assert node_state(state, node=NODE, mode="standalone") == full
            assert vip_strings(state.refs) == full.vips
            nft = ruleset(state, node=NODE, table="vipwire")
            actions = plan_delta(have, state, [*added, *removed], interface="lo", nft=nft)
            node = simulate(node, actions)
            note_applied(have, actions)
            assert have == known(node)
            assert plan(node, full) == ()
