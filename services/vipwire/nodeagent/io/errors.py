"""The node agent's adapter errors: one family for every applier.

A module of its own so that each applier (``apply``, ``linux``) raises the
same exceptions without importing the other.
"""

from __future__ import annotations


class ApplyError(Exception):
    """The node could not be read or changed; the service retries later."""


class ApplierUnavailable(ApplyError):
    """No applier can serve these settings (yet)."""
