"""The watcher's pure decisions: no I/O, no clock, no asyncio.

:mod:`.translate` turns Kubernetes objects into snapshots, :mod:`.validate`
judges what a user wrote, :mod:`.writeback` decides what to write back to a
Service (with :mod:`.condition` and :mod:`.bus_view`), :mod:`.events` which
Events to record, and :mod:`.term_memory` remembers, for one term, what was
published and what the rest of the system said.
"""
