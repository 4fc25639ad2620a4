"""The operator commands reach a NATS server with TLS (mTLS) and a password the way the
services do (--config, flags, environment), and never show the password.

The server: ``tls {}`` with ``verify: true`` and ``authorization { user, password }``;
an ipam runs against it in-process (its log lines are checked too); every command is
the real ``vipwire`` CLI in a subprocess, and all it prints is checked. Then the same
commands log in with credentials files on a server with the generated permissions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import pytest

from support.secure_nats import SecuredNats
from vipwire.bus import BusSettings, TlsSettings
from vipwire.ipam import IpamService, IpamSettings, PoolSettings
from vipwire.natsserver import NatsServer, Pki
from vipwire.runtime import CommonSettings, Runtime

RuntimeFactory = Callable[[str], Awaitable[Runtime]]

PASSWORD = "Top-Secret-Pw"
WRONG_PASSWORD = "Wrong-Pw-4711"
SHOWN = "opsuser:***@"
POOL = PoolSettings(name="lab", addresses=("192.0.2.0/28",))
# Guards against a hang only: each command ends by itself.
HANG_GUARD_S = 60.0


@pytest.fixture
async def nats_server(pki: Pki, tmp_path: Path) -> AsyncIterator[NatsServer]:
    """Overrides the shared fixture: mTLS and a user with a password."""
    config = pki.server_config(verify=True) + (
        f'authorization {{ user: opsuser, password: "{PASSWORD}" }}\n'
    )
    server = NatsServer(tmp_path / "nats", extra_config=config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def url_with(server: NatsServer, password: str = PASSWORD) -> str:
    return f"nats://opsuser:{password}@127.0.0.1:{server.port}"


def client_tls(pki: Pki, ca: Path | None = None) -> TlsSettings:
    return TlsSettings(
        ca_file=str(ca or pki.ca_file),
        cert_file=str(pki.client_cert_file),
        key_file=str(pki.client_key_file),
    )


@pytest.fixture
def bus_settings(nats_server: NatsServer, pki: Pki) -> BusSettings:
    """Overrides the shared fixture: the runtimes connect with the password and mTLS."""
    return BusSettings(
        servers=(url_with(nats_server),),
        storage="memory",
        reconnect_wait_s=0.1,
        tls=client_tls(pki),
    )


@pytest.fixture
async def ipam(
    make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[IpamService]:
    caplog.set_level(logging.DEBUG)
    service = IpamService(IpamSettings(pools=(POOL,)), await make_runtime("ipam"))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def write_config(path: Path, servers: list[str], tls: TlsSettings, **sections: object) -> str:
    data = {"bus": {"servers": servers, "tls": msgspec.to_builtins(tls)}, **sections}
    path.write_text(msgspec.json.encode(data).decode())  # JSON is YAML
    return str(path)


async def vipwire(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, str]:
    """Run the real CLI; its exit code and everything it printed (stdout + stderr)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("VIPWIRE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vipwire.cli", *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**base, **(env or {})},
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), HANG_GUARD_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


def never_the_password(text: str) -> None:
    assert PASSWORD not in text and WRONG_PASSWORD not in text, text


async def test_the_services_logs_never_show_the_password(
    ipam: IpamService, caplog: pytest.LogCaptureFixture
) -> None:
    """A runtime connected with a password in its URL logs the URL as opsuser:***@."""
    records = caplog.get_records("setup") + caplog.get_records("call")
    text = "\n".join(r.getMessage() for r in records)
    assert f"connecting to NATS at nats://{SHOWN}" in text, text
    assert f"connected to NATS at nats://{SHOWN}" in text, text
    never_the_password(text)


async def test_commands_work_with_config_and_never_show_the_password(
    ipam: IpamService, nats_server: NatsServer, pki: Pki, tmp_path: Path
) -> None:
    """--config (servers with a password, tls with CA and client certificate): ipam status,
    replay answer; lb status fails (no lbdriver) naming the server as opsuser:***@; a wrong
    password fails; nothing printed shows either password."""
    config = write_config(tmp_path / "ops.yaml", [url_with(nats_server)], client_tls(pki))
    wrong = url_with(nats_server, WRONG_PASSWORD)
    (code, status), (lb_code, lb), (replay_code, replay), (bad_code, bad) = await asyncio.gather(
        vipwire("ipam", "status", "--config", config),
        vipwire("lb", "status", "--config", config),
        vipwire("replay", "--config", config, "--cluster", "east"),
        vipwire("ipam", "status", "--config", config, "--nats", wrong),
    )
    assert code == 0 and "lab" in status, status
    assert lb_code == 1 and f"no lbdriver is running behind nats://{SHOWN}" in lb, lb
    assert replay_code == 0, replay
    # The refusal is an Authorization Violation, or under load only the connection closed.
    assert bad_code in (2, 3) and f"cannot connect to NATS at nats://{SHOWN}" in bad, bad
    for text in (status, lb, replay, bad):
        never_the_password(text)


