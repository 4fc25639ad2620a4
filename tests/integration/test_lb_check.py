"""``vipwire lb check`` against the appliance emulators: healthy, and each way a box is
not ready (missing partition, partition without a VLAN, rights, old release)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.appliances import CLUSTER, by_name, converge, server
from vipwire.applianceemu import A10Emulator, F5Emulator
from vipwire.cli.lb import check_command
from vipwire.lbdriver import ApplianceSettings, build_driver

PASSWORD = "s3cret"


@pytest.fixture
async def f5() -> AsyncIterator[F5Emulator]:
    emulator = F5Emulator(username="vip", password=PASSWORD)
    await emulator.start()
    yield emulator
    await emulator.stop()


@pytest.fixture
async def a10() -> AsyncIterator[A10Emulator]:
    emulator = A10Emulator(username="vip", password=PASSWORD)
    await emulator.start()
    emulator.add_partition(CLUSTER, vlans=(100,))
    yield emulator
    await emulator.stop()


def appliance(tmp_path: Path, driver: str, url: str, **extra: Any) -> dict[str, Any]:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    return {
        "name": f"{driver}-1",
        "driver": driver,
        "address": url,
        "username": "vip",
        "password_file": str(secret),
        "verify_tls": False,
        **extra,
    }


async def check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *appliances: dict[str, Any]
) -> tuple[int, dict[tuple[str, str], dict[str, str]]]:
    """Run the command (JSON); its exit code and the checks by (appliance, check)."""
    config = tmp_path / "vipwire.yaml"
    config.write_text(yaml.safe_dump({"lbdriver": {"appliances": list(appliances)}}))
    code = await check_command(str(config), clusters=[CLUSTER], as_json=True, timeout=5)
    checks = json.loads(capsys.readouterr().out)
    # The last word per check (objects may carry a warning and a count).
    return code, {(c["appliance"], c["check"]): c for c in checks}


async def program(settings: dict[str, Any]) -> None:
    """Program one virtual server with the driver, as the lbdriver would have."""
    driver = build_driver(ApplianceSettings(**settings))
    try:
        await converge(driver, by_name(server()))
    finally:
        await driver.close()


async def test_a_healthy_f5_passes_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], f5: F5Emulator
) -> None:
    """Every check passes, our virtual server is counted, and the check writes nothing."""
    settings = appliance(tmp_path, "f5", f5.url)
    await program(settings)
    writes = f5.writes
    code, checks = await check(tmp_path, capsys, settings)
    assert code == 0
    assert {c["verdict"] for c in checks.values()} == {"passed"}, checks
    assert "1 virtual server(s) in prod owned by vipwire" in checks["f5-1", "objects"]["detail"]
    assert checks["f5-1", "version"]["detail"] == "release 17.1.0"
    assert f5.writes == writes


async def test_a_healthy_a10_passes_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], a10: A10Emulator
) -> None:
    """Login, release, write privilege, the partition and its VLAN: all passed, no write."""
    settings = appliance(tmp_path, "a10", a10.url)
    await program(settings)
    writes, saved = a10.writes, len(a10.memory_writes)
    code, checks = await check(tmp_path, capsys, settings)
    assert code == 0
    assert {c["verdict"] for c in checks.values()} == {"passed"}, checks
    assert "1 VLAN(s)" in checks["a10-1", "interface"]["detail"]
    assert "owned by vipwire" in checks["a10-1", "objects"]["detail"]
    assert (a10.writes, len(a10.memory_writes)) == (writes, saved)


async def test_a_missing_a10_partition_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], a10: A10Emulator
) -> None:
    """partition_mode existing (the default) and no partition: failed, and not created."""
    settings = appliance(tmp_path, "a10", a10.url, partitions={CLUSTER: "other"})
    code, checks = await check(tmp_path, capsys, settings)
    assert code == 1
    part = checks["a10-1", "partition"]
    assert part["verdict"] == "failed"
    assert "partition other does not exist" in part["detail"]
    assert "other" not in a10.partitions


async def test_a_missing_f5_partition_fails_for_a_user_who_cannot_create_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], f5: F5Emulator
) -> None:
    """An admin's missing partition is a warning (vipwire creates it); a manager's fails."""
    settings = appliance(tmp_path, "f5", f5.url)
    code, checks = await check(tmp_path, capsys, settings)
    assert (code, checks["f5-1", "partition"]["verdict"]) == (0, "warned")
    f5.user_roles = {"all-partitions": "manager"}
    code, checks = await check(tmp_path, capsys, settings)
    assert code == 1
    assert checks["f5-1", "partition"]["verdict"] == "failed"
    assert "cannot create it" in checks["f5-1", "partition"]["detail"]
    assert CLUSTER not in f5.partitions


async def test_an_a10_partition_without_an_interface_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], a10: A10Emulator
) -> None:
    """An L3V partition with no VLAN: its VIPs could not ARP."""
    a10.add_partition("bare")
    settings = appliance(tmp_path, "a10", a10.url, partitions={CLUSTER: "bare"})
    code, checks = await check(tmp_path, capsys, settings)
    assert code == 1
    assert checks["a10-1", "interface"]["verdict"] == "failed"
    assert "has no VLAN" in checks["a10-1", "interface"]["detail"]


async def test_insufficient_rights_fail_on_both_vendors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], f5: F5Emulator, a10: A10Emulator
) -> None:
    """An F5 operator and an A10 read-only admin: failed, saying which role to give."""
    f5.user_roles = {"all-partitions": "operator"}
    a10.privilege = "read"
    code, checks = await check(
        tmp_path,
        capsys,
        appliance(tmp_path, "f5", f5.url),
        {**appliance(tmp_path, "a10", a10.url), "name": "a10-1"},
    )
    assert code == 1
    assert checks["f5-1", "rights"]["verdict"] == "failed"
    assert "role 'operator'" in checks["f5-1", "rights"]["detail"]
    assert checks["a10-1", "rights"]["verdict"] == "failed"
    assert "privilege-global write" in checks["a10-1", "rights"]["action"]


async def test_an_old_release_warns_or_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], f5: F5Emulator, a10: A10Emulator
) -> None:
    """ACOS 4.0 lacks user-tag (failed: the driver refuses it); BIG-IP 13.1 lacks
    traffic-matching-criteria (warned, exit 0); BIG-IP 11.6 is too old (failed)."""
    a10.version = "4.0.3-P2"
    code, checks = await check(tmp_path, capsys, appliance(tmp_path, "a10", a10.url))
    assert code == 1
    assert checks["a10-1", "version"]["verdict"] == "failed"
    assert "older than 4.1" in checks["a10-1", "version"]["detail"]
    f5.version = "13.1.3"
    code, checks = await check(tmp_path, capsys, appliance(tmp_path, "f5", f5.url))
    assert code == 0
    assert checks["f5-1", "version"]["verdict"] == "warned"
    assert "source ranges" in checks["f5-1", "version"]["detail"]
    f5.version = "11.6.1"
    code, checks = await check(tmp_path, capsys, appliance(tmp_path, "f5", f5.url))
    assert code == 1
    assert checks["f5-1", "version"]["verdict"] == "failed"


async def test_a_wrong_password_fails_the_login_without_showing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], f5: F5Emulator
) -> None:
    """The login check fails, names the user and not the password."""
    f5.set_credentials("vip", "rotated")
    code, checks = await check(tmp_path, capsys, appliance(tmp_path, "f5", f5.url))
    assert code == 1
    login = checks["f5-1", "login"]
    assert login["verdict"] == "failed" and "'vip'" in login["detail"]
    assert PASSWORD not in json.dumps(list(checks.values()))


async def test_the_table_names_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], a10: A10Emulator
) -> None:
    """Without --json: one row per check, the action under a failed one, a summary."""
    a10.add_partition("bare")
    settings = appliance(tmp_path, "a10", a10.url, partitions={CLUSTER: "bare"})
    config = tmp_path / "vipwire.yaml"
    config.write_text(yaml.safe_dump({"lbdriver": {"appliances": [settings]}}))
    assert await check_command(str(config), clusters=[CLUSTER], timeout=5) == 1
    out = capsys.readouterr().out
    assert "interface  FAILED" in out
    assert "-> add a VLAN with a VE" in out
    assert out.rstrip().endswith("1 failed")


async def test_the_simulator_answers_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sim appliance passes login, rights and objects."""
    code, checks = await check(tmp_path, capsys, {"name": "sim-a", "driver": "sim"})
    assert code == 0
    assert sorted(check for _, check in checks) == ["login", "objects", "rights"]


