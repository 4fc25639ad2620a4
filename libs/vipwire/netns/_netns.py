from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shlex
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, TypeVar

T = TypeVar("T")

NETNS_DIR: Final = Path("/run/netns")
"""Where ``ip netns add`` mounts the namespaces it names."""

_CLONE_NEWNET: Final = 0x40000000


class CommandFailed(Exception):
    """A command could not be run or exited non-zero; carries what it printed."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        status = "could not run" if returncode is None else f"exited {returncode}"
        detail = f": {self.stderr}" if self.stderr else ""
        super().__init__(f"{shlex.join(self.argv)} {status}{detail}")


def validate_netns_name(name: str) -> str:
    """A name ``ip netns`` accepts (a plain file name), or ValueError."""
    if not name or len(name) > 255 or "/" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"{name!r} is not a valid network namespace name")
    return name


def in_netns(argv: Sequence[str], netns: str | None) -> list[str]:
    """``argv`` as run inside ``netns`` (unchanged for None: the caller's own namespace)."""
    if netns is None:
        return list(argv)
    return ["ip", "netns", "exec", validate_netns_name(netns), *argv]


async def run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    stdin: str | None = None,
    timeout: float = 30.0,
) -> str:
    """Run a command (inside ``netns`` if given) and return its standard output.

    Raises :class:`CommandFailed` if it cannot start, exits non-zero or takes
    longer than ``timeout`` seconds (then it is killed).
    """
    full = in_netns(argv, netns)
    try:
        proc = await asyncio.create_subprocess_exec(
            *full,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise CommandFailed(full, None, str(exc)) from exc
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    except TimeoutError as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise CommandFailed(full, None, f"timed out after {timeout:g}s") from exc
    except BaseException:
        # Cancelled: never leave the child running behind us.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
        raise
    if proc.returncode != 0:
        raise CommandFailed(full, proc.returncode, err.decode(errors="replace"))
    return out.decode(errors="replace")


def call_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Call ``fn`` with the calling code's thread inside ``netns``; blocking.

    A fresh thread joins the namespace and dies after the call, so no thread
    of a pool is ever left in a foreign namespace. What ``fn`` opens there
    (sockets) keeps working from any thread. None: just call ``fn``.
    """
    if netns is None:
        return fn()
    path = NETNS_DIR / validate_netns_name(netns)
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=body, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
