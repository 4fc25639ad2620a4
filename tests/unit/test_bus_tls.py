"""``bus.tls``: the client's TLS context and what a refused certificate tells the user."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from vipwire.bus import BusSettings, TlsError, TlsSettings, certificate_problem, tls_options


def test_no_tls_settings_give_no_options() -> None:
    """Nothing set: nats-py's own default (TLS only if the server asks)."""
    assert tls_options(TlsSettings()) == {}
    assert BusSettings().tls == TlsSettings()


def test_a_missing_ca_file_names_the_file_and_the_setting(tmp_path: Path) -> None:
    """A CA file that is not there fails at once with bus.tls.ca_file and its path."""
    missing = tmp_path / "nope" / "ca.pem"
    with pytest.raises(TlsError) as err:
        tls_options(TlsSettings(ca_file=str(missing)))
    assert "bus.tls.ca_file" in str(err.value) and str(missing) in str(err.value)


def test_an_unreadable_key_file_names_the_file_and_the_setting(tmp_path: Path) -> None:
    """A key file we may not read fails with bus.tls.key_file and its path."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x")
    key.mkdir()  # reading a directory fails like an unreadable file, even as root
    with pytest.raises(TlsError) as err:
        tls_options(TlsSettings(cert_file=str(cert), key_file=str(key)))
    assert "bus.tls.key_file" in str(err.value) and str(key) in str(err.value)


def test_a_certificate_without_its_key_is_refused() -> None:
    """cert_file without key_file is a configuration error naming both settings."""
    with pytest.raises(TlsError, match=r"bus\.tls\.cert_file is set but bus\.tls\.key_file"):
        tls_options(TlsSettings(cert_file="/etc/hostname"))


def test_a_ca_file_that_is_no_certificate_names_it(tmp_path: Path) -> None:
    """A readable file that holds no PEM CA certificate is named with its setting."""
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(TlsError) as err:
        tls_options(TlsSettings(ca_file=str(junk)))
    assert "bus.tls.ca_file" in str(err.value) and str(junk) in str(err.value)


def _verify_failed(message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"certificate verify failed: {message}")
    exc.verify_message = message
    return exc


def test_an_untrusted_server_certificate_names_the_ca_file() -> None:
    """A server certificate our CA does not vouch for: the message names the CA file."""
    said = certificate_problem(
        _verify_failed("unable to get local issuer certificate"),
        TlsSettings(ca_file="/etc/vipwire/ca.pem"),
    )
    assert said is not None
    assert "bus.tls.ca_file (/etc/vipwire/ca.pem)" in said
    assert "unable to get local issuer certificate" in said


def test_without_a_ca_file_the_message_says_to_set_one() -> None:
    """No CA file: the system's CAs were used, and the message says to set bus.tls.ca_file."""
    said = certificate_problem(_verify_failed("self-signed certificate"), TlsSettings())
    assert said is not None and "bus.tls.ca_file is not set" in said


def test_a_reset_is_a_refused_client_only_where_the_server_verifies_clients() -> None:
    """A reset after the handshake means "no client certificate" only when the server
    said it verifies clients and we have none; otherwise it is a network error."""
    reset = ConnectionResetError("Connection lost")
    assert certificate_problem(reset, TlsSettings()) is None
    said = certificate_problem(reset, TlsSettings(), server_verifies=True)
    assert said is not None and "bus.tls.cert_file" in said
    mtls = TlsSettings(cert_file="c.pem", key_file="k.pem")
    assert certificate_problem(reset, mtls, server_verifies=True) is None


def test_network_errors_are_no_certificate_problem() -> None:
    """A refused connection or a timeout stays a transient failure (retried)."""
    assert certificate_problem(ConnectionRefusedError(111, "refused"), TlsSettings()) is None
    assert certificate_problem(TimeoutError(), TlsSettings(ca_file="ca.pem")) is None