def test_the_command_line_runs_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``vipwire lb check --config F --appliance A`` is wired to the check; an unknown
    appliance is a usage error (2) naming the configured ones."""
    from vipwire.cli.main import main

    config = tmp_path / "vipwire.yaml"
    config.write_text(
        yaml.safe_dump(
            {"lbdriver": {"appliances": [{"name": "sim-a"}, {"name": "sim-b", "group": "b"}]}}
        )
    )
    assert main(["lb", "check", "--config", str(config), "--appliance", "sim-b"]) == 0
    out = capsys.readouterr().out
    assert "sim-b" in out and "sim-a" not in out
    assert main(["lb", "check", "--config", str(config), "--appliance", "nope"]) == 2
    assert "configured: sim-a, sim-b" in capsys.readouterr().err


async def test_a_missing_f5_route_domain_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], f5: F5Emulator
) -> None:
    """route_domain 7 on a box without it fails; the partition's default one is checked
    when route_domain is unset."""
    f5.plant_partition(CLUSTER, default_route_domain=3)
    code, checks = await check(tmp_path, capsys, appliance(tmp_path, "f5", f5.url, route_domain=7))
    assert code == 1
    assert checks["f5-1", "route-domain"]["verdict"] == "failed"
    assert "route domain 7 does not exist" in checks["f5-1", "route-domain"]["detail"]
    code, checks = await check(tmp_path, capsys, appliance(tmp_path, "f5", f5.url))
    assert "route domain 3 does not exist" in checks["f5-1", "route-domain"]["detail"]
    emu = F5Emulator(username="vip", password=PASSWORD, route_domains=(7,))
    await emu.start()
    try:
        code, checks = await check(
            tmp_path, capsys, appliance(tmp_path, "f5", emu.url, route_domain=7)
        )
    finally:
        await emu.stop()
    assert checks["f5-1", "route-domain"]["verdict"] == "passed"
