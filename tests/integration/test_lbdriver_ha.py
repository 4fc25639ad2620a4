"""Two `vipwire run lbdriver` processes on one F5 emulator: one writer, takeover, the fence.

Each process logs its identity when it takes the lease or stands by; that identity
is the ``X-Vipwire-Writer`` header of its writes, which the emulator's write log
records. The Services are made as the lbdriver sees them: bus messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from vipwire.applianceemu import F5Emulator, WriteRecord, overlapping_writes
from vipwire.contracts import NodeSnapshot, ServicePort, VipAssigned
from vipwire.natsserver import NatsServer
from vipwire.runtime import Runtime
from vipwire.testing import eventually

# Guards against a hang only; every step waits on its own fence (a log line, a write).
READ_LIMIT_S = 30.0
#: The acceptance bound: after a kill -9 of the leader, the standby writes within this.
TAKEOVER_WITHIN_S = 5.0
CLUSTER = "prod"
RuntimeFactory = Callable[[str], Awaitable[Runtime]]
PASSWORD = "ha-s3cret"

_LEADER = re.compile(r"lbdriver (\S+) is now the leader")
_STANDBY = re.compile(r"lbdriver (\S+) is standing by")
_DEPOSED = re.compile(r"lbdriver (\S+) is no longer the leader")
_HEALTH = re.compile(r"health on [^\s:]+:(\d+); connecting to NATS")


class Replica:
    """One lbdriver process (its own process group) and every line it logged."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            self.lines.append(raw.decode())
            self._changed.set()

    async def wait_for(self, pattern: re.Pattern[str], after: int = 0) -> re.Match[str]:
        """The first line from index ``after`` on that matches ``pattern``."""
        try:
            async with asyncio.timeout(READ_LIMIT_S):
                while True:
                    self._changed.clear()
                    for line in self.lines[after:]:
                        if match := pattern.search(line):
                            return match
                    if self._reader.done():
                        pytest.fail(f"ended before {pattern.pattern!r}:\n" + self.tail())
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"no {pattern.pattern!r} in {READ_LIMIT_S:g} s:\n" + self.tail())

    def tail(self) -> str:
        return "".join(self.lines[-30:])

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
        await self.proc.wait()
        await self._reader


class Pair:
    """The emulator, a config, a publisher, and the lbdriver processes started."""

    def __init__(self, emu: F5Emulator, config: Path, publisher: Runtime) -> None:
        self.emu = emu
        self.config = config
        self.publisher = publisher
        self.replicas: list[Replica] = []

    async def spawn(self) -> Replica:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vipwire.cli", "run", "lbdriver", "--config", str(self.config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        replica = Replica(proc)
        self.replicas.append(replica)
        return replica

    async def leader_and_standby(self) -> tuple[Replica, str, Replica, str]:
        """Start one replica, wait for it to lead, then another, wait for it to stand by."""
        first = await self.spawn()
        leader = (await first.wait_for(_LEADER)).group(1)
        second = await self.spawn()
        standby = (await second.wait_for(_STANDBY)).group(1)
        return first, leader, second, standby

    async def create(self, name: str, vip: str) -> None:
        """What a Service is to the lbdriver: its nodes and its VIP assignment."""
        bus = self.publisher.bus
        await bus.publish(NodeSnapshot(cluster=CLUSTER, node="n1", addresses=("198.51.100.1",)))
        await bus.publish(
            VipAssigned(
                cluster=CLUSTER,
                namespace="shop",
                name=name,
                uid=f"uid-{name}",
                vips=(vip,),
                pool="default",
                appliance_group="default",
                ports=(ServicePort(port=80),),
            )
        )

    def programmed(self, name: str) -> Callable[[], bool]:
        return lambda: any(name in v for v in self.emu.names("virtual", CLUSTER))

    def set_ttl(self, ttl_s: float) -> None:
        """The lease ttl of the replicas spawned from now on."""
        text = self.config.read_text()
        self.config.write_text(re.sub(r"lease_ttl_s: \S+", f"lease_ttl_s: {ttl_s}", text))

    def writes(self, writer: str | None = None) -> list[WriteRecord]:
        records = self.emu.write_log.since(0)
        return [r for r in records if writer is None or r.writer == writer]


@pytest.fixture
async def pair(
    nats_server: NatsServer, tmp_path: Path, make_runtime: RuntimeFactory
) -> AsyncIterator[Pair]:
    emu = F5Emulator(username="admin", password=PASSWORD)
    await emu.start()
    secret = tmp_path / "f5-password"
    secret.write_text(PASSWORD)
    config = tmp_path / "vipwire.yaml"
    config.write_text(
        f"bus:\n  servers: [{nats_server.url!r}]\n  storage: memory\n"
        "http:\n  port: 0\n"
        "lbdriver:\n"
        "  coalesce_window_ms: 1\n"
        "  retry_initial_s: 0.05\n"
        "  retry_max_s: 0.5\n"
        "  lease_ttl_s: 3\n"
        "  lease_renew_s: 1\n"
        "  appliances:\n"
        f"    - {{name: bigip, driver: f5, address: {emu.url!r}, username: admin,"
        f" password_file: {str(secret)!r}}}\n"
    )
    publisher = await make_runtime("test")
    made = Pair(emu, config, publisher)
    try:
        yield made
    finally:
        for replica in made.replicas:
            await replica.close()
        await emu.stop()


