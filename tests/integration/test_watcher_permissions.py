"""The watcher's Lease namespace, and a missing permission reported at once (issue 16).

The emulator refuses requests as a real API server's RBAC does (a 403 whose message
names the verb, resource and namespace); the watcher must say which permission is
missing, in one ERROR line and on /readyz, and lead once it is granted.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import yaml

from vipwire.kubeemu import KubeEmulator
from vipwire.runtime import Runtime
from vipwire.testing import eventually
from vipwire.watcher import WatcherService, WatcherSettings

RuntimeFactory = Callable[[str], Awaitable[Runtime]]
TIMING = {"lease_duration_s": 1, "renew_deadline_s": 0.6, "retry_period_s": 0.1}


@pytest.fixture
async def emu() -> AsyncIterator[KubeEmulator]:
    async with KubeEmulator(
        "east", bookmark_interval=0.5, namespaces=("default", "vipwire-system")
    ) as e:
        yield e


def kubeconfig_in(emu: KubeEmulator, path: Path, namespace: str | None) -> Path:
    """A kubeconfig whose context names ``namespace`` (None: names none)."""
    emu.write_kubeconfig(path, context_name="east")
    config = yaml.safe_load(path.read_text())
    context = config["contexts"][0]["context"]
    if namespace is None:
        context.pop("namespace", None)
    else:
        context["namespace"] = namespace
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
async def watchers(make_runtime: RuntimeFactory) -> AsyncIterator[list[WatcherService]]:
    started: list[WatcherService] = []
    yield started
    for watcher in started:
        await watcher.stop()


async def start(
    make_runtime: RuntimeFactory, watchers: list[WatcherService], kubeconfig: Path, **extra: str
) -> WatcherService:
    settings = WatcherSettings(
        cluster="east", kubeconfig=str(kubeconfig), context="east", **TIMING, **extra
    )
    watcher = WatcherService(settings, await make_runtime("watcher"))
    await watcher.start()
    watchers.append(watcher)
    return watcher


async def test_the_lease_goes_in_the_kubeconfig_context_namespace(
    emu: KubeEmulator,
    make_runtime: RuntimeFactory,
    watchers: list[WatcherService],
    tmp_path: Path,
) -> None:
    """With a kubeconfig whose context names vipwire-system, the Lease is made there."""
    path = kubeconfig_in(emu, tmp_path / "kubeconfig", "vipwire-system")
    watcher = await start(make_runtime, watchers, path)
    await eventually(lambda: watcher.leading, what="the watcher leads")
    assert emu.find("leases", "vipwire-system", "vipwire-watcher-east") is not None
    assert emu.find("leases", "default", "vipwire-watcher-east") is None


async def test_the_lease_namespace_setting_wins(
    emu: KubeEmulator,
    make_runtime: RuntimeFactory,
    watchers: list[WatcherService],
    tmp_path: Path,
) -> None:
    """watcher.lease_namespace overrides the kubeconfig context's namespace."""
    path = kubeconfig_in(emu, tmp_path / "kubeconfig", "default")
    watcher = await start(make_runtime, watchers, path, lease_namespace="vipwire-system")
    await eventually(lambda: watcher.leading, what="the watcher leads")
    assert emu.find("leases", "vipwire-system", "vipwire-watcher-east") is not None


async def test_a_lease_it_may_not_get_is_reported_at_once_and_named(
    emu: KubeEmulator,
    make_runtime: RuntimeFactory,
    watchers: list[WatcherService],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 403 on the Lease: one ERROR naming verb, resource and namespace, /readyz false
    with that reason (never "ready" as a standby); granted, the watcher leads."""
    denial = emu.deny("get", "leases", "default")
    path = kubeconfig_in(emu, tmp_path / "kubeconfig", None)
    caplog.set_level(logging.INFO)
    watcher = await start(make_runtime, watchers, path)
    expected = 'forbidden: cannot get leases (coordination.k8s.io) in namespace "default"'
    await eventually(lambda: watcher.readiness() == expected, what="readiness names the 403")
    assert watcher.permission_problem() == expected
    # Let it retry a few times: still one ERROR line, not one per retry.
    before = len(emu.record_requests())
    await eventually(lambda: len(emu.record_requests()) >= before + 3, what="retries")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "get leases (coordination.k8s.io)" in errors[0], errors
    assert any("namespace default" in r.getMessage() for r in caplog.records), "the fallback"

    emu.allow(denial)
    await eventually(lambda: watcher.leading, what="the watcher leads once granted")
    await eventually(lambda: watcher.readiness() is None, what="the watcher is ready")


async def test_a_list_it_may_not_make_is_reported(
    emu: KubeEmulator,
    make_runtime: RuntimeFactory,
    watchers: list[WatcherService],
    tmp_path: Path,
) -> None:
    """A 403 on a call the leader needs (list Nodes) is named on /readyz until granted."""
    denial = emu.deny("list", "nodes")
    path = kubeconfig_in(emu, tmp_path / "kubeconfig", "vipwire-system")
    watcher = await start(make_runtime, watchers, path)
    expected = "forbidden: cannot list nodes cluster-wide"
    await eventually(lambda: watcher.readiness() == expected, what="readiness names the 403")
    emu.allow(denial)
    await eventually(lambda: watcher.readiness() is None, timeout=10, what="ready once granted")


async def test_a_write_it_may_not_make_is_reported(
    emu: KubeEmulator,
    make_runtime: RuntimeFactory,
    watchers: list[WatcherService],
    tmp_path: Path,
) -> None:
    """A 403 on a write (our finalizer on a new Service) is named on /readyz until granted."""
    denial = emu.deny("patch", "services")
    path = kubeconfig_in(emu, tmp_path / "kubeconfig", "vipwire-system")
    watcher = await start(make_runtime, watchers, path)
    await eventually(lambda: watcher.readiness() is None, what="the watcher is ready")
    await emu.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "type": "LoadBalancer",
                "loadBalancerClass": "vipwire.io/dsr",
                "ports": [{"port": 80, "protocol": "TCP"}],
            },
        }
    )
    expected = 'forbidden: cannot patch services in namespace "default"'
    await eventually(lambda: watcher.readiness() == expected, what="readiness names the 403")
    emu.allow(denial)
    await eventually(
        lambda: "finalizers" in emu.get("services", "default", "web")["metadata"],
        timeout=10,
        what="the finalizer is written once granted",
    )
    await eventually(lambda: watcher.readiness() is None, what="ready once granted")
