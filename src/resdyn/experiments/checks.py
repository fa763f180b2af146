"""Checks every sweep reproduction shares: the bound claims and the measures-against-gap ranking.

Bound claims (docs/theory.md, 12), decided by the one rule (:mod:`resdyn.analysis.verdicts`) with
the seed as the replication unit. Over the finished cells with a finite bound B, per seed s:

* "non-vacuous": v_s = max over the seed's configurations of B; one-sided t across seeds of
  E v < 1 (the exact sign test when every v_s is equal, e.g. a bound that does not depend on the
  seed). Vacuous in every cell of 5 seeds is 'not held' (p = 2^-5).
* "an upper bound on the test error where it says anything": w_s = min over the seed's
  configurations with B < 1 of (B - test error); one-sided t of E w > 0. Cells with B >= 1 cannot
  fail (the test error is at most 1) and are left out; with none left the claim is inconclusive.

The median tightness B / test error and the dominating term (the largest of margin loss,
complexity and confidence, most frequent over cells) are reported beside.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

from ..analysis.ranking import cell_table, rank_measures
from ..analysis.verdicts import mean_test, no_test
from ..sweeps.records import CellRecord
from .base import Claim, ExperimentOutcome

__all__ = ["BOUND_TERMS", "bound_claims", "rank_against_gap"]

BOUND_TERMS = ("margin_loss", "complexity", "confidence")


def _cells(rows: list[CellRecord], key: str) -> list[tuple[object, float, float, dict]]:
    """(seed, B, test error, terms) of every finished cell with a finite bound."""
    out = []
    for r in rows:
        if r.status != "done":
            continue
        b = r.measures.get(key)
        if b is not None and math.isfinite(b):
            terms = {t: r.measures.get(f"{key}.{t}", math.nan) for t in BOUND_TERMS}
            out.append((r.cell.seed, b, 1.0 - r.metrics["test_acc"], terms))
    return out


def bound_claims(rows: list[CellRecord], key: str = "test_error_bound") -> list[Claim]:
    """The two bound claims of the module docstring ([] when no cell recorded ``key``)."""
    cells = _cells(rows, key)
    if not cells:
        return []
    done = sum(r.status == "done" for r in rows)
    n = len(cells)
    seeds = sorted({c[0] for c in cells}, key=str)
    vacuous = sum(b >= 1.0 for _, b, _, _ in cells)
    live = [(s, b, e) for s, b, e, _ in cells if b < 1.0]
    violated = sum(b < e for _, b, e in live)
    with np.errstate(divide="ignore"):
        tight = float(np.median([b / e if e > 0 else math.inf for _, b, e, _ in cells]))
    dom = Counter(max(t, key=lambda k: t[k] if math.isfinite(t[k]) else -math.inf) for *_, t in cells)
    dominant, dom_n = dom.most_common(1)[0]
    values = {"cells": n, "vacuous": vacuous, "non_vacuous": len(live), "violated": violated,
              "median_tightness": tight if math.isfinite(tight) else None, "dominant_term": dominant,
              "dominant_cells": dom_n, "without_bound": done - n, "seeds": len(seeds)}
    where = f" ({done - n} cells have no finite bound: the class does not cover them)" if done > n else ""
    shape = (f"median bound / test error {tight:.3g}; dominating term {dominant} in {dom_n} of {n} "
             f"cells{where}")
    worst = {s: max(b for s_, b, _, _ in cells if s_ == s) for s in seeds}
    head = (f"vacuous in every cell ({n} of {n} have bound >= 1)" if vacuous == n else
            f"{len(live)} of {n} cells non-vacuous (bound < 1), {vacuous} vacuous")
    v1 = mean_test(list(worst.values()), 1.0, "less", what="mean over seeds of the largest bound")
    c1 = v1.claim("the assembled test-error bound is non-vacuous (below 1) in every cell",
                  f"{head}; largest bound per seed {', '.join(f'{b:.3g}' for b in worst.values())}; {shape}",
                  {**values, "largest_per_seed": worst})
    margins = {s: min(b - e for s_, b, e in live if s_ == s) for s in seeds if any(x[0] == s for x in live)}
    text = "where it is non-vacuous, the assembled bound lies above the measured test error"
    if not margins:
        c2 = no_test("one-sided t, H1: smallest margin B - test error > 0",
                     "vacuous in every cell: a bound >= 1 cannot fall below a test error, so the claim "
                     "cannot fail here", "seed", len(seeds)).claim(text, head, values)
    else:
        v2 = mean_test(list(margins.values()), 0.0, "greater", what="mean smallest margin B - test error")
        c2 = v2.claim(text, f"{len(live)} non-vacuous cells, {violated} below the test error; smallest "
                      f"margin per seed {', '.join(f'{m:.3g}' for m in margins.values())}",
                      {**values, "smallest_margin_per_seed": margins})
    return [c1, c2]


def rank_against_gap(rows: list[CellRecord], outcome: ExperimentOutcome, out_dir: Path | None,
                     name: str) -> None:
    """Add the table 'measures against the gap' (Kendall tau and granulated tau of the seed means,
    the per-seed values with t intervals over seeds, every recorded measure) and its figure."""
    table = cell_table(rows)
    if not table.measures or len(table.cells) < 2:
        return
    results = rank_measures(table)
    rank_rows = [r.as_row() for r in results]
    outcome.tables["measures against the gap (rank correlation)"] = rank_rows
    outcome.data["rank_correlation"] = {"axes": table.axis_names, "cells": len(table.cells),
                                        "seeds": len(table.seeds), "rows": rank_rows}
    if out_dir is None:
        return
    shown = [r for r in results if math.isfinite(r.tau_seed)]
    if not shown:
        return
    from ..plotting import line_figure

    def entry(label: str, offset: float, pick: str) -> dict:
        pts = [(i + offset, getattr(r, f"{pick}_seed"), getattr(r, f"{pick}_ci")) for i, r in enumerate(shown)
               if math.isfinite(getattr(r, f"{pick}_seed"))]
        # an undefined interval end (fewer than 2 seeds) shows as no bar, not as a fake one
        return {"label": label, "x": [p[0] for p in pts], "y": [p[1] for p in pts],
                "lo": [p[2][0] if math.isfinite(p[2][0]) else p[1] for p in pts],
                "hi": [p[2][1] if math.isfinite(p[2][1]) else p[1] for p in pts], "style": "errorbar"}

    series = [entry("per-seed Kendall tau", 0.0, "tau"), entry("per-seed granulated tau", 0.2, "granulated")]
    outcome.data["rank_correlation"]["figure_order"] = [r.measure for r in shown]
    outcome.figures["rank correlation of each measure with the gap"] = line_figure(
        Path(out_dir) / f"{name}-rank.png", series,
        "measure (order in the table 'measures against the gap')", "rank correlation with the gap",
        "Measures against the gap (mean per-seed tau, 95% t intervals over seeds)")
