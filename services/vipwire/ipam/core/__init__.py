"""ipam's pure core: addresses, claims, pools, the allocator and the lifecycle decisions.

No asyncio, no NATS, no clock, no I/O: plain functions and classes over plain
data, tested without a server. The shell (:mod:`vipwire.ipam.io`) feeds them
what the KV bucket and the stream say and carries out what they decide.
"""
