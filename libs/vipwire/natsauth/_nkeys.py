"""NKey user keys, encoded as the NKeys specification says.

A seed is base32 (no padding) of two prefix bytes (seed, then user), the 32-byte
ed25519 seed and a CRC-16 (XMODEM) of those, little-endian; a public key is base32
of the user prefix byte, the 32-byte ed25519 public key and its CRC-16.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

import nacl.signing

_PREFIX_SEED: Final = 18 << 3  # "S"
_PREFIX_USER: Final = 20 << 3  # "U"


class NKeyError(ValueError):
    """A string is not an NKey user seed."""


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (polynomial 0x1021, initial 0), as the NKeys checksum."""
    return binascii.crc_hqx(data, 0)


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=")


def _with_crc(raw: bytes) -> bytes:
    return raw + crc16(raw).to_bytes(2, "little")


def encode_user_seed(seed: bytes) -> str:
    """``SU...``: the user seed for a 32-byte ed25519 seed."""
    if len(seed) != 32:
        raise NKeyError(f"an ed25519 seed is 32 bytes, not {len(seed)}")
    head = bytes([_PREFIX_SEED | (_PREFIX_USER >> 5), (_PREFIX_USER & 31) << 3])
    return _b32(_with_crc(head + seed))


def decode_user_seed(text: str) -> bytes:
    """The 32-byte ed25519 seed of an ``SU...`` user seed (checksum verified)."""
    text = text.strip()
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError) as exc:
        raise NKeyError("not base32: not an NKey seed") from exc
    if len(raw) != 36:
        raise NKeyError("wrong length for an NKey user seed")
    body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
    if crc16(body) != crc:
        raise NKeyError("checksum mismatch: the NKey seed is damaged")
    if body[0] & 0xF8 != _PREFIX_SEED or ((body[0] & 7) << 5 | body[1] >> 3) != _PREFIX_USER:
        raise NKeyError("not a user seed (it must start with SU)")
    return body[2:]


def public_key(seed_text: str) -> str:
    """``U...``: the public key of an ``SU...`` user seed."""
    signing = nacl.signing.SigningKey(decode_user_seed(seed_text))
    return _b32(_with_crc(bytes([_PREFIX_USER]) + bytes(signing.verify_key)))


def new_user_seed() -> str:
    """A fresh random user seed."""
    return encode_user_seed(bytes(nacl.signing.SigningKey.generate()))
