"""The coalescing schedule: bursts absorbed, at most one flush per key per window."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from vipwire.lbdriver import Coalescer, Flush

W = 0.1
Q = 0.1


def test_a_burst_is_one_flush_once_it_pauses() -> None:
    """Ten events 5 ms apart become one flush, due one quiet period after the last of them."""
    c: Coalescer[str, int] = Coalescer(1.0, quiet=Q)
    for i in range(10):
        c.mark("web", 0.005 * i, cause=i)
    assert c.take_due(0.044 + Q) == []
    assert c.next_due() == 0.045 + Q
    ((key, flush),) = c.take_due(0.045 + Q)
    assert key == "web"
    assert flush.events == 10
    assert flush.cause == 9
    assert flush.causes == tuple(range(2, 10))  # only the latest are kept


def test_events_that_never_pause_flush_once_per_window() -> None:
    """Events every 10 ms forever: one flush per window, none sooner."""
    c: Coalescer[str, int] = Coalescer(0.5, quiet=Q)
    flushes = []
    now = 0.0
    while now < 3.0:
        c.mark("web", now, cause=0)
        for key, _ in c.take_due(now):
            flushes.append(now)
            c.done(key, now)
        now = round(now + 0.01, 6)
    assert len(flushes) == 5
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(flushes)]
    assert all(0.5 <= gap <= 0.52 for gap in gaps), gaps


def test_events_slower_than_quiet_still_merge_within_the_window() -> None:
    """Events 150 ms apart (each burst looks over) are written once, then once per window."""
    c: Coalescer[str, int] = Coalescer(1.0, quiet=Q)
    c.mark("web", 0.0, 0)
    ((_, first),) = c.take_due(Q)
    c.done("web", Q)
    for i in range(1, 7):
        c.mark("web", 0.15 * i, i)
        assert c.take_due(0.15 * i) == []
    ((_, second),) = c.take_due(Q + 1.0)
    assert (first.events, second.events) == (1, 6)


def test_without_quiet_the_window_is_fixed() -> None:
    """quiet defaults to the window: a burst flushes one window after its first event."""
    c: Coalescer[str, int] = Coalescer(W)
    c.mark("web", 0.0, 1)
    assert c.mark("web", 0.05, 2) == W


def test_quiet_is_capped_at_the_window() -> None:
    """A quiet period longer than the window is the window."""
    assert Coalescer(W, quiet=5.0).quiet == W


def test_urgent_marks_are_due_at_once_but_keep_the_spacing() -> None:
    """An assignment is written at once, unless the key was written less than a window ago."""
    c: Coalescer[str, str] = Coalescer(W)
    assert c.mark("web", 1.0, "assigned", urgent=True) == 1.0
    ((_, flush),) = c.take_due(1.0)
    c.done("web", 1.02)
    assert c.mark("web", 1.05, "assigned-again", urgent=True) == 1.02 + W
    assert flush.cause == "assigned"


def test_marks_during_a_flush_wait_for_it_then_a_window() -> None:
    """A key is never flushed twice at once; what arrives meanwhile follows one window later."""
    c: Coalescer[str, int] = Coalescer(W)
    c.mark("web", 0.0, 1, urgent=True)
    c.take_due(0.0)
    c.mark("web", 0.01, 2, urgent=True)
    assert c.running("web") and c.pending("web")
    assert c.take_due(5.0) == []  # still running
    assert c.next_due() is None
    c.done("web", 0.3)
    assert c.next_due() == 0.3 + W
    ((_, flush),) = c.take_due(0.3 + W)
    assert flush.cause == 2


def test_force_survives_later_plain_marks_and_names_the_cause() -> None:
    """A forced confirmation is kept and answers to the forcing cause, not a later event."""
    c: Coalescer[str, str] = Coalescer(W)
    c.mark("web", 0.0, "vip", force=True, urgent=True)
    c.mark("web", 0.0, "node")
    ((_, flush),) = c.take_due(0.0)
    assert (flush.force, flush.cause, flush.events) == (True, "vip", 2)


def test_failed_flush_retries_after_the_delay_or_sooner_on_news() -> None:
    """A retry is due after its backoff; a new event can bring it forward (never before spacing)."""
    c: Coalescer[str, str] = Coalescer(W)
    c.mark("web", 0.0, "vip", force=True, urgent=True)
    ((_, flush),) = c.take_due(0.0)
    c.done("web", 0.0)
    assert c.retry("web", 0.0, 2.0, flush) == 2.0
    again = c.take_due(2.0)
    assert again == [("web", Flush(cause="vip", causes=("vip",), force=True, events=0))]
    c.done("web", 2.0)
    c.retry("web", 2.0, 8.0, again[0][1])
    c.mark("web", 3.0, "endpoints", urgent=True)
    assert c.next_due() == 3.0


def test_retry_after_news_keeps_the_news_schedule_and_the_owed_force() -> None:
    """Marks that arrived during a failed flush decide when; the flush's force is not lost."""
    c: Coalescer[str, str] = Coalescer(W)
    c.mark("web", 0.0, "vip", force=True, urgent=True)
    ((_, flush),) = c.take_due(0.0)
    c.mark("web", 0.01, "node")
    c.done("web", 0.02)
    c.retry("web", 0.02, 5.0, flush)
    ((_, next_flush),) = c.take_due(0.02 + W)
    assert next_flush.force and next_flush.cause == "vip"


