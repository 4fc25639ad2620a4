"""``vipwire nats config``: what it writes is a configuration nats-server accepts, and a
re-run for a new cluster adds it without touching the rest."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vipwire.cli.main import main
from vipwire.natsserver._server import find_binary


def test_the_generated_config_is_valid_and_a_rerun_adds_a_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """nats-server -t accepts the config; re-run with --cluster west: only its creds new."""
    out = tmp_path / "auth"
    args = ["nats", "config", "--cluster", "east", "--nodes", "east=n1,n2.lab", "--out", str(out)]
    assert main([*args, "--operator", "alice", "--reader", "bob"]) == 0
    east = (out / "creds" / "watcher-east.creds").read_bytes()
    check = subprocess.run(
        [find_binary(), "-c", str(out / "nats-auth.conf"), "-t"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    capsys.readouterr()
    assert main(["nats", "config", "--cluster", "west", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "new: " in printed and "watcher-west.creds" in printed
    assert "kept: 8 existing credentials unchanged" in printed
    assert (out / "creds" / "watcher-east.creds").read_bytes() == east
    assert "watcher-west" in (out / "nats-auth.conf").read_text()


def test_a_bad_name_is_refused_with_what_to_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator name that cannot be a subject token: exit 2 and why."""
    assert main(["nats", "config", "--operator", "Alice.B", "--out", str(tmp_path)]) == 2
    assert "lowercase letters" in capsys.readouterr().err
