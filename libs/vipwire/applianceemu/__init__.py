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
"""

from vipwire.applianceemu._server import Fault
from vipwire.applianceemu.a10 import A10Emulator, A10Error
from vipwire.applianceemu.f5 import F5Emulator, F5Error

__all__ = ["A10Emulator", "A10Error", "F5Emulator", "F5Error", "Fault"]
