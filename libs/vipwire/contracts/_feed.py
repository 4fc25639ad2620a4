"""The node feed: each cluster's programmed VIPs, built for fan-out to many nodes.

Node agents used to read every ``LbProgrammed`` of their cluster from the stream,
one JetStream consumer per agent and one delivery per Service change per node. The
feed replaces that (contract family ``feed``, version :data:`FEED_VERSION`):

- **Deltas**, on core NATS (no stream, no consumer: a plain subscription per agent),
  on ``vipwire-feed.<cluster>.delta``: at most one :class:`FeedDelta` per coalescing
  window and cluster, with every change of the window and a feed sequence ``seq``
  (one more than the previous delta's).
- **The table**, in the KV bucket :data:`FEED_BUCKET`: key ``<cluster>.head`` holds a
  :class:`FeedHead` (the sequence the table is at, and how many chunks), keys
  ``<cluster>.chunk.<i>`` the :class:`FeedChunk` s (each under the message size
  limit). An agent reads it at start, and again when a delta's sequence is not the
  one it expects (a gap) or a delta says ``reset``.

The stream's ``vipwire.<cluster>.lb.*`` subjects stay as they were (ipam, the watcher
and old node agents read them): the feed is an addition.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from vipwire.contracts._messages import LbProgrammed, ServicePort
from vipwire.contracts._subjects import validate_cluster

FEED_VERSION: Final = 1
"""Schema version of the feed family; a receiver refuses any other."""

FEED_ROOT: Final = "vipwire-feed"
"""Root of the live feed's core NATS subjects: outside ``vipwire.>``, so the stream
(which captures every ``vipwire.>`` subject) never stores a delta."""

FEED_BUCKET: Final = "vipwire-feed"
"""KV bucket holding each cluster's compacted table."""


