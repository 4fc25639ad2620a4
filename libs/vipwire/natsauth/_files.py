"""Writing a fleet's identities to a directory: the adapter of :mod:`vipwire.natsauth`.

``DIR/nats-auth.conf`` (public keys and permissions), ``DIR/creds/<identity>.creds``
(one seed each, mode 0600) and ``DIR/identities.json`` (names, roles, clusters,
public keys). A re-run keeps every seed and file it finds byte-identical and adds
what is new: identities are never removed by it (take a user out of
``identities.json`` and re-run to drop one).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import msgspec

from vipwire.natsauth._identities import (
    Identity,
    IdentityError,
    credentials_text,
    identities_for,
    identity_in,
    render_config,
    seed_in,
)
from vipwire.natsauth._nkeys import NKeyError, new_user_seed, public_key

CONFIG_FILE = "nats-auth.conf"
IDENTITIES_FILE = "identities.json"
CREDS_DIR = "creds"


class Generated(msgspec.Struct, frozen=True, kw_only=True):
    """What a run of the generator left in its directory."""

    out: Path
    identities: tuple[Identity, ...]
    #: Identity names whose credentials this run wrote (the others were kept).
    added: tuple[str, ...]
    tls_dir: str | None = None

    @property
    def config_path(self) -> Path:
        return self.out / CONFIG_FILE

    @property
    def config_text(self) -> str:
        return self.config_path.read_text()

    def creds(self, name: str) -> Path:
        """The credentials file of identity ``name``."""
        path = self.out / CREDS_DIR / f"{name}.creds"
        if not any(i.name == name for i in self.identities):
            known = ", ".join(i.name for i in self.identities)
            raise IdentityError(f"no identity {name!r} in {self.out} (known: {known})")
        return path


def _load(out: Path) -> tuple[list[Identity], str | None]:
    path = out / IDENTITIES_FILE
    if not path.exists():
        return [], None
    raw = json.loads(path.read_text())
    found = [
        Identity(name=i["name"], role=i["role"], cluster=i.get("cluster"), node=i.get("node"))
        for i in raw.get("identities", [])
    ]
    return found, raw.get("tls_dir")


def _write_if_changed(path: Path, text: str, mode: int = 0o644) -> None:
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _seed_of(identity: Identity, path: Path) -> str | None:
    """The seed kept in ``path`` (None: no file yet)."""
    if not path.exists():
        return None
    text = path.read_text()
    seed = seed_in(text)
    named = identity_in(text)
    if seed is None or (named is not None and named != identity.name):
        raise IdentityError(
            f"{path} is not the credentials of {identity.name}: move it away and re-run "
            f"to generate a new key (the server then needs the new config)"
        )
    try:
        public_key(seed)
    except NKeyError as exc:
        raise IdentityError(f"{path}: {exc}; move it away and re-run") from exc
    return seed


def generate(
    out: str | os.PathLike[str],
    clusters: Iterable[str] = (),
    *,
    nodes: Mapping[str, Sequence[str]] | None = None,
    operators: Iterable[str] = (),
    readers: Iterable[str] = (),
    tls_dir: str | None = None,
) -> Generated:
    """Write (or complete) the identities of a fleet in ``out``; see the module doc."""
    base = Path(out)
    (base / CREDS_DIR).mkdir(parents=True, exist_ok=True)
    os.chmod(base / CREDS_DIR, 0o700)
    known, old_tls = _load(base)
    wanted = identities_for(clusters, nodes=nodes, operators=operators, readers=readers)
    merged = {i.name: i for i in known}
    for identity in wanted:
        merged.setdefault(identity.name, identity)
    identities = sorted(merged.values(), key=lambda i: i.name)
    tls = tls_dir if tls_dir is not None else old_tls
    users: list[tuple[Identity, str]] = []
    added: list[str] = []
    for identity in identities:
        path = base / CREDS_DIR / f"{identity.name}.creds"
        seed = _seed_of(identity, path)
        if seed is None:
            seed = new_user_seed()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(credentials_text(identity, seed))
            added.append(identity.name)
        users.append((identity, public_key(seed)))
    _write_if_changed(base / CONFIG_FILE, render_config(users, tls_dir=tls))
    listing = {
        "tls_dir": tls,
        "identities": [
            {
                "name": identity.name,
                "role": identity.role,
                "cluster": identity.cluster,
                "node": identity.node,
                "public_key": key,
            }
            for identity, key in users
        ],
    }
    _write_if_changed(base / IDENTITIES_FILE, json.dumps(listing, indent=2) + "\n")
    return Generated(out=base, identities=tuple(identities), added=tuple(added), tls_dir=tls)
