"""Appliance drivers: one interface, one error family, one builder from settings."""

from __future__ import annotations

from vipwire.lbdriver.drivers.base import (
    ApplianceAuthError,
    ApplianceDriver,
    ApplianceError,
    ApplianceRejected,
    ApplianceUnavailable,
)
from vipwire.lbdriver.drivers.sim import SimAppliance
from vipwire.lbdriver.settings import ApplianceSettings


def build_driver(settings: ApplianceSettings) -> ApplianceDriver:
    """A driver for one configured appliance."""
    match settings.driver:
        case "sim":
            return SimAppliance(
                settings.name,
                api_latency_ms=settings.api_latency_ms,
                fail_rate=settings.fail_rate,
                seed=settings.seed,
            )
    raise ValueError(f"appliance {settings.name!r}: unknown driver {settings.driver!r}")


__all__ = [
    "ApplianceAuthError",
    "ApplianceDriver",
    "ApplianceError",
    "ApplianceRejected",
    "ApplianceUnavailable",
    "SimAppliance",
    "build_driver",
]
