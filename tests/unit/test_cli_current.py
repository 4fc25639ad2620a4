"""The pointer to the running `vipwire up` and how operator commands use it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vipwire.cli import current
from vipwire.cli.connection import settings_from


def up_file(state_dir: Path, env: dict[str, str], pid: int) -> None:
    state_dir.mkdir()
    current.write(
        state_dir,
        {
            "bus": {"servers": ["nats://127.0.0.1:4999"], "credentials": "/x.creds"},
            "up": {"pid": pid},
        },
        env,
    )


def args(**given: str) -> argparse.Namespace:
    return argparse.Namespace(nats=None, config=None, creds=None, tls_ca=None, **given)


def test_commands_use_the_running_up_unless_told_otherwise(tmp_path: Path) -> None:
    """No flag, env or --config: the running up's bus; VIPWIRE_NATS_URL or --nats win."""
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    up_file(tmp_path / "state", env, os.getpid())
    found = settings_from(args(), env)
    assert found.servers == ("nats://127.0.0.1:4999",) and found.credentials == "/x.creds"
    by_env = settings_from(args(), {**env, "VIPWIRE_NATS_URL": "nats://h:1"})
    assert by_env.servers == ("nats://h:1",) and by_env.credentials is None
    by_flag = settings_from(argparse.Namespace(nats="nats://f:2", config=None), env)
    assert by_flag.servers == ("nats://f:2",)


def test_a_stale_or_removed_pointer_is_ignored(tmp_path: Path) -> None:
    """A pointer whose process is gone, or removed on exit, falls back to the default."""
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    up_file(tmp_path / "state", env, 2**22 + 12345)  # beyond pid_max: no such process
    assert current.running_file(env) is None
    assert settings_from(args(), env).servers == ("nats://127.0.0.1:4222",)
    current.write(tmp_path / "state", {"bus": {}, "up": {"pid": os.getpid()}}, env)
    assert current.running_file(env) == tmp_path / "state" / current.CLI_FILE
    current.remove(tmp_path / "state", env)
    assert not current.pointer_path(env).exists()


def test_the_pointer_lives_in_the_runtime_dir_else_in_local_state() -> None:
    """$XDG_RUNTIME_DIR/vipwire/current, else ~/.local/state/vipwire/current."""
    assert current.pointer_path({"XDG_RUNTIME_DIR": "/run/user/7"}) == Path(
        "/run/user/7/vipwire/current"
    )
    assert current.pointer_path({"HOME": "/home/o"}) == Path("/home/o/.local/state/vipwire/current")
