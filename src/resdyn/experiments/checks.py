"""Checks every sweep reproduction shares: the bound claim and the measures-against-gap ranking.

Bound claim (docs/theory.md, 12): a test-error bound B is evidence only where it is non-vacuous,
B < 1. Over the finished cells with a finite bound: V = number of vacuous cells (B >= 1),
violations = non-vacuous cells with B < measured test error (the bound is wrong there), tightness
= median of B / test error, and the dominating term = the largest of the assembled bound's
margin-loss, complexity and confidence terms, most frequent over cells. Verdict: 'not held' when
every cell is vacuous ("vacuous in every cell") or any non-vacuous cell is violated; 'held' when
at least half of the cells are non-vacuous and none is violated; otherwise 'inconclusive'.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

from ..analysis.ranking import cell_table, rank_measures
from .base import Claim, ExperimentOutcome

__all__ = ["BOUND_TERMS", "bound_claim", "rank_against_gap"]

BOUND_TERMS = ("margin_loss", "complexity", "confidence")


def bound_claim(rows: list[dict], key: str = "test_error_bound") -> Claim | None:
    """The bound claim of the module docstring, or None when no cell recorded ``key``."""
    done = [r for r in rows if r["status"] == "done"]
    cells = []
    for r in done:
        b = r["measures"].get(key)
        if b is not None and math.isfinite(b):
            terms = {t: r["measures"].get(f"{key}.{t}", math.nan) for t in BOUND_TERMS}
            cells.append((b, 1.0 - r["metrics"]["test_acc"], terms))
    if not cells:
        return None
    n = len(cells)
    without = len(done) - n
    vacuous = sum(b >= 1.0 for b, _, _ in cells)
    live = [(b, e) for b, e, _ in cells if b < 1.0]
    violated = sum(b < e for b, e in live)
    with np.errstate(divide="ignore"):
        tight = float(np.median([b / e if e > 0 else math.inf for b, e, _ in cells]))
    dom = Counter(max(t, key=lambda k: t[k] if math.isfinite(t[k]) else -math.inf) for _, _, t in cells)
    dominant, dom_n = dom.most_common(1)[0]
    values = {"cells": n, "vacuous": vacuous, "non_vacuous": len(live), "violated": violated,
              "median_tightness": tight if math.isfinite(tight) else None,
              "dominant_term": dominant, "dominant_cells": dom_n, "without_bound": without}
    where = f" ({without} cells have no finite bound: the class does not cover them)" if without else ""
    shape = (f"median bound / test error {tight:.3g}; dominating term {dominant} in {dom_n} of {n} "
             f"cells{where}")
    if vacuous == n:
        verdict, measured = "not held", f"vacuous in every cell ({n} of {n} have bound >= 1); {shape}"
    else:
        measured = (f"{len(live)} of {n} cells non-vacuous (bound < 1), {vacuous} vacuous; "
                    f"{violated} non-vacuous cells below the test error; {shape}")
        if violated:
            verdict = "not held"
        elif len(live) * 2 >= n:
            verdict = "held"
        else:
            verdict = "inconclusive"
    return Claim("the assembled test-error bound is a non-vacuous upper bound on the test error",
                 measured, verdict,
                 "only cells with bound < 1 count; held: >= half non-vacuous and none below the "
                 "test error; vacuous everywhere or any violation: not held", values)


def rank_against_gap(rows: list[dict], outcome: ExperimentOutcome, out_dir: Path | None, name: str,
                     n_boot: int = 200) -> None:
    """Add the table 'measures against the gap' (Kendall tau and granulated tau with bootstrap
    intervals over seeds, every recorded measure) and its figure to ``outcome``."""
    table = cell_table(rows)
    if not table.measures or len(table.cells) < 2:
        return
    results = rank_measures(table, n_boot=n_boot)
    rank_rows = [r.as_row() for r in results]
    outcome.tables["measures against the gap (rank correlation)"] = rank_rows
    outcome.data["rank_correlation"] = {"axes": table.axis_names, "cells": len(table.cells),
                                        "seeds": len(table.seeds), "rows": rank_rows}
    if out_dir is None:
        return
    shown = [r for r in results if math.isfinite(r.tau)]
    if not shown:
        return
    from ..plotting import line_figure

    def entry(label: str, offset: float, pick: str) -> dict:
        pts = [(i + offset, getattr(r, pick), getattr(r, f"{pick}_ci")) for i, r in enumerate(shown)
               if math.isfinite(getattr(r, pick))]
        # an undefined bootstrap end (every replicate tied) shows as no bar, not as a fake one
        return {"label": label, "x": [p[0] for p in pts], "y": [p[1] for p in pts],
                "lo": [p[2][0] if math.isfinite(p[2][0]) else p[1] for p in pts],
                "hi": [p[2][1] if math.isfinite(p[2][1]) else p[1] for p in pts], "style": "errorbar"}

    series = [entry("Kendall tau", 0.0, "tau"), entry("granulated tau", 0.2, "granulated")]
    outcome.data["rank_correlation"]["figure_order"] = [r.measure for r in shown]
    outcome.figures["rank correlation of each measure with the gap"] = line_figure(
        Path(out_dir) / f"{name}-rank.png", series,
        "measure (order in the table 'measures against the gap')", "rank correlation with the gap",
        "Measures against the gap (95% bootstrap intervals over seeds)")
