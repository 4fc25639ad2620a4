"""IP addresses as the allocator sees them: a family and an integer.

Pools are written by operators as CIDRs (``192.0.2.0/24``), ranges
(``198.51.100.10-198.51.100.20``) or single addresses; all of them become
inclusive integer intervals, so that free space can be kept as intervals
instead of address by address.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Literal, NamedTuple

Family = Literal["IPv4", "IPv6"]
FAMILIES: tuple[Family, Family] = ("IPv4", "IPv6")


class Block(NamedTuple):
    """An inclusive interval of addresses of one family."""

    family: Family
    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def __str__(self) -> str:
        if self.first == self.last:
            return to_text(self.family, self.first)
        return f"{to_text(self.family, self.first)}-{to_text(self.family, self.last)}"


def _family(version: int) -> Family:
    return "IPv4" if version == 4 else "IPv6"


# Every address is parsed many times in its life (claim, watch event, release):
# remember the recent ones. Both functions are pure; errors are not cached.
_CACHE_SIZE = 1 << 17


@functools.lru_cache(maxsize=_CACHE_SIZE)
def parse_address(text: str) -> tuple[Family, int]:
    """``"192.0.2.1"`` → ``("IPv4", 3221225985)``; ValueError if it is not an address."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ValueError(f"{text!r}: a VIP cannot carry a zone index")
    return _family(address.version), int(address)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def to_text(family: Family, value: int) -> str:
    if family == "IPv4":
        return str(ipaddress.IPv4Address(value))
    return str(ipaddress.IPv6Address(value))


def canonical(text: str) -> str:
    """The one spelling of an address used in keys, claims and messages."""
    return to_text(*parse_address(text))


def parse_block(text: str) -> Block:
    """A CIDR, an ``a-b`` range or a single address, as an inclusive interval."""
    raw = text.strip()
    if "-" in raw:
        first_text, _, last_text = raw.partition("-")
        first_family, first = parse_address(first_text)
        last_family, last = parse_address(last_text)
        if first_family != last_family:
            raise ValueError(f"range {text!r} mixes IPv4 and IPv6")
        if first > last:
            raise ValueError(f"range {text!r} ends before it starts")
        return Block(first_family, first, last)
    if "/" in raw:
        try:
            network = ipaddress.ip_network(raw, strict=True)
        except ValueError as exc:
            hint = ""
            try:
                loose = ipaddress.ip_network(raw, strict=False)
                hint = f" (did you mean {loose}?)"
            except ValueError:
                pass
            raise ValueError(f"{text!r} is not a valid CIDR: {exc}{hint}") from None
        return Block(
            _family(network.version), int(network.network_address), int(network.broadcast_address)
        )
    family, value = parse_address(raw)
    return Block(family, value, value)


def kv_token(address: str) -> str:
    """An address as one KV key token: ``192.0.2.1`` → ``192_0_2_1``, ``2001:db8::1`` →
    ``2001-db8--1`` (KV keys allow ``[-/_=.a-zA-Z0-9]``, and ``.`` splits tokens)."""
    family, value = parse_address(address)
    text = to_text(family, value)
    if family == "IPv4":
        return text.replace(".", "_")
    return text.replace(":", "-").replace(".", "_")


def from_kv_token(token: str) -> str:
    """The inverse of :func:`kv_token`; ValueError for a token that is not one."""
    if "-" in token:
        return canonical(token.replace("-", ":").replace("_", "."))
    return canonical(token.replace("_", "."))
