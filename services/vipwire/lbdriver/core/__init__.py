"""The lbdriver's pure decisions: plain functions and classes over plain data.

No asyncio, no NATS, no aiohttp, no clock reads and no I/O: the time, and any
randomness, are passed in. The import-linter contract in pyproject.toml keeps
it so.
"""
