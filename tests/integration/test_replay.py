"""``vipwire replay`` against real histories: a ``vipwire up --smoke`` store and a live server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vipwire.allinone import Stack, StackSettings
from vipwire.cli.main import main
from vipwire.natsserver import NatsServer
from vipwire.replay import (
    ReplayError,
    Scope,
    encode_line,
    import_records,
    open_source,
    open_target,
    read_lines,
    read_records,
    rerun,
    stream_state,
)
from vipwire.testing import eventually

DEMO = ("web", "api", "dns", "shop", "metrics")
CLUSTERS = ("east", "west")


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The state directory of one ``vipwire up --smoke`` run (10 demo Services)."""
    state = tmp_path_factory.mktemp("smoke")
    done = subprocess.run(
        [sys.executable, "-m", "vipwire.cli", "up", "--smoke", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return state


@pytest.fixture(scope="module")
def smoke_export(smoke_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "history.jsonl"
    assert main(["replay", "--store", str(smoke_store), "--export", str(out)]) == 0
    return out


def replay(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["replay", *args])
    return code, capsys.readouterr().out


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def edited(source: Path, target: Path, seq: int, change: Any) -> dict[str, Any]:
    """Copy an export with one message's payload changed; returns the edited line."""
    lines = []
    found: dict[str, Any] = {}
    for line in source.read_text().splitlines():
        entry = json.loads(line)
        if entry["seq"] == seq:
            change(entry["data"])
            found = entry
            lines.append(json.dumps(entry, separators=(",", ":")))
        else:
            lines.append(line)
    target.write_text("\n".join(lines) + "\n")
    assert found, f"no seq {seq}"
    return found


class TestTimeline:
    def test_replay_of_a_smoke_store_shows_every_demo_service_end_to_end(
        self, smoke_store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Each demo Service: snapshot, VIP, appliance, status in that order, with one VIP."""
        code, out = replay(["--store", str(smoke_store), "--json"], capsys)
        assert code == 0
        rows = json_lines(out)
        assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
        for cluster in CLUSTERS:
            for name in DEMO:
                mine = [
                    r for r in rows if r["cluster"] == cluster and r["object"] == f"default/{name}"
                ]
                kinds = [r["kind"] for r in mine]
                order = [
                    kinds.index(k)
                    for k in ("service", "vip-assigned", "lb-programmed", "status-written")
                ]
                assert order == sorted(order), (cluster, name, kinds)
                vips = {
                    tuple(r["message"]["vips"])
                    for r in mine
                    if r["kind"] in ("vip-assigned", "lb-programmed", "status-written")
                }
                assert len(vips) == 1, (cluster, name, vips)
                assert all(r["trace_id"] for r in mine)

    def test_the_table_and_a_service_scope(
        self, smoke_store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A header and one line per message; --service keeps that Service's subjects only."""
        code, table = replay(["--store", str(smoke_store)], capsys)
        assert code == 0
        lines = table.splitlines()
        assert lines[0].startswith("TIME (UTC)") and "TRACE" in lines[0]
        code, out = replay(
            ["--store", str(smoke_store), "--service", "east/default/web", "--json"], capsys
        )
        rows = json_lines(out)
        assert {r["subject"].split(".")[2] for r in rows} >= {"service", "vip", "lb", "status"}
        assert all(r["cluster"] == "east" and r["object"] == "default/web" for r in rows)
        assert len(lines) - 1 > len(rows)

    def test_a_sequence_range(self, smoke_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--since/--until seq:N are inclusive at both ends."""
        code, out = replay(
            ["--store", str(smoke_store), "--since", "seq:5", "--until", "seq:9", "--json"], capsys
        )
        assert code == 0
        assert [r["seq"] for r in json_lines(out)] == [5, 6, 7, 8, 9]


class TestRerun:
    def test_rerun_of_a_smoke_store_finds_no_divergence(
        self, smoke_store: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The recorded decisions are those the pure cores make."""
        code, out = replay(["--store", str(smoke_store), "--rerun"], capsys)
        assert code == 0, out
        assert out.startswith("no divergence (")

    def test_an_edited_lb_decision_is_reported_exactly_there(
        self, smoke_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """One LbProgrammed with a member address no node had: that message diverges first."""
        entries = [json.loads(line) for line in smoke_export.read_text().splitlines()]
        target = next(e for e in entries if e["data"]["kind"] == "lb-programmed")

        def wrong_member(data: dict[str, Any]) -> None:
            data["members"][-1]["address"] = "192.0.2.250"

        history = tmp_path / "edited.jsonl"
        line = edited(smoke_export, history, target["seq"], wrong_member)
        store = tmp_path / "store"
        assert main(["replay", "--import", str(history), "--store", str(store)]) == 0
        code, out = replay(["--store", str(store), "--rerun", "--json"], capsys)
        assert code == 1
        first = json_lines(out)[0]["divergence"]
        assert (first["seq"], first["subject"]) == (line["seq"], line["subject"])
        assert first["check"] == "lbdriver.members"
        assert "192.0.2.250" in first["recorded"] and "192.0.2.250" not in first["recomputed"]

    def test_an_edited_vip_decision_is_reported_exactly_there(
        self, smoke_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The second VipAssigned given the first one's VIP (another Service's): it diverges."""
        entries = [json.loads(line) for line in smoke_export.read_text().splitlines()]
        first_vip, second = [e for e in entries if e["data"]["kind"] == "vip-assigned"][:2]

        def taken(data: dict[str, Any]) -> None:
            data["vips"] = first_vip["data"]["vips"]

        history = tmp_path / "edited.jsonl"
        line = edited(smoke_export, history, second["seq"], taken)
        store = tmp_path / "store"
        assert main(["replay", "--import", str(history), "--store", str(store)]) == 0
        code, out = replay(["--store", str(store), "--rerun"], capsys)
        assert code == 1
        assert f"divergence at seq {line['seq']} " in out and line["subject"] in out
        assert "ipam.admissible" in out

    async def test_a_history_with_deletions_and_restarts_reruns_clean(self, tmp_path: Path) -> None:
        """Releases (VipReleasing, LbRemoved, VipReleased), a re-created name and an ipam
        restart: the rerun agrees with every decision."""
        settings = StackSettings(state_dir=str(tmp_path), clusters=1, nodes=2, dashboard_port=None)
        async with Stack(settings) as stack:
            await stack.wait_ready(30)
            for name in ("web", "api"):
                await stack.create_service("east", name)
            await eventually(
                lambda: stack.ingress_ips("east", "api"), 15, what="east/api has a VIP"
            )
            await eventually(
                lambda: stack.ingress_ips("east", "web"), 15, what="east/web has a VIP"
            )
            await stack.delete_service("east", "web")
            await eventually(
                lambda: stack.service("east", "web") is None, 15, what="east/web is gone"
            )
            await stack.restart("ipam")
            await stack.emulators["east"].delete("endpointslices", "default", "web-abc12")
            await stack.create_service("east", "web")
            await eventually(
                lambda: stack.ingress_ips("east", "web"), 15, what="east/web has a VIP again"
            )
        async with open_source(store=tmp_path) as js:
            state = await stream_state(js)
            assert state is not None
            records = [r async for r in read_records(js, state, subject_filter="vipwire.>")]
        result = rerun(records, StackSettings().pools)
        assert result.divergences == [], result.divergences[:3]
        kinds = {json.loads(r.data)["kind"] for r in records}
        assert {"vip-releasing", "lb-removed", "vip-released"} <= kinds
        assert result.checked["ipam"] >= 5


class TestExportImport:
    def test_export_then_import_into_an_empty_store_round_trips_byte_for_byte(
        self, smoke_export: Path, tmp_path: Path
    ) -> None:
        """Exporting the imported history gives the very same file (seq and time included)."""
        store = tmp_path / "store"
        assert main(["replay", "--import", str(smoke_export), "--store", str(store)]) == 0
        again = tmp_path / "again.jsonl"
        assert main(["replay", "--store", str(store), "--export", str(again)]) == 0
        assert again.read_bytes() == smoke_export.read_bytes()
        assert main(["replay", "--import", str(smoke_export), "--store", str(store)]) == 2

    async def test_import_into_a_live_server_and_read_it_back(
        self, smoke_export: Path, nats_server: NatsServer
    ) -> None:
        """--into URL: the server's stream then exports to the same lines; a second import is
        refused (the stream is not empty)."""
        with smoke_export.open("rb") as file:
            records = list(read_lines(file))
        async with open_target(nats_url=nats_server.url) as js:
            assert await import_records(js, records) == len(records)
            state = await stream_state(js)
            assert state is not None and state.imported
            back = [
                r
                async for r in read_records(js, state, subject_filter=Scope(cluster="west").filter)
            ]
            with pytest.raises(ReplayError, match="empty"):
                await import_records(js, records)
        expected = [encode_line(r) for r in records if r.subject.startswith("vipwire.west.")]
        assert [encode_line(r) for r in back] == expected

    async def test_a_message_id_repeated_in_a_history_is_not_dropped(
        self, smoke_export: Path, nats_server: NatsServer
    ) -> None:
        """Two messages with one Nats-Msg-Id (published far apart once) both arrive."""
        with smoke_export.open("rb") as file:
            first, second, *_ = read_lines(file)
        second.headers["Nats-Msg-Id"] = first.headers["Nats-Msg-Id"]
        async with open_target(nats_url=nats_server.url) as js:
            assert await import_records(js, [first, second]) == 2
            state = await stream_state(js)
            assert state is not None
            back = [r async for r in read_records(js, state, subject_filter="vipwire.>")]
        assert [encode_line(r) for r in back] == [encode_line(first), encode_line(second)]
