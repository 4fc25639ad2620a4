"""Each identity, against a nats-server started with the generated configuration, is
refused every attempt outside its role: the client hears a permissions violation, and
the stream, the consumers and the ipam bucket are unchanged afterwards."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from support.secure_nats import SecuredNats
from vipwire.bus import Bus, BusError
from vipwire.contracts import FEED_BUCKET, IPAM_BUCKET, STREAM, feed_delta_subject
from vipwire.natsauth import seed_in
from vipwire.testing import eventually

EVERYONE = (
    "dashboard",
    "ipam",
    "lbdriver",
    "nodeagent-east-n1",
    "nodeagent-east-n2",
    "nodeagent-west-n1",
    "operator-admin",
    "reader-viewer",
    "watcher-east",
    "watcher-west",
)


class Probe:
    """A bare nats-py client logged in as one identity, hearing what the server refuses."""

    def __init__(self, identity: str, nc: NatsClient, errors: list[Exception]) -> None:
        self.identity = identity
        self.nc = nc
        self.errors = errors

    async def refused(
        self, subject: str, data: bytes = b"{}", *, headers: dict[str, str] | None = None
    ) -> None:
        """Publish ``subject`` (with a reply inbox, as a request would) and wait for the
        server's permissions violation naming it."""
        before = len(self.errors)
        await self.nc.publish(subject, data, reply=self.nc.new_inbox(), headers=headers)
        await self.nc.flush()

        def told() -> bool:
            return any(
                "permissions violation" in str(e).lower() and subject.lower() in str(e).lower()
                for e in self.errors[before:]
            )

        await eventually(told, what=f"the server refusing {self.identity} a publish to {subject}")


@asynccontextmanager
async def probe(secured: SecuredNats, identity: str) -> AsyncIterator[Probe]:
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    seed = seed_in(secured.creds(identity).read_text())
    assert seed is not None
    nc = await nats.connect(
        secured.url,
        nkeys_seed_str=seed,
        inbox_prefix=f"_INBOX.{identity}",
        error_cb=on_error,
        allow_reconnect=False,
        connect_timeout=5,
    )
    try:
        yield Probe(identity, nc, errors)
    finally:
        await nc.close()


@pytest.fixture
async def steward(secured_nats: SecuredNats) -> AsyncIterator[Bus]:
    """ipam's bus, the stream declared: it writes the state the others must not change."""
    await secured_nats.declare()
    bus = await secured_nats.connect("ipam")
    try:
        yield bus
    finally:
        await bus.close()


async def _last_seq(bus: Bus, subject: str) -> int | None:
    stored = await bus.last_message(subject)
    return None if stored is None else stored.seq


async def _consumers(bus: Bus) -> set[str]:
    return {info.name for info in await bus.js.consumers_info(STREAM)}


async def test_a_watcher_publishes_only_its_own_clusters_families(
    secured_nats: SecuredNats, steward: Bus
) -> None:
    """watcher-east: west's service and east's vip refused (ipam's VIP unchanged);
    east's service accepted."""
    vip_subject = "vipwire.east.vip.default.web"
    await steward.js.publish(vip_subject, b'{"real": true}')
    seq = await _last_seq(steward, vip_subject)
    async with probe(secured_nats, "watcher-east") as p:
        await p.refused("vipwire.west.service.default.web")
        await p.refused(vip_subject)
        await p.nc.jetstream().publish("vipwire.east.service.default.web", b"{}")
    assert await _last_seq(steward, "vipwire.west.service.default.web") is None
    assert await _last_seq(steward, vip_subject) == seq


async def test_a_watcher_cannot_create_a_consumer_on_another_cluster(
    secured_nats: SecuredNats, steward: Bus
) -> None:
    """A consumer on vipwire.west.> is refused in every form the API has (the filter
    in the subject, no filter in the subject, the legacy durable); east's is created."""
    body = json.dumps(
        {"stream_name": STREAM, "config": {"name": "spy", "filter_subject": "vipwire.west.>"}}
    ).encode()
    before = await _consumers(steward)
    async with probe(secured_nats, "watcher-east") as p:
        await p.refused(f"$JS.API.CONSUMER.CREATE.{STREAM}.spy.vipwire.west.>", body)
        await p.refused(f"$JS.API.CONSUMER.CREATE.{STREAM}.spy.vipwire.*.>", body)
        await p.refused(f"$JS.API.CONSUMER.CREATE.{STREAM}", body)
        await p.refused(f"$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.spy", body)
        assert await _consumers(steward) == before
        js = p.nc.jetstream()
        info = await js.add_consumer(STREAM, name="mine", filter_subject="vipwire.east.>")
        assert info.name == "mine"


