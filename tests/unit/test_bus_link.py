"""The connection state of a bus: backoff with jitter and a cap, one log line per change."""

from __future__ import annotations

import logging
from urllib.parse import urlparse

import pytest
from nats.aio.client import Server

from vipwire.bus import Backoff
from vipwire.bus._link import AttemptFailed, Link
from vipwire.metrics import Registry


def test_backoff_doubles_up_to_the_cap() -> None:
    """With no jitter drawn, each delay doubles the last until the cap holds it."""
    top = Backoff(0.5, 5.0, rand=lambda: 1.0)
    assert [top.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert top.delay(10_000) == 5.0  # no overflow however long the outage


def test_backoff_jitter_spreads_each_delay_over_its_upper_half() -> None:
    """The jitter draws each delay between half its ceiling and the ceiling."""
    bottom = Backoff(0.5, 5.0, rand=lambda: 0.0)
    assert [bottom.delay(n) for n in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.5, 2.5]


def make_link(servers: tuple[str, ...] = ("nats://a:4222",)) -> tuple[Link, Registry]:
    metrics = Registry()
    return Link("vipwire-test", servers, metrics, Backoff(0.1, 1.0, rand=lambda: 1.0)), metrics


def connected(metrics: Registry) -> float:
    return metrics.gauge("bus_connected", "").value()


async def test_an_outage_logs_one_line_when_lost_and_one_when_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Twenty failed reconnect attempts between a loss and a return log two lines, not 22."""
    link, metrics = make_link()
    link.up("nats://a:4222")
    assert connected(metrics) == 1
    caplog.set_level(logging.DEBUG, logger="vipwire.bus")
    await link.on_error(ConnectionResetError("reset by peer"))
    await link.on_disconnect()
    assert connected(metrics) == 0
    pool = [Server(uri=urlparse("nats://a:4222"))]
    for _ in range(20):
        link.choose_server(pool, {})
        await link.on_error(ConnectionRefusedError("refused"))
    await link.on_reconnect("nats://a:4222")
    assert connected(metrics) == 1
    loud = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert [r.levelname for r in loud] == ["WARNING", "INFO"], [r.getMessage() for r in loud]
    assert "reset by peer" in loud[0].getMessage()
    assert "21 attempt(s)" not in loud[1].getMessage() and "20 attempt(s)" in loud[1].getMessage()


async def test_reconnects_wait_longer_each_time_and_try_the_least_tried_server() -> None:
    """The handler nats-py asks between attempts backs off and rotates over the pool."""
    link, _ = make_link(("nats://a:4222", "nats://b:4222"))
    link.up("nats://a:4222")
    await link.on_disconnect()
    a = Server(uri=urlparse("nats://a:4222"), reconnects=2)
    b = Server(uri=urlparse("nats://b:4222"), reconnects=1)
    delays = []
    for _ in range(5):
        chosen, delay = link.choose_server([a, b], {})
        assert chosen is b
        delays.append(delay)
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0]
    await link.on_reconnect()
    assert link.choose_server([a, b], {})[1] == 0.1  # back to the start after a success


async def test_a_first_attempt_ends_once_every_server_refused() -> None:
    """While connecting for the first time, the error callback hands the attempt back to
    our loop once each server of the pool refused (nats-py would retry at its own pace)."""
    link, _ = make_link(("nats://a:4222", "nats://b:4222"))
    link.attempt()
    await link.on_error(ConnectionRefusedError("a"))
    with pytest.raises(AttemptFailed):
        await link.on_error(ConnectionRefusedError("b"))


async def test_errors_on_a_live_connection_are_still_logged_as_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error that is not about reaching the server (a permission refused) stays an ERROR."""
    import nats.errors

    link, _ = make_link()
    link.up("nats://a:4222")
    await link.on_error(nats.errors.Error("nats: permissions violation"))
    assert [r.levelname for r in caplog.records if r.name == "vipwire.bus"] == ["ERROR"]


async def test_a_refused_certificate_while_reconnecting_is_an_error_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reconnect refused for a certificate (no network trouble) logs one ERROR saying
    what to check, however often it is retried; plain refusals stay quiet."""
    metrics = Registry()
    link = Link(
        "vipwire-test",
        ("nats://opsuser:Top-Secret-Pw@a:4222",),
        metrics,
        Backoff(0.1, 1.0, rand=lambda: 1.0),
        explain=lambda exc: "check bus.tls.ca_file" if isinstance(exc, ValueError) else None,
    )
    link.up("nats://opsuser:Top-Secret-Pw@a:4222")
    caplog.set_level(logging.DEBUG, logger="vipwire.bus")
    await link.on_disconnect()
    for _ in range(5):
        await link.on_error(ConnectionRefusedError("refused"))
        await link.on_error(ValueError("certificate verify failed"))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        "NATS connection (vipwire-test) cannot be re-established: check bus.tls.ca_file; "
        "still retrying"
    ]
    assert "Top-Secret-Pw" not in caplog.text and "opsuser:***@a:4222" in caplog.text
