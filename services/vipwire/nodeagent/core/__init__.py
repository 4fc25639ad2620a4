"""The node agent's decisions, pure: no asyncio, no bus, no clock, no I/O.

``desired`` turns what the bus says into what the node should have;
``plan`` turns what the node has into the fewest actions to get there.
"""
