"""The node feed's pure parts: chunking, the sequence rule, the publisher's table, and
an agent's changes from a table."""

from __future__ import annotations

import pytest

from vipwire.contracts import (
    FeedDelta,
    FeedService,
    LbFailed,
    LbProgrammed,
    LbRemoved,
    MalformedFeed,
    ServicePort,
    chunk_table,
    decode_feed,
    encode_feed,
    join_chunks,
)
from vipwire.lbdriver.core.feed import ClusterFeed, next_window_s, still_ours
from vipwire.nodeagent.core.changes import Changes
from vipwire.nodeagent.core.desired import VipRanges, parse_ranges
from vipwire.nodeagent.core.feed import step


def service(i: int) -> FeedService:
    return FeedService(
        namespace="default",
        name=f"svc-{i:04d}",
        vips=(f"10.0.{i // 250}.{i % 250 + 1}",),
        ports=(ServicePort(port=80, name="http"), ServicePort(port=443, name="https")),
    )


def programmed(name: str, *vips: str) -> LbProgrammed:
    return LbProgrammed(
        cluster="east", namespace="default", name=name, uid="u", appliance="a",
        vips=vips, ports=(ServicePort(port=80),), members=(),
    )  # fmt: skip


class TestChunks:
    def test_a_table_over_the_limit_round_trips_in_chunks_under_it(self) -> None:
        """1,000 Services with a 4 KiB limit: many chunks, each within it, joined back whole."""
        services = [service(i) for i in range(1000)]
        head, chunks = chunk_table("east", 7, services, limit=4096)
        assert head.chunks == len(chunks) > 10 and head.services == 1000
        assert all(len(encode_feed(c)) <= 4096 for c in chunks)
        decoded = [decode_feed(f"c{c.index}", encode_feed(c), cluster="east") for c in chunks]
        joined = join_chunks(head, decoded)  # type: ignore[arg-type]
        assert joined == sorted(services, key=lambda s: s.key)

    def test_an_empty_table_is_one_empty_chunk(self) -> None:
        """A cluster with no Service still has a table (its agents wait for one)."""
        head, chunks = chunk_table("east", 1, [], limit=4096)
        assert head.chunks == 1 and chunks[0].services == ()

    def test_a_chunk_of_another_sequence_is_not_joined(self) -> None:
        """A chunk written over while read (another seq) makes the read start again."""
        head, chunks = chunk_table("east", 2, [service(i) for i in range(100)], limit=2048)
        _, newer = chunk_table("east", 3, [service(i) for i in range(100)], limit=2048)
        assert join_chunks(head, [chunks[0], *newer[1:]]) is None
        assert join_chunks(head, list(chunks[:-1])) is None

    def test_another_cluster_or_version_is_refused(self) -> None:
        """A feed message naming another cluster, or of another version, is refused."""
        delta = FeedDelta(cluster="west", seq=1)
        with pytest.raises(MalformedFeed, match="names cluster 'west'"):
            decode_feed("s", encode_feed(delta), cluster="east")
        with pytest.raises(MalformedFeed, match="version 2"):
            decode_feed("s", encode_feed(FeedDelta(cluster="east", seq=1, v=2)), cluster="east")


class TestStep:
    @pytest.mark.parametrize(
        ("held", "seq", "reset", "expected"),
        [
            (None, 1, False, "skip"),
            (4, 5, False, "apply"),
            (4, 4, False, "skip"),
            (4, 7, False, "reread"),
            (4, 5, True, "reread"),
            (4, 3, True, "skip"),
        ],
    )
    def test_the_next_is_applied_a_jump_rereads_old_news_is_skipped(
        self, held: int | None, seq: int, reset: bool, expected: str
    ) -> None:
        """Only the next sequence applies; a jump or a newer reset reads the table."""
        assert step(held, FeedDelta(cluster="east", seq=seq, reset=reset)) == expected


