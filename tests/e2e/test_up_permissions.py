"""`vipwire up --kubeconfig` against a cluster whose RBAC refuses the watcher (issue 16).

The emulator stands for a real cluster whose RBAC grants Leases only in
vipwire-system, while the kubeconfig's context says ``default``: `vipwire up` must
exit non-zero at once with the missing permission, and `--lease-namespace` fixes it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from vipwire.kubeemu import KubeEmulator


async def run_up(*args: str) -> tuple[int, str, str, float]:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "vipwire.cli", "up", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode(), time.monotonic() - started


async def test_up_exits_on_a_refused_lease_and_the_flag_moves_it(tmp_path: Path) -> None:
    """A 403 on the Lease: exit 2 with the permission named, well before the 30 s readiness
    wait; with --lease-namespace vipwire-system the stack runs."""
    async with KubeEmulator(
        "prod", bookmark_interval=1.0, namespaces=("default", "vipwire-system")
    ) as cluster:
        cluster.deny("*", "leases", "default")
        path = cluster.write_kubeconfig(tmp_path / "kubeconfig", context_name="prod-admin")
        base = ["--kubeconfig", str(path), "--context", "prod-admin", "--cluster", "prod"]
        base += ["--smoke", "--timeout", "20"]

        code, _, err, took = await run_up(*base)
        assert code == 2, err[-2000:]
        assert 'forbidden: cannot get leases (coordination.k8s.io) in namespace "default"' in err
        assert "not ready after 30 s" not in err and took < 25, (took, err[-2000:])

        code, out, err, _ = await run_up(*base, "--lease-namespace", "vipwire-system")
        assert code == 0, err[-2000:]
        assert json.loads(out.strip().splitlines()[-1])["services"] == 0
        assert cluster.find("leases", "vipwire-system", "vipwire-watcher-prod") is not None
