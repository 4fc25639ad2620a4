"""The dashboard's pure core: bus messages in, API views out.

:mod:`.views` is the HTTP API's schema, :mod:`.fold` builds the read model
from bus messages, :mod:`.queries` answers the API from it, :mod:`.waterfall`
times a change hop by hop, :mod:`.control_answers` reads ipam's and the
lbdriver's status answers. No asyncio, no nats, no aiohttp, no clock: time
comes in with each message or as ``now``.
"""
