"""The operator commands' connection settings: flag > environment > --config > default."""

from __future__ import annotations

from vipwire.bus import BusSettings, TlsSettings
from vipwire.cli.connection import DEFAULT_NATS, ENV_CREDS, ENV_URL, resolve

CONFIGURED = BusSettings(
    servers=("nats://from-config:4222",),
    credentials="/config/ops.creds",
    tls=TlsSettings(ca_file="/config/ca.pem", cert_file="/config/c.pem", key_file="/config/k.pem"),
)
ENV = {ENV_URL: "nats://from-env:4222", ENV_CREDS: "/env/ops.creds"}


def test_nothing_given_is_the_default() -> None:
    """No flag, no environment, no config file: the local default, no credentials."""
    got = resolve(nats=None, creds=None, tls_ca=None, env={}, configured=None)
    assert got.servers == (DEFAULT_NATS,) and got.credentials is None
    assert got.tls == TlsSettings()


def test_the_config_file_wins_over_the_default() -> None:
    """--config's bus section gives servers, credentials and TLS (client cert included)."""
    got = resolve(nats=None, creds=None, tls_ca=None, env={}, configured=CONFIGURED)
    assert got == CONFIGURED


def test_the_environment_wins_over_the_config_file() -> None:
    """VIPWIRE_NATS_URL and VIPWIRE_NATS_CREDS replace the file's; its TLS stays."""
    got = resolve(nats=None, creds=None, tls_ca=None, env=ENV, configured=CONFIGURED)
    assert got.servers == ("nats://from-env:4222",)
    assert got.credentials == "/env/ops.creds"
    assert got.tls == CONFIGURED.tls


def test_flags_win_over_everything() -> None:
    """--nats, --creds and --tls-ca replace environment and file; the client cert stays."""
    got = resolve(
        nats="nats://a:4222, nats://b:4222",
        creds="/flag/ops.creds",
        tls_ca="/flag/ca.pem",
        env=ENV,
        configured=CONFIGURED,
    )
    assert got.servers == ("nats://a:4222", "nats://b:4222")
    assert got.credentials == "/flag/ops.creds"
    assert got.tls == TlsSettings(
        ca_file="/flag/ca.pem", cert_file="/config/c.pem", key_file="/config/k.pem"
    )


def test_an_empty_environment_variable_is_not_set() -> None:
    """VIPWIRE_NATS_URL="" falls through to the config file, not to an empty server list."""
    got = resolve(nats=None, creds=None, tls_ca=None, env={ENV_URL: ""}, configured=CONFIGURED)
    assert got.servers == CONFIGURED.servers
