"""A throwaway certificate authority for a local nats-server over TLS (mTLS).

Made with the ``openssl`` binary, for ``vipwire up --tls`` and the tests: a CA,
a server certificate for 127.0.0.1 and localhost (subject alternative names),
and one client certificate. Never for production: the CA key sits beside the
certificates it signed. Files are reused when they are all there already (a
``vipwire up --state-dir`` keeps its CA across runs); keys are mode 0600.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: Days a throwaway certificate is valid.
DAYS = 30

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = {sans}
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
"""


class PkiError(RuntimeError):
    """The throwaway CA could not be made (no openssl, or openssl failed)."""


@dataclass(frozen=True)
class Pki:
    """The files of a throwaway CA (see :func:`make_pki`)."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key_file(self) -> Path:
        return self.directory / "ca-key.pem"

    @property
    def server_cert_file(self) -> Path:
        return self.directory / "server-cert.pem"

    @property
    def server_key_file(self) -> Path:
        return self.directory / "server-key.pem"

    @property
    def client_cert_file(self) -> Path:
        return self.directory / "client-cert.pem"

    @property
    def client_key_file(self) -> Path:
        return self.directory / "client-key.pem"

    def files(self) -> tuple[Path, ...]:
        return (
            self.ca_file,
            self.ca_key_file,
            self.server_cert_file,
            self.server_key_file,
            self.client_cert_file,
            self.client_key_file,
        )

    def client_files(self) -> tuple[Path, Path, Path]:
        """(CA, client certificate, client key): what a client of the server needs."""
        return (self.ca_file, self.client_cert_file, self.client_key_file)

    def server_config(self, *, verify: bool = True) -> str:
        """nats-server configuration text: TLS for clients with this CA's server
        certificate; ``verify``: every client must show a certificate the CA signed."""
        return (
            "tls {\n"
            f"  cert_file: {_quoted(self.server_cert_file)}\n"
            f"  key_file: {_quoted(self.server_key_file)}\n"
            f"  ca_file: {_quoted(self.ca_file)}\n"
            f"  verify: {'true' if verify else 'false'}\n"
            "  timeout: 2\n"
            "}\n"
        )


def _quoted(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def find_openssl() -> str:
    found = shutil.which("openssl")
    if found is None:
        raise PkiError("openssl not found: install it (apt-get install openssl) to make a CA")
    return found


def make_pki(
    directory: str | os.PathLike[str],
    *,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    name: str = "vipwire",
    days: int = DAYS,
) -> Pki:
    """A CA, a server certificate for ``hosts`` and a client certificate in ``directory``
    (made if missing; kept when every file is already there). Raises :class:`PkiError`."""
    pki = Pki(Path(directory))
    if all(path.exists() for path in pki.files()):
        return pki
    openssl = find_openssl()
    pki.directory.mkdir(parents=True, exist_ok=True)
    sans = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    config = pki.directory / "openssl.cnf"
    config.write_text(_OPENSSL_CONFIG.format(sans=sans))

    def run(*args: str | Path) -> None:
        try:
            subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=30)
        except subprocess.CalledProcessError as exc:
            said = exc.stderr.decode(errors="replace").strip()
            raise PkiError(f"openssl {args[0]} failed in {pki.directory}: {said}") from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PkiError(f"openssl {args[0]} failed in {pki.directory}: {exc}") from exc

    def key(path: Path) -> None:
        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
        path.chmod(0o600)

    key(pki.ca_key_file)
    run(
        "req", "-x509", "-new", "-key", pki.ca_key_file, "-out", pki.ca_file,
        "-subj", f"/CN={name} throwaway CA", "-days", str(days),
        "-config", config, "-extensions", "ca",
    )  # fmt: skip
    for cert, key_file, section, common_name in (
        (pki.server_cert_file, pki.server_key_file, "server", f"{name} nats-server"),
        (pki.client_cert_file, pki.client_key_file, "client", f"{name} client"),
    ):
        key(key_file)
        request = pki.directory / f"{section}.csr"
        run(
            "req", "-new", "-key", key_file, "-out", request,
            "-subj", f"/CN={common_name}", "-config", config,
        )  # fmt: skip
        run(
            "x509", "-req", "-in", request, "-CA", pki.ca_file, "-CAkey", pki.ca_key_file,
            "-set_serial", "0x" + secrets.token_hex(16), "-days", str(days), "-out", cert,
            "-extfile", config, "-extensions", section,
        )  # fmt: skip
        request.unlink()
    return pki


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
