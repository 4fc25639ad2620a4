"""What every scenario returns, and how its parameters arrive."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import msgspec

OptionsT = TypeVar("OptionsT", bound=msgspec.Struct)


class BenchResult(msgspec.Struct, frozen=True, kw_only=True):
    """A scenario's outcome: a table for people, a document for machines."""

    scenario: str
    #: (label, value) rows, in the order the table shows them.
    rows: tuple[tuple[str, str], ...]
    #: Written by ``--json FILE``; keys are the scenario's documented result fields.
    data: dict[str, Any]

    def table(self) -> str:
        width = max((len(label) for label, _ in self.rows), default=0)
        lines = [f"vipwire bench --scenario {self.scenario}"]
        lines += [f"  {label.ljust(width)}  {value}" for label, value in self.rows]
        return "\n".join(lines) + "\n"


#: A scenario's entry point: ``--set`` parameters in, a result out.
Scenario = Callable[[Mapping[str, str]], Coroutine[Any, Any, BenchResult]]


def parse_params(pairs: Sequence[str]) -> dict[str, str]:
    """``["services=20", "step_ms=5"]`` → a dict. Raises ValueError naming a bad pair."""
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"parameter {pair!r} is not KEY=VALUE")
        params[key.strip()] = value.strip()
    return params


def convert_params(params: Mapping[str, str], options: type[OptionsT]) -> OptionsT:
    """The scenario's options from string parameters; ValueError names what is wrong."""
    try:
        return msgspec.convert(dict(params), options, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from exc