async def test_a_node_agent_publishes_only_its_own_applied(
    secured_nats: SecuredNats, steward: Bus
) -> None:
    """nodeagent-east-n1: lb and n2's applied refused, its own applied accepted."""
    async with probe(secured_nats, "nodeagent-east-n1") as p:
        await p.refused("vipwire.east.lb.default.web")
        await p.refused("vipwire.east.applied.n2")
        await p.refused("vipwire.west.applied.n1")
        await p.nc.jetstream().publish("vipwire.east.applied.n1", b"{}")
    for subject in ("vipwire.east.lb.default.web", "vipwire.east.applied.n2"):
        assert await _last_seq(steward, subject) is None
    assert await _last_seq(steward, "vipwire.east.applied.n1") is not None


async def test_a_node_agent_reads_only_its_own_clusters_feed(
    secured_nats: SecuredNats, steward: Bus
) -> None:
    """nodeagent-east-n1: west's feed table (direct read) and deltas refused, publishing
    a delta refused; east's table readable, east's deltas heard; the lbdriver publishes."""
    async with probe(secured_nats, "nodeagent-east-n1") as p:
        await p.refused(f"$JS.API.DIRECT.GET.KV_{FEED_BUCKET}.$KV.{FEED_BUCKET}.west.head")
        await p.refused(feed_delta_subject("east"))
        before = len(p.errors)
        await p.nc.subscribe(feed_delta_subject("west"))
        await p.nc.flush()
        await eventually(
            lambda: any("subscription" in str(e).lower() for e in p.errors[before:]),
            what="the server refusing a subscription to west's feed",
        )
        heard: list[bytes] = []

        async def on_delta(msg: Any) -> None:
            heard.append(msg.data)

        await p.nc.subscribe(feed_delta_subject("east"), cb=on_delta)
        await p.nc.flush()
        async with probe(secured_nats, "lbdriver") as lb:
            await lb.nc.publish(feed_delta_subject("east"), b"delta")
            await lb.nc.flush()
        await eventually(lambda: heard == [b"delta"], what="east's delta heard by its agent")


async def test_the_dashboard_publishes_nothing(secured_nats: SecuredNats, steward: Bus) -> None:
    """The dashboard: any vipwire subject and mutating control subjects refused."""
    async with probe(secured_nats, "dashboard") as p:
        for subject in (
            "vipwire.east.service.default.web",
            "vipwire.east.lb.default.web",
            "vipwire.east.applied.n1",
            "vipwire-ctl.ipam.release.dashboard",
            "vipwire-ctl.ipam.reload.dashboard",
            f"$KV.{IPAM_BUCKET}.x",
        ):
            await p.refused(subject)
    assert await steward.last_messages("vipwire.>") == []


async def test_only_ipam_writes_or_deletes_ipam_keys(
    secured_nats: SecuredNats, steward: Bus
) -> None:
    """Every other identity: put, delete and purge of a vipwire-ipam key, a purge and a
    delete of its stream, refused; the key keeps its value and revision."""
    bucket = await steward.kv(IPAM_BUCKET)
    revision = await bucket.put("addr.198_51_100_7", b"east/default/web")
    key = f"$KV.{IPAM_BUCKET}.addr.198_51_100_7"
    for identity in (i for i in EVERYONE if i != "ipam"):
        async with probe(secured_nats, identity) as p:
            await p.refused(key, b"someone-else")
            await p.refused(key, b"", headers={"KV-Operation": "DEL"})
            await p.refused(key, b"", headers={"KV-Operation": "PURGE"})
            await p.refused(f"$JS.API.STREAM.PURGE.KV_{IPAM_BUCKET}")
            await p.refused(f"$JS.API.STREAM.DELETE.KV_{IPAM_BUCKET}")
            await p.refused(f"$JS.API.STREAM.MSG.DELETE.KV_{IPAM_BUCKET}")
    entry = await bucket.get("addr.198_51_100_7")
    assert entry is not None
    assert (entry.value, entry.revision) == (b"east/default/web", revision)


