"""Node agent settings (validation, node from the environment) and the dry-run applier."""

from __future__ import annotations

import pytest

from vipwire.nodeagent import (
    AddAddress,
    AppliedState,
    ApplyError,
    DryRunApplier,
    InterfaceAddress,
    NodeagentSettings,
    ReplaceNftTable,
    SetSysctl,
    desired_state,
    make_applier,
    plan,
)
from vipwire.nodeagent.io.linux import LinuxApplier
from vipwire.runtime import ConfigError, section


class TestSettings:
    def test_defaults_are_a_dry_run_in_kube_proxy_mode_on_lo(self) -> None:
        """Only cluster and node need saying; the rest defaults safely."""
        s = section(
            {"nodeagent": {"cluster": "east", "node": "n1"}}, "nodeagent", NodeagentSettings
        )
        assert (s.mode, s.dry_run, s.loopback_interface, s.uplink_interface, s.nft_table) == (
            "kube-proxy",
            True,
            "lo",
            None,
            "vipwire",
        )
        assert 0 < s.coalesce_ms <= 100
        assert 0 < s.report_interval_s <= 1

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("cluster", "East_1"),
            ("node", "Node..a"),
            ("mode", "ipvs"),
            ("uplink_interface", "eth0/1"),
            ("loopback_interface", "a-name-far-too-long"),
            ("nft_table", "vip wire"),
            ("coalesce_ms", -1),
            ("report_interval_s", -0.5),
            ("report_interval_s", 3600),
            ("surprise", 1),
        ],
    )
    def test_a_bad_field_is_named_in_the_config_error(self, field: str, value: object) -> None:
        """Every invalid or unknown field fails decoding with its name in the message."""
        data = {"nodeagent": {"cluster": "east", "node": "n1", field: value}}
        with pytest.raises(ConfigError, match="nodeagent"):
            section(data, "nodeagent", NodeagentSettings)

    def test_old_duration_names_are_accepted_for_one_release(self) -> None:
        """resync_interval and report_interval still set the _s settings, with a warning each."""
        warned: list[str] = []
        s = section(
            {
                "nodeagent": {
                    "cluster": "e",
                    "node": "n",
                    "resync_interval": 5,
                    "report_interval": 2,
                }
            },
            "nodeagent",
            NodeagentSettings,
            warn=warned.append,
        )
        assert (s.resync_interval_s, s.report_interval_s) == (5.0, 2.0)
        assert len(warned) == 2 and all("_interval_s" in note for note in warned)

    def test_the_node_comes_from_the_environment_when_set(self) -> None:
        """$VIPWIRE_NODE (the DaemonSet's spec.nodeName) wins over the shared config."""
        s = NodeagentSettings(cluster="east", node="node-1")
        assert s.for_this_node({"VIPWIRE_NODE": "worker-7.dc1"}).node == "worker-7.dc1"
        assert s.for_this_node({}).node == "node-1"

    def test_no_node_at_all_is_an_error(self) -> None:
        """Without a node name from either source the agent refuses to start."""
        with pytest.raises(ValueError, match="VIPWIRE_NODE"):
            NodeagentSettings(cluster="east").for_this_node({})


class TestDryRunApplier:
    async def test_records_each_apply_and_simulates_its_effect(self) -> None:
        """Each non-empty apply is one history entry; the simulated state then needs nothing."""
        applier = DryRunApplier(
            AppliedState(
                addresses=(InterfaceAddress(interface="lo", address="127.0.0.1", prefix=8),)
            )
        )
        assert applier.dry_run
        desired = desired_state({}, {}, node="n1", mode="standalone")
        actions = plan(await applier.current(), desired)
        await applier.apply(actions)
        await applier.apply(())
        assert applier.writes == 1
        assert applier.history == [actions]
        assert any(isinstance(a, SetSysctl) for a in actions)
        assert any(isinstance(a, ReplaceNftTable) for a in actions)
        assert applier.nft_script is not None and "table inet vipwire {" in applier.nft_script
        assert plan(await applier.current(), desired) == ()
        assert applier.state.addresses[0].address == "127.0.0.1"

    async def test_an_injected_failure_changes_nothing(self) -> None:
        """A failing apply raises ApplyError and leaves state and history as they were."""
        applier = DryRunApplier(failures=1)
        action = AddAddress(interface="lo", address="192.0.2.10", prefix=32)
        with pytest.raises(ApplyError):
            await applier.apply([action])
        assert applier.history == [] and applier.state == AppliedState()
        await applier.apply([action])
        assert applier.state.addresses[0].owned

    def test_real_apply_builds_the_linux_applier_from_settings(self) -> None:
        """dry_run: false gives the Linux applier, aimed at the configured interfaces and netns."""
        assert isinstance(make_applier(NodeagentSettings(cluster="e", node="n")), DryRunApplier)
        settings = NodeagentSettings(
            cluster="e", node="n", dry_run=False, netns="lab-node-1", uplink_interface="eth0"
        )
        applier = make_applier(settings)
        assert isinstance(applier, LinuxApplier)
        assert not applier.dry_run
        assert (applier.netns, applier.interface, applier.table) == ("lab-node-1", "lo", "vipwire")

    def test_a_netns_name_must_be_a_plain_file_name(self) -> None:
        """A namespace name with a slash is refused when the config is read."""
        with pytest.raises(ConfigError, match="namespace"):
            section(
                {"nodeagent": {"cluster": "e", "node": "n", "netns": "../etc"}},
                "nodeagent",
                NodeagentSettings,
            )


def test_vip_ranges_must_be_cidrs() -> None:
    """nodeagent.vip_ranges takes CIDRs; a typo is an error naming the entry."""
    assert NodeagentSettings(cluster="east", vip_ranges=("192.0.2.0/24", "2001:db8::/64"))
    with pytest.raises(ValueError, match=r"vip_ranges: '192\.0\.2\.1/24'"):
        NodeagentSettings(cluster="east", vip_ranges=("192.0.2.1/24",))
