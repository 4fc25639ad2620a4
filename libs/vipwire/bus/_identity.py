"""Who this connection is: the identity named by its credentials file.

A vipwire credentials file starts with ``# vipwire NATS identity: <name> ...``
(see :func:`vipwire.contracts.identity_of_credentials`). The name is the
caller token of the control requests this connection sends; the NATS server,
with permissions on, refuses any other token for it.
"""

from __future__ import annotations

import logging

from vipwire.contracts import ANONYMOUS, identity_of_credentials

log = logging.getLogger("vipwire.bus")


def identity_of_file(path: str | None) -> str | None:
    """The identity named in the credentials file at ``path``; None: no file, or a
    file that names none (a NATS ``.creds`` file)."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except OSError as exc:
        log.warning("cannot read the credentials file %s for its identity: %s", path, exc)
        return None
    return identity_of_credentials(first)


def caller_token(path: str | None) -> str:
    """The caller token for control requests made with the credentials at ``path``
    (``anonymous`` without an identity)."""
    return identity_of_file(path) or ANONYMOUS
