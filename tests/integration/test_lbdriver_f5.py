"""The F5 driver against the iControl REST emulator, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from opentelemetry import trace

from support.appliances import CLUSTER, PREFIX, by_name, converge, server
from support.lbdriver import LbHarness
from vipwire.applianceemu import F5Emulator, fetch_writes, overlapping_writes
from vipwire.contracts import (
    LbProgrammed,
    LbRemoved,
    Member,
    NodeSnapshot,
    ServicePort,
    VipAssigned,
    VipReleasing,
)
from vipwire.lbdriver import (
    ApplianceAuthError,
    ApplianceRejected,
    ApplianceSettings,
    ApplianceTimeouts,
    ApplianceUnavailable,
    CreateVirtualServer,
    DeleteVirtualServer,
    Operation,
    UpdateMembers,
    UpdateVirtualServer,
    build_driver,
    owns,
)
from vipwire.lbdriver.core.lease import Term
from vipwire.lbdriver.core.resilience import CircuitBreaker
from vipwire.lbdriver.io.appliance_client import ApplianceClient
from vipwire.lbdriver.io.drivers._rest import CONNECTIONS, RestTransport, VendorError
from vipwire.lbdriver.io.drivers.credentials import CredentialSource
from vipwire.lbdriver.io.drivers.f5 import FASTL4_PROFILE, F5Driver
from vipwire.lbdriver.io.election import Election
from vipwire.lbdriver.io.fencing import CURRENT_FENCE, NotLeader
from vipwire.lbdriver.settings import LbdriverSettings
from vipwire.metrics import Registry
from vipwire.runtime import Runtime

PASSWORD = "s3cret-pw"
#: Short timeouts: an emulator on this host answers at once or not at all.
QUICK = ApplianceTimeouts(login_s=5, read_s=5, write_s=5, commit_s=5)


@pytest.fixture
async def emu() -> AsyncIterator[F5Emulator]:
    emulator = F5Emulator(username="admin", password=PASSWORD)
    await emulator.start()
    yield emulator
    await emulator.stop()


def make_driver(emu: F5Emulator, **options: object) -> F5Driver:
    credentials = CredentialSource("bigip-a", "admin", password=PASSWORD)
    return F5Driver("bigip-a", emu.url, credentials, timeouts=QUICK, **options)  # type: ignore[arg-type]


@pytest.fixture
async def driver(emu: F5Emulator) -> AsyncIterator[F5Driver]:
    d = make_driver(emu)
    yield d
    await d.close()


# --- programming ---------------------------------------------------------------------


async def test_create_builds_dsr_objects_in_one_transaction(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """A create is a partition, a fastL4 nPath profile, and monitor, pool and virtual at once."""
    v4, v6 = server(), server(443, address="2001:db8::10", protocol="UDP", nodes=("2001:db8::1",))
    assert await converge(driver, by_name(v4, v6)) == ["CreateVirtualServer"] * 2
    assert emu.commits == 1
    assert CLUSTER in emu.partitions
    profile = emu.get("fastl4", CLUSTER, FASTL4_PROFILE)
    assert profile is not None
    assert (profile["looseInitialization"], profile["looseClose"]) == ("enabled", "enabled")
    virtual = emu.get("virtual", CLUSTER, v4.name)
    assert virtual is not None
    assert virtual["destination"] == f"/{CLUSTER}/192.0.2.10:80"
    assert virtual["translateAddress"] == virtual["translatePort"] == "disabled"
    assert virtual["sourceAddressTranslation"] == {"type": "none"}
    assert virtual["profiles"] == [f"/{CLUSTER}/{FASTL4_PROFILE}"]
    assert virtual["description"] == "prod/shop/web"
    v6virtual = emu.get("virtual", CLUSTER, v6.name)
    assert v6virtual is not None
    assert v6virtual["destination"] == f"/{CLUSTER}/2001:db8::10.443"
    assert v6virtual["ipProtocol"] == "udp"
    pool = emu.get("pool", CLUSTER, v4.name)
    assert pool is not None
    assert [m["name"] for m in pool["members"]] == ["198.51.100.1:80", "198.51.100.2:80"]
    monitor = emu.get("monitor", CLUSTER, v4.name)
    assert monitor is not None
    assert monitor["destination"] == "*:10256"  # the health port, not the member port
    assert monitor["send"].startswith("GET /healthz ")


async def test_listing_reads_back_exactly_what_was_programmed(driver: F5Driver) -> None:
    """Names, owners, addresses, ports, protocols, members (node names) and monitors round-trip."""
    desired = by_name(
        server(),
        server(8443, health=32000),
        server(443, address="2001:db8::10", protocol="UDP", nodes=("2001:db8::1",)),
        server(3868, protocol="SCTP", nodes=()),
    )
    await converge(driver, desired)
    assert await driver.list_virtual_servers(CLUSTER) == desired


async def test_the_same_desired_state_twice_writes_nothing(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """The second pass diffs to no operation and the appliance sees no write."""
    desired = by_name(server(), server(443))
    await converge(driver, desired)
    writes, requests = emu.writes, emu.requests
    assert await converge(driver, desired) == []
    assert emu.writes == writes
    # Only the collection reads of the listing: virtuals, pools, http/https/tcp monitors,
    # source-address persistence profiles, address lists, traffic-matching criteria.
    assert emu.requests == requests + 8


async def test_member_change_is_one_pool_write(driver: F5Driver, emu: F5Emulator) -> None:
    """New members replace the pool's list in one PATCH, without a transaction (then the
    node of the member that went is deleted)."""
    await converge(driver, by_name(server()))
    writes, commits = emu.writes, emu.commits
    changed = server(nodes=("198.51.100.2", "198.51.100.3"))
    assert await converge(driver, by_name(changed)) == ["UpdateMembers"]
    assert (emu.writes, emu.commits) == (writes + 2, commits)
    assert await driver.list_virtual_servers(CLUSTER) == by_name(changed)


async def test_member_update_works_without_a_prior_listing(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """A fresh driver asked to change members reads the virtual's port instead of guessing it."""
    await converge(driver, by_name(server()))
    fresh = make_driver(emu)
    try:
        members = (Member(node="n7", address="198.51.100.7"),)
        await fresh.apply(CLUSTER, [UpdateMembers(name=server().name, members=members)])
    finally:
        await fresh.close()
    pool = emu.get("pool", CLUSTER, server().name)
    assert pool is not None and [m["name"] for m in pool["members"]] == ["198.51.100.7:80"]


