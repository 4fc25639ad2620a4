"""Standalone node agents: source ranges filtered on the node, ClientIP affinity in the DNAT."""

from __future__ import annotations

import shutil
import subprocess

import msgspec
import pytest

from unit.test_nodeagent_desired import eps, lb, pod, programmed, standalone
from vipwire.contracts import LbProgrammed
from vipwire.nodeagent.core.desired import allowed_sources, render_nft


def restricted(ranges: tuple[str, ...], affinity: int | None = None) -> LbProgrammed:
    return msgspec.structs.replace(
        lb("web", "192.0.2.10", "2001:db8::10"),
        source_ranges=ranges,
        affinity_timeout_s=affinity,
    )


def test_each_rule_gets_its_familys_ranges_merged_and_a_left_out_family_is_closed() -> None:
    """Overlapping ranges are merged (nft refuses overlaps); an IPv4-only list closes IPv6."""
    assert allowed_sources(("10.0.0.0/8", "10.1.0.0/16", "192.0.2.0/24"), 4) == (
        "10.0.0.0/8",
        "192.0.2.0/24",
    )
    assert allowed_sources(("10.0.0.0/8",), 6) == ("::/128",)
    assert allowed_sources((), 4) == ()


def test_a_restricted_vip_port_is_filtered_before_dnat_even_without_endpoints() -> None:
    """The sources chain drops other sources to the VIP:port whether or not it has backends."""
    state = standalone(programmed(restricted(("203.0.113.0/24",))), {})
    assert state.nft is not None
    script = render_nft(state.nft)
    assert "type filter hook prerouting priority mangle; policy accept;" in script
    assert (
        'ip daddr 192.0.2.10 tcp dport 80 ip saddr != { 203.0.113.0/24 } drop comment "default/web"'
    ) in script
    assert "ip6 daddr 2001:db8::10 tcp dport 80 ip6 saddr != { ::/128 } drop" in script
    opened = standalone(programmed(restricted(())), {}).nft
    assert opened is not None
    open_script = render_nft(opened)
    assert "saddr !=" not in open_script


def test_affinity_picks_the_backend_by_the_clients_address() -> None:
    """ClientIP: jhash of the source address picks the backend; without it, numgen random."""
    snaps = {"default/web": eps("web", {"node-a.example.com": (pod("10.0.0.5"), pod("10.0.0.6"))})}
    sticky = standalone(programmed(restricted((), 60)), snaps)
    assert sticky.nft is not None
    assert "to jhash ip saddr mod 2 map" in render_nft(sticky.nft)
    plain = standalone(programmed(restricted(())), snaps)
    assert plain.nft is not None
    assert "to numgen random mod 2 map" in render_nft(plain.nft)
    assert sticky.nft.digest != plain.nft.digest


def test_the_rendered_table_is_accepted_by_nft() -> None:
    """``nft -c`` accepts the table with its sources chain and sticky DNAT."""
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed")
    snaps = {"default/web": eps("web", {"node-a.example.com": (pod("10.0.0.5"), pod("10.0.0.6"))})}
    state = standalone(programmed(restricted(("203.0.113.0/24", "2001:db8:1::/48"), 60)), snaps)
    assert state.nft is not None
    checked = "\n".join(render_nft(state.nft).splitlines()[2:])
    done = subprocess.run(
        ["nft", "-c", "-f", "-"], input=checked, text=True, capture_output=True, check=False
    )
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        pytest.skip("nft -c needs CAP_NET_ADMIN here")
    assert done.returncode == 0, done.stderr
