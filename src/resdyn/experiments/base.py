"""What an experiment hands to the report: tables, claims checked against numbers, figures.

:class:`Claim` and the three verdicts live beside the one rule that decides them,
:mod:`resdyn.analysis.verdicts` (a lower layer, so the rule can build claims), and are re-exported
here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analysis.verdicts import VERDICTS, Claim

__all__ = ["VERDICTS", "Claim", "ExperimentOutcome"]


@dataclass
class ExperimentOutcome:
    """name; tables: name -> rows (dicts of plain values); claims; figures: name -> PNG path;
    data: the JSON-able numbers behind every figure (so two runs can be compared exactly)."""

    name: str
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
