"""The live table's layout (vipwire.cli.live): it fits the terminal, keeps the header
and summary, and piped output names only what changed."""

from __future__ import annotations

import re

from vipwire.cli.live import Line, changed, frame, row_line, summary
from vipwire.contracts import ServiceRef

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def lines(count: int, state: str = "ready") -> list[Line]:
    return [
        Line(
            key=ServiceRef("east", "default", f"svc-{i}"),
            vip=f"198.51.100.{i % 250}",
            state=state,
            nodes="3/3",
            detail="",
        )
        for i in range(count)
    ]


HEADER = ["vipwire up — NATS nats://127.0.0.1:4222; dashboard http://127.0.0.1:8080/", "c"]


def test_a_big_table_fits_80x24_with_header_and_summary() -> None:
    """600 rows in 80x24: 24 lines of at most 80 columns; URLs, summary and a "more" line."""
    rows = lines(600)
    shown = frame(
        rows, header=HEADER, summary_line=summary(rows, [41.0]), width=80, height=24, colour=True
    )
    plain = [ANSI.sub("", s) for s in shown]
    assert len(plain) == 24 and all(len(s) <= 80 for s in plain)
    assert plain[0].startswith("vipwire up — NATS nats://127.0.0.1:4222; dashboard")
    assert plain[2] == "600 Services, 600 ready, 0 failed, p50 41 ms"
    assert plain[-1].startswith("… 582 more")
    assert "\x1b[32mready\x1b[0m" in shown[5]


def test_a_small_table_is_shown_whole_without_colour_when_asked() -> None:
    """Ten rows in a tall terminal: all of them, and no escape codes without colour."""
    rows = lines(10)
    shown = frame(rows, header=HEADER, summary_line="s", width=120, height=40, colour=False)
    assert len(shown) == len(HEADER) + 2 + 1 + 10
    assert not any("\x1b" in s for s in shown)


def test_summary_counts_failed_and_ready() -> None:
    """Rejected and failed rows count as failed; p50 only once something converged."""
    rows = lines(3) + lines(2, "rejected") + lines(1, "pending")
    assert summary(rows, []) == "6 Services, 3 ready, 2 failed"


def test_piped_output_names_only_the_rows_that_changed() -> None:
    """One line per new or changed row, none for the unchanged ones."""
    before = {line.key: line for line in lines(3, "assigned")}
    now = lines(3, "assigned")
    now[1] = Line(key=now[1].key, vip=now[1].vip, state="ready", nodes="3/3", detail="")
    assert changed(before, now) == [now[1]]
    assert row_line(now[1], 0.0) == "00:00:00 east/default/svc-1 198.51.100.1 ready, nodes 3/3"


def test_smoke_stops_at_a_service_failed_for_good() -> None:
    """A rejected Service not converged is named with its reason; converged or pending
    ones are not."""
    from vipwire.allinone.view import Row
    from vipwire.cli.up import demo_pools, permanent_failure

    web, api = ServiceRef("east", "default", "web"), ServiceRef("east", "default", "api")
    rows = {
        web: Row(cluster="east", namespace="default", name="web", state="pending"),
        api: Row(cluster="east", namespace="default", name="api", state="rejected", detail="x: y"),
    }
    assert permanent_failure([web, api], rows, set()) == "east/default/api rejected: x: y"
    assert permanent_failure([web, api], rows, {api}) is None
    assert demo_pools(10)[0].addresses == ("198.51.100.0/24",)
    assert demo_pools(600)[0].addresses == ("198.18.0.0/15",)


def test_rows_sort_naturally() -> None:
    """svc-2 comes before svc-10."""
    from vipwire.cli.live import natural

    keys = [ServiceRef("east", "default", f"svc-{i}") for i in (10, 2, 1)]
    assert [k.name for k in sorted(keys, key=natural)] == ["svc-1", "svc-2", "svc-10"]


def test_failed_rows_come_first_when_not_all_fit() -> None:
    """A failed row beyond the screen's height is moved onto it."""
    rows = lines(100)
    rows[99] = Line(key=rows[99].key, vip="-", state="failed", nodes="0/3", detail="pool full")
    shown = frame(rows, header=HEADER, summary_line="s", width=80, height=24, colour=False)
    assert "pool full" in shown[5]
