"""What an experiment hands to the report: tables, claims checked against numbers, figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Claim", "ExperimentOutcome"]


@dataclass(frozen=True)
class Claim:
    """A claim of a paper, the number measured for it, and whether it held.

    text: the claim in words; measured: the number(s) with interval, as shown to a reader;
    held: the verdict of the stated test; test: how the verdict was reached (e.g. "-0.5 inside
    the 95% interval of the fitted slope"); values: the raw numbers behind it.
    """

    text: str
    measured: str
    held: bool
    test: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExperimentOutcome:
    """name; tables: name -> rows (dicts of plain values); claims; figures: name -> PNG path;
    data: the JSON-able numbers behind every figure (so two runs can be compared exactly)."""

    name: str
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
