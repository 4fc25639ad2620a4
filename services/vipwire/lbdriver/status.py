"""What the lbdriver says about its appliances when asked (``vipwire lb status``).

The subject and payloads live in :mod:`vipwire.contracts`; this module keeps
their old names for the lbdriver's callers until they import the contract
directly, with the codec and the redaction the lbdriver applies.
"""

from __future__ import annotations

import msgspec

from vipwire.contracts import LBDRIVER_STATUS_SUBJECT as STATUS_SUBJECT
from vipwire.contracts import ApplianceStatus, LbdriverStatus

__all__ = [
    "STATUS_SUBJECT",
    "ApplianceStatus",
    "LbdriverStatus",
    "decode_status",
    "encode_status",
    "redact_address",
]


def encode_status(status: LbdriverStatus) -> bytes:
    return msgspec.json.encode(status)


def decode_status(data: bytes) -> LbdriverStatus:
    """Raises ``msgspec.ValidationError`` / ``DecodeError`` on a malformed answer."""
    return msgspec.json.decode(data, type=LbdriverStatus)


def redact_address(address: str | None) -> str | None:
    """A management address fit to show: any ``user:password@`` part removed."""
    if address is None or "@" not in address:
        return address
    scheme, sep, rest = address.rpartition("://")
    return f"{scheme}{sep}{rest.rsplit('@', 1)[1]}"
