"""The node agent's decisions, pure: no asyncio, no bus, no clock, no I/O.

``desired`` turns what the bus says into what the node should have;
``changes`` keeps it up to date message by message and marks what is not
applied yet; ``plan`` turns what the node has into the fewest actions to get
there.
"""
