"""``vipwire lb check``: the verdicts of the preflight, from what was read off an appliance.

Reading is :mod:`vipwire.lbdriver.io.preflight`'s job; this module only decides.
Each check is passed, warned or failed, and says what to do when it is not
passed. A check that does not apply to a driver (a version on the simulator) is
left out rather than passed.
"""

from __future__ import annotations

import re
from typing import Final, Literal, Protocol

import msgspec

Verdict = Literal["passed", "warned", "failed"]
#: Partition handling of the A10 driver (see issue 18; ``existing`` is the default).
PartitionMode = Literal["existing", "create", "shared"]

#: Releases below which vipwire cannot work, and the features that need newer ones.
#: A10: ``user-tag`` (the owner mark on every object) needs ACOS 4.1, and the A10
#: driver refuses older releases at login (issue 18, item 6).
#: F5: token authentication and transactions as the driver uses them need 12.1;
#: traffic-matching-criteria and address lists (source ranges) need 14.1.
MINIMUM: Final[dict[str, tuple[int, ...]]] = {"a10": (4, 1), "f5": (12, 1)}
FEATURES: Final[dict[str, tuple[tuple[tuple[int, ...], str], ...]]] = {
    "a10": (),
    "f5": (((14, 1), "source ranges (traffic-matching-criteria and address lists)"),),
}
#: F5 roles that may create what vipwire creates (virtuals, pools, nodes, monitors,
#: profiles) in a partition; ``admin`` and ``resource-admin`` may also create partitions.
F5_WRITERS: Final = frozenset({"admin", "resource-admin", "manager"})
F5_CREATORS: Final = frozenset({"admin", "resource-admin"})
_OWNER: Final = re.compile(r"^[^/\s]+/[^/\s]+/[^/\s]+$")


