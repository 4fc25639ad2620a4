"""How a connection logs in from ``bus.credentials``, and how a consumer of several
filters is split into one per filter (pure: files read, nothing connected)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vipwire.bus import BusError, ConsumerSpec, credentials_options
from vipwire.bus._group import part_name, split
from vipwire.natsauth import credentials_text, watcher
from vipwire.natsauth._nkeys import encode_user_seed

SEED = encode_user_seed(bytes(32))


def test_our_file_gives_the_seed_and_the_identitys_inbox(tmp_path: Path) -> None:
    """Our credentials file: its seed, and _INBOX.<identity> as the inbox prefix."""
    path = tmp_path / "w.creds"
    path.write_text(credentials_text(watcher("east"), SEED))
    login = credentials_options(str(path))
    assert login.identity == "watcher-east"
    assert login.options == {"nkeys_seed_str": SEED, "inbox_prefix": "_INBOX.watcher-east"}


def test_a_nats_creds_file_is_handed_over_as_it_is(tmp_path: Path) -> None:
    """A JWT .creds file goes to nats-py as user_credentials; no identity, default inbox."""
    path = tmp_path / "u.creds"
    path.write_text(
        "-----BEGIN NATS USER JWT-----\neyJ0...\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{SEED}\n------END USER NKEY SEED------\n"
    )
    login = credentials_options(str(path))
    assert login.identity is None
    assert login.options == {"user_credentials": str(path)}


def test_a_bare_seed_logs_in_without_an_identity(tmp_path: Path) -> None:
    """A file holding only a seed: the seed, and nats-py's default inbox prefix."""
    path = tmp_path / "seed"
    path.write_text(SEED + "\n")
    assert credentials_options(str(path)).options == {"nkeys_seed_str": SEED}


def test_a_missing_or_foreign_file_is_named_in_the_error(tmp_path: Path) -> None:
    """No such file, or a file with no seed: a BusError naming the file."""
    with pytest.raises(BusError, match=r"nope\.creds"):
        credentials_options(str(tmp_path / "nope.creds"))
    other = tmp_path / "other.txt"
    other.write_text("hello\n")
    with pytest.raises(BusError, match=r"other\.txt.*vipwire nats config"):
        credentials_options(str(other))
    assert credentials_options(None).options == {}


def test_several_filters_become_one_consumer_each_named_by_family() -> None:
    """A durable of two families: <durable>-<family> each; an ephemeral stays unnamed."""
    spec = ConsumerSpec(filters=("vipwire.*.service.>", "vipwire.*.lb.>"), durable="ipam")
    parts = split(spec)
    assert [(p.filters, p.durable) for p in parts] == [
        (("vipwire.*.service.>",), "ipam-service"),
        (("vipwire.*.lb.>",), "ipam-lb"),
    ]
    assert split(ConsumerSpec(filters=("vipwire.>",), durable="d")) == [
        ConsumerSpec(filters=("vipwire.>",), durable="d")
    ]
    eph = split(ConsumerSpec(filters=("vipwire.east.vip.>", "vipwire.east.lb.>")))
    assert [p.durable for p in eph] == [None, None]
    assert part_name("d", "vipwire.>") == "d-all"
