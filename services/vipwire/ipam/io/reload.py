"""Config reload and the stale flags it brings.

Reload (the config file changed, or ``vipwire ipam reload``) swaps the
allocator for one built on the new pools holding every claim as it is: no
live VIP moves; those the new pools would not give are flagged stale in their
Service records, in the metrics and in ``vipwire ipam status``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable

import msgspec

from vipwire.bus import BusError
from vipwire.contracts import ReloadReply, ServiceRef
from vipwire.ipam.core.claims import Owner
from vipwire.ipam.core.records import ref_of_key
from vipwire.ipam.io.bucket import Conflict, StoreError
from vipwire.ipam.io.claim_cache import ClaimCache
from vipwire.ipam.io.handling import Locks
from vipwire.ipam.io.metrics import IpamMetrics
from vipwire.ipam.settings import IpamConfigError, IpamSettings, check_pool_profiles
from vipwire.runtime import ConfigError, read_config, section

log = logging.getLogger("vipwire.ipam")


class Reloader:
    """Keeps the pools in line with the config file, and the records' stale flags
    in line with the pools."""

    def __init__(
        self,
        settings: IpamSettings,
        cache: ClaimCache,
        locks: Locks,
        metrics: IpamMetrics,
        *,
        instance: str,
        config_path: str | None,
        after_reload: Callable[[], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.locks = locks
        self.metrics = metrics
        self.instance = instance
        self.config_path = config_path
        self.reloaded_at: float | None = None
        self._after_reload = after_reload
        self._lock = asyncio.Lock()
        self._stamp_seen = self._stamp()

    def _stamp(self) -> tuple[int, int] | None:
        if self.config_path is None:
            return None
        try:
            stat = os.stat(self.config_path)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    async def watch(self) -> None:
        """Reload when the config file changes (polled: works for ConfigMap volumes,
        whose files are swapped by symlink, as for any editor)."""
        while True:
            await asyncio.sleep(self.settings.reload_interval_s)
            stamp = self._stamp()
            if stamp is None or stamp == self._stamp_seen:
                continue
            self._stamp_seen = stamp
            log.info("config file %s changed: reloading the pools", self.config_path)
            reply = await self.reload()
            if reply.error is not None:
                log.error("reload of %s refused: %s", self.config_path, reply.error)

    async def reload(
        self, settings: IpamSettings | None = None, *, caller: str | None = None
    ) -> ReloadReply:
        """Apply new pools (given, or read from the config file). Never moves a VIP.

        Only the pools change; other ipam settings take effect at the next start.
        ``caller``: the identity that asked (``vipwire ipam reload``), for the log.
        """
        asked = f" (asked by {caller})" if caller is not None else ""
        async with self._lock:
            try:
                if settings is None:
                    settings = self._read_settings()
                known = self.cache.allocator.profiles
                if known is not None:
                    # Profiles themselves are read at start (with the lbdriver's).
                    check_pool_profiles(settings.pools, known)
            except ConfigError as exc:
                log.info("reload of %s%s refused: %s", self.config_path, asked, exc)
                self.metrics.reloads.inc(result="refused")
                return ReloadReply(
                    instance=self.instance, config_path=self.config_path, error=str(exc)
                )
            ignored = tuple(
                name
                for name in self.settings.__struct_fields__
                if name != "pools" and getattr(settings, name) != getattr(self.settings, name)
            )
            cache = self.cache
            cache.allocator = cache.allocator.reconfigured(settings.pools)
            self.settings = msgspec.structs.replace(self.settings, pools=settings.pools)
            self.reloaded_at = time.time()
            self.metrics.changed()
            stale = cache.allocator.usage()
            for usage in stale:
                if not usage.configured:
                    self.metrics.stale.set(usage.stale, pool=usage.pool, family=usage.family)
            stale_total = sum(u.stale for u in stale)
            log.info(
                "pools reloaded%s: %s; %d stale allocation(s) kept",
                asked,
                ", ".join(p.name for p in settings.pools) or "none",
                stale_total,
            )
            if ignored:
                log.warning("changed settings %s take effect on restart only", ", ".join(ignored))
            self.metrics.reloads.inc(result="applied")
            flagged = await self.reflag()
            await self._after_reload()
            return ReloadReply(
                instance=self.instance,
                config_path=self.config_path,
                pools=tuple(p.name for p in settings.pools),
                stale=stale_total,
                flagged=flagged,
                ignored=ignored,
            )

    def _read_settings(self) -> IpamSettings:
        if self.config_path is None:
            raise IpamConfigError("this ipam was started without a config file to reload")
        data = read_config(self.config_path)
        return section(data, "ipam", IpamSettings, source=self.config_path)

    async def reflag_quietly(self) -> None:
        try:
            await self.reflag()
        except (StoreError, BusError) as exc:
            log.warning("could not flag stale allocations at start: %s", exc)

    async def reflag(self) -> int:
        """Bring every record's stale flag in line with the pools; returns how many changed."""
        changed = 0
        for key, (record, _) in (await self.cache.store.records()).items():
            ref = ref_of_key(key)
            if ref is None:
                continue
            stale = self._stale(ref, record.uid)
            if stale == record.stale:
                continue
            async with self.locks.hold(ref):
                if await self._flag(key, record.uid, ref):
                    changed += 1
        return changed

    def _stale(self, ref: ServiceRef, uid: str) -> str | None:
        return "; ".join(self.cache.allocator.stale_reasons(Owner(*ref, uid))) or None

    async def _flag(self, key: str, uid: str, ref: ServiceRef) -> bool:
        store = self.cache.store
        for _ in range(self.settings.conflict_retries):
            current = await store.get_record(key)
            if current is None or current[0].uid != uid:
                return False
            record, revision = current
            stale = self._stale(ref, uid)
            if stale == record.stale:
                return False
            try:
                await store.update_record(
                    key, msgspec.structs.replace(record, stale=stale), revision
                )
            except Conflict:
                self.metrics.conflicts.inc()
                continue
            service = "/".join(ref)
            if stale is None:
                log.info("%s: %s no longer stale", service, ", ".join(record.vips))
            else:
                log.warning(
                    "%s keeps %s although stale: %s (release it with: vipwire ipam release %s)",
                    service,
                    ", ".join(record.vips),
                    stale,
                    service,
                )
            return True
        return False
