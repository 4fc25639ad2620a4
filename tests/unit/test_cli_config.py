"""`vipwire config`: file checks and the generated settings reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from vipwire.cli.config import reference
from vipwire.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def readme_reference() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- reference:start -->\n") + len("<!-- reference:start -->\n")
    return text[start : text.index("<!-- reference:end -->")]


def test_readme_reference_matches_the_settings_classes() -> None:
    """The README's configuration reference is exactly what the code documents."""
    assert readme_reference() == reference(), "README is stale: run `make docs`"


def test_example_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped example config passes `vipwire config check`."""
    assert main(["config", "check", str(ROOT / "deploy/config/vipwire.yaml")]) == 0
    assert "ok" in capsys.readouterr().out


def test_bad_field_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong type in a section exits 2 with the section and field in the message."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("ipam:\n  pools:\n    - name: p\n      addresses: 12\n")
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "ipam" in err and "pools[0].addresses" in err


def test_unknown_section_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt section name is an error, not silently ignored."""
    bad = tmp_path / "typo.yaml"
    bad.write_text("ipma:\n  pools: []\n")
    assert main(["config", "check", str(bad)]) == 2
    assert "ipma" in capsys.readouterr().err
