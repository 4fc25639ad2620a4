"""lbdriver settings: decoded from the config section, refused when unusable."""

from __future__ import annotations

import pytest

from vipwire.lbdriver import ApplianceSettings, LbdriverSettings, SimAppliance, build_driver
from vipwire.lbdriver.core.placement import pick_appliance
from vipwire.runtime import ConfigError, section


def test_section_decodes_appliances_and_defaults() -> None:
    """A minimal section gives one sim appliance in the default group."""
    settings = section(
        {"lbdriver": {"appliances": [{"name": "sim-a"}]}}, "lbdriver", LbdriverSettings
    )
    assert settings.appliances == (ApplianceSettings(name="sim-a"),)
    assert settings.appliances[0].group == "default"
    assert settings.prefix == "vipwire"
    assert settings.coalesce_window_ms > 0


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({}, "appliances"),
        ({"appliances": []}, "at least one appliance"),
        ({"appliances": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"appliances": [{"name": "a", "driver": "f5"}]}, "driver"),
        ({"appliances": [{"name": "a", "fail_rate": 2}]}, "fail_rate"),
        ({"appliances": [{"name": "a b"}]}, "appliance name"),
        ({"appliances": [{"name": "a"}], "prefix": "vip-wire"}, "prefix"),
        ({"appliances": [{"name": "a"}], "coalesce_window_ms": -1}, "coalesce_window_ms"),
        ({"appliances": [{"name": "a"}], "surprise": 1}, "surprise"),
        ({"appliances": [{"name": "a"}], "lease_renew_s": 2.6}, "lease_renew_s"),
        ({"appliances": [{"name": "a"}], "lease_name": "a.b"}, "lease_name"),
        ({"appliances": [{"name": "a"}], "node_networks": ["10.0.0.1/8"]}, "node_networks"),
        (
            {"appliances": [{"name": "a"}], "node_networks": {"east": ["nope"]}},
            "node_networks.east",
        ),
    ],
)
def test_unusable_sections_are_refused_with_the_reason(data: dict[str, object], error: str) -> None:
    """Missing or duplicate appliances, unknown drivers and bad values fail at load."""
    with pytest.raises(ConfigError, match=error):
        section({"lbdriver": data}, "lbdriver", LbdriverSettings)


def test_groups_keep_configured_order_and_pick_the_first_healthy() -> None:
    """Within a group the first appliance not known unreachable is chosen."""
    settings = LbdriverSettings(
        appliances=(
            ApplianceSettings(name="a1", group="dc1"),
            ApplianceSettings(name="b1", group="dc2"),
            ApplianceSettings(name="a2", group="dc1"),
        )
    )
    group = settings.group("dc1")
    assert [a.name for a in group] == ["a1", "a2"]
    assert pick_appliance(group, set()) == group[0]
    assert pick_appliance(group, {"a1"}) == group[1]
    assert pick_appliance(group, {"a1", "a2"}) == group[0]
    assert pick_appliance(settings.group("nowhere"), set()) is None


def test_sim_driver_is_built_from_settings() -> None:
    """A ``sim`` appliance is built as a SimAppliance with its options."""
    driver = build_driver(ApplianceSettings(name="s", api_latency_ms=3, fail_rate=0.5, seed=7))
    assert isinstance(driver, SimAppliance)
    assert (driver.name, driver.api_latency_ms, driver.fail_rate) == ("s", 3, 0.5)


def test_reconciler_defaults_and_their_bounds() -> None:
    """Coalescing, retries, breaker, drift and rate limit have usable defaults and refuse
    values that cannot work."""
    s = LbdriverSettings(appliances=(ApplianceSettings(name="a"),))
    assert 0 < s.coalesce_quiet_ms <= s.coalesce_window_ms
    assert s.breaker_failures >= 1 and 0 <= s.retry_jitter <= 1
    assert s.unhealthy_cooldown_s <= s.unhealthy_max_cooldown_s
    assert s.verify_interval_s > 0 and s.release_standby
    assert s.appliances[0].max_requests_per_s > 0 and s.appliances[0].request_burst >= 1
    for data, error in (
        ({"breaker_failures": 0}, "breaker_failures"),
        ({"retry_jitter": 1.5}, "retry_jitter"),
        ({"unhealthy_cooldown_s": 10, "unhealthy_max_cooldown_s": 5}, "unhealthy_max_cooldown_s"),
        ({"verify_interval_s": -1}, "verify_interval_s"),
        ({"appliances": [{"name": "a", "request_burst": 0}]}, "request_burst"),
    ):
        with pytest.raises(ConfigError, match=error):
            section(
                {"lbdriver": {"appliances": [{"name": "a"}], **data}}, "lbdriver", LbdriverSettings
            )
