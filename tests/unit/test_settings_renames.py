"""Renamed settings: old names accepted for one release with a warning, new names only in docs."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import msgspec
import pytest

from vipwire.cli.config import reference, sections
from vipwire.cli.main import main
from vipwire.runtime import ConfigError, decode_settings, renamed, section


class Leg(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    __renamed__: ClassVar[Mapping[str, str]] = {"timeout": "timeout_s"}

    name: str
    timeout_s: float = 1.0


class Trip(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    __renamed__: ClassVar[Mapping[str, str]] = {"wait": "wait_s", "delay": "delay_ms"}

    wait_s: float = 2.0
    delay_ms: int = 10
    legs: tuple[Leg, ...] = ()
    spare: Leg | None = None


def decode(raw: object, warned: list[str]) -> Trip:
    return decode_settings(raw, Trip, where="trip", source="t.yaml", warn=warned.append)


def test_old_name_is_accepted_as_the_new_one_with_a_warning() -> None:
    """An old key sets the new field; the warning names section, both names and the next release."""
    warned: list[str] = []
    assert decode({"wait": 5, "delay_ms": 3}, warned) == Trip(wait_s=5.0, delay_ms=3)
    assert len(warned) == 1
    assert "t.yaml" in warned[0] and "trip.wait" in warned[0] and "trip.wait_s" in warned[0]
    assert "next" in warned[0]


def test_new_names_decode_without_warnings() -> None:
    """A config that already uses the new names is quiet."""
    warned: list[str] = []
    assert decode({"wait_s": 5, "delay_ms": 3}, warned) == Trip(wait_s=5.0, delay_ms=3)
    assert warned == []


def test_old_and_new_name_together_are_refused() -> None:
    """Giving both the old and the new name is an error naming both, not a silent pick."""
    with pytest.raises(ConfigError, match=r"'wait'.*'wait_s'") as err:
        decode({"wait": 5, "wait_s": 6}, [])
    assert "t.yaml" in str(err.value) and "trip" in str(err.value)


def test_a_real_typo_is_still_rejected() -> None:
    """forbid_unknown_fields still catches names that were never settings."""
    with pytest.raises(ConfigError, match="wiat"):
        decode({"wiat": 5}, [])


def test_a_typo_next_to_an_old_name_is_still_rejected() -> None:
    """Renaming one old key does not let an unknown one through."""
    warned: list[str] = []
    with pytest.raises(ConfigError, match="wiat"):
        decode({"wait": 5, "wiat": 5}, warned)


def test_nested_settings_are_renamed_where_they_sit() -> None:
    """Old names in a list of nested settings, or an optional one, are renamed at their path."""
    warned: list[str] = []
    trip = decode(
        {
            "legs": [{"name": "a"}, {"name": "b", "timeout": 3}],
            "spare": {"name": "s", "timeout": 4},
        },
        warned,
    )
    assert trip.legs == (Leg(name="a"), Leg(name="b", timeout_s=3.0))
    assert trip.spare == Leg(name="s", timeout_s=4.0)
    assert any("trip.legs[1].timeout" in note and "timeout_s" in note for note in warned)
    assert any("trip.spare.timeout" in note for note in warned)
    assert len(warned) == 2


def test_nested_old_and_new_together_are_refused() -> None:
    """Both names inside a nested setting are refused, naming where."""
    with pytest.raises(ConfigError, match=r"trip\.legs\[0\]"):
        decode({"legs": [{"name": "a", "timeout": 1, "timeout_s": 2}]}, [])


def test_section_warns_in_the_log_by_default(caplog: pytest.LogCaptureFixture) -> None:
    """Without a warn callback the warning is a log line of vipwire.config."""
    with caplog.at_level(logging.WARNING, logger="vipwire.config"):
        trip = section({"trip": {"delay": 7}}, "trip", Trip, source="t.yaml")
    assert trip.delay_ms == 7
    assert any(
        "trip.delay" in r.getMessage() and "delay_ms" in r.getMessage() for r in caplog.records
    )


def test_a_bad_renamed_declaration_is_a_programming_error() -> None:
    """__renamed__ must map a name that is no longer a field to one that is."""

    class Wrong(msgspec.Struct, frozen=True, kw_only=True):
        __renamed__: ClassVar[Mapping[str, str]] = {"old": "missing_s"}
        here_s: float = 1.0

    with pytest.raises(TypeError, match="missing_s"):
        renamed(Wrong)


def _all_settings_classes() -> list[type[msgspec.Struct]]:
    found: list[type[msgspec.Struct]] = []
    pending: list[type[msgspec.Struct]] = list(sections().values())
    while pending:
        cls = pending.pop()
        if cls in found:
            continue
        found.append(cls)
        for field in msgspec.structs.fields(cls):
            for tp in (field.type, *getattr(field.type, "__args__", ())):
                if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
                    pending.append(tp)
    return found


def test_every_declared_rename_points_at_a_field() -> None:
    """Each settings class's __renamed__ maps an old name to one of its current fields."""
    for cls in _all_settings_classes():
        renamed(cls)  # raises TypeError when a declaration is wrong


def test_reference_shows_only_the_new_names() -> None:
    """The generated reference lists each section's new setting names and none of its old ones."""
    tables = {
        chunk.split("`", 1)[0]: chunk for chunk in reference().split("#### `") if chunk.strip()
    }
    for name, cls in sections().items():
        for old, new in renamed(cls).items():
            assert f"| `{old}` |" not in tables[name]
            assert f"| `{new}` |" in tables[name]


def test_config_check_accepts_old_names_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vipwire config check` passes a file with old names and prints each rename on stderr."""
    renames = {
        name: renamed(cls)
        for name, cls in sections().items()
        if renamed(cls) and name != "lbdriver"
    }
    if not renames:
        pytest.skip("no settings are renamed in this release")
    lines: list[str] = []
    for name, mapping in renames.items():
        old, _ = next(iter(mapping.items()))
        lines += [f"{name}:", f"  {old}: 1"]
        if name in ("nodeagent", "watcher"):
            lines.append("  cluster: c1")
    config = tmp_path / "old.yaml"
    config.write_text("\n".join(lines) + "\n")
    assert main(["config", "check", str(config)]) == 0
    captured = capsys.readouterr()
    assert "ok" in captured.out
    for mapping in renames.values():
        old, new = next(iter(mapping.items()))
        assert f".{old} is now called" in captured.err and new in captured.err
