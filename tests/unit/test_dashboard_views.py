"""The dashboard's natural sort, sortable table, alert banners, node view and change history."""

from __future__ import annotations

from vipwire.contracts import (
    ApplianceStatus,
    LbFailed,
    LbProgrammed,
    Member,
    Message,
    NodeApplied,
    NodeSnapshot,
    ServicePort,
    ServiceSnapshot,
    StatusWritten,
    VipAssigned,
)
from vipwire.dashboard.core import queries
from vipwire.dashboard.core.alerts import banners
from vipwire.dashboard.core.fold import Event, ReadModel
from vipwire.dashboard.core.sorting import natural_key
from vipwire.dashboard.core.views import ControlStatus, PoolCapacity, Query

T0 = 1_700_000_000.0
PORTS = (ServicePort(port=80),)
NODES = ("n1", "n2", "n10")


def ev(message: Message, at_s: float = 0.0, trace: str | None = None) -> Event:
    return Event(message=message, time=T0 + at_s, trace_id=trace)


def snapshot(name: str, uid: str | None = None, cluster: str = "east") -> Message:
    return ServiceSnapshot(
        cluster=cluster,
        namespace="default",
        name=name,
        uid=uid or name,
        resource_version="1",
        ports=PORTS,
    )


def assigned(name: str, vip: str) -> Message:
    return VipAssigned(
        cluster="east",
        namespace="default",
        name=name,
        uid=name,
        vips=(vip,),
        pool="default",
        appliance_group="dc1",
        ports=PORTS,
    )


def programmed(name: str, vip: str) -> Message:
    return LbProgrammed(
        cluster="east",
        namespace="default",
        name=name,
        uid=name,
        appliance="sim-1",
        vips=(vip,),
        ports=PORTS,
        members=tuple(Member(node=n, address=f"192.0.2.{i + 1}") for i, n in enumerate(NODES)),
    )


def status(name: str, vip: str) -> Message:
    return StatusWritten(cluster="east", namespace="default", name=name, uid=name, vips=(vip,))


def node(name: str, *, ready: bool = True) -> Message:
    return NodeSnapshot(cluster="east", node=name, addresses=("192.0.2.9",), ready=ready)


def applied(name: str, generation: int, *vips: str) -> Message:
    return NodeApplied(cluster="east", node=name, generation=generation, vips=vips)


def converged(model: ReadModel, name: str, vip: str, at_s: float = 0.0) -> None:
    model.apply(ev(snapshot(name), at_s))
    model.apply(ev(assigned(name, vip), at_s + 0.01))
    model.apply(ev(programmed(name, vip), at_s + 0.02))
    model.apply(ev(status(name, vip), at_s + 0.03))


def names(model: ReadModel, **query: object) -> list[str]:
    return [r.name for r in queries.page(model, Query(**query)).rows]  # type: ignore[arg-type]


class TestNaturalSort:
    def test_numbers_in_names_sort_as_numbers(self) -> None:
        """svc-2 comes before svc-10 and svc-100, and addresses sort by their numbers."""
        words = ["svc-100", "svc-10", "svc-2", "svc-11", "svc-1", "Svc-3"]
        assert sorted(words, key=natural_key) == [
            "svc-1",
            "svc-2",
            "Svc-3",
            "svc-10",
            "svc-11",
            "svc-100",
        ]
        ips = ["198.51.100.10", "198.51.100.9", "198.51.100.100"]
        assert sorted(ips, key=natural_key) == ["198.51.100.9", "198.51.100.10", "198.51.100.100"]

    def test_the_order_is_total(self) -> None:
        """Different texts that read alike (case, leading zeros) still get a fixed order."""
        assert natural_key("a01") != natural_key("a1")
        assert natural_key("A") != natural_key("a")

    def test_the_services_table_lists_names_naturally_by_default(self) -> None:
        """Without a sort the table is in natural cluster/namespace/name order."""
        model = ReadModel()
        for name in ("svc-10", "svc-2", "svc-100", "svc-1"):
            model.apply(ev(snapshot(name)))
        assert names(model, sort="") == ["svc-1", "svc-2", "svc-10", "svc-100"]
        assert names(model, sort="name", desc=True) == ["svc-100", "svc-10", "svc-2", "svc-1"]


class TestSorting:
    def test_state_sorts_failures_first_and_reason_sorts_missing_last(self) -> None:
        """sort=state puts failed first; sort=reason orders by the failure, others last."""
        model = ReadModel()
        converged(model, "ok-1", "198.51.100.1")
        model.apply(ev(snapshot("bad-2")))
        model.apply(ev(assigned("bad-2", "198.51.100.2")))
        model.apply(
            ev(
                LbFailed(
                    cluster="east",
                    namespace="default",
                    name="bad-2",
                    uid="bad-2",
                    appliance="sim-1",
                    reason="ApplianceError",
                    message="zzz",
                )
            )
        )
        model.apply(ev(snapshot("pending-3")))
        assert names(model, sort="state") == ["bad-2", "pending-3", "ok-1"]
        assert names(model, sort="reason")[0] == "bad-2"
        assert names(model, sort="reason", desc=True)[0] == "bad-2"  # missing stay last
        row = next(r for r in queries.page(model, Query()).rows if r.name == "bad-2")
        assert row.error is not None and "zzz" in row.error

    def test_vip_sorts_by_address_numbers(self) -> None:
        """sort=vip orders 198.51.100.9 before 198.51.100.10."""
        model = ReadModel()
        converged(model, "a", "198.51.100.10")
        converged(model, "b", "198.51.100.9")
        assert names(model, sort="vip") == ["b", "a"]

    def test_an_unknown_sort_is_refused(self) -> None:
        """A sort that is not a column is an error, not a silent default."""
        model = ReadModel()
        model.apply(ev(snapshot("a")))
        try:
            queries.page(model, Query(sort="nope"))
        except ValueError as exc:
            assert "nope" in str(exc)
        else:
            raise AssertionError("sort=nope was accepted")


