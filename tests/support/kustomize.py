"""Render deploy/kustomize with the real ``kubectl kustomize`` (skip when there is none)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "deploy" / "kustomize"
OVERLAYS = KUSTOMIZE / "overlays"


def kubectl() -> str:
    """The kubectl binary; without one the test is skipped with the reason, except in CI
    (the machines CI runs on have kubectl: a missing one must not pass unnoticed)."""
    found = shutil.which("kubectl")
    if found is None:
        reason = "kubectl not on PATH: deploy/kustomize is rendered with `kubectl kustomize`"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize DIR`` renders, in its order (the order it applies)."""
    return [doc for doc in yaml.safe_load_all(_rendered(directory)) if doc]


@functools.cache
def _rendered(directory: Path) -> str:
    # Once per directory and test session: the files do not change under a test run.
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return done.stdout


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one object of ``kind`` named ``name`` (generated names: by their prefix)."""
    found = [
        o
        for o in objects
        if o["kind"] == kind
        and (o["metadata"]["name"] == name or o["metadata"]["name"].startswith(f"{name}-"))
    ]
    assert len(found) == 1, f"{kind}/{name}: found {len(found)}"
    return found[0]


def config_of(objects: list[dict[str, Any]], configmap: str) -> dict[str, Any]:
    """The vipwire config file held by a rendered ConfigMap, parsed."""
    data = find(objects, "ConfigMap", configmap)["data"]["vipwire.yaml"]
    parsed = yaml.safe_load(data)
    assert isinstance(parsed, dict)
    return parsed
