"""Leader election over a JetStream KV lease, and the write fence it keeps.

Every replica runs :meth:`Election.run`: it reads the lease key, lets
``core.lease`` decide, and does the compare-and-set it was told to (create,
or update against the revision read). A watch on the key wakes it on every
change, so a lease deleted by a leader stopping gracefully is taken at once.

:meth:`Election.fence` is what every appliance write asks first (see
``io.fencing``): it refuses unless this replica's term has not run out by its
own monotonic clock, and returns the writer and lease headers otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import msgspec

from vipwire.aio import cancel_and_wait
from vipwire.bus import Bus, BusConflict, BusError, KvBucket
from vipwire.contracts import LBDRIVER_LEASE_BUCKET, LbdriverLease
from vipwire.lbdriver.core.lease import (
    Decision,
    LeaseTimes,
    Seen,
    Term,
    Watched,
    decide,
    may_write,
    read_timeout_s,
    term_after_write,
)
from vipwire.lbdriver.io.fencing import LEASE_HEADER, WRITER_HEADER, NotLeader
from vipwire.lbdriver.settings import LbdriverSettings
from vipwire.metrics import Registry

log = logging.getLogger("vipwire.lbdriver.election")

#: Seconds between tries while the bus cannot be read (a term still ends at its deadline).
_RETRY_S: Final = 0.5
#: A lease value that cannot be decoded is held by this: waited out like any other.
UNREADABLE: Final = "<unreadable lease>"

Transition = Callable[[str], Awaitable[None]]


def lease_times(settings: LbdriverSettings) -> LeaseTimes:
    return LeaseTimes(
        ttl_s=settings.lease_ttl_s,
        renew_s=settings.lease_renew_s,
        safety_margin_s=settings.lease_safety_margin_s,
        clock_skew_s=settings.lease_clock_skew_s,
    )


class Election:
    """One replica's part in the election. ``on_elected`` runs when it takes the lease,
    ``on_deposed`` when its term ends (both with the reason); they are awaited, so the
    writers are stopped before anything else happens."""

    def __init__(
        self,
        bus: Bus,
        settings: LbdriverSettings,
        *,
        me: str,
        metrics: Registry,
        on_elected: Transition,
        on_deposed: Transition,
    ) -> None:
        self._bus = bus
        self.me = me
        self.key = f"{settings.lease_name}.leader"
        self.times = lease_times(settings)
        self._read_timeout_s = read_timeout_s(self.times)
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._kv: KvBucket | None = None
        self._term: Term | None = None
        self._watched: Watched | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        #: Who holds the lease, as last read ("": nobody).
        self.holder = ""
        self._read_failing = False
        self._failing_since = 0.0
        self._announced: str | None = None  # the holder last logged as such while standing by
        #: Set once the first decision is made (leader or standby): a fence for tests.
        self.decided = asyncio.Event()
        #: Wall-clock time this replica took the lease (0: not leading).
        self.elected_at = 0.0
        metrics.gauge(
            "lbdriver_leader",
            "1 while this replica holds the lease and may write to appliances, else 0",
            fn=lambda: 1.0 if self.leader else 0.0,
        )
        # When, not just whether: a failover measured from outside (chaos, an incident
        # review) reads the moment the lease was taken, not when someone next scraped.
        metrics.gauge(
            "lbdriver_leader_since_seconds",
            "Unix time at which this replica took the lease it holds (0 while standing by)",
            fn=lambda: self.elected_at if self.leader else 0.0,
        )
        self._m_changes = metrics.counter(
            "lbdriver_leadership_changes_total",
            "Times this replica took the lease (elected) or lost it (deposed)",
            ["change"],
        )
        self._m_fenced = metrics.counter(
            "lbdriver_writes_fenced_total",
            "Appliance write requests this replica's fence refused unsent: not the leader "
            "(standby) or its term ran out before a renewal (lease-ran-out)",
            ["reason"],
        )

    @property
    def leader(self) -> bool:
        """Holding the lease, and inside the term: a write may start now."""
        return may_write(self._term, time.monotonic())

    def fence(self) -> Mapping[str, str]:
        """The headers of a write allowed now; NotLeader if none may start."""
        term = self._term
        now = time.monotonic()
        if term is None:
            self._m_fenced.inc(reason="standby")
            raise NotLeader(
                f"not the lbdriver leader (the lease {self.key} is held by "
                f"{self.holder or 'nobody'})"
            )
        if not may_write(term, now):
            self._wake.set()  # let the loop step down and read the lease again
            self._m_fenced.inc(reason="lease-ran-out")
            raise NotLeader(
                f"the lbdriver lease {self.key} (revision {term.revision}) ran out "
                f"{now - term.deadline:.2f}s ago without a renewal"
            )
        return {WRITER_HEADER: self.me, LEASE_HEADER: str(term.revision)}

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        self._kv = await self._bus.kv(LBDRIVER_LEASE_BUCKET)
        self._tasks = [
            asyncio.create_task(self._run(), name="lbdriver-election"),
            asyncio.create_task(self._watch(), name="lbdriver-election-watch"),
        ]

    async def stop(self) -> None:
        """Stop writing, then hand the lease back (deleted: a standby takes it at once)."""
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        term = self._term
        if term is None:
            return
        await self._step_down("stopping")
        if self._kv is not None:
            try:
                await self._kv.delete(self.key, last=term.revision)
                log.info("lbdriver lease %s released (revision %d)", self.key, term.revision)
            except BusError as exc:
                log.warning(
                    "could not release the lbdriver lease %s (a standby takes it over after "
                    "%gs): %s",
                    self.key,
                    self.times.ttl_s,
                    exc,
                )

    # --- the loop ----------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            seen, ok = await self._read()
            now = time.monotonic()
            if not ok:
                if self._term is not None and not may_write(self._term, now):
                    await self._step_down("the lease could not be renewed before it ran out")
                await self._sleep(now + _RETRY_S)
                continue
            decision = decide(
                now=now,
                wall_ns=time.time_ns(),
                seen=seen,
                me=self.me,
                term=self._term,
                watched=self._watched,
                times=self.times,
            )
            self._watched = decision.watched
            if decision.action != "acquire":
                self.decided.set()
            match decision.action:
                case "step_down":
                    await self._step_down(decision.reason)
                    continue  # read again at once: someone may hold it, or nobody
                case "acquire" | "renew":
                    if not await self._write(decision):
                        continue
                case _:
                    pass
            await self._sleep(decision.wake_at)

    async def _read(self) -> tuple[Seen | None, bool]:
        assert self._kv is not None
        try:
            async with asyncio.timeout(self._read_timeout_s):
                entry = await self._kv.get(self.key)
        except (BusError, TimeoutError) as exc:
            if not self._read_failing:
                why = (
                    exc if isinstance(exc, BusError) else f"no answer in {self._read_timeout_s:g}s"
                )
                log.warning(
                    "cannot read the lbdriver lease %s: %s; asking again %gs after each "
                    "failure (is a NATS server down, or the stream KV_%s between leaders?)",
                    self.key,
                    why,
                    _RETRY_S,
                    LBDRIVER_LEASE_BUCKET,
                )
                self._failing_since = time.monotonic()
            self._read_failing = True
            return None, False
        if self._read_failing:
            log.info(
                "the lbdriver lease %s can be read again (after %.1fs)",
                self.key,
                time.monotonic() - self._failing_since,
            )
            self._read_failing = False
        if entry is None or entry.value is None:
            self._note_holder("")
            return None, True
        written_ns = entry.created_ns  # the server's clock, where the read tells it
        ttl_s = 0.0
        try:
            lease = msgspec.json.decode(entry.value, type=LbdriverLease)
        except msgspec.DecodeError:
            holder = UNREADABLE
        else:
            holder, ttl_s = lease.holder, lease.ttl_s
            written_ns = written_ns or int(lease.renewed_at * 1e9)
        self._note_holder(holder)
        return Seen(holder, entry.revision, written_ns, ttl_s), True

    async def _write(self, decision: Decision) -> bool:
        """Create or update the lease as decided; False: not written (read it again now)."""
        assert self._kv is not None
        value = msgspec.json.encode(
            LbdriverLease(holder=self.me, renewed_at=time.time(), ttl_s=self.times.ttl_s)
        )
        sent_at = time.monotonic()
        try:
            if decision.last is None:
                revision = await self._kv.create(self.key, value)
            else:
                revision = await self._kv.update(self.key, value, last=decision.last)
        except BusConflict:
            if self._term is not None:
                await self._step_down("another replica took the lease")
            return False
        except BusError as exc:
            # Unknown whether it was written: read it again shortly (a term, if any,
            # still ends at its deadline, renewed or not).
            log.warning("writing the lbdriver lease %s failed: %s", self.key, exc)
            await self._sleep(time.monotonic() + _RETRY_S)
            return False
        elected = self._term is None
        self._term = term_after_write(revision, sent_at, self.times)
        self._note_holder(self.me)
        if elected:
            self.elected_at = time.time()
            self._m_changes.inc(change="elected")
            log.info(
                "lbdriver %s is now the leader (lease %s revision %d): %s",
                self.me,
                self.key,
                revision,
                decision.reason,
            )
            await self._on_elected(decision.reason)
        self.decided.set()
        return True

    async def _step_down(self, reason: str) -> None:
        if self._term is None:
            return
        self._term = None
        self.elected_at = 0.0
        self._m_changes.inc(change="deposed")
        level = logging.INFO if reason == "stopping" else logging.WARNING
        log.log(level, "lbdriver %s is no longer the leader: %s", self.me, reason)
        await self._on_deposed(reason)

    def _note_holder(self, holder: str) -> None:
        if self._term is not None or holder == self.me:
            self._announced = None
        elif holder and holder != self._announced:
            self._announced = holder
            log.info(
                "lbdriver %s is standing by: the lease %s is held by %s", self.me, self.key, holder
            )
        self.holder = holder

    async def _sleep(self, until: float) -> None:
        timeout = max(0.0, until - time.monotonic())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    async def _watch(self) -> None:
        """Wake the loop on every change of the key (a renewal, a takeover, a release)."""
        assert self._kv is not None
        while True:
            try:
                watch = await self._kv.watch(self.key.rsplit(".", 1)[0] + ".")
                try:
                    while True:
                        await watch.next()
                        self._wake.set()
                finally:
                    await watch.stop()
            except BusError as exc:
                log.debug("the watch of the lbdriver lease %s failed: %r", self.key, exc)
            except StopAsyncIteration:
                pass
            await asyncio.sleep(1.0)
