"""What the watcher checks in a Service before it asks for a VIP.

Pure: no I/O. The watcher judges only what it can judge alone, the syntax of
what a user wrote: our annotations, the requested addresses, the port
protocols the appliances can serve. Whatever needs the pools (does the pool
exist, is the address in one, is it free, may this namespace use it) is
ipam's to judge; it answers with ``VipFailed`` (an AllocationFailed Event).

Each problem is one sentence that names the field, what is wrong with it and
how to fix it: it becomes the note of a Warning Event and the message of the
Service's ``vipwire.io/Ready`` condition.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any, Final

from vipwire.watcher.core.translate import (
    CLUSTER_ANNOTATION,
    IPS_ANNOTATION,
    MAX_AFFINITY_TIMEOUT_S,
    POOL_ANNOTATION,
    PROFILE_ANNOTATION,
    SHARE_NAMESPACES_ANNOTATION,
    SHARING_KEY_ANNOTATION,
    TRACE_ANNOTATION,
    Obj,
    metadata,
    parse_cidr,
    raw_source_ranges,
)

PREFIX: Final = "vipwire.io/"
#: The annotations a user may set.
USER_ANNOTATIONS: Final = (
    POOL_ANNOTATION,
    IPS_ANNOTATION,
    SHARING_KEY_ANNOTATION,
    PROFILE_ANNOTATION,
    SHARE_NAMESPACES_ANNOTATION,
)
#: Ours, written by the watcher itself.
OWN_ANNOTATIONS: Final = (TRACE_ANNOTATION, CLUSTER_ANNOTATION)

_DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# A Kubernetes label value, non-empty: what a sharing key may be.
_KEY: Final = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


def _quote(value: str, limit: int = 80) -> str:
    text = value if len(value) <= limit else value[: limit - 3] + "..."
    return '"' + text.replace('"', '\\"') + '"'


def _bad_address(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return True
    # A zone (fe80::1%eth0) means nothing off the host that wrote it.
    return isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None


def _address_problems(field: str, values: Iterable[str]) -> list[str]:
    bad = [v for v in values if _bad_address(v)]
    if not bad:
        return []
    listed = ", ".join(_quote(v) for v in bad)
    what = "is not an IP address" if len(bad) == 1 else "are not IP addresses"
    return [
        f"{field}: {listed} {what}; write IPv4 or IPv6 addresses, e.g. 198.51.100.20 "
        "or 2001:db8::20" + (", separated by commas" if field == IPS_ANNOTATION else "")
    ]


def _source_range_problems(service: Obj) -> list[str]:
    field, *ranges = raw_source_ranges(service)
    bad = [r for r in ranges if parse_cidr(r) is None]
    if not bad:
        return []
    listed = ", ".join(_quote(r) for r in bad)
    what = "is not a CIDR" if len(bad) == 1 else "are not CIDRs"
    return [
        f"{field}: {listed} {what}; write each range as address/prefix, e.g. "
        "203.0.113.0/24 or 2001:db8::/64"
    ]


def _affinity_problems(spec: dict[str, Any]) -> list[str]:
    if spec.get("sessionAffinity") != "ClientIP":
        return []
    config = spec.get("sessionAffinityConfig")
    client = config.get("clientIP") if isinstance(config, dict) else None
    timeout = client.get("timeoutSeconds") if isinstance(client, dict) else None
    if timeout is None:
        return []
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int)
        or not 0 < timeout <= MAX_AFFINITY_TIMEOUT_S
    ):
        return [
            f"spec.sessionAffinityConfig.clientIP.timeoutSeconds: {_quote(str(timeout))} is "
            f"not a number of seconds from 1 to {MAX_AFFINITY_TIMEOUT_S}; correct it or remove "
            "it (the default is 10800)"
        ]
    return []


def service_problems(service: Obj, *, protocols: Iterable[str]) -> tuple[str, ...]:
    """Everything wrong with a Service we serve, in a stable order; empty when it is fine."""
    meta = metadata(service)
    raw_annotations = meta.get("annotations")
    annotations: dict[str, Any] = raw_annotations if isinstance(raw_annotations, dict) else {}
    spec = service.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    problems: list[str] = []

    unknown = sorted(
        k
        for k in annotations
        if isinstance(k, str)
        and k.startswith(PREFIX)
        and k not in USER_ANNOTATIONS
        and k not in OWN_ANNOTATIONS
    )
    for key in unknown:
        known = ", ".join(USER_ANNOTATIONS)
        problems.append(
            f"annotation {key} is not one vipwire knows ({known}); correct or remove it"
        )

    pool = str(annotations.get(POOL_ANNOTATION) or "").strip()
    if pool and not _DNS_LABEL.fullmatch(pool):
        problems.append(
            f"{POOL_ANNOTATION}: {_quote(pool)} cannot name a pool; a pool name is a DNS "
            "label (lower-case letters, digits and '-', at most 63 characters)"
        )

    profile = str(annotations.get(PROFILE_ANNOTATION) or "").strip()
    if profile and not _DNS_LABEL.fullmatch(profile):
        # Whether the profile exists is ipam's to judge (it reads the profiles section).
        problems.append(
            f"{PROFILE_ANNOTATION}: {_quote(profile)} cannot name a profile; a profile name "
            "is a DNS label (lower-case letters, digits and '-', at most 63 characters)"
        )

    raw_ips = annotations.get(IPS_ANNOTATION)
    ips = [p.strip() for p in str(raw_ips or "").split(",")]
    if raw_ips is not None and not any(ips):
        # Present but naming nothing (" , ,"): an automatic VIP would hide the mistake.
        problems.append(
            f"{IPS_ANNOTATION}: {_quote(str(raw_ips))} names no address; write IPv4 or IPv6 "
            "addresses separated by commas, or remove the annotation for an automatic VIP"
        )
    problems += _address_problems(IPS_ANNOTATION, [p for p in ips if p])
    legacy = spec.get("loadBalancerIP")
    if isinstance(legacy, str) and legacy.strip():
        problems += _address_problems("spec.loadBalancerIP", [legacy.strip()])

    key = str(annotations.get(SHARING_KEY_ANNOTATION) or "").strip()
    if key and not _KEY.fullmatch(key):
        problems.append(
            f"{SHARING_KEY_ANNOTATION}: {_quote(key)} is not a sharing key; use at most 63 "
            "letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )

    raw_share = annotations.get(SHARE_NAMESPACES_ANNOTATION)
    if raw_share is not None:
        names = [n.strip() for n in str(raw_share).split(",")]
        bad = [n for n in names if n and n != "*" and not _DNS_LABEL.fullmatch(n)]
        if bad or not any(names):
            listed = ", ".join(_quote(n) for n in bad) if bad else _quote(str(raw_share))
            problems.append(
                f"{SHARE_NAMESPACES_ANNOTATION}: {listed} is not a namespace; list the "
                "namespaces this Service may share its VIP with, separated by commas, or '*'"
            )

    problems += _source_range_problems(service)
    problems += _affinity_problems(spec)

    allowed = tuple(protocols)
    ports = spec.get("ports")
    for port in ports if isinstance(ports, list) else ():
        if not isinstance(port, dict):
            continue
        protocol = port.get("protocol") or "TCP"
        if protocol not in allowed:
            name = f" ({port['name']})" if port.get("name") else ""
            problems.append(
                f"spec.ports: {port.get('port')}/{protocol}{name} cannot be served: the "
                f"appliances here serve {', '.join(allowed)} only; change the protocol, or "
                "serve this port with another loadBalancerClass"
            )
    return tuple(problems)


def invalid_note(problems: tuple[str, ...], *, served: bool) -> str:
    """The message of the Warning Event and the condition for an invalid Service."""
    outcome = (
        "the Service keeps its current VIPs and configuration until this is fixed"
        if served
        else "no VIP is assigned until this is fixed"
    )
    return "; ".join(problems) + f" ({outcome})"