async def get(replica: Replica, path: str) -> str:
    port = int((await replica.wait_for(_HEALTH)).group(1))
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        return f"{resp.status} {(await resp.text()).strip()}"


async def readyz(replica: Replica) -> str:
    return await get(replica, "/readyz")


async def leader_gauge(replica: Replica) -> str:
    found = re.search(r"^vipwire_lbdriver_leader (\S+)$", await get(replica, "/metrics"), re.M)
    assert found, "no vipwire_lbdriver_leader gauge"
    return found.group(1)


async def test_only_the_leader_writes_and_the_standby_is_ready(pair: Pair) -> None:
    """Two replicas: every appliance write carries the leader's name and lease; the standby,
    ready and saying so, writes nothing."""
    first, leader, second, standby = await pair.leader_and_standby()
    for i in range(3):
        await pair.create(f"web{i}", f"192.0.2.{10 + i}")
    for i in range(3):
        await eventually(pair.programmed(f"web{i}"), READ_LIMIT_S, what=f"web{i} on the F5")
    assert await readyz(second) == "200 ready (standby)"
    assert await readyz(first) == "200 ready (leader)"
    assert (await leader_gauge(first), await leader_gauge(second)) == ("1", "0")
    writes = pair.writes()
    assert writes, "the leader wrote"
    assert {r.writer for r in writes} == {leader}, writes
    assert {r.lease for r in writes} != {None}
    assert not overlapping_writes(writes)
    assert standby != leader


async def test_the_standby_writes_within_5s_of_a_kill_of_the_leader(pair: Pair) -> None:
    """kill -9 of the leader: a Service created right after is written by the standby
    within 5 s, under a new lease revision."""
    first, leader, second, standby = await pair.leader_and_standby()
    await pair.create("web", "192.0.2.10")
    await eventually(pair.programmed("web"), READ_LIMIT_S, what="web on the F5")
    old_lease = pair.writes(leader)[-1].lease
    killed_ns = time.time_ns()
    first.signal(signal.SIGKILL)
    await pair.create("api", "192.0.2.11")
    await eventually(pair.programmed("api"), READ_LIMIT_S, what="api on the F5")
    taken = pair.writes(standby)
    assert taken, "the standby wrote"
    took_s = (taken[0].started_ns - killed_ns) / 1e9
    assert took_s < TAKEOVER_WITHIN_S, f"the standby first wrote {took_s:.1f}s after the kill"
    assert taken[0].lease is not None and old_lease is not None and taken[0].lease > old_lease
    await second.wait_for(_LEADER)
    assert not overlapping_writes(pair.writes())


async def test_a_leader_paused_past_its_lease_writes_nothing_after_it_resumes(
    pair: Pair,
) -> None:
    """SIGSTOP the leader past its lease, let the standby take over and program a new
    Service, SIGCONT: the old leader steps down and writes nothing (it was told of the new
    Service too)."""
    first, leader, second, _ = await pair.leader_and_standby()
    await pair.create("web", "192.0.2.10")
    await eventually(pair.programmed("web"), READ_LIMIT_S, what="web on the F5")
    first.signal(signal.SIGSTOP)
    await second.wait_for(_LEADER)
    await pair.create("api", "192.0.2.11")
    await eventually(pair.programmed("api"), READ_LIMIT_S, what="api on the F5 (new leader)")
    # The old leader has api to write too, as far as it knows (it consumes the same).
    resumed_ns = time.time_ns()
    seen = len(first.lines)
    first.signal(signal.SIGCONT)
    await first.wait_for(_DEPOSED, after=seen)
    await first.wait_for(_STANDBY, after=seen)
    await pair.create("db", "192.0.2.12")
    await eventually(pair.programmed("db"), READ_LIMIT_S, what="db on the F5 (new leader)")
    late = [r for r in pair.writes(leader) if r.started_ns >= resumed_ns]
    assert late == [], late
    assert not overlapping_writes(pair.writes())


async def test_a_graceful_stop_hands_the_lease_over_at_once(pair: Pair) -> None:
    """SIGTERM of the leader: it exits 0 and releases the lease; the standby leads and
    writes long before the 10 s lease would have run out."""
    pair.set_ttl(10)
    first, _, second, standby = await pair.leader_and_standby()
    stopped = time.monotonic()
    first.signal(signal.SIGTERM)
    await second.wait_for(_LEADER)
    took_s = time.monotonic() - stopped
    assert await asyncio.wait_for(first.proc.wait(), READ_LIMIT_S) == 0
    assert any("lease lbdriver.leader released" in line for line in first.lines), first.tail()
    assert took_s < 3.0, f"took over {took_s:.1f}s after SIGTERM (lease ttl 10 s)"
    await pair.create("web", "192.0.2.10")
    await eventually(pair.programmed("web"), READ_LIMIT_S, what="web on the F5")
    assert {r.writer for r in pair.writes()} == {standby}
