"""How long ipam waits before a message that met an unavailable store is delivered again."""

from __future__ import annotations

from typing import Final

#: The longest wait between two deliveries of a message that met an unavailable store.
STORE_RETRY_CAP_S: Final = 30.0


def store_retry_delay_s(base_s: float, delivery: int, cap_s: float = STORE_RETRY_CAP_S) -> float:
    """The wait before delivery ``delivery + 1``, when delivery ``delivery`` (1 = the first)
    found the KV bucket or the stream unavailable: ``base_s`` doubled per delivery, capped.

    The consumer terminates a message after its tenth failed delivery, so these waits
    must outlast a store failover: a NATS server lost makes the KV's replicas elect a
    leader, which takes seconds. With ``base_s`` 0.5 the ten deliveries span about two
    minutes; a constant 0.5 s gave up after five seconds and stranded the Service.
    """
    return float(min(base_s * 2 ** max(delivery - 1, 0), cap_s))
