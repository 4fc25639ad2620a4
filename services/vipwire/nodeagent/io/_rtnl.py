"""Interface addresses over rtnetlink, with the address protocol (``IFA_PROTO``).

iproute2 learnt ``ip address … proto`` only in 6.2, while the kernel keeps an
address's protocol since 5.18; speaking rtnetlink directly marks our VIPs on
every such kernel, whatever ``ip`` is installed, and saves a process per
address. Blocking calls: the shell runs them in a worker thread.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from typing import Final

import msgspec

from vipwire.netns import call_in_netns

RTM_NEWADDR: Final = 20
RTM_DELADDR: Final = 21
RTM_GETADDR: Final = 22
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLM_F_REQUEST: Final = 0x1
NLM_F_MULTI: Final = 0x2
NLM_F_ACK: Final = 0x4
NLM_F_EXCL: Final = 0x200
NLM_F_CREATE: Final = 0x400
NLM_F_DUMP: Final = 0x300
IFA_ADDRESS: Final = 1
IFA_LOCAL: Final = 2
IFA_LABEL: Final = 3
IFA_FLAGS: Final = 8
IFA_PROTO: Final = 11
IFA_F_NODAD: Final = 0x02
RT_SCOPE_UNIVERSE: Final = 0

_NLMSGHDR = struct.Struct("=IHHII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")
_ERRNO = struct.Struct("=i")


class RtnlError(OSError):
    """The kernel refused a request (``errno`` set) or answered nonsense."""


class KernelAddress(msgspec.Struct, frozen=True, kw_only=True):
    """One address as the kernel lists it."""

    index: int
    address: str
    prefix: int
    #: ``IFA_PROTO``; None when the kernel reported none (unset, or kernel < 5.18).
    proto: int | None = None
    #: ``IFA_LABEL`` (IPv4 only).
    label: str | None = None


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * (_align(length) - length)


def _attrs(data: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    offset = 0
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            break
        found[kind & 0x3FFF] = data[offset + _RTATTR.size : offset + length]
        offset += _align(length)
    return found


def address_request(
    kind: int,
    *,
    index: int,
    address: str,
    prefix: int,
    proto: int | None = None,
    label: str | None = None,
) -> tuple[int, bytes]:
    """The flags and body of an RTM_NEWADDR / RTM_DELADDR for one address (pure)."""
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    body = _IFADDRMSG.pack(family, prefix, 0, RT_SCOPE_UNIVERSE, index)
    body += _attr(IFA_LOCAL, ip.packed) + _attr(IFA_ADDRESS, ip.packed)
    flags = NLM_F_REQUEST | NLM_F_ACK
    if kind == RTM_NEWADDR:
        flags |= NLM_F_CREATE | NLM_F_EXCL
        body += _attr(IFA_FLAGS, struct.pack("=I", IFA_F_NODAD))
        if proto is not None:
            body += _attr(IFA_PROTO, struct.pack("=B", proto))
        if label is not None and ip.version == 4:
            body += _attr(IFA_LABEL, label.encode() + b"\0")
    return flags, body


def parse_address(body: bytes) -> KernelAddress | None:
    """One RTM_NEWADDR body of a dump as a :class:`KernelAddress` (pure)."""
    if len(body) < _IFADDRMSG.size:
        return None
    family, prefix, _flags, _scope, index = _IFADDRMSG.unpack_from(body)
    attrs = _attrs(body[_IFADDRMSG.size :])
    raw = attrs.get(IFA_LOCAL) if family == socket.AF_INET else None
    raw = raw or attrs.get(IFA_ADDRESS)
    if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    proto = attrs.get(IFA_PROTO)
    label = attrs.get(IFA_LABEL)
    return KernelAddress(
        index=index,
        address=str(ipaddress.ip_address(raw)),
        prefix=prefix,
        proto=proto[0] if proto else None,
        label=label.rstrip(b"\0").decode(errors="replace") if label else None,
    )


class AddressSocket:
    """An rtnetlink socket bound to one network namespace (the caller's, or a named one)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._seq = 0

    @classmethod
    def open(cls, netns: str | None, interface: str) -> tuple[AddressSocket, int]:
        """A socket in ``netns`` and the index of ``interface`` there."""

        def inside() -> tuple[socket.socket, int]:
            try:
                index = socket.if_nametoindex(interface)
            except OSError as exc:
                raise RtnlError(errno.ENODEV, f"no interface {interface!r}") from exc
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                sock.bind((0, 0))
            except BaseException:
                sock.close()
                raise
            return sock, index

        sock, index = call_in_netns(netns, inside)
        return cls(sock), index

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> AddressSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def addresses(self, index: int) -> list[KernelAddress]:
        """Every address of the interface with this index."""
        body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        found: list[KernelAddress] = []
        for kind, payload in self._exchange(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, body):
            if kind != RTM_NEWADDR:
                continue
            parsed = parse_address(payload)
            if parsed is not None and parsed.index == index:
                found.append(parsed)
        return found

    def add(
        self,
        index: int,
        address: str,
        prefix: int,
        *,
        proto: int | None = None,
        label: str | None = None,
    ) -> None:
        """Add the address; one already there counts as added."""
        flags, body = address_request(
            RTM_NEWADDR, index=index, address=address, prefix=prefix, proto=proto, label=label
        )
        try:
            self._acked(RTM_NEWADDR, flags, body)
        except RtnlError as exc:
            if exc.errno != errno.EEXIST:
                raise

    def delete(self, index: int, address: str, prefix: int) -> None:
        """Remove the address; one already gone counts as removed."""
        flags, body = address_request(RTM_DELADDR, index=index, address=address, prefix=prefix)
        try:
            self._acked(RTM_DELADDR, flags, body)
        except RtnlError as exc:
            if exc.errno not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                raise

    # --- the wire --------------------------------------------------------------------

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        self._seq += 1
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, self._seq, 0)
        self._sock.send(header + body)
        return self._seq

    def _acked(self, kind: int, flags: int, body: bytes) -> None:
        for _ in self._exchange(kind, flags, body):
            pass

    def _exchange(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one request; the messages answering it (an ACK or a dump), errors raised."""
        seq = self._send(kind, flags, body)
        messages: list[tuple[int, bytes]] = []
        while True:
            data = self._sock.recv(1 << 20)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, mtype, mflags, mseq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    raise RtnlError(errno.EPROTO, "truncated netlink message")
                payload = data[offset + _NLMSGHDR.size : offset + length]
                offset += _align(length)
                if mseq != seq:
                    continue  # an answer to an earlier, abandoned request
                if mtype == NLMSG_ERROR:
                    (code,) = _ERRNO.unpack_from(payload)
                    if code == 0:
                        return messages
                    raise RtnlError(-code, os.strerror(-code))
                if mtype == NLMSG_DONE:
                    if len(payload) >= _ERRNO.size:
                        (code,) = _ERRNO.unpack_from(payload)
                        if code < 0:
                            raise RtnlError(-code, os.strerror(-code))
                    return messages
                messages.append((mtype, payload))
                if not mflags & NLM_F_MULTI:
                    return messages
