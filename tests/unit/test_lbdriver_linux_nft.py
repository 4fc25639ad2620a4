"""The Linux appliance's nftables table, rendered from and read back into virtual servers."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vipwire.contracts import Member
from vipwire.lbdriver import ApplianceSettings, build_driver
from vipwire.lbdriver.core.virtual_servers import Monitor, VirtualServer
from vipwire.lbdriver.io.drivers.linux import LinuxAppliance
from vipwire.lbdriver.io.drivers.linux_nft import (
    FROM_VIP,
    STATE_CHAIN,
    Counter,
    decode_state,
    destination_clash,
    encode_state,
    flow_set,
    hash_seed,
    object_name,
    parse_listing,
    render_partition,
    table_name,
)

OWN = "02:00:00:00:00:01"
MACS = {"192.0.2.1": "02:00:00:00:00:0a", "192.0.2.2": "02:00:00:00:00:0b", "2001:db8::1": OWN}


def server(
    name: str = "vipwire-east-default-web-198.51.100.10-80-tcp",
    *members: str,
    address: str = "198.51.100.10",
    port: int = 80,
    protocol: str = "TCP",
) -> VirtualServer:
    return VirtualServer(
        name=name,
        owner="east/default/web",
        address=address,
        port=port,
        protocol=protocol,  # type: ignore[arg-type]
        members=tuple(Member(node=f"node-{a}", address=a) for a in members),
        monitor=Monitor(port=10256),
    )


def render(*servers: VirtualServer, counters: dict[str, Counter] | None = None) -> str:
    return render_partition(
        table="vipwire-east",
        device="eth0",
        mac=OWN,
        servers={s.name: s for s in servers},
        macs=MACS,
        counters=counters,
    )


def rule_of(script: str, vs: VirtualServer) -> str:
    lines = script.splitlines()
    start = lines.index(f"\tchain {object_name(vs.name)} {{")
    return lines[start + 1].strip()


class TestRender:
    def test_one_transaction_replaces_the_table_hooked_on_the_interface(self) -> None:
        """Declare, delete, define: one atomic replace; the ingress hook is on the device."""
        script = render(server("vipwire-a", "192.0.2.1"))
        assert script.splitlines()[:3] == [
            "table netdev vipwire-east",
            "delete table netdev vipwire-east",
            "table netdev vipwire-east {",
        ]
        assert 'type filter hook ingress device "eth0" priority filter; policy accept;' in script

    def test_members_are_picked_by_a_hash_of_the_client_and_only_macs_change(self) -> None:
        """Several members: a jhash of client address and port picks the MAC; the source MAC
        becomes the appliance's; the frame goes back out of the same interface."""
        vs = server("vipwire-a", "192.0.2.2", "192.0.2.1")
        rule = rule_of(render(vs), vs)
        assert rule.startswith(f"ether saddr set {OWN} ether daddr set jhash ip saddr . tcp sport")
        # Members in sorted order: index 0 is 192.0.2.1.
        seed = f"{hash_seed(vs.name):#010x}"
        assert f"mod 2 seed {seed} map {{ 0 : 02:00:00:00:00:0a, 1 : 02:00:00:00:00:0b }}" in rule
        assert f'counter name "{object_name(vs.name)}" fwd to "eth0"' in rule
        assert "ip daddr set" not in rule and "dnat" not in rule

    def test_the_hash_seed_is_fixed_so_a_rewrite_keeps_connections_in_place(self) -> None:
        """The kernel draws a random jhash seed for a rule without one: every table rewrite
        would move established connections. The seed is fixed per virtual server."""
        vs = server("vipwire-a", "192.0.2.1", "192.0.2.2")
        rule = rule_of(render(vs), vs)
        assert f"seed {hash_seed(vs.name):#010x} " in rule
        assert rule == rule_of(render(vs, server("vipwire-b", "192.0.2.1", port=81)), vs)

    def test_one_member_needs_no_hash_and_none_drops(self) -> None:
        """A single member is a plain rewrite; no member counts and drops."""
        one = server("vipwire-a", "192.0.2.1")
        none = server("vipwire-b", address="198.51.100.11")
        script = render(one, none)
        assert rule_of(script, one).startswith(
            f"ether saddr set {OWN} ether daddr set 02:00:00:00:00:0a counter"
        )
        assert rule_of(script, none).startswith('counter name "no-member" drop')

    def test_dispatch_sends_each_destination_to_its_chain_per_family(self) -> None:
        """VIP . protocol . port → jump to the server's chain; v6 in its own map and set."""
        v4 = server("vipwire-a", "192.0.2.1", protocol="UDP", port=53)
        v6 = server("vipwire-b", "2001:db8::1", address="2001:db8::10")
        script = render(v4, v6)
        assert f"198.51.100.10 . udp . 53 : jump {object_name(v4.name)}" in script
        assert f"2001:db8::10 . tcp . 80 : jump {object_name(v6.name)}" in script
        assert "jhash" not in rule_of(script, v6)
        assert f'ip6 saddr @vips6 counter name "{FROM_VIP}"' in script

    def test_counters_carry_over(self) -> None:
        """Replacing the table keeps what each counter had counted."""
        vs = server("vipwire-a", "192.0.2.1")
        script = render(vs, counters={object_name(vs.name): Counter(7, 700), FROM_VIP: Counter()})
        assert f"counter {object_name(vs.name)} {{ packets 7 bytes 700 }}" in script

    def test_a_member_without_mac_is_refused(self) -> None:
        """The driver must leave out unresolved members before rendering."""
        with pytest.raises(ValueError, match=r"192\.0\.2\.9"):
            render(server("vipwire-a", "192.0.2.9"))

    def test_object_names_are_safe_and_stable(self) -> None:
        """Chain/counter names are identifiers nft accepts, the same for the same server."""
        name = "vipwire-east-default-web-2001_db8__10-80-tcp"
        assert object_name(name) == object_name(name) != object_name(name + "x")
        assert object_name(name).startswith("vs-") and len(object_name(name)) == 19

    def test_partition_must_be_a_dns_label(self) -> None:
        """Table names come from cluster names, which are DNS labels."""
        assert table_name("east") == "vipwire-east"
        with pytest.raises(ValueError):
            table_name("East Side")

    def test_two_servers_on_one_destination_clash(self) -> None:
        """Only one virtual server may own VIP:port/protocol."""
        a = server("vipwire-a", "192.0.2.1")
        b = server("vipwire-b", "192.0.2.2")
        assert destination_clash({a.name: a}) is None
        clash = destination_clash({a.name: a, b.name: b})
        assert clash is not None and clash.names == ("vipwire-a", "vipwire-b")
        assert "vipwire-a" in str(clash) and "vipwire-b" in str(clash)
        refused = str(clash.rejected("lab", "east"))
        assert "already served by another virtual server" in refused
        assert "vipwire-a" not in refused and "vipwire-b" not in refused


