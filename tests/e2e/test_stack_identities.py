"""The all-in-one stack with permissions on: the operator and the reader it generates
do what the operator commands do (ipam status and show, the bucket, replay's read of
the stream) and nothing more; every component ran within its own permissions."""

from __future__ import annotations

import nats
import pytest

from vipwire.allinone import Stack, StackSettings
from vipwire.cli.ipam import IpamUnavailable, fetch_release, fetch_show, fetch_status, show_from_kv
from vipwire.natsserver import NatsServer
from vipwire.replay.source import read_records, stream_state
from vipwire.testing import eventually


async def test_operator_and_reader_rights_on_a_secured_stack() -> None:
    """Operator: status, show, release; reader: status, show, the stream, the bucket, and
    its release refused by the server; no component was refused anything."""
    settings = StackSettings(clusters=1, nodes=1, dashboard_port=None)
    async with Stack(settings) as stack:
        await stack.wait_ready(30)
        assert stack.operator_creds is not None and stack.operator_creds.exists()
        await stack.create_service("east", "web")
        await eventually(lambda: stack.ingress_ips("east", "web"), 10, what="east/web has a VIP")
        vip = stack.ingress_ips("east", "web")[0]

        reader = await nats.connect(
            servers=list(stack.nats.urls), **stack.nats_login("reader-stack")
        )
        try:
            status = await fetch_status(reader, caller="reader-stack")
            assert status is not None
            shown = await fetch_show(reader, "east/default/web", caller="reader-stack")
            assert vip in str(shown)
            from_kv = await show_from_kv(reader, "east/default/web")
            assert vip in str(from_kv)
            state = await stream_state(reader.jetstream())
            assert state is not None
            records = [
                r async for r in read_records(reader.jetstream(), state, subject_filter="vipwire.>")
            ]
            assert any(r.subject.startswith("vipwire.east.vip.") for r in records)
            with pytest.raises(IpamUnavailable):
                await fetch_release(reader, "east/default/web", caller="reader-stack", timeout=1)
        finally:
            await reader.close()

        operator = await nats.connect(
            servers=list(stack.nats.urls), **stack.nats_login("operator-admin")
        )
        try:
            released = await fetch_release(operator, "east/default/web", caller="operator-admin")
            assert released is not None
        finally:
            await operator.close()

        assert isinstance(stack.nats, NatsServer)
        refused = [line for line in stack.nats.log_tail if "Violation" in line]
        # The reader's release, and nothing else.
        assert len(refused) == 1 and "vipwire-ctl.ipam.release.reader-stack" in refused[0]
