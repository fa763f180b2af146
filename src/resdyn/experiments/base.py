"""What an experiment hands to the report: tables, claims checked against numbers, figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["VERDICTS", "Claim", "ExperimentOutcome"]

VERDICTS = ("held", "not held", "inconclusive")


@dataclass(frozen=True, init=False)
class Claim:
    """A claim of a paper, the number measured for it, and the verdict of its test.

    text: the claim in words; measured: the number(s) with interval, as shown to a reader;
    verdict: one of 'held' (the test rejects in the claim's favour), 'not held' (the data contradict
    it) or 'inconclusive' (neither: a non-rejection is not support); test: how the verdict was
    reached; values: the raw numbers behind it. Reproductions build claims through
    :meth:`resdyn.analysis.verdicts.Verdict.claim`, the one rule for every verdict: the test's name
    and p-values go in ``test`` and ``values['verdict']``, the reason of an inconclusive verdict in
    ``measured``. A bool in the verdict's place (or ``held=``, as
    older stored outcomes carry) reads as 'held' / 'not held'.
    """

    text: str
    measured: str
    verdict: str
    test: str
    values: dict[str, Any] = field(default_factory=dict)

    def __init__(self, text: str, measured: str, verdict: str | bool | None = None, test: str = "",
                 values: dict[str, Any] | None = None, *, held: bool | None = None) -> None:
        if verdict is None:
            verdict = held
        if isinstance(verdict, bool):
            verdict = "held" if verdict else "not held"
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)} (or a bool), got {verdict!r}")
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "measured", measured)
        object.__setattr__(self, "verdict", verdict)
        object.__setattr__(self, "test", test)
        object.__setattr__(self, "values", dict(values or {}))

    @property
    def held(self) -> bool:
        """True only for the verdict 'held'."""
        return self.verdict == "held"


@dataclass
class ExperimentOutcome:
    """name; tables: name -> rows (dicts of plain values); claims; figures: name -> PNG path;
    data: the JSON-able numbers behind every figure (so two runs can be compared exactly)."""

    name: str
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
