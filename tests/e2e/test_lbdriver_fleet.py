"""The appliance fleet seen from Kubernetes: a refused appliance is a Warning Event."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from vipwire.allinone import Stack, StackSettings
from vipwire.lbdriver import ApplianceAuthError, LbdriverService
from vipwire.testing import eventually


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with Stack(StackSettings(clusters=1, nodes=2)) as s:
        await s.wait_ready()
        yield s


def warnings(stack: Stack, reason: str) -> list[dict[str, Any]]:
    events = stack.emulators["east"].list("events.events.k8s.io", "default")
    return [e for e in events if e.get("type") == "Warning" and e.get("reason") == reason]


async def test_wrong_credentials_become_one_warning_event_and_no_status(stack: Stack) -> None:
    """Credentials refused by the appliance: the Service gets a Warning Event naming the
    appliance's reason, no VIP in status, and no flood of Events while it keeps failing."""
    stack.appliance.fail_next(10_000, ApplianceAuthError)
    await stack.create_service("east", "web")
    await eventually(
        lambda: warnings(stack, "ApplianceFailed"),
        timeout=5.0,
        what="an ApplianceFailed Warning Event",
    )
    (event,) = warnings(stack, "ApplianceFailed")
    assert "ApplianceAuthError" in event["note"]
    assert "check the credentials of appliance sim-1" in event["note"]
    # Fences: the retries opened the breaker (nothing more reaches the appliance until its
    # 5 s cooldown), and the lbdriver said the failure once: the watcher has no news.
    lbdriver = stack.components["lbdriver"]
    assert isinstance(lbdriver.service, LbdriverService) and lbdriver.runtime is not None
    service = lbdriver.service

    def health() -> str:
        return next(a.health for a in service.status().appliances if a.name == "sim-1")

    await eventually(lambda: health() == "open", what="sim-1's breaker open")
    published = lbdriver.runtime.metrics.counter("bus_published_total", "", ["family"])
    assert published.value(family="lb") == 1
    assert len(warnings(stack, "ApplianceFailed")) == 1
    assert stack.ingress_ips("east", "web") == []
    assert stack.appliance.failures <= 4
