"""Which subjects of the stream have ended long enough ago to be purged (pure).

The stream holds the fleet's state as the last message of each subject, so it
has no age limit (an age limit would also drop a live Service's last message).
What would then grow forever is the subjects of deleted Services and Nodes. A
Service has ended when its ``service`` subject ends with ``ServiceGone``; a Node
when its ``node`` subject ends with ``NodeGone``. Long after that (and once
every durable consumer has acknowledged the end), every subject of it goes:
nobody reads an absent subject differently from an ended one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from vipwire.contracts import (
    NODE_FAMILIES,
    SERVICE_FAMILIES,
    Message,
    NodeGone,
    ServiceGone,
    SubjectError,
    node_subject,
    service_subject,
)


class LastOnSubject(NamedTuple):
    """The last message of one subject, as the sweep sees it."""

    subject: str
    seq: int
    #: When the server stored it (ns since the epoch).
    time_ns: int
    #: What it says; None: unreadable (then nothing of it is ever purged).
    message: Message | None


class Purge(NamedTuple):
    """Purge ``subject`` below ``below_seq`` (what was read; anything newer stays)."""

    subject: str
    below_seq: int


def ended_subjects(
    last: Iterable[LastOnSubject], *, now_ns: int, max_age_s: float, acked_through: int | None
) -> list[Purge]:
    """The subjects of every Service and Node whose end is older than ``max_age_s``.

    ``acked_through``: the lowest sequence every durable consumer has acknowledged
    (None: there is no durable consumer). An end not yet acknowledged is kept,
    whatever its age: a consumer that was down that long must still read it.
    """
    by_subject = {m.subject: m for m in last}
    oldest_ns = now_ns - int(max_age_s * 1e9)
    purges: list[Purge] = []
    for m in by_subject.values():
        if m.time_ns > oldest_ns or (acked_through is not None and m.seq > acked_through):
            continue
        family_subjects = _subjects_ended_by(m.message)
        if m.subject not in family_subjects:
            continue  # not an end, or one that names another object than its subject
        for subject in family_subjects:
            other = by_subject.get(subject)
            if other is None:
                continue
            if other.message is None:
                break  # something of it is unreadable: unknown, so nothing of it goes
        else:
            purges += [Purge(s, by_subject[s].seq + 1) for s in family_subjects if s in by_subject]
    return purges


def _subjects_ended_by(message: Message | None) -> list[str]:
    """Every subject of the Service or Node that ``message`` ends; [] if it ends none."""
    try:
        match message:
            case ServiceGone(cluster=cluster, namespace=namespace, name=name):
                return [
                    service_subject(f, cluster, namespace, name)  # type: ignore[arg-type]
                    for f in sorted(SERVICE_FAMILIES)
                ]
            case NodeGone(cluster=cluster, node=node):
                return [
                    node_subject(f, cluster, node)  # type: ignore[arg-type]
                    for f in sorted(NODE_FAMILIES)
                ]
    except SubjectError:
        pass  # names no subject of ours: nothing to end
    return []
