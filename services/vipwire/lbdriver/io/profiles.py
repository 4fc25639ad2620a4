"""The config file's top-level ``profiles`` section, read (apart from the lbdriver's
settings, which the pure core imports: reading a config brings the bus with it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vipwire.lbdriver.core.profiles import PROFILE_NAME, ProfileSettings
from vipwire.runtime import ConfigError, decode_settings


def load_profiles(data: Mapping[str, Any], *, source: str = "config") -> dict[str, ProfileSettings]:
    """The top-level ``profiles`` section: appliance profiles by name.

    Shared by ipam (which refuses a Service naming one that is not here, and
    checks each pool's default) and the lbdriver (which programs them), so that
    the two cannot disagree when they read one file.
    """
    raw = data.get("profiles") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: 'profiles' must map profile names to profiles")
    profiles: dict[str, ProfileSettings] = {}
    for name, body in raw.items():
        if not isinstance(name, str) or not PROFILE_NAME.match(name):
            raise ConfigError(
                f"{source}: profiles: {name!r} must be a DNS label (lower-case letters, "
                "digits and '-')"
            )
        profiles[name] = decode_settings(
            body or {}, ProfileSettings, where=f"profiles.{name}", source=source
        )
    return profiles
