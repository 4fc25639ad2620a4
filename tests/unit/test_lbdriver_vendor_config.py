"""Vendor appliance configuration: settings refused when unusable, secrets read and never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from vipwire.lbdriver import ApplianceAuthError, LbdriverSettings
from vipwire.lbdriver.io.drivers._rest import normalise_base_url, partition_for
from vipwire.lbdriver.io.drivers.credentials import Credentials, CredentialSource
from vipwire.lbdriver.io.drivers.f5 import destination, parse_endpoint
from vipwire.runtime import ConfigError, section

F5 = {"name": "bigip", "driver": "f5", "address": "bigip.example.net", "username": "svc"}


def load(appliance: dict[str, object]) -> LbdriverSettings:
    return section({"lbdriver": {"appliances": [appliance]}}, "lbdriver", LbdriverSettings)


def test_vendor_appliance_section_decodes() -> None:
    """An f5 entry with a password file and a sync group loads with its defaults."""
    settings = load({**F5, "password_file": "/run/secrets/f5", "sync_group": "dg1"})
    appliance = settings.appliances[0]
    assert appliance.verify_tls and appliance.partition_template == "{cluster}"
    assert appliance.partitions == {}
    assert appliance.sync_group == "dg1"


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"password_file": "/x", "address": None}, "needs an address"),
        ({"password_file": "/x", "username": None}, "needs a username"),
        ({}, "exactly one of password_file or password_env"),
        ({"password_file": "/x", "password_env": "X"}, "exactly one of"),
        ({"password": "inline"}, "password"),
        ({"password_file": "/x", "verify_tls": False, "ca_file": "/ca.pem"}, "ca_file"),
        ({"password_file": "/x", "partition_template": "fixed"}, "partition_template"),
        ({"password_file": "/x", "partition_template": "{cluster}{x}"}, "partition_template"),
        ({"password_file": "/x", "partition_template": "k8s {cluster}"}, "partition_template"),
        ({"password_file": "/x", "partitions": {"prod": ""}}, "partitions for prod"),
        ({"password_file": "/x", "partitions": {"prod": "a/b"}}, "partitions for prod"),
        ({"password_file": "/x", "driver": "a10", "sync_group": "dg"}, "sync_group"),
    ],
)
def test_unusable_vendor_settings_are_refused(extra: dict[str, object], error: str) -> None:
    """Missing endpoint, user or secret source, inline secrets and stray options fail at load."""
    with pytest.raises(ConfigError, match=error):
        load({**F5, **extra})


def test_credentials_never_show_the_password(tmp_path: Path) -> None:
    """Reprs of credentials and their source name where the secret is, never the secret."""
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    source = CredentialSource("bigip", "svc", password_file=str(secret))
    creds = source.load()
    assert creds == Credentials("svc", "hunter2")  # trailing newline dropped
    assert "hunter2" not in repr(creds) and "hunter2" not in str(creds)
    assert "hunter2" not in repr(source) and str(secret) in repr(source)


def test_a_rotated_password_file_is_read_at_the_next_login(tmp_path: Path) -> None:
    """The file is read on every load, so rotation needs no restart."""
    secret = tmp_path / "pw"
    secret.write_text("one")
    source = CredentialSource("bigip", "svc", password_file=str(secret))
    assert source.load().password == "one"
    secret.write_text("two")
    assert source.load().password == "two"


def test_unreadable_secrets_are_authentication_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing file or variable is the appliance's ApplianceAuthError, naming where, not what."""
    with pytest.raises(ApplianceAuthError, match="cannot read password file"):
        CredentialSource("bigip", "svc", password_file=str(tmp_path / "none")).load()
    monkeypatch.delenv("VIPWIRE_NO_SUCH_VAR", raising=False)
    with pytest.raises(ApplianceAuthError, match="VIPWIRE_NO_SUCH_VAR"):
        CredentialSource("bigip", "svc", password_env="VIPWIRE_NO_SUCH_VAR").load()


def test_addresses_become_https_base_urls() -> None:
    """A bare host means https; paths are dropped; other schemes are refused."""
    assert normalise_base_url("bigip.example.net") == "https://bigip.example.net"
    assert normalise_base_url("10.0.0.5:8443") == "https://10.0.0.5:8443"
    assert normalise_base_url("http://127.0.0.1:9000/mgmt/") == "http://127.0.0.1:9000"
    with pytest.raises(ValueError, match="http"):
        normalise_base_url("ftp://bigip")


def test_partitions_are_mapped_or_templated() -> None:
    """An explicit mapping wins over the template."""
    assert partition_for("prod", "k8s_{cluster}", {"east": "legacy"}) == "k8s_prod"
    assert partition_for("east", "k8s_{cluster}", {"east": "legacy"}) == "legacy"


@pytest.mark.parametrize(
    ("address", "port", "text"),
    [
        ("192.0.2.10", 80, "/p/192.0.2.10:80"),
        ("2001:db8::10", 443, "/p/2001:db8::10.443"),
    ],
)
def test_bigip_destinations_round_trip(address: str, port: int, text: str) -> None:
    """IPv4 destinations end in ':port', IPv6 ones in '.port'; route domains are ignored."""
    assert destination("p", address, port) == text
    assert parse_endpoint(text) == (address, port)
    assert parse_endpoint(text.replace(address, f"{address}%2")) == (address, port)
    assert parse_endpoint("/p/any:any") is None
