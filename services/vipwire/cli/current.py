"""Where the running ``vipwire up`` is: a pointer file the operator commands read.

``vipwire up`` writes ``STATE_DIR/vipwire-cli.yaml`` (its ``bus`` section: servers,
the operator's credentials, TLS; and an ``up`` section: the process id, the dashboard
URL, the emulated clusters' kubeconfigs), then writes the state directory's path into
the pointer ``$XDG_RUNTIME_DIR/vipwire/current`` (without ``XDG_RUNTIME_DIR``:
``~/.local/state/vipwire/current``), and removes the pointer when it exits. An operator
command given neither ``--nats``, ``VIPWIRE_NATS_URL`` nor ``--config`` connects with
that file's ``bus`` section.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CLI_FILE = "vipwire-cli.yaml"


def pointer_path(env: Mapping[str, str] | None = None) -> Path:
    """The pointer file: under ``$XDG_RUNTIME_DIR``, else ``~/.local/state``."""
    env = os.environ if env is None else env
    runtime = env.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path(env.get("HOME") or Path.home()) / ".local/state"
    return base / "vipwire" / "current"


def write(state_dir: Path, document: dict[str, Any], env: Mapping[str, str] | None = None) -> Path:
    """Write ``STATE_DIR/vipwire-cli.yaml`` and point the pointer at it; the file's path."""
    path = state_dir / CLI_FILE
    path.write_text(json.dumps(document, indent=2) + "\n")  # JSON is YAML
    pointer = pointer_path(env)
    with contextlib.suppress(OSError):
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(str(state_dir.resolve()) + "\n")
    return path


def remove(state_dir: Path, env: Mapping[str, str] | None = None) -> None:
    """Remove the pointer, if it still points at ``state_dir`` (another ``up`` may have
    started since)."""
    pointer = pointer_path(env)
    with contextlib.suppress(OSError):
        if pointer.read_text().strip() == str(state_dir.resolve()):
            pointer.unlink()


def running_file(env: Mapping[str, str] | None = None) -> Path | None:
    """The running ``vipwire up``'s ``vipwire-cli.yaml`` (None: none running, or the
    pointer is stale: its process is gone)."""
    try:
        state_dir = Path(pointer_path(env).read_text().strip())
        document = json.loads((state_dir / CLI_FILE).read_text())
    except (OSError, ValueError):
        return None
    pid = document.get("up", {}).get("pid") if isinstance(document, dict) else None
    if isinstance(pid, int) and not _alive(pid):
        return None
    return state_dir / CLI_FILE


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
