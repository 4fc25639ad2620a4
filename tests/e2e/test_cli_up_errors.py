"""`vipwire up`'s errors against an API server: one line, the exit code of the convention."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from vipwire.kubeemu import KubeEmulator


async def run_up(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "vipwire.cli", "up", *args),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_demo_refused_by_rbac_names_the_permission(tmp_path: Path) -> None:
    """A 403 on creating the demo Services: exit 2 with the permission --demo needs, no
    traceback."""
    async with KubeEmulator("prod", bookmark_interval=1.0) as cluster:
        cluster.deny("create", "services", "default")
        path = cluster.write_kubeconfig(tmp_path / "kubeconfig", context_name="prod-admin")
        code, err = await run_up(
            "--kubeconfig", str(path), "--context", "prod-admin", "--cluster", "prod",
            "--demo", "--smoke", "--timeout", "20",
        )  # fmt: skip
    assert code == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert "--demo needs create" in err and "services" in err