names = st.from_regex(r"vipwire-[a-z0-9.-]{1,40}", fullmatch=True)


class TestState:
    @given(st.lists(names, unique=True, max_size=20))
    def test_state_round_trips_through_comment_chunks(self, picked: list[str]) -> None:
        """Every virtual server survives encoding; every chunk fits an nft comment."""
        servers = {n: server(n, "192.0.2.1", port=1 + i) for i, n in enumerate(picked)}
        chunks = encode_state(servers.values())
        assert all(len(c) <= 128 and '"' not in c for c in chunks)
        assert decode_state(chunks) == servers

    def test_missing_chunks_are_detected(self) -> None:
        """A state with a chunk gone is an error, never a silently shorter list."""
        servers = [server(f"vipwire-{i}", "192.0.2.1", port=i + 1) for i in range(40)]
        chunks = encode_state(servers)
        assert len(chunks) > 2
        with pytest.raises(ValueError):
            decode_state(chunks[:1] + chunks[2:])


def listing(servers: list[VirtualServer], *, drop_dispatch: str | None = None) -> dict[str, Any]:
    """What ``nft -j list table`` prints for a table rendered from ``servers``."""
    table = "vipwire-east"
    items: list[dict[str, Any]] = [{"metainfo": {"json_schema_version": 1}}]
    items.append({"counter": {"table": table, "name": FROM_VIP, "packets": 3, "bytes": 9}})
    elements = []
    for s in servers:
        items.append({"chain": {"table": table, "name": object_name(s.name)}})
        if s.name != drop_dispatch:
            target = {"jump": {"target": object_name(s.name)}}
            elements.append([{"concat": [s.address, s.protocol.lower(), s.port]}, target])
    items.append({"map": {"table": table, "name": "dispatch4", "elem": elements}})
    for chunk in encode_state(servers):
        items.append({"rule": {"table": table, "chain": STATE_CHAIN, "comment": chunk}})
    return {"nftables": items}


