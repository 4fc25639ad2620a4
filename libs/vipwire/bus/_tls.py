"""TLS for the bus connection: the client's ``ssl.SSLContext`` from ``bus.tls``, and
what a failed handshake means for the user.

A missing or unreadable file is a configuration error, reported at once with the
file and the setting. A certificate the other side refuses is not transient
either: :func:`certificate_problem` names it so that :func:`vipwire.bus.connect`
stops (with :class:`TlsError`) rather than retrying forever.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import nats.errors

from vipwire.bus._errors import BusError
from vipwire.bus._settings import TlsSettings

#: OpenSSL's reasons for a handshake the *server* ended because of our certificate
#: (none given, or one it does not trust).
_CLIENT_CERT_REFUSED = (
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "CERTIFICATE_UNKNOWN",
    "CERTIFICATE_EXPIRED",
    "HANDSHAKE_FAILURE",
)


class TlsError(BusError):
    """TLS cannot work as configured (a file missing or unreadable, a certificate the
    other side refuses). Not transient: retrying cannot help, the configuration must
    change; the message names the file and the setting."""


def _check_readable(path: str, setting: str) -> None:
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as exc:
        raise TlsError(
            f"{setting}: cannot read {path}: {exc.strerror or exc}; "
            f"fix the path or the file's permissions"
        ) from exc


def tls_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """The client's TLS context, or None when ``bus.tls`` sets nothing (nats-py then
    makes a default one if a server asks for TLS). Raises :class:`TlsError`."""
    if not tls.enabled():
        return None
    if bool(tls.cert_file) != bool(tls.key_file):
        given = "bus.tls.cert_file" if tls.cert_file else "bus.tls.key_file"
        missing = "bus.tls.key_file" if tls.cert_file else "bus.tls.cert_file"
        raise TlsError(f"{given} is set but {missing} is not: give both (mTLS) or neither")
    for path, setting in (
        (tls.ca_file, "bus.tls.ca_file"),
        (tls.cert_file, "bus.tls.cert_file"),
        (tls.key_file, "bus.tls.key_file"),
    ):
        if path:
            _check_readable(path, setting)
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(
            f"bus.tls.ca_file: {tls.ca_file} holds no usable CA certificate (PEM): {exc}"
        ) from exc
    if tls.cert_file and tls.key_file:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(
                f"bus.tls.cert_file / bus.tls.key_file: {tls.cert_file} and {tls.key_file} "
                f"are not a PEM certificate and its private key: {exc}"
            ) from exc
    return context


class _QuietSslEof(logging.Filter):
    """Drops asyncio's warning on every TLS connection the server closes ("returning true
    from eof_received() has no effect when using ssl"): nats-py's protocol says so on any
    transport, and under TLS asyncio logs it each time. Nothing is wrong; the line would
    only puzzle the person reading the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("returning true from eof_received()")


_QUIET_SSL_EOF = _QuietSslEof()


def tls_options(tls: TlsSettings) -> dict[str, Any]:
    """nats-py ``connect()`` keyword arguments for ``bus.tls``. Raises :class:`TlsError`."""
    logging.getLogger("asyncio").addFilter(_QUIET_SSL_EOF)  # once: a filter is added once
    options: dict[str, Any] = {}
    context = tls_context(tls)
    if context is not None:
        options["tls"] = context
    if tls.server_name:
        options["tls_hostname"] = tls.server_name
    return options


def server_verifies_clients(nc: Any) -> bool:
    """Whether the server the client last reached said (in its INFO) that it verifies
    client certificates. nats-py keeps that INFO on the client, unpublished; without it
    this says False, and a refusal is only recognised by its TLS alert."""
    info = getattr(nc, "_server_info", None)
    return isinstance(info, dict) and bool(info.get("tls_verify"))


def spoke_tls(nc: Any) -> bool:
    """Whether the server the client reached asked for TLS in its INFO, which is when
    nats-py upgrades the connection; otherwise it goes on in clear, CA or not."""
    info = getattr(nc, "_server_info", None)
    return isinstance(info, dict) and bool(info.get("tls_required"))


def certificate_problem(
    exc: BaseException, tls: TlsSettings, *, server_verifies: bool = False
) -> str | None:
    """What to tell the user when ``exc`` is a refused certificate (ours or the
    server's); None when it is anything else (a network error worth retrying).

    ``server_verifies``: the server said it verifies clients. Under TLS 1.3 it refuses
    a client without a certificate after the handshake, and the client sees its alert or,
    as often, only the connection reset: with no certificate configured, that reset
    means the same."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        said = exc.verify_message or str(exc)
        name = (
            f"bus.tls.server_name ({tls.server_name})"
            if tls.server_name
            else "the host in bus.servers (or set bus.tls.server_name)"
        )
        if tls.ca_file:
            check = (
                f"check that bus.tls.ca_file ({tls.ca_file}) holds the CA that signed the "
                f"server's certificate, and that the certificate names {name}"
            )
        else:
            check = (
                "bus.tls.ca_file is not set, so only the system's CAs were trusted: set it to "
                f"the CA that signed the server's certificate, and check that it names {name}"
            )
        return f"the NATS server's certificate was not accepted ({said}): {check}"
    if isinstance(exc, ssl.SSLError):
        reason = str(getattr(exc, "reason", "") or exc).upper()
        if any(mark in reason for mark in _CLIENT_CERT_REFUSED):
            if tls.cert_file:
                check = (
                    f"check that bus.tls.cert_file ({tls.cert_file}) is signed by the CA the "
                    "server trusts (its tls.ca_file) and has not expired"
                )
            else:
                check = (
                    "it verifies clients (mTLS): set bus.tls.cert_file and bus.tls.key_file "
                    "to a certificate signed by the CA the server trusts"
                )
            return f"the NATS server refused our TLS client certificate ({exc.reason}): {check}"
    closed = isinstance(exc, (ssl.SSLError, ConnectionError, nats.errors.UnexpectedEOF))
    if closed and server_verifies and not (tls.cert_file and tls.key_file):
        return (
            "the NATS server verifies clients (mTLS) and closed the connection: set "
            "bus.tls.cert_file and bus.tls.key_file to a certificate signed by the CA "
            "the server trusts"
        )
    return None
