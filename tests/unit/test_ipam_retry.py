"""ipam's waits after an unavailable store outlast a NATS failover."""

from __future__ import annotations

from vipwire.ipam.core.retry import STORE_RETRY_CAP_S, store_retry_delay_s

#: Deliveries before the consumer terminates a message (BusSettings' consumer default).
MAX_DELIVERIES = 10


def test_the_waits_double_from_the_base_up_to_the_cap() -> None:
    """0.5, 1, 2, 4 … then never more than the cap."""
    assert [store_retry_delay_s(0.5, n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert store_retry_delay_s(0.5, 40) == STORE_RETRY_CAP_S
    assert store_retry_delay_s(0.5, 0) == 0.5


def test_ten_deliveries_span_more_than_a_minute() -> None:
    """A message that meets an unavailable store on every delivery is kept for over a
    minute before it is terminated (a constant 0.5 s kept it 4.5 s: less than a KV
    leader election after a NATS server is killed, as the chaos bench saw)."""
    waited = sum(store_retry_delay_s(0.5, n) for n in range(1, MAX_DELIVERIES))
    assert waited > 60.0
