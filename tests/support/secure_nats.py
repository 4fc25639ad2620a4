"""A nats-server with permissions on: the configuration ``vipwire nats config`` makes.

``secured_nats`` (registered in tests/conftest.py) starts one for clusters ``east`` and
``west`` (nodes ``n1``, ``n2`` in each), operator ``admin`` and reader ``viewer``, and
yields a :class:`SecuredNats`: the credentials file and a ready :class:`BusSettings` of
any identity, and :meth:`SecuredNats.declare` to create the stream as its steward
(ipam) does, so that other identities (which may only look at it) can start.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry.trace import NoOpTracer

from vipwire.bus import Bus, BusSettings, connect
from vipwire.metrics import Registry
from vipwire.natsauth import Generated, generate
from vipwire.natsserver import NatsServer

CLUSTERS = ("east", "west")
NODES = {"east": ["n1", "n2"], "west": ["n1", "n2"]}
OPERATOR = "operator-admin"
READER = "reader-viewer"


class SecuredNats:
    """A running server with the generated permissions, and each identity's login."""

    def __init__(self, server: NatsServer, generated: Generated) -> None:
        self.server = server
        self.generated = generated

    @property
    def url(self) -> str:
        return self.server.url

    def creds(self, identity: str) -> Path:
        """The credentials file of ``identity`` (``watcher-east``, ``ipam``, ...)."""
        return self.generated.creds(identity)

    def settings(self, identity: str | None, **overrides: object) -> BusSettings:
        """Bus settings logging in as ``identity`` (None: no credentials at all)."""
        fields: dict[str, object] = {
            "servers": (self.url,),
            "storage": "memory",
            "reconnect_wait_s": 0.1,
            "credentials": None if identity is None else str(self.creds(identity)),
        }
        fields.update(overrides)
        return BusSettings(**fields)  # type: ignore[arg-type]

    async def connect(self, identity: str | None, **overrides: object) -> Bus:
        """A bus connected as ``identity`` (close it yourself)."""
        return await connect(
            self.settings(identity, **overrides),
            name=f"test-{identity}",
            tracer=NoOpTracer(),
            metrics=Registry(),
            attempts=5,
        )

    async def declare(self) -> None:
        """Create the VIPWIRE stream as ipam (its steward) does at start."""
        bus = await self.connect("ipam")
        try:
            await bus.ensure_stream()
        finally:
            await bus.close()


@pytest.fixture
async def secured_nats(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SecuredNats]:
    """A nats-server started with the generated permissions (east, west, their nodes,
    an operator, a reader); the stream is not declared yet (``await s.declare()``)."""
    auth = tmp_path_factory.mktemp("nats-auth")
    generated = generate(auth, CLUSTERS, nodes=NODES, operators=["admin"], readers=["viewer"])
    server = NatsServer(tmp_path_factory.mktemp("nats"), extra_config=generated.config_text)
    await server.start()
    try:
        yield SecuredNats(server, generated)
    finally:
        await server.stop()
