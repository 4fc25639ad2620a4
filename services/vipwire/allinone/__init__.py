"""The all-in-one stack: every vipwire service over one embedded NATS server.

The stack (every service) is imported on first use of one of its names, so that
``vipwire services`` can read the bus through :mod:`vipwire.allinone.view` alone.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vipwire.allinone.stack import Stack, StackSettings, cluster_name
else:

    def __getattr__(name: str) -> object:
        """Imports the stack on first use of one of its names."""
        if name in ("Stack", "StackSettings", "cluster_name"):
            from vipwire.allinone import stack

            value = getattr(stack, name)
            globals()[name] = value
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Stack", "StackSettings", "cluster_name"]
