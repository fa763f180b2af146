"""What an experiment hands to the report: tables, claims checked against numbers, figures.

:class:`Claim` and the three verdicts live beside the one rule that decides them,
:mod:`resdyn.analysis.verdicts` (a lower layer, so the rule can build claims), and are re-exported
here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analysis.verdicts import VERDICTS, Claim
from ..sweeps.records import CellRecord

__all__ = ["VERDICTS", "Claim", "ExperimentOutcome", "outcome_per_data_set"]


@dataclass
class ExperimentOutcome:
    """name; tables: name -> rows (dicts of plain values); claims; figures: name -> PNG path;
    data: the JSON-able numbers behind every figure (so two runs can be compared exactly)."""

    name: str
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


SetAnalysis = Callable[[list[CellRecord], "ExperimentOutcome", "Path | None", str, str], None]


def outcome_per_data_set(rows: list[CellRecord], out_dir: Path | None, name: str,
                         analyze_set: SetAnalysis) -> ExperimentOutcome:
    """An outcome with ``analyze_set(rows, outcome, out_dir, name, label)`` applied to the
    finished rows of each data set in turn; ``label`` is 'DATA: ' when the sweep has several data
    sets (its tables, claims and figures are then named by it), '' otherwise."""
    outcome = ExperimentOutcome(name)
    by_data: dict[str, list[CellRecord]] = {}
    for r in rows:
        if r.status == "done":
            by_data.setdefault(r.cell.data.name, []).append(r)
    for data, rs in sorted(by_data.items()):
        analyze_set(rs, outcome, out_dir, name, f"{data}: " if len(by_data) > 1 else "")
    return outcome
