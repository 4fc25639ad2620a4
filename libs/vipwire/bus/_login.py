"""How a connection logs in: nats-py's options for ``bus.credentials``.

Our own credentials file (``vipwire nats config``) names its identity on its first
line and holds an NKey seed; a NATS ``.creds`` file holds a user JWT and a seed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from vipwire.bus._errors import BusError
from vipwire.natsauth import identity_in, seed_in

_JWT_MARK = "-----BEGIN NATS USER JWT-----"


@dataclasses.dataclass(frozen=True)
class Login:
    """How a connection authenticates: nats-py's options, and the identity's name."""

    options: dict[str, Any]
    #: The identity named by our credentials file's first line; None: none named.
    identity: str | None = None


def credentials_options(path: str | None) -> Login:
    """nats-py's connect options for ``bus.credentials``: a NATS ``.creds`` file (JWT and
    seed) is handed over as is; our own file (``vipwire nats config``) gives its NKey
    seed, and the identity on its first line gives the inbox prefix
    ``_INBOX.<identity>`` (the only inboxes that identity may subscribe to)."""
    if path is None:
        return Login(options={})
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise BusError(
            f"cannot read the NATS credentials file {path} (bus.credentials): {exc.strerror or exc}"
        ) from exc
    if _JWT_MARK in text:
        return Login(options={"user_credentials": path})
    seed = seed_in(text)
    if seed is None:
        raise BusError(
            f"{path} (bus.credentials) holds neither a NATS .creds (JWT) nor an NKey user "
            f"seed (a line starting SU): generate one with `vipwire nats config`"
        )
    identity = identity_in(text)
    options: dict[str, Any] = {"nkeys_seed_str": seed}
    if identity is not None:
        options["inbox_prefix"] = f"_INBOX.{identity}"
    return Login(options=options, identity=identity)
