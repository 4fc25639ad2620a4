"""The bus over TLS with client certificates (mTLS) against a nats-server with
``verify: true``: the stack converges; a wrong CA or a missing client certificate
stops a client at once with a message naming what to fix."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry import trace

from vipwire.allinone import Stack, StackSettings
from vipwire.bus import BusSettings, TlsError, TlsSettings, connect, connect_client
from vipwire.metrics import Registry
from vipwire.natsserver import NatsServer, Pki, make_pki
from vipwire.testing import eventually

# Guards against a hang only: each test waits on the error or the exit itself.
HANG_GUARD_S = 60.0


@pytest.fixture
async def tls_server(pki: Pki, tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path / "nats", extra_config=pki.server_config(verify=True))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def mtls(pki: Pki, *, ca: Path | None = None) -> TlsSettings:
    return TlsSettings(
        ca_file=str(ca or pki.ca_file),
        cert_file=str(pki.client_cert_file),
        key_file=str(pki.client_key_file),
    )


async def _connect(server: NatsServer, tls: TlsSettings) -> None:
    """connect() as a service does it: retrying forever (attempts=None) on network errors."""
    settings = BusSettings(servers=(server.url,), tls=tls, reconnect_wait_s=0.1)
    bus = await asyncio.wait_for(
        connect(settings, name="t", tracer=trace.get_tracer("t"), metrics=Registry()),
        HANG_GUARD_S,
    )
    await bus.close()


async def test_the_stack_converges_over_mtls(tmp_path: Path) -> None:
    """`vipwire up --tls`'s stack: nats-server with verify: true, every component with the
    CA's client certificate; a Service gets its VIP, and a client without TLS settings
    is refused."""
    settings = StackSettings(
        state_dir=str(tmp_path), clusters=1, nodes=1, dashboard_port=None, tls=True
    )
    async with Stack(settings) as stack:
        assert "verify: true" in (tmp_path / "jetstream" / "nats-server.conf").read_text()
        await stack.wait_ready(30)
        await stack.create_service("east", "web")
        await eventually(lambda: stack.ingress_ips("east", "web"), 15, what="east/web has a VIP")
        with pytest.raises(TlsError):
            await connect_client(BusSettings(servers=stack.nats.urls), name="t", timeout=5.0)


async def test_mtls_with_the_right_ca_connects(tls_server: NatsServer, pki: Pki) -> None:
    """The CA's client certificate and the CA: connected."""
    await _connect(tls_server, mtls(pki))


async def test_a_wrong_ca_stops_connect_with_the_ca_file_named(
    tls_server: NatsServer, pki: Pki, other_pki: Pki
) -> None:
    """A CA that did not sign the server's certificate: TlsError at once (no retrying
    forever), naming bus.tls.ca_file and the file."""
    with pytest.raises(TlsError) as err:
        await _connect(tls_server, mtls(pki, ca=other_pki.ca_file))
    said = str(err.value)
    assert f"bus.tls.ca_file ({other_pki.ca_file})" in said
    assert "not accepted" in said


async def test_a_client_without_a_certificate_is_refused_clearly(
    tls_server: NatsServer, pki: Pki
) -> None:
    """The right CA but no client certificate: TlsError saying to set bus.tls.cert_file."""
    with pytest.raises(TlsError) as err:
        await _connect(tls_server, TlsSettings(ca_file=str(pki.ca_file)))
    assert "bus.tls.cert_file and bus.tls.key_file" in str(err.value)


async def test_a_server_without_tls_is_refused_when_tls_is_set(pki: Pki, tmp_path: Path) -> None:
    """bus.tls set, and a server that does not ask for TLS (nats-py would go on in clear):
    TlsError saying so, not a connection that skipped the certificate check."""
    async with NatsServer(tmp_path / "plain") as plain:
        with pytest.raises(TlsError) as err:
            await _connect(plain, mtls(pki))
    assert "did not offer TLS" in str(err.value)


async def test_vipwire_run_exits_with_one_line_on_a_wrong_ca(
    tls_server: NatsServer, pki: Pki, other_pki: Pki, tmp_path: Path
) -> None:
    """`vipwire run` with a wrong CA exits 2 with one line naming the CA file: no
    traceback, no retrying forever."""
    config = tmp_path / "vipwire.yaml"
    config.write_text(
        f"bus:\n  servers: [{tls_server.url!r}]\n  storage: memory\n"
        f"  tls:\n    ca_file: {str(other_pki.ca_file)!r}\n"
        f"    cert_file: {str(pki.client_cert_file)!r}\n"
        f"    key_file: {str(pki.client_key_file)!r}\n"
        "nodeagent:\n  cluster: east\n  node: node-a\n  dry_run: true\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vipwire.cli", "run", "nodeagent", "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(proc.communicate(), HANG_GUARD_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = err.decode()
    assert proc.returncode == 2, text
    assert "Traceback" not in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("vipwire run nodeagent: cannot connect to NATS at "), text
    assert f"bus.tls.ca_file ({other_pki.ca_file})" in last


def test_the_throwaway_ca_is_kept_and_its_keys_are_private(pki: Pki) -> None:
    """make_pki again on the same directory keeps every file byte for byte (a kept
    --state-dir keeps its CA); private keys are mode 0600; the server certificate
    names 127.0.0.1 and localhost."""
    before = {path: path.read_bytes() for path in pki.files()}
    again = make_pki(pki.directory)
    assert {path: path.read_bytes() for path in again.files()} == before
    for key in (pki.ca_key_file, pki.server_key_file, pki.client_key_file):
        assert key.stat().st_mode & 0o777 == 0o600, key
    names = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", pki.server_cert_file],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    assert "IP Address:127.0.0.1" in names and "DNS:localhost" in names, names
