"""The orders a write's reply and its watch events may come in.

A real API server promises none (see :class:`vipwire.kubeemu.KubeEmulator`,
``watch_first``), so the watcher's suites run in both: fixtures parametrized
with ``params=list(WRITE_ORDERS)`` build their emulator with
``watch_first=WRITE_ORDERS[request.param]``.
"""

from __future__ import annotations

#: The emulator's ``watch_first`` per order: the reply first (its default), and the
#: watch events first.
WRITE_ORDERS = {"reply-first": 0.0, "watch-first": 1.0}