class TestParse:
    def test_a_listing_reads_back_the_servers_and_counters(self) -> None:
        """The servers come back exactly, owner and monitor included, with the counters."""
        servers = [server("vipwire-a", "192.0.2.1"), server("vipwire-b", address="198.51.100.11")]
        parsed = parse_listing(listing(servers), "vipwire-east")
        assert parsed.servers == {s.name: s for s in servers}
        assert parsed.counters[FROM_VIP] == Counter(3, 9)
        assert parsed.damaged == ()

    def test_a_server_whose_dispatch_entry_vanished_is_listed_without_members(self) -> None:
        """Tampered data path: listed memberless, so the next diff rewrites it."""
        a, b = server("vipwire-a", "192.0.2.1"), server("vipwire-b", "192.0.2.2", port=81)
        parsed = parse_listing(listing([a, b], drop_dispatch="vipwire-b"), "vipwire-east")
        assert parsed.damaged == ("vipwire-b",)
        assert parsed.servers["vipwire-b"] == msgspec.structs.replace(b, members=())
        assert parsed.servers["vipwire-a"] == a


class TestSettings:
    def test_linux_driver_is_built_from_settings(self) -> None:
        """driver: linux with interface and netns gives a LinuxAppliance aimed at them."""
        settings = ApplianceSettings(
            name="lnx", driver="linux", interface="eth0", netns="lab-appliance"
        )
        driver = build_driver(settings)
        assert isinstance(driver, LinuxAppliance)
        assert (driver.interface, driver.netns) == ("eth0", "lab-appliance")

    def test_linux_needs_an_interface_and_netns_is_linux_only(self) -> None:
        """No interface, or a netns on another driver, is a configuration error."""
        with pytest.raises(ValueError, match="interface"):
            ApplianceSettings(name="lnx", driver="linux")
        with pytest.raises(ValueError, match="netns"):
            ApplianceSettings(name="s", driver="sim", netns="x")


class TestDrain:
    def draining(self, protocol: str = "TCP") -> VirtualServer:
        base = server("vipwire-d", "192.0.2.1", protocol=protocol)
        return msgspec.structs.replace(
            base, draining=(Member(node="node-192.0.2.2", address="192.0.2.2"),)
        )

    def test_new_flows_go_to_enabled_members_and_old_ones_keep_their_hash(self) -> None:
        """A draining TCP member: SYNs go to the enabled member (and are remembered), a
        remembered flow follows them, any other packet is hashed over every member as
        before the drain (so an established connection keeps its node)."""
        vs = self.draining()
        script = render(vs)
        lines = script.splitlines()
        start = lines.index(f"\tchain {object_name(vs.name)} {{")
        syn, remembered, established = (line.strip() for line in lines[start + 1 : start + 4])
        flows = flow_set(vs.name)
        assert syn.startswith(
            f"tcp flags & (syn | ack) == syn add @{flows} {{ ip saddr . tcp sport }}"
        )
        assert "ether daddr set 02:00:00:00:00:0a " in syn  # the enabled member only
        assert remembered.startswith(f"ip saddr . tcp sport @{flows} ")
        assert "ether daddr set 02:00:00:00:00:0a " in remembered
        before = rule_of(render(server("vipwire-d", "192.0.2.1", "192.0.2.2")), vs)
        assert established == before  # the same hash over the same members, in order
        assert f"\tset {flows} {{" in lines and "\t\tflags dynamic,timeout" in lines

    def test_udp_has_no_syn_and_drops_the_member_from_the_hash(self) -> None:
        """UDP: no flow set; the draining member takes no part in the hash."""
        vs = self.draining("UDP")
        script = render(vs)
        assert "flows-" not in script
        assert "02:00:00:00:00:0b" not in rule_of(script, vs)

    def test_remembered_flows_are_read_back_and_carried_over(self) -> None:
        """The flow set's elements, as nft lists them, are kept across a rewrite."""
        vs = self.draining()
        flows = flow_set(vs.name)
        document = {
            "nftables": [
                {
                    "set": {
                        "family": "netdev",
                        "name": flows,
                        "table": "vipwire-east",
                        "elem": [
                            {"elem": {"val": {"concat": ["203.0.113.9", 40000]}, "expires": 30}}
                        ],
                    }
                }
            ]
        }
        listing = parse_listing(document, "vipwire-east")
        assert listing.flows == {flows: (("203.0.113.9", 40000, 30),)}
        script = render_partition(
            table="vipwire-east",
            device="eth0",
            mac=OWN,
            servers={vs.name: vs},
            macs=MACS,
            flows=listing.flows,
        )
        assert "elements = { 203.0.113.9 . 40000 timeout 30s }" in script


