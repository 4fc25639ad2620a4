"""Reading the cluster's node feed: deltas on core NATS, the table in KV on a gap.

No JetStream consumer per agent: a plain subscription to
``vipwire-feed.<cluster>.delta`` (the server only fans the message out), and direct
reads of the keys ``<cluster>.head`` and ``<cluster>.chunk.<i>`` of KV
``vipwire-feed`` at start, on a gap in the sequence, and on a ``reset``. Deltas
arriving while the table is read are kept and applied after it, in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence

from opentelemetry import trace
from opentelemetry.trace import SpanContext

from vipwire.aio import cancel_and_wait
from vipwire.bus import BusError, Listening
from vipwire.contracts import (
    FEED_BUCKET,
    FeedChunk,
    FeedDelta,
    FeedHead,
    FeedService,
    MalformedFeed,
    decode_feed,
    feed_chunk_key,
    feed_delta_subject,
    feed_head_key,
    feed_kv_subject,
    join_chunks,
)
from vipwire.nodeagent.core.feed import step
from vipwire.nodeagent.core.retry import backoff_s
from vipwire.runtime import Runtime
from vipwire.telemetry import extract_context

log = logging.getLogger("vipwire.nodeagent")

#: (services set, keys gone, whether ``services`` is the whole table, where from, the
#: trace of the first change it carries)
OnFeed = Callable[[Sequence[FeedService], Sequence[str], bool, str, SpanContext | None], None]

_STREAM = f"KV_{FEED_BUCKET}"


class TableMissing(Exception):
    """No table in KV (yet), or one not readable whole."""


class FeedReader:
    """Hands the table and then every delta of the cluster to ``on_feed``, in order."""

    def __init__(
        self,
        runtime: Runtime,
        cluster: str,
        on_feed: OnFeed,
        on_missing: Callable[[str | None], None],
        *,
        check_s: float = 30.0,
    ) -> None:
        self._runtime = runtime
        #: Seconds without a delta after which the head is read: a lost last delta
        #: (no later one to show the gap) is noticed within this.
        self._check_s = check_s
        self._cluster = cluster
        self._on_feed = on_feed
        #: Told why no table is held (None: one is now).
        self._on_missing = on_missing
        self._queue: asyncio.Queue[tuple[FeedDelta, SpanContext] | None] = asyncio.Queue()
        self._listening: Listening | None = None
        self._task: asyncio.Task[None] | None = None
        self._caught_up = asyncio.Event()
        #: Sequence of what was handed on (None: no table yet).
        self.seq: int | None = None
        m = runtime.metrics
        self._m_reads = m.counter(
            "nodeagent_feed_table_reads_total",
            "Reads of the node feed table, by reason (start, gap, reset, stale, retry)",
            ["reason"],
        )
        self._m_deltas = m.counter("nodeagent_feed_deltas_total", "Node feed deltas applied")
        self._m_bad = m.counter(
            "nodeagent_feed_rejected_total",
            "Node feed messages refused: not decodable, another version or cluster",
        )

    async def start(self) -> None:
        subject = feed_delta_subject(self._cluster)
        # Subscribed before the table is read: nothing between the two is lost.
        self._listening = await self._runtime.bus.listen(subject, self._on_message)
        self._task = asyncio.create_task(self._run(), name=f"nodeagent-feed-{self._cluster}")

    async def caught_up(self) -> None:
        """Return once a first table was read (and handed on)."""
        await self._caught_up.wait()

    async def stop(self) -> None:
        if self._listening is not None:
            await self._listening.stop()
            self._listening = None
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    async def _on_message(self, subject: str, data: bytes, headers: Mapping[str, str]) -> None:
        try:
            message = decode_feed(subject, data, cluster=self._cluster)
        except MalformedFeed as exc:
            self._m_bad.inc()
            log.warning("%s; reading the table instead", exc)
            self._queue.put_nowait(None)  # as a gap: what it said is in the table
            return
        if isinstance(message, FeedDelta):
            cause = trace.get_current_span(extract_context(headers)).get_span_context()
            self._queue.put_nowait((message, cause))

    async def _run(self) -> None:
        await self._read_until_held("start")
        while True:
            try:
                item = await asyncio.wait_for(self._queue.get(), self._check_s)
            except TimeoutError:
                await self._check()
                continue
            if item is None:
                await self._read_until_held("gap")
                continue
            delta, cause = item
            action = step(self.seq, delta)
            if action == "apply":
                self.seq = delta.seq
                self._m_deltas.inc()
                self._on_feed(
                    delta.put, delta.gone, False, feed_delta_subject(self._cluster), cause
                )
            elif action == "reread":
                reason = "reset" if delta.reset else "gap"
                if not delta.reset:
                    log.info(
                        "node feed of %s: delta %d after %s, a gap: reading the table",
                        self._cluster,
                        delta.seq,
                        self.seq,
                    )
                await self._read_until_held(reason, at_least=delta.seq, cause=cause)

    async def _read_until_held(
        self, reason: str, *, at_least: int = 0, cause: SpanContext | None = None
    ) -> None:
        attempt = 0
        while True:
            attempt += 1
            self._m_reads.inc(reason=reason if attempt == 1 else "retry")
            try:
                head, services = await self._read_table()
            except (TableMissing, BusError) as exc:
                self._on_missing(str(exc))
                if attempt == 1 or attempt % 20 == 0:
                    log.warning(
                        "node feed table of cluster %s not read (%s); retrying. Is the "
                        "lbdriver publishing the feed? Until it does, set nodeagent.feed: lb",
                        self._cluster,
                        exc,
                    )
                await asyncio.sleep(backoff_s(min(attempt, 4)))
                continue
            # Behind a delta seen or sent (the head's ``latest``): the leader writes a
            # newer table within its feed_table_interval_s (1 s by default). Applying the
            # older one would take a live VIP off this node until the next delta.
            if head.seq < max(at_least, head.latest) and attempt < 8:
                await asyncio.sleep(min(0.1 * 2 ** (attempt - 1), 1.0))
                continue
            self.seq = head.seq
            cause = self._covered(head.seq) or cause
            self._on_missing(None)
            where = f"KV {FEED_BUCKET} {feed_head_key(self._cluster)}"
            self._on_feed(services, (), True, where, cause)
            self._caught_up.set()
            return

    async def _check(self) -> None:
        """Read the head alone: a newer table than what is held means a delta was lost."""
        try:
            head = await self._read(feed_head_key(self._cluster))
        except (TableMissing, BusError) as exc:
            log.debug("node feed head of %s not read: %s", self._cluster, exc)
            return
        if isinstance(head, FeedHead) and (self.seq is None or head.newest > self.seq):
            log.info(
                "node feed of %s: the feed is at %d, past %s: a delta was lost; reading it",
                self._cluster,
                head.newest,
                self.seq,
            )
            await self._read_until_held("stale", at_least=head.newest)

    def _covered(self, seq: int) -> SpanContext | None:
        """Drop the waiting deltas the table at ``seq`` holds; the first one's trace."""
        waiting: list[tuple[FeedDelta, SpanContext] | None] = []
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        first = None
        for item in waiting:
            if item is not None and item[0].seq <= seq:
                if first is None and item[1].is_valid:
                    first = item[1]
                continue
            self._queue.put_nowait(item)
        return first

    async def _read_table(self) -> tuple[FeedHead, list[FeedService]]:
        for _ in range(5):
            head = await self._read(feed_head_key(self._cluster))
            if not isinstance(head, FeedHead):
                raise TableMissing(f"no {feed_head_key(self._cluster)} in KV {FEED_BUCKET}")
            chunks: list[FeedChunk | None] = []
            for index in range(head.chunks):
                chunk = await self._read(feed_chunk_key(self._cluster, index))
                chunks.append(chunk if isinstance(chunk, FeedChunk) else None)
            services = join_chunks(head, chunks)
            if services is not None:
                return head, services
            # Written over while read: read again.
        raise TableMissing(f"the table of {self._cluster} kept changing while read")

    async def _read(self, key: str) -> FeedHead | FeedChunk | FeedDelta | None:
        stored = await self._runtime.bus.direct_last(_STREAM, feed_kv_subject(key))
        if stored is None or not stored.data:
            return None
        try:
            return decode_feed(key, stored.data, cluster=self._cluster)
        except MalformedFeed as exc:
            self._m_bad.inc()
            raise TableMissing(str(exc)) from exc
