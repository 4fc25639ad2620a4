"""Operator commands against a running `vipwire up`, found without flags (issue 19).

One `vipwire up --state-dir DIR` runs in an 80x24 pseudo-terminal for the module; the
operator commands run beside it with no connection flags (the pointer file under
``XDG_RUNTIME_DIR``), then with ``VIPWIRE_NATS_URL``/``VIPWIRE_NATS_CREDS`` only.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class Running:
    """A `vipwire up` in a pty: everything it wrote, and how to reach it."""

    proc: subprocess.Popen[bytes]
    state_dir: Path
    env: dict[str, str]
    output: bytearray = field(default_factory=bytearray)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def text(self) -> str:
        with self.lock:
            return self.output.decode(errors="replace")

    def size(self) -> int:
        with self.lock:
            return len(self.output)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, ANSI.sub("", self.text()))
            if found:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the output:\n{self.text()[-3000:]}")


def _pump(fd: int, running: Running) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return
        if not chunk:
            return
        with running.lock:
            running.output.extend(chunk)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """`vipwire up --state-dir DIR` in an 80x24 pty, its pointer under a private
    XDG_RUNTIME_DIR; stopped with SIGINT at the end."""
    base = tmp_path_factory.mktemp("up")
    runtime = base / "run"
    runtime.mkdir()
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "TERM": "xterm"}
    for name in ("VIPWIRE_NATS_URL", "VIPWIRE_NATS_CREDS"):
        env.pop(name, None)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "vipwire.cli", "up", "--state-dir", str(base / "state")],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    running = Running(proc, base / "state", env)
    reader = threading.Thread(target=_pump, args=(master, running), daemon=True)
    reader.start()
    try:
        running.wait_for(r"10 Services, 10 ready, 0 failed")
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(timeout=5)
        os.close(master)


def vipwire(env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "vipwire.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("command", ["ipam status", "lb status", "services"])
def test_commands_find_the_running_stack_without_flags(stack: Running, command: str) -> None:
    """With no --nats, environment or --config, the command reaches `vipwire up`."""
    code, out, err = vipwire(stack.env, *command.split())
    assert code == 0, err
    assert "Traceback" not in err
    assert out.strip(), err


@pytest.mark.parametrize("command", ["ipam status", "lb status", "services"])
def test_commands_reach_it_through_the_environment(
    stack: Running, command: str, tmp_path: Path
) -> None:
    """With the export lines `vipwire up` printed (and no pointer file), too."""
    url = stack.wait_for(r"export VIPWIRE_NATS_URL=(\S+)").group(1)
    creds = stack.wait_for(r"export VIPWIRE_NATS_CREDS=(\S+)").group(1)
    env = {
        **stack.env,
        "XDG_RUNTIME_DIR": str(tmp_path),
        "VIPWIRE_NATS_URL": url,
        "VIPWIRE_NATS_CREDS": creds,
    }
    code, out, err = vipwire(env, *command.split())
    assert code == 0, err
    assert out.strip(), err


@pytest.mark.parametrize(
    "command",
    [
        "ipam show east/default/nosuch",
        "ipam release east/default/nosuch --yes",
        "replay --service east/default/nosuch",
    ],
)
def test_an_unknown_service_exits_1(stack: Running, command: str) -> None:
    """A Service nobody knows: exit 1 from show, release and replay alike."""
    code, out, err = vipwire(stack.env, *command.split())
    assert code == 1, (out, err)
    assert "Traceback" not in err


def test_services_lists_every_service_with_its_vip(stack: Running) -> None:
    """`vipwire services`: the ten demo Services, each with a VIP; --cluster and --failed
    filter."""
    import json

    stack.wait_for(r"10 Services, 10 ready")
    code, out, err = vipwire(stack.env, "services", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 10 and all(r["vips"] and r["state"] == "programmed" for r in rows), rows
    code, out, err = vipwire(stack.env, "services", "--cluster", "east", "--json")
    assert {r["cluster"] for r in json.loads(out)} == {"east"} and len(json.loads(out)) == 5
    code, out, err = vipwire(stack.env, "services", "--failed")
    assert code == 0 and out.strip().endswith("0 Services, 0 ready, 0 failed"), out


def screen(output: str) -> list[str]:
    """The last frame the live table drew (each starts at the home position), as the
    terminal shows it: colours removed, one string per row."""
    last = output.rsplit("\x1b[H", 1)[-1]
    return [ANSI.sub("", line).rstrip("\r") for line in last.split("\n")]


def test_the_live_table_fits_80x24_keeps_urls_and_summary_and_is_quiet(stack: Running) -> None:
    """In an 80x24 terminal: at most 24 rows of at most 80 columns, the NATS and
    dashboard URLs and the summary on it; once converged, nothing more is written."""
    stack.wait_for(r"10 Services, 10 ready, 0 failed, p50 \d+ ms")
    rows = screen(stack.text())
    assert len(rows) <= 24 and all(len(row) <= 80 for row in rows), rows
    text = "\n".join(rows)
    assert "NATS nats://127.0.0.1:" in text and "dashboard http://127.0.0.1:" in text, rows
    assert re.search(r"10 Services, 10 ready, 0 failed, p50 \d+ ms", text), rows
    assert sum(1 for row in rows if " ready " in f"{row} ") == 10, rows
    before = stack.size()
    time.sleep(2.0)  # ten looks of the table for a change (LOOK_EVERY_S)
    assert stack.size() == before, stack.text()[before:]


def test_release_asks_on_a_terminal_and_dry_run_changes_nothing(stack: Running) -> None:
    """On a terminal, release asks first (no: nothing changes, exit 1); --dry-run only
    says which VIP would go."""
    import json

    stack.wait_for(r"10 Services, 10 ready")
    _, out, _ = vipwire(stack.env, "services", "--cluster", "east", "--json")
    (vip,) = next(r["vips"] for r in json.loads(out) if r["name"] == "web")
    code, out, err = vipwire(stack.env, "ipam", "release", "east/default/web", "--dry-run")
    assert code == 0 and f"would withdraw {vip}" in out, (out, err)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vipwire.cli", "ipam", "release", "east/default/web"],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=stack.env,
        start_new_session=True,
    )
    os.close(slave)
    asked = b""
    try:
        deadline = time.monotonic() + 30
        while b"[y/N]" not in asked and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                asked += os.read(master, 1024)
        assert b"[y/N]" in asked, asked
        os.write(master, b"n\n")
        proc.communicate(timeout=30)
        while select.select([master], [], [], 0.5)[0]:
            try:
                chunk = os.read(master, 1024)
            except OSError:
                break
            if not chunk:
                break
            asked += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        os.close(master)
    assert proc.returncode == 1 and b"not confirmed" in asked, asked
    assert vip.encode() in asked
    _, out, _ = vipwire(stack.env, "services", "--cluster", "east", "--json")
    assert next(r["vips"] for r in json.loads(out) if r["name"] == "web") == [vip]