class TestAccess:
    def test_source_ranges_are_an_interval_set_the_server_chain_checks_first(self) -> None:
        """A restricted server: a named interval set of its ranges, and a drop (counted) of
        any other source before the forward; an open server has neither."""
        restricted = msgspec.structs.replace(
            server("vipwire-a", "192.0.2.1", "192.0.2.2"),
            source_ranges=("203.0.113.0/24", "198.51.100.7/32"),
        )
        script = render(restricted, server("vipwire-b", "192.0.2.1", port=81))
        name = f"src-{object_name('vipwire-a')}"
        assert f"\tset {name} {{" in script
        assert "elements = { 203.0.113.0/24, 198.51.100.7/32 }" in script
        assert rule_of(script, restricted) == (
            f'ip saddr != @{name} counter name "denied-source" drop'
        )
        open_rule = rule_of(script, server("vipwire-b", "192.0.2.1", port=81))
        assert open_rule.startswith("ether saddr set")

    def test_affinity_hashes_the_client_address_alone(self) -> None:
        """ClientIP affinity: the member is chosen by the source address only, so every
        connection of one client goes to one node; without it, address and port."""
        sticky = msgspec.structs.replace(
            server("vipwire-a", "192.0.2.1", "192.0.2.2"), affinity_timeout_s=60
        )
        assert "jhash ip saddr mod 2" in rule_of(render(sticky), sticky)
        plain = server("vipwire-a", "192.0.2.1", "192.0.2.2")
        assert "jhash ip saddr . tcp sport mod 2" in rule_of(render(plain), plain)

    def test_the_rendered_table_is_accepted_by_nft(self) -> None:
        """``nft -c`` (check only) accepts a table with sets, filters and affinity."""
        import shutil
        import subprocess

        if shutil.which("nft") is None:
            pytest.skip("nft is not installed")
        restricted = msgspec.structs.replace(
            server("vipwire-a", "192.0.2.1", "192.0.2.2"),
            source_ranges=("10.0.0.0/8", "10.1.0.0/16"),
            affinity_timeout_s=60,
        )
        v6 = msgspec.structs.replace(
            server("vipwire-c", "2001:db8::1", address="2001:db8::10"),
            source_ranges=("2001:db8:1::/48",),
        )
        script = render(restricted, v6).replace('device "eth0"', 'device "lo"')
        # Checking only: the first two lines (declare, delete) need the table to exist.
        checked = "\n".join(script.splitlines()[2:])
        done = subprocess.run(
            ["nft", "-c", "-f", "-"], input=checked, text=True, capture_output=True, check=False
        )
        if done.returncode != 0 and "Operation not permitted" in done.stderr:
            pytest.skip("nft -c needs CAP_NET_ADMIN here")
        assert done.returncode == 0, done.stderr

    def test_a_draining_table_is_accepted_by_nft(self) -> None:
        """``nft -c`` accepts a drain's flow set (with carried-over flows), its three rules,
        beside source ranges and affinity."""
        import shutil
        import subprocess

        if shutil.which("nft") is None:
            pytest.skip("nft is not installed")
        drained = msgspec.structs.replace(
            server("vipwire-a", "192.0.2.1"),
            draining=(Member(node="node-192.0.2.2", address="192.0.2.2"),),
            source_ranges=("10.0.0.0/8",),
            affinity_timeout_s=60,
        )
        v6 = msgspec.structs.replace(
            server("vipwire-c", "2001:db8::1", address="2001:db8::10"),
            members=(),
            draining=(Member(node="node-v6", address="2001:db8::1"),),
        )
        flows = {flow_set("vipwire-a"): (("203.0.113.9", 40000, 30),)}
        script = render_partition(
            table="vipwire-east",
            device="lo",
            mac=OWN,
            servers={s.name: s for s in (drained, v6)},
            macs=MACS,
            flows=flows,
        )
        checked = "\n".join(script.splitlines()[2:])
        done = subprocess.run(
            ["nft", "-c", "-f", "-"], input=checked, text=True, capture_output=True, check=False
        )
        if done.returncode != 0 and "Operation not permitted" in done.stderr:
            pytest.skip("nft -c needs CAP_NET_ADMIN here")
        assert done.returncode == 0, done.stderr