async def test_port_change_replaces_the_virtual_server(driver: F5Driver, emu: F5Emulator) -> None:
    """A new port is a new object: the old one is deleted in the same transaction."""
    old, new = server(80), server(8080)
    await converge(driver, by_name(old))
    assert await converge(driver, by_name(new)) == ["DeleteVirtualServer", "CreateVirtualServer"]
    assert emu.names("virtual", CLUSTER) == [new.name]
    assert emu.names("pool", CLUSTER) == [new.name]
    assert emu.names("monitor", CLUSTER) == [new.name]
    assert await driver.list_virtual_servers(CLUSTER) == by_name(new)


async def test_monitor_and_owner_changes_update_in_place(driver: F5Driver, emu: F5Emulator) -> None:
    """A changed health port or owner rewrites the objects without recreating them."""
    await converge(driver, by_name(server()))
    changed = server(health=31000, owner="prod/shop/web2")
    assert await converge(driver, by_name(changed)) == ["UpdateVirtualServer"]
    assert await driver.list_virtual_servers(CLUSTER) == by_name(changed)
    virtual = emu.get("virtual", CLUSTER, changed.name)
    assert virtual is not None and virtual["generation"] > 1


async def test_delete_removes_virtual_pool_and_monitor(driver: F5Driver, emu: F5Emulator) -> None:
    """Deleting leaves no object of ours behind; the partition and profile stay."""
    await converge(driver, by_name(server(), server(443)))
    assert await converge(driver, {}) == ["DeleteVirtualServer"] * 2
    for kind in ("virtual", "pool", "monitor"):
        assert emu.names(kind, CLUSTER) == []
    assert emu.names("fastl4", CLUSTER) == [FASTL4_PROFILE]