async def test_only_an_operator_sends_a_release(secured_nats: SecuredNats, steward: Bus) -> None:
    """Every other identity: release with its own token and with the operator's refused;
    ipam hears only the operator's own release."""
    heard: list[str] = []

    async def on_request(msg: nats.aio.msg.Msg) -> None:
        heard.append(msg.subject)

    sub = await steward.nc.subscribe("vipwire-ctl.ipam.>", cb=on_request)
    try:
        for identity in (i for i in EVERYONE if i not in ("operator-admin", "ipam")):
            async with probe(secured_nats, identity) as p:
                await p.refused(f"vipwire-ctl.ipam.release.{identity}")
                await p.refused("vipwire-ctl.ipam.release.operator-admin")
        async with probe(secured_nats, "operator-admin") as p:
            await p.nc.publish("vipwire-ctl.ipam.release.operator-admin", b"{}")
            await p.nc.flush()
        await eventually(lambda: heard, what="ipam hearing the operator's release")
        await steward.fence()
        assert heard == ["vipwire-ctl.ipam.release.operator-admin"]
    finally:
        await sub.unsubscribe()


async def test_without_credentials_nothing_connects(secured_nats: SecuredNats) -> None:
    """No credentials: the server refuses the connection itself."""
    nc = NatsClient()
    try:
        with pytest.raises((nats.errors.Error, OSError)):
            await nc.connect(
                secured_nats.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2
            )
    finally:
        await nc.close()


async def test_an_identity_that_may_not_declare_the_stream_waits_for_ipam(
    secured_nats: SecuredNats, caplog: pytest.LogCaptureFixture
) -> None:
    """watcher-east only looks the stream up (no refused create or update): it waits,
    then is through once ipam has declared it; nothing was refused meanwhile."""
    bus = await secured_nats.connect("watcher-east")
    try:
        with caplog.at_level(logging.WARNING, logger="vipwire.bus"):
            waiting = asyncio.create_task(bus.ensure_stream())
            await eventually(
                lambda: "does not exist yet" in caplog.text, what="the watcher waiting for ipam"
            )
            assert not waiting.done()
            await secured_nats.declare()
            await asyncio.wait_for(waiting, 10)
        assert "bus_permission_denied_total{" not in bus.metrics.expose()
        assert not [line for line in secured_nats.server.log_tail if "Violation" in line]
    finally:
        await bus.close()


async def test_a_component_without_a_login_is_told_what_to_do(
    secured_nats: SecuredNats, caplog: pytest.LogCaptureFixture
) -> None:
    """No bus.credentials against a secured server: the connection fails, and the log
    says the server wants a login and where the credentials come from."""
    with caplog.at_level(logging.ERROR, logger="vipwire.bus"), pytest.raises(BusError):
        await secured_nats.connect(None, reconnect_wait_s=0.05)
    assert "authorization violation" in caplog.text
    assert "no bus.credentials set" in caplog.text and "vipwire nats config" in caplog.text


async def test_nobody_but_ipam_touches_ipams_durables(
    secured_nats: SecuredNats, steward: Bus
) -> None:
    """Others may not create (squat), pull from, ack for, step down or delete ipam's
    durable, nor create a consumer with its name in the request body; it stays as it is."""
    await steward.js.add_consumer(
        STREAM,
        durable_name="ipam-service",
        name="ipam-service",
        filter_subject="vipwire.*.service.>",
    )
    body = json.dumps(
        {"stream_name": STREAM, "config": {"name": "ipam-service", "filter_subject": "vipwire.>"}}
    ).encode()
    for identity in ("reader-viewer", "watcher-east", "lbdriver", "dashboard"):
        async with probe(secured_nats, identity) as p:
            await p.refused(f"$JS.API.CONSUMER.CREATE.{STREAM}", body)
            await p.refused(f"$JS.API.CONSUMER.CREATE.{STREAM}.ipam-service.vipwire.east.>", body)
            await p.refused(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.ipam-service", b'{"batch":1}')
            await p.refused(f"$JS.API.CONSUMER.DELETE.{STREAM}.ipam-service")
            await p.refused(f"$JS.API.CONSUMER.LEADER.STEPDOWN.{STREAM}.ipam-service")
            await p.refused(f"$JS.ACK.{STREAM}.ipam-service.1.1.1.1.1")
    info = await steward.js.consumer_info(STREAM, "ipam-service")
    assert info.config.filter_subject == "vipwire.*.service.>"
