"""``python -m vipwire.bench._appliance --port P --state FILE``: an F5 emulator in its own process.

For the chaos scenario: the appliance outlives every lbdriver replica, and a
restart of it keeps its configuration, as a rebooted BIG-IP keeps its saved
config. The configuration is saved to ``--state`` on SIGTERM/SIGINT (and every
second, so that a kill loses at most a second of it) and read back on start.
The password comes from the environment variable named by ``--password-env``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import msgspec

from vipwire.applianceemu import F5Emulator


def _dump(emulator: F5Emulator) -> bytes:
    state = emulator._state  # the emulator's own model: saved whole, as a config file
    return msgspec.json.encode({"partitions": state.partitions, "objects": state.objects})


def _load(emulator: F5Emulator, raw: bytes) -> None:
    data: dict[str, Any] = msgspec.json.decode(raw)
    emulator._state.partitions = data["partitions"]
    # A state saved before a kind existed (ltm node) keeps that kind empty.
    emulator._state.objects = {**emulator._state.objects, **data["objects"]}


def _save(emulator: F5Emulator, path: Path) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_bytes(_dump(emulator))
    partial.replace(path)


def restore(state: Path, password_env: str) -> F5Emulator:
    """The emulator, with the configuration saved in ``state`` (if any)."""
    emulator = F5Emulator(username="admin", password=os.environ.get(password_env, "admin"))
    if state.exists():
        with contextlib.suppress(ValueError, KeyError):
            _load(emulator, state.read_bytes())
    return emulator


async def serve(emulator: F5Emulator, port: int, state: Path) -> int:
    await emulator.start("127.0.0.1", port)
    print(f"vipwire bench appliance: F5 emulator at {emulator.url}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if not stop.is_set():
                _save(emulator, state)
    finally:
        # Stop answering first, then save: a write answered after the last save would
        # be lost on restart (an appliance forgetting a change it acknowledged).
        await emulator.stop()
        _save(emulator, state)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m vipwire.bench._appliance")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", required=True, help="file keeping the configuration")
    parser.add_argument("--password-env", default="VIPWIRE_BENCH_APPLIANCE_PASSWORD")
    args = parser.parse_args()
    state = Path(args.state)
    return asyncio.run(serve(restore(state, args.password_env), args.port, state))


if __name__ == "__main__":
    sys.exit(main())