async def test_the_environment_wins_over_config_and_flags_over_the_environment(
    ipam: IpamService, nats_server: NatsServer, pki: Pki, other_pki: Pki, tmp_path: Path
) -> None:
    """VIPWIRE_NATS_URL replaces --config's (unreachable) servers; --nats replaces an
    unreachable VIPWIRE_NATS_URL; --tls-ca replaces --config's wrong CA, whose refusal
    names that CA file."""
    nowhere = "nats://127.0.0.1:1"
    tls_only = write_config(tmp_path / "tls.yaml", [nowhere], client_tls(pki))
    wrong_ca = write_config(
        tmp_path / "wrong-ca.yaml", [url_with(nats_server)], client_tls(pki, other_pki.ca_file)
    )
    right_ca = str(pki.ca_file)
    (env_code, env_out), (flag_code, flag_out), (ca_code, ca_out), (bad_code, bad_out) = (
        await asyncio.gather(
            vipwire(
                "ipam", "status", "--config", tls_only,
                env={"VIPWIRE_NATS_URL": url_with(nats_server)},
            ),
            vipwire(
                "ipam", "status", "--config", tls_only, "--nats", url_with(nats_server),
                env={"VIPWIRE_NATS_URL": nowhere},
            ),
            vipwire("ipam", "status", "--config", wrong_ca, "--tls-ca", right_ca),
            vipwire("ipam", "status", "--config", wrong_ca),
        )
    )  # fmt: skip
    assert env_code == 0 and "lab" in env_out, env_out
    assert flag_code == 0 and "lab" in flag_out, flag_out
    assert ca_code == 0 and "lab" in ca_out, ca_out
    assert bad_code == 2 and f"bus.tls.ca_file ({other_pki.ca_file})" in bad_out, bad_out
    for text in (env_out, flag_out, ca_out, bad_out):
        never_the_password(text)


async def test_vipwire_run_logs_the_url_without_its_password(
    nats_server: NatsServer, pki: Pki, tmp_path: Path
) -> None:
    """`vipwire run` with a password in bus.servers: its start and connection lines show
    opsuser:***@, never the password."""
    config = write_config(
        tmp_path / "vipwire.yaml",
        [url_with(nats_server)],
        client_tls(pki),
        nodeagent={"cluster": "east", "node": "node-a", "dry_run": True},
        telemetry={"log_level": "DEBUG"},
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vipwire.cli", "run", "nodeagent", "--config", config,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        # The fence: the line saying the connection is up.
        while not any("connected to NATS at" in line for line in seen):
            raw = await asyncio.wait_for(proc.stderr.readline(), HANG_GUARD_S)
            assert raw, "vipwire run ended before connecting:\n" + "".join(seen)
            seen.append(raw.decode())
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), HANG_GUARD_S)
    text = "".join(seen) + out.decode() + err.decode()
    assert f"connecting to NATS at nats://{SHOWN}" in text, text
    assert f"connected to NATS at nats://{SHOWN}" in text, text
    never_the_password(text)


@pytest.fixture
async def secured_ipam(secured_nats: SecuredNats) -> AsyncIterator[SecuredNats]:
    """An ipam logged in as itself on a server with the generated permissions."""
    runtime = Runtime("ipam", CommonSettings(bus=secured_nats.settings("ipam")))
    await runtime.start()
    service = IpamService(IpamSettings(pools=(POOL,)), runtime)
    try:
        await service.start()
        yield secured_nats
    finally:
        await service.stop()
        await runtime.stop()


async def test_commands_log_in_with_creds_env_or_config(
    secured_ipam: SecuredNats, tmp_path: Path
) -> None:
    """With permissions on: --creds (the operator), VIPWIRE_NATS_CREDS (the reader) and
    --config's bus.credentials each log in and get ipam's status; no credentials at all
    is refused, saying to check them."""
    s = secured_ipam
    operator, reader = str(s.creds("operator-admin")), str(s.creds("reader-viewer"))
    config = tmp_path / "ops.yaml"
    config.write_text(
        msgspec.json.encode({"bus": {"servers": [s.url], "credentials": operator}}).decode()
    )
    results = await asyncio.gather(
        vipwire("ipam", "status", "--nats", s.url, "--creds", operator),
        vipwire(
            "ipam", "status",
            env={"VIPWIRE_NATS_URL": s.url, "VIPWIRE_NATS_CREDS": reader},
        ),
        vipwire("ipam", "status", "--config", str(config)),
        vipwire("ipam", "status", "--nats", s.url),
    )  # fmt: skip
    (creds_code, creds), (env_code, env), (config_code, configured), (none_code, none) = results
    assert creds_code == 0 and "lab" in creds, creds
    assert env_code == 0 and "lab" in env, env
    assert config_code == 0 and "lab" in configured, configured
    assert none_code == 2 and "refused our identity" in none, none