class Check(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the preflight's table."""

    appliance: str
    #: login, version, rights, partition, interface, route-domain, profiles, objects.
    check: str
    verdict: Verdict
    #: What was found.
    detail: str
    #: What to do about it ("" when passed).
    action: str = ""


class Reading(msgspec.Struct, frozen=True, kw_only=True):
    """What the reader found on one appliance for one partition. ``None``: not read
    (not applicable to the driver, or an earlier step failed)."""

    appliance: str
    driver: str
    #: Why logging in (or, without a login, reaching the appliance) failed; None: it worked.
    login_error: str | None = None
    #: The release as the appliance reports it (``4.1.4-GR1-P5 build 81``, ``17.1.0``).
    version: str | None = None
    #: F5: the user's partition access, partition (or ``all-partitions``) → role.
    #: A10: ``{"global": "write"|"read", "<partition>": "partition-write"|...}``.
    #: Linux: ``{"nft": "ok"}`` or the error text.
    rights: dict[str, str] | None = None
    rights_error: str | None = None
    partition: str | None = None
    partition_exists: bool | None = None
    partition_mode: PartitionMode = "existing"
    #: A10: VLANs in the partition (its data-plane interfaces).
    vlans: int | None = None
    #: F5: the route domain vipwire's objects use, and whether it exists.
    route_domain: int | None = None
    route_domain_exists: bool | None = None
    #: Built-in profiles or monitors vipwire's objects derive from, missing on the box.
    missing_parents: tuple[str, ...] = ()
    #: Profiles or templates vipwire makes itself, present in the partition already.
    own_profiles: tuple[str, ...] = ()
    #: Virtual servers of the partition: name → owner mark ("" when none).
    virtual_servers: dict[str, str] | None = None
    prefix: str = "vipwire"
    #: F5: a device group to config-sync to.
    sync_group: str | None = None


def parse_version(text: str) -> tuple[int, ...] | None:
    """``4.1.4-GR1-P5 build 81`` → (4, 1, 4); ``BIG-IP 17.1.0.3`` → (17, 1, 0, 3)."""
    match = re.search(r"(\d+(?:\.\d+)+)", text)
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


def _dotted(v: tuple[int, ...]) -> str:
    return ".".join(str(p) for p in v)


def decide(r: Reading) -> list[Check]:
    """Every check that applies to the reading, in the order an operator fixes them."""
    checks: list[Check] = []

    def add(check: str, verdict: Verdict, detail: str, action: str = "") -> None:
        checks.append(
            Check(appliance=r.appliance, check=check, verdict=verdict, detail=detail, action=action)
        )

    if r.login_error is not None:
        add(
            "login",
            "failed",
            r.login_error,
            "check address, username and the password file or variable (the appliance's "
            "own log names the reason)",
        )
        return checks
    add("login", "passed", "logged in" if r.driver in ("f5", "a10") else f"{r.driver}: reachable")
    if r.driver in MINIMUM:
        _version(r, add)
    _rights(r, add)
    _partition(r, add)
    if r.driver == "a10":
        _interface(r, add)
    if r.driver == "f5":
        _route_domain(r, add)
    _profiles(r, add)
    _objects(r, add)
    return checks


class _Add(Protocol):
    def __call__(self, check: str, verdict: Verdict, detail: str, action: str = "") -> None: ...


def _version(r: Reading, add: _Add) -> None:
    if r.version is None:
        add("version", "warned", "the release could not be read", "check the user may read it")
        return
    parsed = parse_version(r.version)
    if parsed is None:
        add("version", "warned", f"unrecognised release {r.version!r}", "")
        return
    minimum = MINIMUM[r.driver]
    if parsed < minimum:
        add(
            "version",
            "failed",
            f"release {r.version} is older than {_dotted(minimum)}, the oldest vipwire drives",
            f"upgrade to {_dotted(minimum)} or newer",
        )
        return
    short = [f"{what} needs {_dotted(v)}" for v, what in FEATURES[r.driver] if parsed < v]
    if short:
        add(
            "version",
            "warned",
            f"release {r.version}: " + "; ".join(short),
            "upgrade, or do not use those features on this appliance",
        )
    else:
        add("version", "passed", f"release {r.version}")


def _rights(r: Reading, add: _Add) -> None:
    if r.rights_error is not None:
        add(
            "rights",
            "failed" if r.driver == "linux" else "warned",
            f"could not read the user's rights: {r.rights_error}",
            "run as root (CAP_NET_ADMIN) with nft and ip installed"
            if r.driver == "linux"
            else "check the user's role by hand (the check needs read access to its own user)",
        )
        return
    if r.rights is None:
        return
    part = r.partition or ""
    if r.driver == "f5":
        role = r.rights.get(part) or r.rights.get("all-partitions") or "none"
        where = part if part in r.rights else "all-partitions"
        if role not in F5_WRITERS:
            add(
                "rights",
                "failed",
                f"role {role!r} on {where}: cannot create virtual servers, pools or nodes",
                f"give the user role admin (or manager on partition {part})",
            )
        elif r.sync_group is not None and role != "admin":
            add(
                "rights",
                "warned",
                f"role {role!r} on {where}: config-sync to {r.sync_group} needs admin",
                "give the user role admin, or unset sync_group and sync by hand",
            )
        else:
            add("rights", "passed", f"role {role!r} on {where}")
    elif r.driver == "a10":
        glob = r.rights.get("global", "read")
        scoped = r.rights.get(part, "")
        if glob == "write" or scoped == "partition-write":
            add("rights", "passed", f"privilege {glob if glob == 'write' else scoped}")
        else:
            add(
                "rights",
                "failed",
                f"privilege {glob!r} (partition {part}: {scoped or 'none'}): read only",
                f"give the admin privilege-global write, or partition-write on {part}",
            )
    else:
        add("rights", "passed", "may read and write the forwarding tables")


def _partition(r: Reading, add: _Add) -> None:
    if r.partition is None:
        if r.driver in ("f5", "a10"):
            add(
                "partition",
                "failed",
                "no partition to check",
                "give --cluster NAME (the partition is partition_template with it)",
            )
        return
    if r.partition_exists is None:
        return
    if r.partition_exists:
        add("partition", "passed", f"partition {r.partition} exists")
        return
    if r.driver == "a10":
        if r.partition_mode == "create":
            add(
                "partition",
                "warned",
                f"partition {r.partition} is missing; vipwire will create it as an L3V "
                "partition, which has no VLAN, so its VIPs cannot ARP",
                f"create {r.partition} with a VLAN and VE yourself, or add them once created",
            )
        else:
            add(
                "partition",
                "failed",
                f"partition {r.partition} does not exist (partition_mode {r.partition_mode})",
                f"create partition {r.partition} with a VLAN and VE, or set partition_mode: create",
            )
        return
    role = (r.rights or {}).get("all-partitions", "")
    if r.rights is not None and role not in F5_CREATORS:
        add(
            "partition",
            "failed",
            f"partition {r.partition} does not exist and role {role or 'none'!r} on "
            "all-partitions cannot create it",
            f"create partition {r.partition}, or give the user role admin",
        )
    else:
        add(
            "partition",
            "warned",
            f"partition {r.partition} does not exist; vipwire creates it on the first write",
            f"nothing, or create {r.partition} beforehand",
        )


def _interface(r: Reading, add: _Add) -> None:
    if r.vlans is None:
        return
    if r.vlans > 0:
        add("interface", "passed", f"{r.vlans} VLAN(s) in partition {r.partition}")
    else:
        add(
            "interface",
            "failed",
            f"partition {r.partition} has no VLAN: its VIPs cannot ARP or reach the nodes",
            f"add a VLAN with a VE (and its address) to partition {r.partition}",
        )


def _route_domain(r: Reading, add: _Add) -> None:
    if r.route_domain is None or r.route_domain_exists is None:
        return
    if r.route_domain_exists:
        add("route-domain", "passed", f"route domain {r.route_domain} exists")
    else:
        add(
            "route-domain",
            "failed",
            f"route domain {r.route_domain} does not exist",
            f"create route domain {r.route_domain} with the nodes' VLAN, or set route_domain",
        )


def _profiles(r: Reading, add: _Add) -> None:
    if r.driver not in ("f5", "a10"):
        return
    if r.missing_parents:
        add(
            "profiles",
            "failed",
            f"missing built-in parent(s): {', '.join(r.missing_parents)}",
            "restore them in /Common (vipwire's profiles and monitors derive from them)",
        )
        return
    own = f"; {len(r.own_profiles)} of vipwire's own present" if r.own_profiles else ""
    add("profiles", "passed", f"vipwire's profiles and templates exist or can be created{own}")


def _objects(r: Reading, add: _Add) -> None:
    if r.virtual_servers is None:
        return
    start = f"{r.prefix}-"
    ours = sorted(
        n for n, o in r.virtual_servers.items() if n.startswith(start) and _OWNER.match(o)
    )
    foreign = sorted(
        n for n, o in r.virtual_servers.items() if n.startswith(start) and not _OWNER.match(o)
    )
    others = len(r.virtual_servers) - len(ours) - len(foreign)
    where = f" in {r.partition}" if r.partition else ""
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        add(
            "objects",
            "warned",
            f"{len(foreign)} object(s){where} inside prefix {r.prefix!r} without vipwire's "
            f"owner mark: {shown}",
            "rename or remove them, or choose another prefix: vipwire would treat them as its own",
        )
    add(
        "objects",
        "passed",
        f"{len(ours)} virtual server(s){where} owned by vipwire, {others} of others",
    )


def failed(checks: list[Check]) -> bool:
    return any(c.verdict == "failed" for c in checks)
