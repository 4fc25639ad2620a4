"""The live table of ``vipwire up``: what it shows of a Service, from the bus."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from vipwire.allinone.view import BusView
from vipwire.contracts import (
    Message,
    ServicePort,
    ServiceRef,
    ServiceRejected,
    ServiceSnapshot,
    encode,
    service_subject,
)

REF = {"cluster": "east", "namespace": "default", "name": "typo", "uid": "u1"}


async def deliver(view: BusView, message: Message) -> None:
    subject = service_subject("service", "east", "default", "typo")
    msg: Any = SimpleNamespace(subject=subject, data=encode(message))
    await view._on_msg(msg)


async def test_a_rejected_service_is_a_row_with_its_reason_until_fixed() -> None:
    """ServiceRejected: a row in state rejected naming the reason; the fixed snapshot
    makes it pending again."""
    view = BusView()
    await deliver(
        view,
        ServiceRejected(
            **REF,
            resource_version="2",
            reason="InvalidService",
            message="annotation vipwire.io/poool is not one vipwire knows",
        ),
    )
    row = view.rows[ServiceRef("east", "default", "typo")]
    assert row.state == "rejected"
    assert row.detail == "InvalidService: annotation vipwire.io/poool is not one vipwire knows"
    assert "└ InvalidService: annotation vipwire.io/poool" in view.render({})
    await deliver(view, ServiceSnapshot(**REF, resource_version="3", ports=(ServicePort(port=80),)))
    assert (row.state, row.detail) == ("pending", "")
