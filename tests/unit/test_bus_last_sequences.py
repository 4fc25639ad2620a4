"""What a consumer remembers per subject to skip overtaken redeliveries, and for how long."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from vipwire.bus._consumer import _LastSequences

HORIZON = 0.2


def test_remembers_the_last_sequence_of_each_subject() -> None:
    """Within the horizon each subject answers its last sequence; an unknown one 0."""
    seqs = _LastSequences(HORIZON)
    seqs.note("a", 3)
    seqs.note("b", 4)
    seqs.note("a", 7)
    assert (seqs.get("a"), seqs.get("b"), seqs.get("c")) == (7, 4, 0)


def test_forgets_a_subject_between_one_and_two_horizons_after_its_last_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Subjects gone quiet (a deleted Service's) are dropped; active ones are kept."""
    clock = [100.0]
    module = sys.modules[_LastSequences.__module__]
    monkeypatch.setattr(module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    seqs = _LastSequences(HORIZON)
    for i, subject in enumerate("abcde"):
        seqs.note(subject, i + 1)
    clock[0] += HORIZON * 1.2
    seqs.note("f", 10)  # one horizon on: the quiet ones are still known
    assert seqs.get("a") == 1 and len(seqs) == 6
    clock[0] += HORIZON * 1.2
    seqs.note("f", 11)
    seqs.note("g", 12)
    assert seqs.get("a") == 0 and seqs.get("e") == 0
    assert (seqs.get("f"), seqs.get("g"), len(seqs)) == (11, 12, 2)
