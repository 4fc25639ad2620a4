"""How the operator commands (``vipwire ipam``, ``lb``, ``replay``) reach NATS.

One place decides it, the same way for every command: each of the servers,
the credentials file and the TLS CA comes from, in order of precedence,

1. its flag (``--nats URL``, ``--creds FILE``, ``--tls-ca FILE``),
2. the environment (``VIPWIRE_NATS_URL``, ``VIPWIRE_NATS_CREDS``),
3. the ``bus`` section of ``--config FILE`` (the file the services use: its
   servers, credentials and ``tls``, client certificate included),
4. without ``--nats``, ``VIPWIRE_NATS_URL`` and ``--config``: the running
   ``vipwire up``'s ``STATE_DIR/vipwire-cli.yaml`` (see :mod:`vipwire.cli.current`),
5. the default (``nats://127.0.0.1:4222``, no credentials, no TLS settings).

Nothing here prints a URL with its password: errors go through
:func:`vipwire.bus.redacted` (see :func:`connect`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nats.aio.client import Client

    from vipwire.bus import BusSettings

DEFAULT_NATS = "nats://127.0.0.1:4222"
ENV_URL = "VIPWIRE_NATS_URL"
ENV_CREDS = "VIPWIRE_NATS_CREDS"

#: Said in every operator command's ``--help``.
PRECEDENCE = (
    f"Connection settings: a flag wins over the environment ({ENV_URL}, {ENV_CREDS}), "
    "which wins over the bus section of --config FILE; with none of them, the running "
    "`vipwire up` is found (its STATE_DIR/vipwire-cli.yaml); else the default "
    f"({DEFAULT_NATS}, no credentials)."
)


class ConnectionProblem(Exception):
    """The connection settings cannot be used, or NATS refused us; the message says why
    (and never shows a password). ``code``: the exit code (2 for settings to fix: TLS,
    identity; 3 when NATS could not be reached)."""

    def __init__(self, message: str, *, code: int = 3) -> None:
        super().__init__(message)
        self.code = code


def add_arguments(
    parser: argparse.ArgumentParser,
    *,
    nats_flag: bool = True,
    config_help: str | None = None,
) -> None:
    """The connection flags of an operator command (``nats_flag=False``: the command
    declares ``--nats`` itself, as replay does in a group)."""
    if nats_flag:
        parser.add_argument(
            "--nats",
            metavar="URL",
            help=f"NATS server(s), comma-separated (env {ENV_URL}; default: the running "
            f"vipwire up, else {DEFAULT_NATS})",
        )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=config_help
        or "the services' config file: its bus section gives servers, credentials and tls",
    )
    parser.add_argument(
        "--creds",
        metavar="FILE",
        help=f"credentials file of the identity to act as (env {ENV_CREDS})",
    )
    parser.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="PEM file of the CA that signed the NATS servers' certificates",
    )


def resolve(
    *,
    nats: str | None,
    creds: str | None,
    tls_ca: str | None,
    env: Mapping[str, str],
    configured: BusSettings | None,
) -> BusSettings:
    """The bus settings to connect with: flag > environment > config file > default."""
    import msgspec

    from vipwire.bus import BusSettings

    base = configured if configured is not None else BusSettings(servers=(DEFAULT_NATS,))
    url = nats or env.get(ENV_URL) or None
    servers = _split(url) if url else base.servers
    credentials = creds or env.get(ENV_CREDS) or base.credentials
    tls = msgspec.structs.replace(base.tls, ca_file=tls_ca) if tls_ca else base.tls
    return msgspec.structs.replace(base, servers=servers, credentials=credentials, tls=tls)


def _split(urls: str) -> tuple[str, ...]:
    return tuple(u.strip() for u in urls.split(",") if u.strip())


def configured_bus(path: str | None) -> BusSettings | None:
    """The ``bus`` section of a config file (None without one). Raises ConfigError."""
    if path is None:
        return None
    from vipwire.bus import BusSettings
    from vipwire.runtime import read_config, section

    return section(read_config(path), "bus", BusSettings, source=path)


def settings_from(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> BusSettings:
    """The bus settings an operator command's flags, environment and config file give;
    with none of them, the running ``vipwire up``'s."""
    from vipwire.cli import current

    env = os.environ if env is None else env
    nats = getattr(args, "nats", None)
    config = getattr(args, "config", None)
    if config is None and not nats and not env.get(ENV_URL):
        found = current.running_file(env)
        config = None if found is None else str(found)
    return resolve(
        nats=nats,
        creds=getattr(args, "creds", None),
        tls_ca=getattr(args, "tls_ca", None),
        env=env,
        configured=configured_bus(config),
    )


async def connect(settings: BusSettings, *, timeout: float, name: str = "vipwire-cli") -> Client:
    """A client connected with ``settings`` (one attempt), or :class:`ConnectionProblem`."""
    from vipwire.bus import BusError, TlsError, connect_client
    from vipwire.cli import exits

    try:
        return await connect_client(settings, name=name, timeout=timeout)
    except BusError as exc:
        settings_fault = isinstance(exc, TlsError) or "refused our identity" in str(exc)
        code = exits.USAGE if settings_fault else exits.UNREACHABLE
        raise ConnectionProblem(str(exc), code=code) from None


def where(settings: BusSettings) -> str:
    """The servers, as they may be shown."""
    from vipwire.bus import redacted_all

    return redacted_all(settings.servers)


def caller_of(settings: BusSettings) -> str:
    """The caller token of control requests made with these settings: the identity
    named by their credentials file, ``anonymous`` without one."""
    from vipwire.bus import caller_token

    return caller_token(settings.credentials)
