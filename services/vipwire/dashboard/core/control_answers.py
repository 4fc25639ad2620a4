"""What ipam and the lbdriver say about pools and appliances, read leniently.

Both answer request/reply on ``vipwire-ctl.<service>.status``. The dashboard
must not import either service (they are independent packages), so it reads
their answers as plain JSON and keeps only the fields it shows; a field it
does not know is ignored and one that is missing stays unknown, so either
side can evolve without breaking the other.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from vipwire.dashboard.core.views import ApplianceStatus, PoolCapacity

IPAM_STATUS: Final = "vipwire-ctl.ipam.status"
LBDRIVER_STATUS: Final = "vipwire-ctl.lbdriver.status"


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _first(entry: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in entry:
            return entry[name]
    return None


def parse_ipam(data: bytes) -> tuple[PoolCapacity, ...]:
    """Pools from ipam's answer; raises ValueError if it is not JSON with a pool list.

    Entries of one pool (one per address family) are added up.
    """
    try:
        raw = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"ipam status is not JSON: {exc}") from exc
    pools = raw.get("pools") if isinstance(raw, dict) else None
    if isinstance(pools, dict):  # keyed by name
        pools = [{"name": k, **v} for k, v in pools.items() if isinstance(v, dict)]
    if not isinstance(pools, list):
        raise ValueError("ipam status holds no 'pools' list")
    merged: dict[str, PoolCapacity] = {}
    for entry in pools:
        if not isinstance(entry, dict):
            continue
        name = _str(_first(entry, "name", "pool"))
        if name is None:
            continue
        size = _int(_first(entry, "size", "total", "capacity"))
        in_use = _int(_first(entry, "in_use", "used", "allocated", "assigned"))
        family = _str(entry.get("family"))
        group = _str(_first(entry, "appliance_group", "group"))
        old = merged.get(name)
        if old is None:
            merged[name] = PoolCapacity(
                name=name,
                appliance_group=group,
                size=size,
                in_use=in_use,
                families=(family,) if family else (),
            )
        else:
            merged[name] = PoolCapacity(
                name=name,
                appliance_group=old.appliance_group or group,
                size=None if old.size is None or size is None else old.size + size,
                in_use=None if old.in_use is None or in_use is None else old.in_use + in_use,
                families=old.families + ((family,) if family else ()),
            )
    return tuple(merged.values())


def parse_lbdriver(data: bytes) -> tuple[ApplianceStatus, ...]:
    """Appliances from the lbdriver's answer; raises ValueError if there is no list."""
    try:
        raw = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"lbdriver status is not JSON: {exc}") from exc
    appliances = raw.get("appliances") if isinstance(raw, dict) else None
    if not isinstance(appliances, list):
        raise ValueError("lbdriver status holds no 'appliances' list")
    result = []
    for entry in appliances:
        if not isinstance(entry, dict) or _str(entry.get("name")) is None:
            continue
        active = entry.get("active")
        result.append(
            ApplianceStatus(
                name=entry["name"],
                driver=_str(entry.get("driver")),
                group=_str(entry.get("group")),
                address=_str(entry.get("address")),
                active=active if isinstance(active, bool) else None,
                health=_str(entry.get("health")),
                failures=_int(entry.get("failures")),
                retry_in_s=_float(entry.get("retry_in_s")),
                virtual_servers=_int(entry.get("virtual_servers")),
                services=_int(entry.get("services")),
                writes=_int(entry.get("writes")),
                last_write_at=_float(entry.get("last_write_at")),
                last_error=_str(entry.get("last_error")),
                last_error_at=_float(entry.get("last_error_at")),
            )
        )
    return tuple(result)
