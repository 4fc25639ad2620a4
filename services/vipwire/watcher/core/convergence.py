"""How long our Services wait for a VIP in their status (pure; time is passed in).

A Service of ours is *waiting* from the moment the watcher sees it without an
address in ``status.loadBalancer.ingress`` (created, or its status lost) until
the watcher writes one there. The time from one to the other is the create ->
status convergence an operator cares about; a Service that waits for minutes
(its pool exhausted, an appliance refusing, a Service that cannot be served)
is what the "not converged" alert looks for, through :meth:`oldest_s`.
"""

from __future__ import annotations


class Convergence:
    """The Services of one term that wait for a VIP in status, and since when."""

    def __init__(self) -> None:
        self._since: dict[str, float] = {}

    def seen(self, key: str, *, ours: bool, has_vip: bool, now: float) -> None:
        """The Service ``key`` as the API has it now; a first sight without a VIP starts
        the wait (a later one keeps its start)."""
        if not ours or has_vip:
            self._since.pop(key, None)
        else:
            self._since.setdefault(key, now)

    def forget(self, key: str) -> None:
        """The Service is gone (deleted, or no longer ours): it waits no more."""
        self._since.pop(key, None)

    def written(self, key: str, now: float) -> float | None:
        """A VIP was written into the Service's status: how long it waited (None when it
        was not waiting, e.g. a VIP written again)."""
        since = self._since.pop(key, None)
        return None if since is None else max(0.0, now - since)

    @property
    def waiting(self) -> int:
        return len(self._since)

    def oldest_s(self, now: float) -> float:
        """Seconds the longest-waiting Service has waited (0: none waits)."""
        return max(0.0, now - min(self._since.values())) if self._since else 0.0
