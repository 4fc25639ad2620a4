"""The create -> status wait of our Services, as the convergence histogram and alert see it."""

from __future__ import annotations

from vipwire.watcher.core.convergence import Convergence


def test_a_service_waits_from_first_sight_to_its_vip() -> None:
    """The wait runs from the first sight without a VIP, not from a later sighting."""
    c = Convergence()
    c.seen("default/web", ours=True, has_vip=False, now=10.0)
    c.seen("default/web", ours=True, has_vip=False, now=12.0)
    assert c.waiting == 1 and c.oldest_s(now=15.0) == 5.0
    assert c.written("default/web", now=13.5) == 3.5
    assert c.waiting == 0 and c.oldest_s(now=20.0) == 0.0


def test_a_vip_written_again_is_no_new_convergence() -> None:
    """A status write for a Service that was not waiting measures nothing."""
    c = Convergence()
    c.seen("default/web", ours=True, has_vip=True, now=1.0)
    assert c.written("default/web", now=2.0) is None


def test_services_not_ours_or_gone_do_not_wait() -> None:
    """Somebody else's Service, and a deleted one, never count as unconverged."""
    c = Convergence()
    c.seen("default/theirs", ours=False, has_vip=False, now=1.0)
    c.seen("default/gone", ours=True, has_vip=False, now=1.0)
    c.forget("default/gone")
    assert c.waiting == 0


def test_the_oldest_wait_is_reported() -> None:
    """The alert reads the longest wait, whatever the others."""
    c = Convergence()
    c.seen("a/one", ours=True, has_vip=False, now=100.0)
    c.seen("a/two", ours=True, has_vip=False, now=400.0)
    assert c.oldest_s(now=410.0) == 310.0
