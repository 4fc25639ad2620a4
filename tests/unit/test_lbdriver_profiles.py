"""Appliance profiles: settings, the desired state they shape, and each vendor's objects."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from vipwire.cli.main import main
from vipwire.contracts import NodeSnapshot, ServicePort, VipAssigned
from vipwire.lbdriver import (
    InvalidAssignment,
    Monitor,
    UpdateMembers,
    UpdateVirtualServer,
    desired_virtual_servers,
    diff,
)
from vipwire.lbdriver.core.desired import with_profile
from vipwire.lbdriver.core.profiles import (
    BUILTIN_PROFILE,
    HealthMonitorSettings,
    ProfileSettings,
)
from vipwire.lbdriver.io.drivers import a10, f5
from vipwire.lbdriver.io.profiles import load_profiles
from vipwire.runtime import ConfigError

FAST = ProfileSettings(
    monitor=HealthMonitorSettings(kind="tcp", interval_s=2, timeout_s=7),
    idle_timeout_s=30,
    connection_limit=5000,
    lb_method="least-connections",
    all_members_down="reset",
)
PROFILES = {"fast": FAST, "plain": ProfileSettings()}
NODES = {
    "n1": NodeSnapshot(cluster="prod", node="n1", addresses=("198.51.100.1",)),
    "n2": NodeSnapshot(cluster="prod", node="n2", addresses=("198.51.100.2",)),
}


def assigned(profile: str | None = None, ports: tuple[int, ...] = (80, 443)) -> VipAssigned:
    return VipAssigned(
        cluster="prod",
        namespace="shop",
        name="web",
        uid="u1",
        vips=("192.0.2.10",),
        pool="default",
        appliance_group="default",
        ports=tuple(ServicePort(port=p) for p in ports),
        profile=profile,
    )


def desired(profile: str | None = None, nodes: dict[str, NodeSnapshot] = NODES) -> dict:  # type: ignore[type-arg]
    return desired_virtual_servers(
        assigned(profile), nodes, None, prefix="vipwire", profiles=PROFILES
    )


# --- settings ------------------------------------------------------------------------


def test_the_builtin_profile_is_the_monitor_that_was_fixed_in_code() -> None:
    """No profile: HTTP GET /healthz on kube-proxy's port every 5 s, down after 16 s, no options."""
    for server in desired(None).values():
        assert server.monitor == Monitor(port=10256)
        assert server.monitor.kind == "http"
        assert (server.monitor.path, server.monitor.interval_s, server.monitor.timeout_s) == (
            "/healthz",
            5,
            16,
        )
        assert server.idle_timeout_s is None and server.connection_limit is None
        assert (server.lb_method, server.all_members_down) == ("round-robin", "none")
    assert ProfileSettings() == BUILTIN_PROFILE


def test_a_timeout_not_above_the_interval_is_refused() -> None:
    """A member would be down between two probes: the profile is refused, naming both."""
    with pytest.raises(ValueError, match=r"timeout_s \(5\) must be more than interval_s \(5\)"):
        HealthMonitorSettings(interval_s=5, timeout_s=5)


def test_load_profiles_decodes_and_names_the_bad_field() -> None:
    """The top-level profiles section decodes by name; an error names profiles.<name>.<field>."""
    data = {"profiles": {"fast": {"monitor": {"kind": "tcp", "interval_s": 2, "timeout_s": 7}}}}
    assert load_profiles(data)["fast"].monitor.kind == "tcp"
    assert load_profiles({}) == {}
    with pytest.raises(ConfigError, match=r"profiles\.slow"):
        load_profiles({"profiles": {"slow": {"lb_method": "random"}}})
    with pytest.raises(ConfigError, match="DNS label"):
        load_profiles({"profiles": {"Fast": {}}})
    with pytest.raises(ConfigError, match="path"):
        load_profiles({"profiles": {"x": {"monitor": {"path": "healthz"}}}})


# --- desired state -----------------------------------------------------------------------


