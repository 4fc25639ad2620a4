"""Runs the lab's plan against the kernel: build, tear down, sweep up after crashed runs."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil

from vipwire.lab.topology import LabPlan, build_commands, stale_namespaces, teardown_commands
from vipwire.netns import NETNS_DIR, CommandFailed, run

log = logging.getLogger("vipwire.lab")


class LabError(Exception):
    """The lab cannot be built or run here (not root, tools missing, a command failed)."""


def missing_requirements() -> list[str]:
    """Why this machine cannot run the lab (empty: it can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("needs root (network namespaces, nftables)")
    for tool in ("ip", "nft", "sysctl"):
        if shutil.which(tool) is None:
            problems.append(f"needs {tool!r} on PATH")
    return problems


def existing_namespaces() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def sweep_stale() -> list[str]:
    """Remove the namespaces of lab runs whose process is gone; returns their names."""
    stale = stale_namespaces(existing_namespaces(), _alive)
    await _delete(stale)
    return stale


async def build(plan: LabPlan) -> None:
    """Create every namespace, link, address and route of the plan (tears down on failure)."""
    problems = missing_requirements()
    if problems:
        raise LabError("; ".join(problems))
    try:
        for argv in build_commands(plan):
            await run(argv, timeout=15.0)
    except CommandFailed as exc:
        await destroy(plan)
        raise LabError(f"building the lab failed: {exc}") from exc
    except BaseException:
        await destroy(plan)
        raise


async def destroy(plan: LabPlan) -> None:
    """Delete every namespace of the plan that exists; never fails."""
    present = set(existing_namespaces())
    await _delete([ns for ns in plan.namespaces if ns in present])


async def _delete(namespaces: list[str]) -> None:
    for argv in teardown_commands(namespaces):
        with contextlib.suppress(CommandFailed):
            await run(argv, timeout=15.0)
    leftover = set(namespaces) & set(existing_namespaces())
    if leftover:
        log.warning("could not delete lab namespaces: %s", ", ".join(sorted(leftover)))
