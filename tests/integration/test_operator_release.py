"""An operator's release under permissions: ipam hears who asked from the subject the
server let the operator's connection publish on, logs it, and the Service's next
VipAssigned names the operator (the watcher's IPReleasedByOperator Event)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import msgspec
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from support.secure_nats import OPERATOR, SecuredNats
from vipwire.bus import Bus
from vipwire.contracts import (
    IPAM_RELEASE,
    LbRemoved,
    ReleaseReply,
    ReleaseRequest,
    ServicePort,
    ServiceSnapshot,
    VipAssigned,
    decode,
)
from vipwire.ipam import IpamService, IpamSettings, PoolSettings
from vipwire.runtime import CommonSettings, Runtime
from vipwire.testing import eventually

POOL = PoolSettings(name="lab", addresses=("192.0.2.0/29",), appliance_group="g1")
SUBJECT = "vipwire.east.vip.shop.web"


@pytest.fixture
async def ipam(
    secured_nats: SecuredNats, span_exporter: InMemorySpanExporter
) -> AsyncIterator[IpamService]:
    """ipam logged in as its own identity, on the server with the generated permissions."""
    await secured_nats.declare()
    runtime = Runtime(
        "ipam",
        CommonSettings(bus=secured_nats.settings("ipam")),
        span_processors=[SimpleSpanProcessor(span_exporter)],
        connect_attempts=20,
    )
    await runtime.start()
    service = IpamService(IpamSettings(pools=(POOL,)), runtime)
    try:
        await service.start()
        yield service
    finally:
        await service.stop()
        await runtime.stop()


async def wait_assigned(bus: Bus, *, unlike: VipAssigned | None = None) -> VipAssigned:
    """The last VipAssigned on web's subject, once there is one (with other VIPs than
    ``unlike``'s)."""
    found: list[VipAssigned] = []

    async def arrived() -> bool:
        stored = await bus.last_message(SUBJECT)
        message = None if stored is None else decode(stored.subject, stored.data)
        if isinstance(message, VipAssigned) and (unlike is None or message.vips != unlike.vips):
            found.append(message)
        return bool(found)

    await eventually(arrived, what=f"a VipAssigned on {SUBJECT}")
    return found[-1]


async def test_the_operator_named_by_its_credentials_is_who_released(
    secured_nats: SecuredNats, ipam: IpamService, caplog: pytest.LogCaptureFixture
) -> None:
    """operator-admin's release (on its own caller subject, the only one the server lets it
    use) is logged with operator-admin and carried on the new VipAssigned."""
    watcher = await secured_nats.connect("watcher-east")
    lbdriver = await secured_nats.connect("lbdriver")
    operator = await secured_nats.connect(OPERATOR)
    try:
        assert operator.caller == OPERATOR
        await watcher.publish(
            ServiceSnapshot(
                cluster="east",
                namespace="shop",
                name="web",
                uid="uid-web",
                resource_version="1",
                ports=(ServicePort(port=80),),
            )
        )
        first = await wait_assigned(operator)

        request = msgspec.json.encode(ReleaseRequest(service="east/shop/web"))
        with caplog.at_level(logging.INFO, logger="vipwire.ipam"):
            raw = await operator.request(
                IPAM_RELEASE.subject(operator.caller), request, timeout_s=10
            )
        reply = msgspec.json.decode(raw, type=ReleaseReply)
        assert (reply.error, reply.vips) == (None, first.vips)
        assert f"operator release by {OPERATOR}: east/shop/web (key svc.east.shop.web)" in (
            caplog.text
        )

        await lbdriver.publish(
            LbRemoved(
                cluster="east",
                namespace="shop",
                name="web",
                uid="uid-web",
                appliance="sim-1",
                vips=first.vips,
            )
        )

        after = await wait_assigned(operator, unlike=first)
        assert (after.released_by, after.released_vips) == (OPERATOR, first.vips)
    finally:
        for bus in (watcher, lbdriver, operator):
            await bus.close()