class FeedService(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a node needs of one programmed Service (from its ``LbProgrammed``)."""

    namespace: str
    name: str
    vips: tuple[str, ...]
    ports: tuple[ServicePort, ...] = ()
    external_traffic_policy: Literal["Cluster", "Local"] = "Cluster"
    source_ranges: tuple[str, ...] = ()
    affinity_timeout_s: int | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class _Feed(msgspec.Struct, frozen=True, tag_field="kind", kw_only=True):
    v: int = FEED_VERSION


class FeedDelta(_Feed, frozen=True, tag="feed-delta"):
    """Every change of one window: Services set (``put``) and gone (``gone``, as ``ns/name``).

    ``seq`` is one more than the previous delta's. ``reset``: the publisher started
    over (a new leader, or the changes did not fit a message): read the table, which
    is at ``seq`` or later.
    """

    cluster: str
    seq: int
    put: tuple[FeedService, ...] = ()
    gone: tuple[str, ...] = ()
    reset: bool = False


class FeedHead(_Feed, frozen=True, tag="feed-head"):
    """The table of a cluster is at ``seq`` and spans chunks ``0 .. chunks-1``.

    ``latest`` is the sequence of the last delta sent (``seq`` when none came after the
    table). The head is rewritten with it before each delta goes out, so an agent that
    starts between a delta and the next table write knows its table is behind, and
    waits for a newer one instead of applying an older state.
    """

    cluster: str
    seq: int
    chunks: int
    services: int = 0
    latest: int = 0

    @property
    def newest(self) -> int:
        """The sequence an agent must reach to hold the cluster's state."""
        return max(self.seq, self.latest)


class FeedChunk(_Feed, frozen=True, tag="feed-chunk"):
    """Chunk ``index`` of the table at ``seq`` (a chunk of another ``seq`` is stale)."""

    cluster: str
    seq: int
    index: int
    services: tuple[FeedService, ...] = ()


FeedMessage = FeedDelta | FeedHead | FeedChunk

_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(FeedMessage)


class MalformedFeed(ValueError):
    """A feed payload that does not decode, is of another version, or names another
    cluster than its subject or key."""


def encode_feed(message: FeedMessage) -> bytes:
    return _encoder.encode(message)


def decode_feed(where: str, data: bytes, *, cluster: str) -> FeedMessage:
    """Decode a feed payload read from ``where`` (subject or key) of ``cluster``."""
    try:
        message: FeedMessage = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedFeed(f"malformed feed message on {where!r}: {exc}") from exc
    if message.v != FEED_VERSION:
        raise MalformedFeed(
            f"feed message on {where!r} has version {message.v}, not {FEED_VERSION} "
            "(upgrade this node agent, or set nodeagent.feed: lb)"
        )
    if message.cluster != cluster:
        raise MalformedFeed(
            f"feed message on {where!r} names cluster {message.cluster!r}, not {cluster!r}"
        )
    return message


def feed_delta_subject(cluster: str) -> str:
    """``vipwire-feed.<cluster>.delta``: the live feed of a cluster (core NATS)."""
    return f"{FEED_ROOT}.{validate_cluster(cluster)}.delta"


def feed_head_key(cluster: str) -> str:
    return f"{validate_cluster(cluster)}.head"


def feed_chunk_key(cluster: str, index: int) -> str:
    return f"{validate_cluster(cluster)}.chunk.{index}"


def feed_kv_subject(key: str) -> str:
    """The stream subject a key of :data:`FEED_BUCKET` is stored on (for direct reads)."""
    return f"$KV.{FEED_BUCKET}.{key}"


def chunk_table(
    cluster: str, seq: int, services: list[FeedService], *, limit: int
) -> tuple[FeedHead, tuple[FeedChunk, ...]]:
    """Split a table into chunks whose encoding stays within ``limit`` bytes.

    Services are sorted by key, so equal tables give equal chunks. A single Service
    too large for a chunk alone raises ``ValueError`` (no Service is that large
    under the stream's own limit, which its ``LbProgrammed`` passed).
    """
    chunks: list[FeedChunk] = []
    current: list[FeedService] = []
    # Envelope of a chunk plus a separator per Service: a safe upper bound.
    overhead = len(encode_feed(FeedChunk(cluster=cluster, seq=seq, index=1 << 30))) + 16
    size = overhead
    for service in sorted(services, key=lambda s: s.key):
        one = len(_encoder.encode(service)) + 1
        if one + overhead > limit:
            raise ValueError(
                f"Service {service.key} alone ({one} bytes) exceeds the feed chunk limit "
                f"of {limit} bytes"
            )
        if current and size + one > limit:
            chunks.append(
                FeedChunk(cluster=cluster, seq=seq, index=len(chunks), services=tuple(current))
            )
            current, size = [], overhead
        current.append(service)
        size += one
    if current or not chunks:
        chunks.append(
            FeedChunk(cluster=cluster, seq=seq, index=len(chunks), services=tuple(current))
        )
    head = FeedHead(cluster=cluster, seq=seq, chunks=len(chunks), services=len(services))
    return head, tuple(chunks)


def join_chunks(head: FeedHead, chunks: list[FeedChunk | None]) -> list[FeedService] | None:
    """The table a head and its chunks give; None if any chunk is missing or of another
    sequence (written over while read: read again)."""
    if len(chunks) != head.chunks:
        return None
    services: list[FeedService] = []
    for index, chunk in enumerate(chunks):
        if chunk is None or chunk.seq != head.seq or chunk.index != index:
            return None
        services.extend(chunk.services)
    return services


def feed_service(lb: LbProgrammed) -> FeedService:
    """The feed entry of an ``LbProgrammed``."""
    return FeedService(
        namespace=lb.namespace,
        name=lb.name,
        vips=lb.vips,
        ports=lb.ports,
        external_traffic_policy=lb.external_traffic_policy,
        source_ranges=lb.source_ranges,
        affinity_timeout_s=lb.affinity_timeout_s,
    )