async def test_partition_template_and_map_choose_the_partition(emu: F5Emulator) -> None:
    """Clusters land in templated partitions unless mapped explicitly."""
    d = make_driver(emu, partition_template="k8s_{cluster}", partitions={"east": "legacy"})
    try:
        await d.apply("prod", [CreateVirtualServer(server=server())])
        # Another cluster has other nodes: a node address lives in one partition only.
        east = server(address="192.0.2.20", nodes=("198.51.100.21",))
        await d.apply("east", [CreateVirtualServer(server=east)])
    finally:
        await d.close()
    assert emu.names("virtual", "k8s_prod") == [server().name]
    assert len(emu.names("virtual", "legacy")) == 1


# --- drift ---------------------------------------------------------------------------


async def test_drifted_dsr_settings_are_listed_as_changed_and_restored(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """Address translation switched on out of band shows as a difference and is undone."""
    s = server()
    await converge(driver, by_name(s))
    virtual = emu.get("virtual", CLUSTER, s.name)
    assert virtual is not None
    emu.remove("virtual", CLUSTER, s.name)
    emu.plant("virtual", CLUSTER, {**virtual, "translateAddress": "enabled"})
    assert await converge(driver, by_name(s)) == ["UpdateVirtualServer"]
    restored = emu.get("virtual", CLUSTER, s.name)
    assert restored is not None and restored["translateAddress"] == "disabled"
    assert await converge(driver, by_name(s)) == []


async def test_a_virtual_deleted_out_of_band_is_recreated_around_its_leftovers(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """With only the pool and monitor left, the create patches them and adds the virtual."""
    s = server()
    await converge(driver, by_name(s))
    emu.remove("virtual", CLUSTER, s.name)
    assert await converge(driver, by_name(s)) == ["CreateVirtualServer"]
    assert await driver.list_virtual_servers(CLUSTER) == by_name(s)


# --- authentication and faults ---------------------------------------------------------


async def test_expired_token_is_replaced_transparently(driver: F5Driver, emu: F5Emulator) -> None:
    """A 401 for an expired token leads to one new login and the request succeeds."""
    await converge(driver, by_name(server()))
    assert emu.logins == 1
    emu.expire_tokens()
    assert await converge(driver, by_name(server(nodes=("198.51.100.9",)))) == ["UpdateMembers"]
    assert emu.logins == 2


async def test_wrong_credentials_raise_an_auth_error_without_the_password(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """A refused login is ApplianceAuthError, caused by BIG-IP's 401, and names no secret."""
    emu.set_credentials("admin", "rotated")
    with pytest.raises(ApplianceAuthError) as caught:
        await driver.list_virtual_servers(CLUSTER)
    assert isinstance(caught.value.__cause__, VendorError)
    assert caught.value.__cause__.status == 401
    assert "Authentication failed" in str(caught.value)
    assert "the appliance refused vipwire's login" in str(caught.value)
    assert "admin" not in str(caught.value), "the user name reaches Events"
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in repr(driver)
    # The listing's concurrent reads shared one refused login rather than trying three.
    assert emu.failed_logins == 1


async def test_busy_appliance_is_unavailable_then_recovers(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """A 503 is ApplianceUnavailable; the next call goes through."""
    emu.fail_next(503, path_contains="/ltm/")
    with pytest.raises(ApplianceUnavailable) as caught:
        await driver.list_virtual_servers(CLUSTER)
    assert isinstance(caught.value.__cause__, VendorError)
    assert await driver.list_virtual_servers(CLUSTER) == {}


async def test_unreachable_appliance_is_unavailable(emu: F5Emulator) -> None:
    """A refused connection is ApplianceUnavailable, raised from the transport error."""
    url = emu.url
    await emu.stop()
    d = F5Driver("gone", url, CredentialSource("gone", "admin", password=PASSWORD))
    try:
        with pytest.raises(ApplianceUnavailable) as caught:
            await d.list_virtual_servers(CLUSTER)
        assert caught.value.__cause__ is not None
    finally:
        await d.close()


async def test_token_is_handed_back_on_close(emu: F5Emulator) -> None:
    """Closing deletes the token, so repeated restarts do not exhaust BIG-IP's token cap."""
    d = make_driver(emu)
    await d.list_virtual_servers(CLUSTER)
    assert emu.live_tokens == 1
    await d.close()
    assert emu.live_tokens == 0


# --- shared appliance --------------------------------------------------------------------


async def test_foreign_objects_are_listed_as_not_ours_and_never_touched(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """Another tool's virtual in the partition is reported, not owned, and survives our changes."""
    emu.plant("monitor", CLUSTER, {"name": "legacy-mon", "destination": "*:8080"})
    emu.plant("pool", CLUSTER, {"name": "legacy-pool", "monitor": "/prod/legacy-mon"})
    emu.plant(
        "virtual",
        CLUSTER,
        {"name": "legacy-app", "destination": "/prod/192.0.2.200:80", "pool": "/prod/legacy-pool"},
    )
    before = {
        k: emu.get(k, CLUSTER, n) for k, n in [("virtual", "legacy-app"), ("pool", "legacy-pool")]
    }
    listed = await driver.list_virtual_servers(CLUSTER)
    assert "legacy-app" in listed and not owns("legacy-app", PREFIX)
    await converge(driver, by_name(server(), server(443)))
    await converge(driver, by_name(server(nodes=("198.51.100.7",))))
    await converge(driver, {})
    after = {
        k: emu.get(k, CLUSTER, n) for k, n in [("virtual", "legacy-app"), ("pool", "legacy-pool")]
    }
    assert after == before


async def test_a_failing_command_leaves_nothing_half_applied(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """BIG-IP refuses the batch at commit; none of its commands, earlier ones included, remain."""
    await converge(driver, by_name(server()))
    # Another tool holds the destination the second create needs.
    emu.plant("virtual", CLUSTER, {"name": "squatter", "destination": "/prod/192.0.2.30:80"})
    writes = emu.writes
    batch: list[Operation] = [
        UpdateMembers(name=server().name, members=(Member(node="n9", address="198.51.100.9"),)),
        CreateVirtualServer(server=server(address="192.0.2.20")),
        CreateVirtualServer(server=server(address="192.0.2.30")),
    ]
    with pytest.raises(ApplianceRejected) as caught:
        await driver.apply(CLUSTER, batch)
    assert "transaction failed" in str(caught.value)
    assert "illegally shares destination" in str(caught.value)
    assert emu.writes == writes
    assert sorted(emu.names("virtual", CLUSTER)) == sorted([server().name, "squatter"])
    assert emu.names("pool", CLUSTER) == [server().name]
    listed = await driver.list_virtual_servers(CLUSTER)
    assert listed[server().name] == server()


async def test_an_update_of_a_missing_object_is_rejected_with_bigip_message(
    driver: F5Driver,
) -> None:
    """Writing to an object that is not there is ApplianceRejected, quoting BIG-IP."""
    with pytest.raises(ApplianceRejected, match="was not found"):
        await driver.apply(
            CLUSTER, [UpdateVirtualServer(server=server()), DeleteVirtualServer(name="vipwire-x")]
        )


async def test_config_sync_follows_each_committed_change(emu: F5Emulator) -> None:
    """With a sync group, every applied batch is followed by config-sync to it; no-ops are not."""
    d = make_driver(emu, sync_group="vipwire-failover")
    try:
        await converge(d, by_name(server()))
        await converge(d, by_name(server()))
        assert emu.syncs == ["vipwire-failover"]
    finally:
        await d.close()


async def test_failed_config_sync_is_retried_before_the_next_call(emu: F5Emulator) -> None:
    """A sync that fails surfaces as an error and is redone before the next read."""
    d = make_driver(emu, sync_group="vipwire-failover")
    try:
        emu.fail_next(503, path_contains="/mgmt/tm/cm")
        with pytest.raises(ApplianceUnavailable, match="config-sync"):
            await d.apply(CLUSTER, [CreateVirtualServer(server=server())])
        assert emu.syncs == []
        await d.list_virtual_servers(CLUSTER)
        assert emu.syncs == ["vipwire-failover"]
    finally:
        await d.close()


# --- configuration ---------------------------------------------------------------------


async def test_driver_is_built_from_settings_with_a_password_file(
    emu: F5Emulator, tmp_path: Path
) -> None:
    """build_driver reads the password from the file at login; the config holds no secret."""
    secret = tmp_path / "f5-password"
    secret.write_text(PASSWORD + "\n")
    settings = ApplianceSettings(
        name="bigip-a", driver="f5", address=emu.url, username="admin", password_file=str(secret)
    )
    d = build_driver(settings)
    try:
        assert isinstance(d, F5Driver)
        assert await d.list_virtual_servers(CLUSTER) == {}
        assert PASSWORD not in repr(d)
    finally:
        await d.close()


# --- through the service ---------------------------------------------------------------


async def test_lbdriver_service_programs_an_f5_from_configuration(
    emu: F5Emulator,
    make_runtime: Callable[[str], Awaitable[Runtime]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With an f5 appliance configured, VipAssigned becomes BIG-IP objects and LbProgrammed;
    VipReleasing removes them and reports LbRemoved."""
    monkeypatch.setenv("VIPWIRE_TEST_F5_PASSWORD", PASSWORD)
    settings = {
        "appliances": (
            ApplianceSettings(
                name="bigip-a",
                driver="f5",
                address=emu.url,
                username="admin",
                password_env="VIPWIRE_TEST_F5_PASSWORD",
            ),
        ),
        "coalesce_window_ms": 1.0,
        "retry_initial_s": 0.05,
        "retry_max_s": 0.2,
    }
    h = LbHarness(make_runtime, await make_runtime("test"), defaults=settings)
    await h.observe()
    try:
        await h.start()
        for name, address in (("n1", "198.51.100.1"), ("n2", "198.51.100.2")):
            await h.publish(NodeSnapshot(cluster=CLUSTER, node=name, addresses=(address,)))
        await h.publish(
            VipAssigned(
                cluster=CLUSTER,
                namespace="shop",
                name="web",
                uid="uid-web",
                vips=("192.0.2.10",),
                pool="default",
                appliance_group="default",
                ports=(ServicePort(port=80),),
                external_traffic_policy="Cluster",
            )
        )
        programmed = await h.expect(LbProgrammed)
        assert programmed.appliance == "bigip-a"
        assert [m.address for m in programmed.members] == ["198.51.100.1", "198.51.100.2"]
        [name] = emu.names("virtual", CLUSTER)
        virtual = emu.get("virtual", CLUSTER, name)
        assert virtual is not None and virtual["destination"] == "/prod/192.0.2.10:80"
        assert virtual["description"] == "prod/shop/web"

        await h.publish(
            VipReleasing(
                cluster=CLUSTER,
                namespace="shop",
                name="web",
                uid="uid-web",
                vips=("192.0.2.10",),
                appliance_group="default",
            )
        )
        removed = await h.expect(LbRemoved)
        assert removed.appliance == "bigip-a"
        assert emu.names("virtual", CLUSTER) == []
        assert emu.names("pool", CLUSTER) == []
    finally:
        await h.close()
    assert emu.live_tokens == 0  # the service closed the driver it built


# --- the emulator's write log ------------------------------------------------------------


async def test_the_write_log_names_each_writer_and_skips_sessions(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """Every configuration write is logged with the user (no header) or the writer header."""
    await converge(driver, by_name(server()))
    records = emu.write_log.since(0)
    assert records, "a create writes"
    assert {r.writer for r in records} == {"admin"}
    assert all(r.lease is None for r in records)
    assert not any("authn/login" in r.path or "authz/tokens" in r.path for r in records)
    assert [r.index for r in records] == list(range(len(records)))
    mark = emu.write_log.next_index
    transport = driver._http
    token = await driver._login()
    answer = await transport.send(
        "DELETE",
        f"/mgmt/tm/ltm/virtual/~{CLUSTER}~absent",
        headers={
            "X-F5-Auth-Token": token,
            "X-Vipwire-Writer": "replica-b",
            "X-Vipwire-Lease": "17",
        },
    )
    served = await fetch_writes(emu.url, since=mark)
    assert [(r.writer, r.lease, r.method, r.status) for r in served] == [
        ("replica-b", 17, "DELETE", answer.status)
    ]
    assert served == emu.write_log.since(mark)
    assert not overlapping_writes(emu.write_log.since(0))


# --- the write fence (lbdriver HA) ---------------------------------------------------------


class CountingFence:
    """Allows ``allowed`` mutating requests, then refuses like a lease that ran out."""

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self.asked = 0

    def __call__(self) -> dict[str, str]:
        self.asked += 1
        if self.asked > self.allowed:
            raise NotLeader("the lease ran out")
        return {"X-Vipwire-Writer": "replica-a", "X-Vipwire-Lease": "5"}


async def test_a_fence_closing_mid_transaction_stops_before_the_commit(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """The fence is asked before every mutating request: refused once the transaction is
    open, nothing is committed, and every request sent carried the writer's stamp."""

    def opened() -> bool:
        return any(r.path == "/mgmt/tm/transaction" for r in emu.write_log.since(0))

    def fence() -> dict[str, str]:
        if opened():
            raise NotLeader("the lease ran out")
        return {"X-Vipwire-Writer": "replica-a", "X-Vipwire-Lease": "5"}

    token = CURRENT_FENCE.set(fence)
    try:
        with pytest.raises(NotLeader):
            await converge(driver, by_name(server(), server(443)))
    finally:
        CURRENT_FENCE.reset(token)
    assert opened()
    assert emu.names("virtual", CLUSTER) == []
    assert emu.commits == 0
    assert {(r.writer, r.lease) for r in emu.write_log.since(0)} == {("replica-a", 5)}


async def test_a_refused_write_sends_nothing_and_leaves_the_breaker_closed(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """The appliance client asks the fence before anything: NotLeader, nothing sent, and
    the appliance is not counted as failing."""
    settings = ApplianceSettings(name="bigip-a")
    client = ApplianceClient(
        settings,
        driver,
        prefix=PREFIX,
        breaker=CircuitBreaker(threshold=1, open_s=5.0, max_open_s=5.0),
        metrics=Registry(),
        tracer=trace.get_tracer("test"),
        fence=CountingFence(allowed=0),
    )
    for _ in range(3):
        with pytest.raises(NotLeader):
            await client.apply(CLUSTER, [CreateVirtualServer(server=server())])
    assert emu.write_log.since(0) == []
    assert client.state(0.0) == "closed"


class HeldResolver(AbstractResolver):
    """Resolves every name to 127.0.0.1 once the test lets it: a connection held while it
    opens (the step a SIGSTOP can land in, after the transport's first fence check)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.entered.set()
        await self.release.wait()
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        pass


class HeldTransport(RestTransport):
    """The REST transport, its connections opened through a :class:`HeldResolver`."""

    def __init__(self, emu: F5Emulator, resolver: HeldResolver) -> None:
        port = emu.url.rsplit(":", 1)[1]
        super().__init__("bigip-a", f"http://appliance.test:{port}", timeouts=QUICK)
        self.resolver = resolver

    def _connector(self) -> aiohttp.BaseConnector:
        return aiohttp.TCPConnector(resolver=self.resolver, limit=CONNECTIONS)


@pytest.mark.parametrize(
    ("method", "body"), [("POST", {"name": "vs"}), ("DELETE", None)], ids=["body", "no-body"]
)
async def test_a_lease_running_out_while_the_connection_opens_sends_nothing(
    emu: F5Emulator, method: str, body: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The fence is asked again once the connection is open, before a byte is written: a
    write checked in time but held while its connection opened (a leader paused there) is
    refused unsent; once the lease is valid again, the same transport writes."""
    resolver = HeldResolver()
    transport = HeldTransport(emu, resolver)
    expired = False

    def fence() -> dict[str, str]:
        if expired:
            raise NotLeader("the lease ran out while the connection opened")
        return {"X-Vipwire-Writer": "replica-a", "X-Vipwire-Lease": "5"}

    token = CURRENT_FENCE.set(fence)
    try:
        path = "/mgmt/tm/ltm/virtual/~east~vs"
        held = asyncio.create_task(transport.send(method, path, json=body))
        await resolver.entered.wait()
        expired = True
        resolver.release.set()
        with pytest.raises(NotLeader, match="while the connection opened"):
            await held
        assert emu.write_log.since(0) == [], "the late write reached the appliance"
        assert f"{method} {path} not sent: it passed the write fence" in caplog.text
        expired = False
        await transport.send(method, path, json=body)
        assert [(r.writer, r.method) for r in emu.write_log.since(0)] == [("replica-a", method)]
    finally:
        CURRENT_FENCE.reset(token)
        await transport.close()


async def test_a_lease_running_out_before_the_body_is_written_sends_nothing(
    driver: F5Driver, emu: F5Emulator
) -> None:
    """aiohttp holds a request's headers and writes them with the body from another task,
    a loop turn later: the fence is asked there too, so a lease that runs out after the
    headers were made (asked twice: before the request, at the headers) sends nothing."""
    token = await driver._login()
    fence = CountingFence(allowed=2)
    fenced = CURRENT_FENCE.set(fence)
    try:
        with pytest.raises(NotLeader, match="the lease ran out"):
            await driver._http.send(
                "POST",
                f"/mgmt/tm/ltm/virtual/~{CLUSTER}~vs",
                json={"name": "vs"},
                headers={"X-F5-Auth-Token": token},
            )
    finally:
        CURRENT_FENCE.reset(fenced)
    assert fence.asked == 3
    assert emu.write_log.since(0) == []


async def test_every_write_the_election_fence_refuses_is_counted() -> None:
    """The election's fence counts each refusal by reason: a standby, and a leader whose
    term ran out (a paused leader's late writes show up there)."""
    metrics = Registry()

    async def transition(reason: str) -> None:
        pass

    election = Election(
        None,  # type: ignore[arg-type]  # never started: only the fence is asked
        LbdriverSettings(appliances=(ApplianceSettings(name="bigip-a"),)),
        me="replica-a",
        metrics=metrics,
        on_elected=transition,
        on_deposed=transition,
    )
    fenced = metrics.counter("lbdriver_writes_fenced_total", "", ["reason"])
    with pytest.raises(NotLeader, match="not the lbdriver leader"):
        election.fence()
    now = time.monotonic()
    election._term = Term(revision=7, deadline=now + 60, renew_at=now + 1)
    assert election.fence() == {"X-Vipwire-Writer": "replica-a", "X-Vipwire-Lease": "7"}
    election._term = Term(revision=7, deadline=now - 1, renew_at=now - 2)
    with pytest.raises(NotLeader, match=r"revision 7\) ran out"):
        election.fence()
    assert (fenced.value(reason="standby"), fenced.value(reason="lease-ran-out")) == (1, 1)