class TestBanners:
    def test_nothing_wrong_no_banner(self) -> None:
        """A converged fleet with answering services shows no banner."""
        model = ReadModel()
        converged(model, "web", "198.51.100.1")
        control = ControlStatus(
            pools=(PoolCapacity(name="p", appliance_group="g", size=10, in_use=9, families=()),),
            polled_at=T0,
        )
        assert banners(model, control, T0 + 1000) == ()

    def test_a_pool_above_90_percent(self) -> None:
        """A pool with more than 90% of its addresses in use gets a banner naming it."""
        control = ControlStatus(
            pools=(
                PoolCapacity(name="edge", appliance_group="g", size=100, in_use=91, families=()),
            ),
            polled_at=T0,
        )
        (banner,) = banners(ReadModel(), control, T0)
        assert banner.kind == "pool" and "edge" in banner.text and "91%" in banner.text

    def test_an_appliance_down(self) -> None:
        """An appliance whose breaker is open is down, with its last error."""
        control = ControlStatus(
            appliances=(
                ApplianceStatus(
                    name="f5-a",
                    driver="f5",
                    group="g",
                    active=True,
                    health="open",
                    last_error="connection refused",
                ),
                ApplianceStatus(name="f5-b", driver="f5", group="g", active=False, health="closed"),
            ),
            polled_at=T0,
        )
        (banner,) = banners(ReadModel(), control, T0)
        assert banner.level == "critical" and "f5-a is down" in banner.text
        assert "connection refused" in banner.text

    def test_a_service_not_converged_for_five_minutes(self) -> None:
        """A change started 5 minutes ago without a status write is named; 4 minutes is not."""
        model = ReadModel()
        model.apply(ev(snapshot("stuck")))
        model.apply(ev(assigned("stuck", "198.51.100.3"), 1))
        assert banners(model, ControlStatus(), T0 + 240) == ()
        (banner,) = banners(model, ControlStatus(), T0 + 300)
        assert banner.kind == "convergence" and "east/default/stuck" in banner.text
        assert banner.href == "/services/east/default/stuck"

    def test_a_lost_and_a_lagging_node_agent_and_a_lost_service(self) -> None:
        """An agent that never reported (while others did) is lost; one lacking a VIP served
        for over a minute lags; ipam not answering is lost."""
        model = ReadModel()
        for n in NODES:
            model.apply(ev(node(n)))
        converged(model, "web", "198.51.100.1")
        model.apply(ev(applied("n1", 1, "198.51.100.1"), 1))
        model.apply(ev(applied("n2", 1), 1))  # reports, but without the VIP
        control = ControlStatus(ipam_error="ipam did not answer within 1s", polled_at=T0)
        texts = [b.text for b in banners(model, control, T0 + 30)]
        assert any("lost in east: n10" in t for t in texts), texts
        assert not any("lagging" in t for t in texts), texts  # within the minute
        assert any(t.startswith("ipam is lost") for t in texts), texts
        texts = [b.text for b in banners(model, control, T0 + 61)]
        assert any("lagging in east: n2" in t for t in texts), texts

    def test_the_dashboard_reader_behind(self) -> None:
        """The dashboard's own reader not caught up is a banner too."""
        (banner,) = banners(ReadModel(), ControlStatus(), T0, reader="catching up")
        assert banner.kind == "consumer" and "catching up" in banner.text


class TestNodeView:
    def test_each_node_lists_its_applied_vips_services_and_age(self) -> None:
        """The node view names each node's applied VIPs, their Services and how long ago."""
        model = ReadModel()
        for n in NODES:
            model.apply(ev(node(n)))
        converged(model, "svc-10", "198.51.100.10")
        converged(model, "svc-2", "198.51.100.2")
        model.apply(ev(applied("n1", 3, "198.51.100.10", "198.51.100.2"), 5))
        rows = queries.nodes(model, T0 + 65)
        assert [r.node for r in rows] == ["n1", "n2", "n10"]
        n1 = rows[0]
        assert n1.vips == ("198.51.100.2", "198.51.100.10")
        assert n1.services == ("east/default/svc-2", "east/default/svc-10")
        assert n1.applied_ago_s == 60.0 and n1.generation == 3 and n1.reporting
        assert rows[1].applied_time is None and not rows[1].reporting
        assert queries.nodes(model, T0, cluster="west") == ()


class TestHistory:
    def test_every_change_gets_its_own_waterfall_newest_first(self) -> None:
        """Two changes of one Service give two waterfalls, each with its own trace."""
        model = ReadModel()
        model.apply(ev(snapshot("web"), 0, trace="a" * 32))
        model.apply(ev(assigned("web", "198.51.100.1"), 0.01, trace="a" * 32))
        model.apply(ev(programmed("web", "198.51.100.1"), 0.02, trace="a" * 32))
        model.apply(ev(status("web", "198.51.100.1"), 0.03, trace="a" * 32))
        model.apply(ev(snapshot("web"), 10, trace="b" * 32))
        model.apply(ev(assigned("web", "198.51.100.1"), 10.01, trace="b" * 32))
        detail = queries.detail(model, model.ordered()[0])
        assert detail is not None
        assert [c.trace_id for c in detail.changes] == ["b" * 32, "a" * 32]
        assert [c.complete for c in detail.changes] == [False, True]
        assert detail.waterfall == detail.changes[0]
