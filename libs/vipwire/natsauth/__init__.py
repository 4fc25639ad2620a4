"""Identities on the bus: NKey users with least-privilege permissions the NATS server
enforces (see the README, "Identities on the bus")."""

from vipwire.natsauth._files import CONFIG_FILE, CREDS_DIR, IDENTITIES_FILE, Generated, generate
from vipwire.natsauth._identities import (
    DASHBOARD,
    IPAM,
    IPAM_DURABLES,
    LBDRIVER,
    Identity,
    IdentityError,
    Permissions,
    credentials_text,
    identities_for,
    identity_in,
    may_declare_stream,
    nodeagent,
    operator,
    permissions_for,
    reader,
    render_config,
    seed_in,
    watcher,
)
from vipwire.natsauth._nkeys import NKeyError, public_key

__all__ = [
    "CONFIG_FILE",
    "CREDS_DIR",
    "DASHBOARD",
    "IDENTITIES_FILE",
    "IPAM",
    "IPAM_DURABLES",
    "LBDRIVER",
    "Generated",
    "Identity",
    "IdentityError",
    "NKeyError",
    "Permissions",
    "credentials_text",
    "generate",
    "identities_for",
    "identity_in",
    "may_declare_stream",
    "nodeagent",
    "operator",
    "permissions_for",
    "public_key",
    "reader",
    "render_config",
    "seed_in",
    "watcher",
]
