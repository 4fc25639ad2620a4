"""Publishes each cluster's node feed (see :mod:`vipwire.contracts._feed`).

Every replica reads the ``lb`` subjects back (one consumer, whatever the number of
nodes), so a standby is warm; only the leader publishes. Once per
``feed_window_ms``, for each cluster whose table changed, the window's one delta
goes out on core NATS; the table is written to KV ``vipwire-feed`` (chunks, then
the head naming them) before it, or, while changes flow, at most once per
``feed_table_interval_s``. A held-back table's head is rewritten before each delta
with that delta's sequence as ``latest``: an agent that reads a head behind its own
``latest`` (or behind a delta it saw) waits for the table instead of applying an older
state. A new leader carries on from the sequence in the head
it finds, writes every table in full and publishes a ``reset`` delta; a replica that
leads again with nobody having published since it last did (a lease that ran out under
load and was won back) carries on instead (see :func:`~vipwire.lbdriver.core.feed.still_ours`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable

from msgspec.structs import replace
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext

from vipwire.aio import cancel_and_wait
from vipwire.bus import DONE, BusError, ConsumerSpec, Delivery, KvBucket, PullConsumer, Verdict
from vipwire.contracts import (
    FEED_BUCKET,
    FeedChunk,
    FeedDelta,
    FeedHead,
    FeedService,
    LbFailed,
    LbProgrammed,
    LbRemoved,
    MalformedFeed,
    chunk_table,
    decode_feed,
    encode_feed,
    family_filter,
    feed_chunk_key,
    feed_delta_subject,
    feed_head_key,
    join_chunks,
)
from vipwire.lbdriver.core.feed import ClusterFeed, next_window_s, still_ours
from vipwire.runtime import Runtime
from vipwire.telemetry import inject_context

log = logging.getLogger("vipwire.lbdriver.feed")

#: Room left in a chunk for the KV message's own headers.
_CHUNK_MARGIN = 1024


class FeedPublisher:
    """Keeps every cluster's :class:`ClusterFeed` and, while leader, publishes it."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        window_ms: int,
        is_leader: Callable[[], bool],
        table_interval_s: float = 0.0,
        window_max_ms: int = 0,
    ) -> None:
        self._runtime = runtime
        #: Least seconds between two writes of a cluster's table while deltas flow.
        self._table_interval_s = table_interval_s
        #: Clusters whose table is behind their last delta, and when each was written.
        self._dirty: set[str] = set()
        self._table_at: dict[str, float] = {}
        #: The head of each cluster's table as last written.
        self._heads: dict[str, FeedHead] = {}
        #: Per cluster, the KV revision of the head we last wrote, and the sequence of
        #: the last delta that went out: whether a new term may skip the reset.
        self._head_revision: dict[str, int] = {}
        self._sent: dict[str, int] = {}
        self._base_window_s = self._window_s = window_ms / 1000
        self._max_window_s = window_max_ms / 1000
        self._flushed_at = -math.inf
        self._is_leader = is_leader
        self.feeds: dict[str, ClusterFeed] = {}
        self._consumer: PullConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._kv: KvBucket | None = None
        self._leading = False
        self._wake = asyncio.Event()
        #: Set after each window published.
        self._progress = asyncio.Event()
        #: Stream sequence of the last ``lb`` message read, and of the last one whose
        #: change is published (fences for tests and benchmarks).
        self.read_seq = 0
        self.published_seq = 0
        #: The trace of each cluster's first change in the window: the delta's parent.
        self._causes: dict[str, SpanContext] = {}
        m = runtime.metrics
        self._m_deltas = m.counter(
            "lbdriver_feed_deltas_total", "Node feed deltas published, by cluster", ["cluster"]
        )
        self._m_tables = m.counter(
            "lbdriver_feed_table_writes_total",
            "Node feed tables written to KV vipwire-feed, by cluster",
            ["cluster"],
        )
        self._m_failed = m.counter(
            "lbdriver_feed_failures_total",
            "Node feed windows that could not be written or published (retried next window)",
        )

    async def start(self) -> None:
        spec = ConsumerSpec(
            filters=(family_filter("lb"),), deliver="last_per_subject", ack="none", traced=False
        )
        self._consumer = self._runtime.bus.consumer(spec, self._handle)
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="lbdriver-feed")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()

    async def published(self, upto: int) -> None:
        """Return once every ``lb`` message up to stream sequence ``upto`` is in the
        published feed, and every known cluster has a table (a fence for tests and
        benchmarks)."""
        while self.published_seq < upto or any(f.fresh for f in self.feeds.values()):
            self._progress.clear()
            await self._progress.wait()

    def serve(self, cluster: str) -> None:
        """Publish the feed of ``cluster`` (an empty table if it has no Service yet, so
        that its agents start): called for every cluster a Node of is seen."""
        if cluster not in self.feeds:
            self.feeds[cluster] = ClusterFeed(cluster)
            self._wake.set()

    async def _handle(self, d: Delivery) -> Verdict:
        self.read_seq = max(self.read_seq, d.seq)
        message = d.message
        if isinstance(message, LbProgrammed | LbRemoved | LbFailed):
            self.serve(message.cluster)
            feed = self.feeds[message.cluster]
            if feed.note(message):
                if message.cluster not in self._causes:
                    self._causes[message.cluster] = d.span_context()
                self._wake.set()
        return DONE

    async def _run(self) -> None:
        assert self._consumer is not None
        await self._consumer.caught_up()
        self._wake.set()  # a leader publishes at once
        failures = 0
        while True:
            # Woken by a change, or when a table held back falls due; once a second
            # anyway, to notice an election.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._next_wait())
            # Coalesce: everything that arrives within the window goes in one delta;
            # the window widens while a burst lasts (see next_window_s).
            loop = asyncio.get_running_loop()
            self._window_s = next_window_s(
                self._window_s,
                quiet_s=loop.time() - self._flushed_at,
                base_s=self._base_window_s,
                max_s=self._max_window_s,
            )
            await asyncio.sleep(self._window_s)
            self._wake.clear()
            if not self._is_leader():
                self._leading = False
                continue
            try:
                if not self._leading:
                    await self._take_over()
                    self._leading = True
                elif await self.flush():
                    self._flushed_at = loop.time()
                failures = 0
            except BusError as exc:
                failures += 1
                self._m_failed.inc()
                self._wake.set()
                self._leading = self._leading and failures < 3
                if not self._leading:
                    self._sent.clear()  # the take-over after three failures is a full one
                log.warning(
                    "node feed not published (attempt %d): %s; retried next window%s",
                    failures,
                    exc,
                    ", then in full" if not self._leading else "",
                )

    def _next_wait(self) -> float:
        if not self._dirty:
            return 1.0
        now = asyncio.get_running_loop().time()
        due = min(self._table_at.get(c, -math.inf) for c in self._dirty) + self._table_interval_s
        return min(1.0, max(0.0, due - now))

    async def _bucket(self) -> KvBucket:
        if self._kv is None:
            self._kv = await self._runtime.bus.kv(FEED_BUCKET, direct=True)
        return self._kv

    async def _take_over(self) -> None:
        """Elected: carry on from the tables in KV, write each in full, reset the agents;
        or, for a cluster whose feed nobody published since we did, carry on from where
        we stopped (a reset would make every node of it read the whole table again)."""
        read = self.read_seq
        kv = await self._bucket()
        resumed: list[str] = []
        for cluster in sorted(self.feeds):
            feed = self.feeds[cluster]
            if still_ours(
                written=self._head_revision.get(cluster),
                found=await kv.revision(feed_head_key(cluster)),
                sent=self._sent.get(cluster),
                taken=feed.seq,
            ):
                resumed.append(cluster)
                # Its table is written again when due, in case a replica that led
                # meanwhile wrote chunks but not their head.
                self._dirty.add(cluster)
                continue
            old = await read_table(kv, cluster)
            if old is not None:
                head, services = old
                feed.seq = max(feed.seq, head.newest)
                feed.adopt({s.key: s for s in services})
            await self._publish(kv, feed, feed.take(reset=True), table=True)
        if resumed:
            # What came while we stood by goes out as an ordinary delta.
            await self.flush()
        else:
            self.published_seq = read
            self._progress.set()
        log.info(
            "node feed: publishing for %d cluster(s)%s",
            len(self.feeds),
            f"; carrying on without a reset for {', '.join(resumed)} (nobody published "
            f"since this replica did)"
            if resumed
            else "",
        )

    async def flush(self) -> bool:
        """Write and publish every cluster's pending changes (one delta each); whether
        any delta went out."""
        read = self.read_seq
        kv = await self._bucket()
        now = asyncio.get_running_loop().time()
        sent = False
        for cluster in sorted(self.feeds):
            feed = self.feeds[cluster]
            due = now - self._table_at.get(cluster, -math.inf) >= self._table_interval_s
            if feed.pending:
                await self._publish(kv, feed, feed.take(reset=feed.fresh), table=due)
                sent = True
            elif cluster in self._dirty and due:
                await self._write_table(kv, feed)
        if not self._dirty:
            self.published_seq = read
            self._progress.set()
        return sent

    async def _publish(
        self, kv: KvBucket, feed: ClusterFeed, delta: FeedDelta, *, table: bool
    ) -> None:
        """Write the table first if ``table`` (always for a reset: the agents read it),
        then send the delta."""
        bus = self._runtime.bus
        data = encode_feed(delta)
        max_payload = int(bus.nc.max_payload or 1 << 20) - _CHUNK_MARGIN
        if len(data) > max_payload:
            # Too many changes for one message: the agents read the table instead.
            delta = FeedDelta(cluster=feed.cluster, seq=delta.seq, reset=True)
            data = encode_feed(delta)
        head = self._heads.get(feed.cluster)
        if table or delta.reset or head is None:
            await self._write_table(kv, feed)
        else:
            # Before the delta goes out: an agent starting now must not take the older
            # table for the cluster's state (the delta may reach it before its subscription
            # does, and no later one may come to show the gap).
            self._head_revision[feed.cluster] = await kv.put(
                feed_head_key(feed.cluster), encode_feed(replace(head, latest=delta.seq))
            )
            self._dirty.add(feed.cluster)
        headers: dict[str, str] = {}
        cause = self._causes.pop(feed.cluster, None)
        if cause is not None and cause.is_valid:
            inject_context(headers, trace.set_span_in_context(NonRecordingSpan(cause)))
        # An agent that misses this delta sees the gap, and reads the table (which is
        # at this delta's sequence within feed_table_interval_s).
        await bus.broadcast(feed_delta_subject(feed.cluster), data, headers)
        self._sent[feed.cluster] = delta.seq
        self._m_deltas.inc(cluster=feed.cluster)

    async def _write_table(self, kv: KvBucket, feed: ClusterFeed) -> None:
        settings = self._runtime.bus.settings
        limit = min(x for x in (settings.kv_max_value_size, 1 << 20) if x) - _CHUNK_MARGIN
        head, chunks = chunk_table(feed.cluster, feed.seq, feed.table(), limit=limit)
        for chunk in chunks:
            await kv.put(feed_chunk_key(feed.cluster, chunk.index), encode_feed(chunk))
        self._head_revision[feed.cluster] = await kv.put(
            feed_head_key(feed.cluster), encode_feed(head)
        )
        self._heads[feed.cluster] = head
        self._m_tables.inc(cluster=feed.cluster)
        self._dirty.discard(feed.cluster)
        self._table_at[feed.cluster] = asyncio.get_running_loop().time()


async def read_table(kv: KvBucket, cluster: str) -> tuple[FeedHead, list[FeedService]] | None:
    """The table in KV (for a new leader); None: none, or not readable whole."""
    entry = await kv.get(feed_head_key(cluster))
    if entry is None or entry.deleted:
        return None
    try:
        head = decode_feed(feed_head_key(cluster), entry.value or b"", cluster=cluster)
        if not isinstance(head, FeedHead):
            return None
        chunks: list[FeedChunk | None] = []
        for index in range(head.chunks):
            raw = await kv.get(feed_chunk_key(cluster, index))
            chunk = (
                None
                if raw is None or raw.deleted
                else decode_feed(feed_chunk_key(cluster, index), raw.value or b"", cluster=cluster)
            )
            chunks.append(chunk if isinstance(chunk, FeedChunk) else None)
    except MalformedFeed as exc:
        log.warning("node feed table of %s unreadable (%s): written afresh", cluster, exc)
        return None
    services = join_chunks(head, chunks)
    return None if services is None else (head, services)
