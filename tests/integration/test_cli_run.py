"""``vipwire run``: a renamed setting in the common sections is a proper log line."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from vipwire.natsserver import NatsServer

# Guards against a hang only; the test waits on the log line itself.
READ_LIMIT_S = 60.0


async def test_an_old_bus_key_is_warned_about_in_a_log_line(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """`vipwire run` logs an old bus key as a vipwire.config WARNING naming old and new key."""
    config = tmp_path / "vipwire.yaml"
    config.write_text(
        f"bus:\n  servers: [{nats_server.url!r}]\n  storage: memory\n  connect_timeout: 5\n"
        "http:\n  port: 0\n"
        "nodeagent:\n  cluster: east\n  node: node-a\n  dry_run: true\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vipwire.cli",
        "run",
        "nodeagent",
        "--config",
        str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        # The fence: the process writes the warning before it connects to the bus.
        while True:
            raw = await asyncio.wait_for(proc.stderr.readline(), READ_LIMIT_S)
            assert raw, "vipwire run ended without the warning:\n" + "".join(seen)
            line = raw.decode()
            seen.append(line)
            if "connect_timeout" in line:
                break
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), READ_LIMIT_S)
    assert "bus.connect_timeout is now called bus.connect_timeout_s" in line
    # Formatted by the logging vipwire run configures, not a bare line on stderr.
    assert " WARNING " in line and " vipwire.config " in line and "[trace=" in line, line