def test_keys_are_independent() -> None:
    """One key's writes never delay another's."""
    c: Coalescer[str, int] = Coalescer(W)
    c.mark("a", 0.0, 1, urgent=True)
    c.take_due(0.0)
    c.mark("b", 0.0, 1, urgent=True)
    assert [k for k, _ in c.take_due(0.0)] == ["b"]


def test_take_due_with_a_limit_leaves_the_rest_due() -> None:
    """A limited take returns the earliest due keys; the others stay due for the next take."""
    c: Coalescer[str, int] = Coalescer(W)
    for i, key in enumerate("abcde"):
        c.mark(key, 0.001 * i, i, urgent=True)
    assert [k for k, _ in c.take_due(1.0, limit=2)] == ["a", "b"]
    assert c.next_due() == 0.002
    assert [k for k, _ in c.take_due(1.0, limit=2)] == ["c", "d"]
    assert [k for k, _ in c.take_due(1.0, limit=2)] == ["e"]
    assert c.take_due(1.0, limit=2) == [] and c.next_due() is None


def test_forget_drops_pending_work_and_history() -> None:
    """A forgotten key is not flushed, and a flush in progress leaves no spacing behind."""
    c: Coalescer[str, int] = Coalescer(W)
    c.mark("a", 0.0, 1)
    c.forget("a")
    assert c.take_due(10.0) == [] and c.next_due() is None
    c.mark("b", 0.0, 1, urgent=True)
    c.take_due(0.0)
    c.forget("b")
    c.done("b", 0.5)
    assert c.mark("b", 0.5, 2, urgent=True) == 0.5


def test_zero_window_flushes_at_once() -> None:
    """Window 0: every mark is due immediately (no coalescing, only one flush at a time)."""
    c: Coalescer[str, int] = Coalescer(0.0)
    assert c.mark("a", 1.0, 1) == 1.0


@given(
    st.lists(
        st.tuples(
            st.sampled_from("abc"),
            st.floats(min_value=0, max_value=0.05),
            st.booleans(),
            st.floats(min_value=0, max_value=0.03),
        ),
        max_size=120,
    )
)
def test_at_most_one_flush_per_key_per_window(
    events: list[tuple[str, float, bool, float]],
) -> None:
    """Whatever the events, urgency and flush durations, a key's flushes start at least a
    window after its previous flush ended, and every mark is eventually flushed."""
    c: Coalescer[str, int] = Coalescer(W, quiet=0.03)
    now = 0.0
    running: dict[str, float] = {}  # key -> when its flush ends
    ended: dict[str, float] = {}
    starts: dict[str, list[float]] = {}

    def step(now: float, duration: float = 0.0) -> None:
        for key, end in sorted(running.items()):
            if end <= now:
                del running[key]
                c.done(key, end)
                ended[key] = end
        for key, _ in c.take_due(now):
            assert key not in running
            assert now >= ended.get(key, -1.0) + W - 1e-9
            starts.setdefault(key, []).append(now)
            running[key] = now + duration

    for i, (key, gap, urgent, duration) in enumerate(events):
        now += gap
        step(now, duration)
        c.mark(key, now, i, urgent=urgent)
        step(now, duration)
    while c.pending_count() or running:
        due = c.next_due()
        candidates = [t for t in (due, *running.values()) if t is not None]
        now = max(now, min(candidates))
        step(now)
    assert c.running_count() == 0


def test_plain_marks_never_postpone_an_urgent_one() -> None:
    """An assignment due now stays due now, however many endpoint events follow."""
    c: Coalescer[str, str] = Coalescer(1.0, quiet=Q)
    c.mark("web", 0.0, "vip", urgent=True)
    c.mark("web", 0.0, "endpoints")
    assert c.next_due() == 0.0


def test_news_brings_a_backed_off_retry_forward() -> None:
    """A plain event during a long backoff is flushed after one window, not after the backoff."""
    c: Coalescer[str, str] = Coalescer(1.0, quiet=Q)
    c.mark("web", 0.0, "vip", urgent=True)
    ((_, flush),) = c.take_due(0.0)
    c.done("web", 0.0)
    c.retry("web", 0.0, 10.0, flush)
    assert c.mark("web", 1.0, "endpoints") == 1.0 + W
