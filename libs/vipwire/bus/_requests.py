"""Request/reply on core NATS: the operator control subjects.

Outside JetStream on purpose: an answer is a moment's view, never history
to replay.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from vipwire.bus._errors import NATS_ERRORS, translate

log = logging.getLogger("vipwire.bus.requests")

#: Answers a request: its payload and the subject it arrived on (a control subject's
#: last token is the caller, see :func:`vipwire.contracts.caller_of`); None: send no
#: answer (another replica will).
Responder = Callable[[bytes, str], Awaitable[bytes | None]]


class Serving:
    """A subscription answering requests on one subject."""

    def __init__(self, sub: Subscription, subject: str) -> None:
        self._sub = sub
        self.subject = subject

    async def stop(self) -> None:
        try:
            await self._sub.unsubscribe()
        except NATS_ERRORS as exc:
            log.debug("stopping the answers on %s: %r", self.subject, exc)


async def serve(
    nc: NatsClient, subject: str, responder: Responder, *, queue: str | None = None
) -> Serving:
    """Answer every request on ``subject`` (a pattern: ``*`` matches a token) (one
    member of ``queue`` answers each)."""

    async def on_request(msg: Msg) -> None:
        try:
            answer = await responder(msg.data, msg.subject)
        except Exception:  # a bad request must not end the subscription
            log.exception("answering a request on %s failed", msg.subject)
            return
        if answer is not None and msg.reply:
            try:
                await msg.respond(answer)
            except NATS_ERRORS as exc:
                log.warning("the answer on %s was not sent: %r", msg.subject, exc)

    try:
        sub = await nc.subscribe(subject, queue=queue or "", cb=on_request)
        await fence(nc)
    except NATS_ERRORS as exc:
        raise translate(exc, f"subscribing to {subject}") from exc
    return Serving(sub, subject)


async def fence(nc: NatsClient) -> None:
    """Return once the server has every command ``nc`` sent so far, subscriptions included.

    One ``flush()`` is not enough: nats-py writes its PING straight to the socket
    while a SUB may still wait in the client's buffer for the flusher task, so
    the PONG can come back before the server knows of the subscription (a
    request from another connection then meets "no responders"). By the time
    the first PONG is read the flusher has run, so the second PING follows the SUB.
    """
    await nc.flush()
    await nc.flush()


async def request(nc: NatsClient, subject: str, data: bytes, *, timeout_s: float) -> bytes:
    """One request and its answer; :class:`~vipwire.bus.NoResponders` if nobody listens."""
    try:
        msg = await nc.request(subject, data, timeout=timeout_s)
    except NATS_ERRORS as exc:
        raise translate(exc, f"request on {subject}") from exc
    return msg.data