class TestClusterFeed:
    def test_a_window_of_changes_is_one_delta(self) -> None:
        """Programmed, changed and removed within one window: one delta with the end state."""
        feed = ClusterFeed("east")
        feed.take()  # the first (empty) table
        assert feed.note(programmed("a", "10.0.0.1"))
        assert feed.note(programmed("b", "10.0.0.2"))
        assert feed.note(programmed("a", "10.0.0.3"))
        assert not feed.note(programmed("a", "10.0.0.3"))
        assert feed.note(LbRemoved(cluster="east", namespace="default", name="b", uid="u",
                                   appliance="a"))  # fmt: skip
        delta = feed.take()
        assert delta.seq == 2 and [s.vips for s in delta.put] == [("10.0.0.3",)]
        assert delta.gone == ("default/b",) and not feed.pending

    def test_a_failure_keeps_the_service_and_one_unknown_is_taken_from_the_old_table(
        self,
    ) -> None:
        """LbFailed changes nothing; with nothing known before, a new leader adopts the
        old table's entry (the nodes keep serving it)."""
        feed = ClusterFeed("east")
        failed = LbFailed(cluster="east", namespace="default", name="x", uid="u", appliance="a",
                          reason="Unavailable", message="down")  # fmt: skip
        assert not feed.note(failed)
        feed.adopt({"default/x": service(1)})
        assert feed.services["default/x"] == service(1)


class TestChangesFromATable:
    def test_a_table_leaves_exactly_its_services(self) -> None:
        """After a table read, the node wants exactly the table's VIPs (a missed removal
        is gone too), and a full plan is owed."""
        ranges = VipRanges(config=parse_ranges(["10.0.0.0/8"])[0])
        changes = Changes(standalone=False, ranges=ranges)
        changes.feed([service(1), service(2)], (), table=False)
        changes.take()
        recorded = changes.feed([service(2), service(3)], (), table=True)
        assert recorded is not None and recorded.vips
        assert sorted(changes.desired.refs) == sorted(service(i).vips[0] for i in (2, 3))
        assert changes.full


class TestWindow:
    def test_the_window_widens_while_a_burst_lasts_and_narrows_after_a_quiet_spell(
        self,
    ) -> None:
        """A change after quiet goes out after the base window; changes that follow the
        last delta within its window double it up to the maximum; a quiet spell longer
        than the window brings back the base."""
        base, top = 0.25, 2.0
        window = next_window_s(base, quiet_s=60.0, base_s=base, max_s=top)
        assert window == base  # one change after a quiet minute
        seen = []
        for _ in range(5):  # a burst: each change right after the last delta
            window = next_window_s(window, quiet_s=0.01, base_s=base, max_s=top)
            seen.append(window)
        assert seen == [0.5, 1.0, 2.0, 2.0, 2.0]
        # Quiet for less than the window is still the burst; longer is not.
        assert next_window_s(2.0, quiet_s=1.9, base_s=base, max_s=top) == 2.0
        assert next_window_s(2.0, quiet_s=2.1, base_s=base, max_s=top) == base

    def test_a_maximum_not_above_the_base_keeps_the_window_fixed(self) -> None:
        """``feed_window_max_ms`` at or below ``feed_window_ms``: the old fixed window."""
        assert next_window_s(0.25, quiet_s=0.0, base_s=0.25, max_s=0.25) == 0.25
        assert next_window_s(0.25, quiet_s=0.0, base_s=0.25, max_s=0.0) == 0.25


class TestLeadingAgain:
    """Whether a replica that wins the lease back may carry on its feed without a reset."""

    def test_a_head_nobody_rewrote_and_every_taken_delta_sent_carries_on(self) -> None:
        """The head in KV is at the revision we wrote last, and the last delta we took
        went out: nobody published since, so no reset is needed."""
        assert still_ours(written=41, found=41, sent=10, taken=10)

    def test_anything_else_resets(self) -> None:
        """Never published it, the head rewritten by someone else (or gone), or a delta
        taken that did not go out (a failed window, a reset never sent): the full
        take-over, with a reset."""
        assert not still_ours(written=None, found=41, sent=10, taken=10)
        assert not still_ours(written=41, found=45, sent=10, taken=10)
        assert not still_ours(written=41, found=0, sent=10, taken=10)
        assert not still_ours(written=41, found=41, sent=9, taken=10)
        assert not still_ours(written=41, found=41, sent=None, taken=1)