def test_a_profile_shapes_every_virtual_server_of_the_service() -> None:
    """Monitor kind and timing, idle timeout, limit, method and all-down action on each port."""
    servers = desired("fast")
    assert len(servers) == 2
    for server in servers.values():
        assert server.monitor == Monitor(port=10256, path="", kind="tcp", interval_s=2, timeout_s=7)
        assert (server.idle_timeout_s, server.connection_limit) == (30, 5000)
        assert (server.lb_method, server.all_members_down) == ("least-connections", "reset")


def test_an_unknown_profile_is_an_invalid_assignment_listing_the_profiles() -> None:
    """A name the lbdriver's config lacks cannot be programmed; the error lists what exists."""
    with pytest.raises(InvalidAssignment, match=r"'gold'.*profiles: fast, plain"):
        desired("gold")


def test_without_configured_profiles_every_name_is_the_builtin_one() -> None:
    """Callers that need members only (replay) pass no profiles: nothing is refused."""
    servers = desired_virtual_servers(assigned("gold"), NODES, None, prefix="vipwire")
    assert all(s.monitor == Monitor(port=10256) for s in servers.values())


def test_a_profile_change_is_one_update_per_virtual_server() -> None:
    """Switching profile rewrites each virtual server once, never members alone."""
    before, after = desired(None), desired("fast")
    ops = diff(after, before, "vipwire")
    assert [type(op) for op in ops] == [UpdateVirtualServer, UpdateVirtualServer]
    # Members and profile changing together are still one write each.
    fewer = desired_virtual_servers(
        assigned("fast"), {"n1": NODES["n1"]}, None, prefix="vipwire", profiles=PROFILES
    )
    ops = diff(fewer, before, "vipwire")
    assert [type(op) for op in ops] == [UpdateVirtualServer, UpdateVirtualServer]
    assert not any(isinstance(op, UpdateMembers) for op in ops)


def test_with_profile_gives_what_desired_gives() -> None:
    """The helper the vendor suites use shapes a server exactly as the desired state does."""
    plain = desired(None)
    shaped = desired("fast")
    for name, server in plain.items():
        assert with_profile(server, FAST) == shaped[name]


# --- F5: the objects BIG-IP gets -------------------------------------------------------------


def one(profile: ProfileSettings):  # type: ignore[no-untyped-def]
    return with_profile(next(iter(desired(None).values())), profile)


def test_f5_monitor_kinds() -> None:
    """http/https send a GET of the path; tcp only connects; all probe the health port."""
    http = f5.monitor_body(one(ProfileSettings()))
    assert http["defaultsFrom"] == "/Common/http"
    assert http["destination"] == "*:10256"
    assert (http["interval"], http["timeout"]) == (5, 16)
    assert http["send"].startswith("GET /healthz HTTP/1.0")
    https = f5.monitor_body(
        one(ProfileSettings(monitor=HealthMonitorSettings(kind="https", path="/ready")))
    )
    assert https["defaultsFrom"] == "/Common/https"
    assert https["send"].startswith("GET /ready ")
    tcp = f5.monitor_body(one(FAST))
    assert tcp["defaultsFrom"] == "/Common/tcp"
    assert (tcp["interval"], tcp["timeout"]) == (2, 7)
    assert "send" not in tcp and "recv" not in tcp


def test_f5_pool_and_virtual_fields() -> None:
    """Method, all-down action, connection limit, and the fastL4 profile with the idle timeout."""
    s = one(FAST)
    assert f5.profile_pool_fields("prod", s) == {
        "monitor": f"/prod/{s.name}-mon-tcp",
        "loadBalancingMode": "least-connections-member",
        "serviceDownAction": "reset",
    }
    assert f5.profile_virtual_fields("prod", s) == {
        "profiles": [{"name": "/prod/vipwire-fastl4-dsr-idle30"}],
        "connectionLimit": 5000,
    }
    assert f5.fastl4_body("prod", 30)["idleTimeout"] == 30
    builtin = one(ProfileSettings())
    assert f5.profile_pool_fields("prod", builtin)["loadBalancingMode"] == "round-robin"
    assert f5.profile_pool_fields("prod", builtin)["serviceDownAction"] == "none"
    assert f5.profile_virtual_fields("prod", builtin) == {
        "profiles": [{"name": "/prod/vipwire-fastl4-dsr"}],
        "connectionLimit": 0,
    }
    assert "idleTimeout" not in f5.fastl4_body("prod", None)
    none = one(ProfileSettings(monitor=HealthMonitorSettings(kind="none")))
    assert f5.profile_pool_fields("prod", none)["monitor"] == ""


