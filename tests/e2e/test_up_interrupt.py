"""``vipwire up`` stopped with Ctrl-C: services first, then NATS, exit 0, nothing alarming."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import pytest

# Guards against a hang only: the test waits on the first screen, then on the exit.
LIMIT_S = 180.0

_SCREEN = re.compile(rb"vipwire up .* NATS nats://127\.0\.0\.1:(\d+)\b")


async def test_ctrl_c_stops_a_large_stack_cleanly() -> None:
    """A Ctrl-C (SIGINT to the terminal's process group) on `vipwire up --clusters 3 --nodes 5
    --services 50` showing its table exits 0 with no traceback and no error logged, and
    leaves no nats-server behind."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vipwire.cli", "up",
        "--clusters", "3", "--nodes", "5", "--services", "50",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own group, as a terminal's foreground job has
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    errors = asyncio.create_task(proc.stderr.read())
    try:
        # The fence: the live table is printed once the stack runs and the demo is made.
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), LIMIT_S)
            if not line:
                shown = (await errors).decode()
                pytest.fail(f"vipwire up ended before showing its table:\n{shown}")
            if match := _SCREEN.search(line):
                nats_port = int(match.group(1))
                break
        os.killpg(proc.pid, signal.SIGINT)
        drained = asyncio.create_task(proc.stdout.read())
        code = await asyncio.wait_for(proc.wait(), LIMIT_S)
        await drained
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    stderr = (await errors).decode()
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert not [ln for ln in stderr.splitlines() if " ERROR " in ln or "error" in ln.lower()], (
        stderr
    )
    assert "vipwire up: stopped" in stderr, stderr
    # NATS went last, and it went: nothing answers on its port any more.
    with pytest.raises(OSError):
        _, writer = await asyncio.open_connection("127.0.0.1", nats_port)
        writer.close()
