"""``vipwire lb check``: read what the preflight decides on, without changing anything.

One reader per driver kind. The vendor readers log in on a session of their
own (and log off at the end), read with GETs only (A10 also switches its
session's active partition, which is no configuration change), and list
virtual servers through the driver itself. The verdicts are
:func:`vipwire.lbdriver.core.preflight.decide`'s.

Endpoints (each also served by the emulators in :mod:`vipwire.applianceemu`):

F5 BIG-IP, iControl REST (F5's reference; f5-ansible's modules read the same):
``POST /mgmt/shared/authn/login``; ``GET /mgmt/tm/sys/version``
(bigip_device_info.py); ``GET /mgmt/tm/auth/user/<name>`` with its
``partitionAccess`` (bigip_user.py); ``GET /mgmt/tm/auth/partition/<name>``;
``GET /mgmt/tm/net/route-domain`` (bigip_routing_domain.py); the built-in
parents ``/Common/fastL4`` and the http, https and tcp monitors.

A10 ACOS, aXAPI v3: ``POST /axapi/v3/auth``; ``GET /axapi/v3/version/oper``
(``version.oper.sw-version``, a10sdk version_oper.py); ``GET /axapi/v3/admin/<user>``
(``privilege-global``, ``privilege-list``: a10-acos-axapi's a10_admin);
``GET /axapi/v3/partition/<name>`` (as A10's Ansible collection checks a partition);
``POST /axapi/v3/active-partition/<name>`` then ``GET /axapi/v3/network/vlan``
(acos-client's v30/vlan.py) and ``GET /axapi/v3/slb/template/tcp``;
``POST /axapi/v3/logoff``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec

from vipwire.lbdriver.core.preflight import Reading
from vipwire.lbdriver.io.drivers import ApplianceError, build_driver
from vipwire.lbdriver.io.drivers._rest import HttpResponse, RestTransport, partition_for
from vipwire.lbdriver.io.drivers.credentials import CredentialSource
from vipwire.lbdriver.settings import ApplianceSettings

#: The fastL4 profile the F5 driver makes in each partition (f5.FASTL4_PROFILE).
_F5_PROFILE = "vipwire-fastl4-dsr"


def partitions_to_check(settings: ApplianceSettings, clusters: list[str]) -> list[str | None]:
    """The partitions of the clusters given, else those mapped in ``partitions``; [None]
    when neither names one (the check then says to give ``--cluster``)."""
    if clusters:
        return [
            partition_for(c, settings.partition_template, settings.partitions) for c in clusters
        ]
    return list(dict.fromkeys(settings.partitions.values())) or [None]


async def read(
    settings: ApplianceSettings,
    partitions: list[str | None],
    *,
    prefix: str,
    timeout_s: float | None = None,
) -> list[Reading]:
    """One reading per partition of one appliance; ``timeout_s`` overrides the
    appliance's login and read timeouts."""
    if settings.driver == "f5":
        return await _Vendor(settings, prefix, timeout_s).f5(partitions)
    if settings.driver == "a10":
        return await _Vendor(settings, prefix, timeout_s).a10(partitions)
    return [await _local(settings, p, prefix) for p in partitions]


async def _local(settings: ApplianceSettings, partition: str | None, prefix: str) -> Reading:
    """sim and linux: no login or release; listing the partition proves the rights."""
    base = Reading(
        appliance=settings.name, driver=settings.driver, partition=partition, prefix=prefix
    )
    driver = build_driver(settings)
    try:
        listing = await driver.list_virtual_servers(partition or "default")
    except ApplianceError as exc:
        return _replace(base, rights={}, rights_error=exc.message)
    finally:
        await driver.close()
    return _replace(
        base, rights={"tables": "ok"}, virtual_servers={n: s.owner for n, s in listing.items()}
    )


def _replace(r: Reading, **changes: Any) -> Reading:
    return msgspec.structs.replace(r, **changes)


