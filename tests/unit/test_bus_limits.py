"""Refusals for size or room become the bus's own errors; the stream's limits are declared
so that a full store never drops what is in force."""

from __future__ import annotations

import nats.errors
import nats.js.errors
import pytest
from nats.js.api import DiscardPolicy, StreamConfig, StreamInfo, StreamState

from vipwire.bus import BusError, BusSettings, StoreFull, TooLarge
from vipwire.bus._bus import _declare_hint
from vipwire.bus._errors import too_large_or_full, translate
from vipwire.bus._limits import (
    StoreHealth,
    differs,
    has_room,
    kept_bytes_limit,
    with_stream_limits,
)
from vipwire.metrics import Registry


def _api_error(cls: type[nats.js.errors.APIError], code: int, text: str) -> BaseException:
    return cls(code=503 if cls is nats.js.errors.ServiceUnavailableError else 400,
               err_code=code, description=text)  # fmt: skip


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (nats.errors.MaxPayloadError(), "too_large"),
        (
            _api_error(
                nats.js.errors.BadRequestError, 10054, "message size exceeds maximum allowed"
            ),
            "too_large",
        ),
        (
            _api_error(nats.js.errors.ServiceUnavailableError, 10077, "maximum bytes exceeded"),
            "store_full",
        ),
        (
            _api_error(nats.js.errors.ServiceUnavailableError, 10023, "insufficient resources"),
            "store_full",
        ),
        (
            _api_error(nats.js.errors.ServerError, 10047, "insufficient storage resources"),
            "store_full",
        ),
        (_api_error(nats.js.errors.BadRequestError, 10071, "wrong last sequence"), None),
        (nats.errors.TimeoutError(), None),
    ],
)
def test_refusals_are_told_apart(exc: BaseException, kind: str | None) -> None:
    """Too large, no room, or neither: JetStream's codes and nats-py's client-side check."""
    assert too_large_or_full(exc) == kind


def test_translate_names_the_refusal_and_what_the_server_said() -> None:
    """A KV write refused for room is StoreFull, for size TooLarge; both are BusErrors."""
    full = translate(
        _api_error(nats.js.errors.ServiceUnavailableError, 10077, "maximum bytes exceeded"),
        "put addr.10.0.0.1",
    )
    assert isinstance(full, StoreFull) and isinstance(full, BusError)
    assert "maximum bytes exceeded" in str(full) and "addr.10.0.0.1" in str(full)
    big = translate(nats.errors.MaxPayloadError(), "put k")
    assert isinstance(big, TooLarge)
    other = translate(nats.errors.TimeoutError(), "put k")
    assert type(other) is BusError


def test_stream_limits_refuse_new_rather_than_drop_old() -> None:
    """The declared stream discards new, bounds bytes, size and per-subject history; 0 is none."""
    settings = BusSettings(stream_max_bytes=1000, stream_max_msg_size=100,
                           stream_max_msgs_per_subject=4, stream_max_age_s=0)  # fmt: skip
    config = with_stream_limits(StreamConfig(name="VIPWIRE"), settings)
    assert config.discard == DiscardPolicy.NEW
    assert (config.max_bytes, config.max_msg_size, config.max_msgs_per_subject) == (1000, 100, 4)
    unlimited = with_stream_limits(
        StreamConfig(name="VIPWIRE"),
        BusSettings(stream_max_bytes=0, stream_max_msg_size=0, stream_max_msgs_per_subject=0),
    )
    assert (unlimited.max_bytes, unlimited.max_msg_size, unlimited.max_msgs_per_subject) == (
        -1,
        -1,
        -1,
    )


def test_default_stream_keeps_last_messages_forever() -> None:
    """No age limit by default: one would expire the message in force of a quiet subject."""
    settings = BusSettings()
    assert settings.stream_max_age_s == 0
    assert settings.stream_max_bytes > 0 and settings.kv_max_bytes > 0
    assert settings.stream_max_msg_size > 0 and settings.stream_max_msgs_per_subject > 0


def _info(max_bytes: int | None, held: int, *, max_msg_size: int = 10) -> StreamInfo:
    return StreamInfo(
        config=StreamConfig(name="S", max_bytes=max_bytes, max_msg_size=max_msg_size),
        state=StreamState(messages=3, bytes=held, first_seq=1, last_seq=3, consumer_count=0),
    )


def test_an_existing_stream_is_never_shrunk_below_what_it_holds() -> None:
    """Lowering max_bytes under the stored bytes would drop old messages: the old limit stays."""
    wanted = StreamConfig(name="S", max_bytes=500)
    assert kept_bytes_limit(wanted, _info(None, 800)).max_bytes == -1
    assert kept_bytes_limit(wanted, _info(2000, 800)).max_bytes == 2000
    assert kept_bytes_limit(wanted, _info(None, 300)).max_bytes == 500


def test_room_means_room_for_a_message_of_the_largest_size() -> None:
    """A stream within one max-size message of its byte limit is full."""
    assert has_room(_info(100, 89))
    assert has_room(_info(100, 90))
    assert not has_room(_info(100, 91))
    assert has_room(_info(None, 10**9))


def test_differs_sees_limit_changes_only() -> None:
    """An older version's stream (no limits, DiscardOld, an age) differs from ours."""
    ours = with_stream_limits(StreamConfig(name="S"), BusSettings())
    old = StreamConfig(name="S", max_age=7 * 24 * 3600.0)
    assert differs(old, ours)
    assert not differs(ours, ours)


def test_a_write_taken_ends_a_server_refusal_but_not_a_full_stream() -> None:
    """A full stream still takes replacements, so only its state ends the problem; the
    server's store is told by the next write it takes. The gauge follows."""
    metrics = Registry()
    stores = StoreHealth(None, metrics, 1.0)  # type: ignore[arg-type]  # no I/O here
    assert stores.problem() is None
    stores.refused("VIPWIRE", "stream VIPWIRE is full", own_limits=True)
    stores.refused("KV_ipam", "the server's store is full", own_limits=False)
    assert "stream VIPWIRE is full" in (stores.problem() or "")
    assert "vipwire_bus_store_full 1" in metrics.expose()
    stores.stored("VIPWIRE")
    stores.stored("KV_ipam")
    assert stores.problem() == "stream VIPWIRE is full"
    assert "vipwire_bus_store_full 1" in metrics.expose()


def test_a_declaration_the_server_cannot_reserve_says_what_to_change() -> None:
    """Stream and KV limits are reserved on the server: a refusal names both knobs."""
    hint = _declare_hint(
        _api_error(nats.js.errors.ServerError, 10047, "insufficient storage resources available")
    )
    assert "insufficient storage resources available" in hint
    assert "bus.stream_max_bytes" in hint and "max_file_store" in hint
    other = _declare_hint(_api_error(nats.js.errors.BadRequestError, 10052, "bad config"))
    assert other == "bad config"
