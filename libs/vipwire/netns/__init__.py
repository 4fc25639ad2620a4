"""Commands and sockets inside a named network namespace (as ``ip netns`` makes them).

The node agent, the Linux appliance driver and the packet lab all act on a
host's network stack; in tests and the lab that host is a namespace. One
optional ``netns`` name is all it takes: commands run through ``ip netns
exec``, sockets are opened by a short-lived thread that joined the namespace
(a socket stays in the namespace it was made in, whichever thread uses it).
"""

from vipwire.netns._netns import (
    NETNS_DIR,
    CommandFailed,
    call_in_netns,
    in_netns,
    run,
    validate_netns_name,
)

__all__ = [
    "NETNS_DIR",
    "CommandFailed",
    "call_in_netns",
    "in_netns",
    "run",
    "validate_netns_name",
]