def _text(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("message", "response", "authorizationschema"):
            if key in body:
                inner = body[key]
                if isinstance(inner, dict):
                    nested = inner.get("err")
                    err: dict[str, Any] = nested if isinstance(nested, dict) else inner
                    return str(err.get("msg") or err.get("error") or err)
                return str(inner)
    return str(body)[:200]


class _Vendor:
    def __init__(self, settings: ApplianceSettings, prefix: str, timeout_s: float | None) -> None:
        assert settings.address is not None and settings.username is not None
        self.settings = settings
        self.prefix = prefix
        timeouts = settings.timeouts
        if timeout_s is not None:
            timeouts = msgspec.structs.replace(timeouts, login_s=timeout_s, read_s=timeout_s)
        self.http = RestTransport(
            settings.name,
            settings.address,
            verify_tls=settings.verify_tls,
            ca_file=settings.ca_file,
            timeouts=timeouts,
        )
        self.credentials = CredentialSource(
            settings.name,
            settings.username,
            password_file=settings.password_file,
            password_env=settings.password_env,
        )
        self.headers: dict[str, str] = {}
        #: F5: the route domain ids on the box (None: not read).
        self.route_domains: set[Any] | None = None

    def _base(self, partition: str | None) -> Reading:
        return Reading(
            appliance=self.settings.name,
            driver=self.settings.driver,
            partition=partition,
            prefix=self.prefix,
            sync_group=self.settings.sync_group,
            partition_mode=self.settings.partition_mode,
        )

    async def _get(self, path: str) -> HttpResponse:
        return await self.http.send("GET", path, headers=self.headers)

    async def _listing(self, partition: str) -> dict[str, str] | None:
        driver = build_driver(self.settings)
        try:
            listing = await driver.list_virtual_servers(partition)
        except ApplianceError:
            return None
        finally:
            await driver.close()
        return {n: s.owner for n, s in listing.items()}

    # --- F5 ------------------------------------------------------------------------

    async def f5(self, partitions: list[str | None]) -> list[Reading]:
        try:
            creds = self.credentials.load()
            resp = await self.http.send(
                "POST",
                "/mgmt/shared/authn/login",
                json={
                    "username": creds.username,
                    "password": creds.password,
                    "loginProviderName": "tmos",
                },
            )
        except ApplianceError as exc:
            await self.http.close()
            return [_replace(self._base(p), login_error=exc.message) for p in partitions]
        if resp.status != 200 or not isinstance(resp.body, dict):
            await self.http.close()
            error = f"login as {self.settings.username!r}: HTTP {resp.status}: {_text(resp.body)}"
            return [_replace(self._base(p), login_error=error) for p in partitions]
        token = str(resp.body.get("token", {}).get("token", ""))
        self.headers = {"X-F5-Auth-Token": token}
        try:
            common = await self._f5_common()
            return [await self._f5_partition(common, p) for p in partitions]
        finally:
            with contextlib.suppress(ApplianceError):
                await self.http.send(
                    "DELETE", f"/mgmt/shared/authz/tokens/{token}", headers=self.headers
                )
            await self.http.close()

    async def _f5_common(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        resp = await self._get("/mgmt/tm/sys/version")
        if resp.status == 200 and isinstance(resp.body, dict):
            for entry in resp.body.get("entries", {}).values():
                stats = entry.get("nestedStats", {}).get("entries", {})
                found["version"] = stats.get("Version", {}).get("description")
        resp = await self._get(f"/mgmt/tm/auth/user/{self.settings.username}")
        if resp.status == 200 and isinstance(resp.body, dict):
            found["rights"] = {
                str(a.get("name")): str(a.get("role"))
                for a in resp.body.get("partitionAccess", [])
                if isinstance(a, dict)
            }
        else:
            found["rights_error"] = f"GET auth user: HTTP {resp.status}: {_text(resp.body)}"
        resp = await self._get("/mgmt/tm/net/route-domain")
        if resp.status == 200 and isinstance(resp.body, dict):
            self.route_domains = {
                i.get("id") for i in resp.body.get("items", []) if isinstance(i, dict)
            }
        missing = []
        for parent in (
            "/mgmt/tm/ltm/profile/fastl4/~Common~fastL4",
            "/mgmt/tm/ltm/monitor/tcp/~Common~tcp",
            "/mgmt/tm/ltm/monitor/http/~Common~http",
            "/mgmt/tm/ltm/monitor/https/~Common~https",
        ):
            if (await self._get(parent)).status == 404:
                missing.append(parent.rsplit("/", 1)[-1].replace("~", "/"))
        found["missing_parents"] = tuple(missing)
        return found

    async def _f5_partition(self, common: dict[str, Any], partition: str | None) -> Reading:
        reading = _replace(self._base(partition), **common)
        if partition is None:
            return reading
        resp = await self._get(f"/mgmt/tm/auth/partition/{partition}")
        exists = resp.status == 200
        # route_domain, else the partition's default one (/Common/0 for a partition
        # vipwire will create).
        route_domain = self.settings.route_domain
        if route_domain is None and exists and isinstance(resp.body, dict):
            route_domain = int(resp.body.get("defaultRouteDomain") or 0)
        if self.route_domains is not None:
            reading = _replace(
                reading,
                route_domain=route_domain or 0,
                route_domain_exists=(route_domain or 0) in self.route_domains,
            )
        own: tuple[str, ...] = ()
        listing = None
        if exists:
            profile = await self._get(f"/mgmt/tm/ltm/profile/fastl4/~{partition}~{_F5_PROFILE}")
            own = (_F5_PROFILE,) if profile.status == 200 else ()
            listing = await self._listing(partition)
        return _replace(reading, partition_exists=exists, own_profiles=own, virtual_servers=listing)

    # --- A10 -----------------------------------------------------------------------

    async def a10(self, partitions: list[str | None]) -> list[Reading]:
        try:
            creds = self.credentials.load()
            resp = await self.http.send(
                "POST",
                "/axapi/v3/auth",
                json={"credentials": {"username": creds.username, "password": creds.password}},
            )
        except ApplianceError as exc:
            await self.http.close()
            return [_replace(self._base(p), login_error=exc.message) for p in partitions]
        signature = (
            resp.body.get("authresponse", {}).get("signature")
            if isinstance(resp.body, dict)
            else None
        )
        if resp.status != 200 or not signature:
            await self.http.close()
            error = f"login as {self.settings.username!r}: HTTP {resp.status}: {_text(resp.body)}"
            return [_replace(self._base(p), login_error=error) for p in partitions]
        self.headers = {"Authorization": f"A10 {signature}"}
        try:
            common = await self._a10_common()
            return [await self._a10_partition(common, p) for p in partitions]
        finally:
            with contextlib.suppress(ApplianceError):
                await self.http.send("POST", "/axapi/v3/logoff", headers=self.headers)
            await self.http.close()

    async def _a10_common(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        resp = await self._get("/axapi/v3/version/oper")
        if resp.status == 200 and isinstance(resp.body, dict):
            found["version"] = resp.body.get("version", {}).get("oper", {}).get("sw-version")
        resp = await self._get(f"/axapi/v3/admin/{self.settings.username}")
        admin = resp.body.get("admin") if isinstance(resp.body, dict) else None
        if resp.status == 200 and isinstance(admin, dict):
            rights = {"global": str(admin.get("privilege-global", "read"))}
            for p in admin.get("privilege-list", []):
                if isinstance(p, dict):
                    rights[str(p.get("partition-name"))] = str(p.get("privilege-partition"))
            found["rights"] = rights
        else:
            found["rights_error"] = f"GET admin: HTTP {resp.status}: {_text(resp.body)}"
        return found

    async def _a10_partition(self, common: dict[str, Any], partition: str | None) -> Reading:
        reading = _replace(self._base(partition), **common)
        if reading.partition_mode == "shared":
            partition = "shared"
            reading = _replace(reading, partition=partition)
        if partition is None:
            return reading
        if partition == "shared":
            exists = True
        else:
            await self.http.send("POST", "/axapi/v3/active-partition/shared", headers=self.headers)
            exists = (await self._get(f"/axapi/v3/partition/{partition}")).status == 200
        if not exists:
            return _replace(reading, partition_exists=False)
        await self.http.send(
            "POST", f"/axapi/v3/active-partition/{partition}", headers=self.headers
        )
        resp = await self._get("/axapi/v3/network/vlan")
        # ACOS answers an empty collection with 404 (not found), like a missing object.
        vlans = resp.body.get("vlan-list", []) if isinstance(resp.body, dict) else []
        vlan_count = len(vlans) if resp.status in (200, 404) else None
        resp = await self._get("/axapi/v3/slb/template/tcp")
        templates = resp.body.get("tcp-list", []) if isinstance(resp.body, dict) else []
        own = tuple(
            str(t.get("name"))
            for t in templates
            if isinstance(t, dict) and str(t.get("name", "")).startswith(f"{self.prefix}-")
        )
        return _replace(
            reading,
            partition_exists=True,
            vlans=vlan_count,
            own_profiles=own,
            virtual_servers=await self._listing(partition),
        )
