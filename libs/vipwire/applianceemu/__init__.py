"""Load-balancer appliance emulators for tests and demos: F5 BIG-IP and A10 ACOS.

Each is a small aiohttp server that follows its vendor's documented request
bodies, responses and error shapes for the subset of the management API that
an L4 provisioning client uses, with the vendor's semantics where a client can
get them wrong (authentication and its expiry, transactions, references,
conflicts). They are stand-ins for real appliances, not models of them: the
drivers under test take their production code path against them.

    emu = F5Emulator(username="admin", password="secret")
    await emu.start()            # loopback, a free port; emu.url
    ...
    await emu.stop()

Every mutating request is kept in ``emu.write_log`` (who sent it, when, under
which lease) and served at ``GET <url>/_emulator/writes?since=<index>``; see
:class:`WriteRecord`, :func:`fetch_writes`, :func:`overlapping_writes`.
"""

from vipwire.applianceemu._server import (
    LEASE_HEADER,
    WRITER_HEADER,
    Fault,
    WriteLog,
    WriteRecord,
    fetch_writes,
    overlapping_writes,
)
from vipwire.applianceemu.a10 import A10Emulator, A10Error
from vipwire.applianceemu.f5 import F5Emulator, F5Error

__all__ = [
    "LEASE_HEADER",
    "WRITER_HEADER",
    "A10Emulator",
    "A10Error",
    "F5Emulator",
    "F5Error",
    "Fault",
    "WriteLog",
    "WriteRecord",
    "fetch_writes",
    "overlapping_writes",
]