# --- A10: the objects ACOS gets ----------------------------------------------------------------


def test_a10_builtin_monitor_is_what_was_programmed_before() -> None:
    """The built-in 5 s / 16 s is ACOS's interval 5, timeout 5, retry 3 as before profiles."""
    body = a10.monitor_body("m", one(ProfileSettings()).monitor)
    assert (body["interval"], body["timeout"], body["retry"]) == (5, 5, 3)
    assert body["override-port"] == 10256
    assert body["method"]["http"]["url-path"] == "/healthz"
    assert body["user-tag"] == "vipwire timeout_s=16"


def test_a10_monitor_kinds_and_limits() -> None:
    """tcp is method-tcp on the health port; retries stay within ACOS's 1-10, probes 1-12 s."""
    body = a10.monitor_body("m", one(FAST).monitor)
    assert body["method"] == {"tcp": {"method-tcp": 1, "tcp-port": 10256}}
    assert (body["interval"], body["timeout"], body["retry"]) == (2, 2, 3)
    slow = HealthMonitorSettings(kind="https", interval_s=60, timeout_s=900)
    body = a10.monitor_body("m", one(ProfileSettings(monitor=slow)).monitor)
    assert set(body["method"]) == {"https"}
    assert body["method"]["https"]["web-port"] == 10256
    assert (body["timeout"], body["retry"]) == (12, 10)


def test_a10_service_group_and_virtual_port_fields() -> None:
    """lc-method for least connections, health-check-disable without monitor, port options."""
    s = one(FAST)
    assert a10.service_group_fields("mon", s) == {
        "health-check": "mon",
        "lc-method": "least-connection",
    }
    assert a10.virtual_port_fields("vipwire", s) == {
        "conn-limit": 5000,
        "reset-on-server-selection-fail": 1,
        "def-selection-if-pref-failed": "def-selection-if-pref-failed",
        "template-tcp": "vipwire-idle30",
    }
    none = one(ProfileSettings(monitor=HealthMonitorSettings(kind="none"), all_members_down="drop"))
    assert a10.service_group_fields("mon", none) == {
        "health-check-disable": 1,
        "lb-method": "round-robin",
    }
    udp = msgspec.structs.replace(none, protocol="UDP")
    assert a10.virtual_port_fields("vipwire", udp) == {
        "conn-limit": a10.CONN_LIMIT_NONE,
        "reset-on-server-selection-fail": 0,
        "def-selection-if-pref-failed": "def-selection-if-pref-failed-disable",
        "template-udp": "default",
    }


# --- vipwire config check ----------------------------------------------------------------------


def test_config_check_reads_profiles_and_each_pools_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A profiles section and pools naming its profiles pass; a pool naming a missing
    profile, or a bad profile field, exits 2 naming it."""
    pools = "ipam:\n  pools:\n    - {name: lab, addresses: [192.0.2.0/28], profile: %s}\n"
    good = tmp_path / "good.yaml"
    good.write_text("profiles:\n  fast: {lb_method: least-connections}\n" + pools % "fast")
    assert main(["config", "check", str(good)]) == 0
    assert "profiles" in capsys.readouterr().out
    missing = tmp_path / "missing.yaml"
    missing.write_text("profiles:\n  fast: {}\n" + pools % "gold")
    assert main(["config", "check", str(missing)]) == 2
    assert "profile 'gold' is not in the top-level profiles section" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles:\n  fast: {monitor: {kind: icmp}}\n")
    assert main(["config", "check", str(bad)]) == 2
    assert "profiles.fast" in capsys.readouterr().err
