"""The sample-size reproduction: the generalization gap against S, with log-log fits.

Claim tested (first paper): the gap decays like S^{-1/2}. For each data set and model family the
error gap (train accuracy - test accuracy) and the loss gap (test loss - train loss) are averaged
over seeds at each S, and log(mean gap) is fitted against log S by ordinary least squares; the
claim holds for a series when -0.5 lies inside the 95% interval of the fitted slope. Sizes whose
seed-averaged gap is not positive have no logarithm: they are named and left out of the fit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.summary import group_rows, mean_ci
from .base import Claim, ExperimentOutcome

__all__ = ["analyze"]


def _series_key(row: dict) -> tuple[str, str]:
    return row["config"]["data"]["name"], row["config"]["model"]["family"]


def _label(key: tuple[str, str]) -> str:
    data, family = key
    return f"{data} / {family}"


def _bound_value(row: dict) -> float | None:
    return row["measures"].get("test_error_bound")


def fit_positive(S: list[int], means: list[float]) -> dict[str, Any]:
    """OLS of log(mean) on log(S) over the sizes whose mean is positive."""
    from ..analysis.fits import fit_loglog

    keep = [(s, m) for s, m in zip(S, means, strict=True) if m is not None and m > 0]
    dropped = [s for s, m in zip(S, means, strict=True) if m is None or m <= 0]
    out: dict[str, Any] = {"dropped_S": dropped, "n": len(keep)}
    if len(keep) < 3:
        out["fit"] = None
        return out
    f = fit_loglog([k[0] for k in keep], [k[1] for k in keep])
    out["fit"] = {"slope": f.slope, "intercept": f.intercept, "stderr": f.stderr,
                  "ci95": list(f.ci95), "pvalue": f.pvalue, "n": f.n}
    return out


def _fit_line(S: list[int], fit: dict[str, Any]) -> dict[str, list[float]]:
    x = np.asarray(S, dtype=float)
    lx = np.log(x)
    c = lx.mean()
    y0 = fit["intercept"] + fit["slope"] * c
    return {"x": list(x), "y": list(np.exp(y0 + fit["slope"] * (lx - c))),
            "lo": list(np.exp(y0 + fit["ci95"][0] * (lx - c))),
            "hi": list(np.exp(y0 + fit["ci95"][1] * (lx - c))),
            "label": f"fit slope {fit['slope']:.2f} [{fit['ci95'][0]:.2f}, {fit['ci95'][1]:.2f}]"}


def _bound_claim(rows: list[dict], outcome: ExperimentOutcome) -> None:
    """The assembled test-error bound (theory issue) must be at least the measured test error in
    every cell where it applies; report the ratio bound / error gap across S."""
    cells = []
    for r in rows:
        b = _bound_value(r)
        if r["status"] == "done" and b is not None and math.isfinite(b):
            cells.append((r["config"]["sample_size"], b, 1.0 - r["metrics"]["test_acc"],
                          r["metrics"]["error_gap"]))
    if not cells:
        return
    without = sum(1 for r in rows if r["status"] == "done") - len(cells)
    ratios: dict[int, list[float]] = {}
    for S, b, _, gap in cells:
        if gap > 0:
            ratios.setdefault(S, []).append(b / gap)
    shown = "; ".join(f"S={S}: {min(v):.3g}-{max(v):.3g}" for S, v in sorted(ratios.items()))
    held = all(b >= err for _, b, err, _ in cells)
    note = f" ({without} cells have no finite bound: the class does not cover them)" if without else ""
    outcome.claims.append(Claim(
        "the assembled test-error bound is at least the measured test error",
        f"{sum(b >= e for _, b, e, _ in cells)} of {len(cells)} cells{note}; bound / error gap: {shown}",
        held, "bound >= 1 - test accuracy in every cell with a finite bound",
        {"ratios": {str(k): v for k, v in sorted(ratios.items())}, "cells": len(cells)}))


def analyze(rows: list[dict], out_dir: Path | None = None, name: str = "sample-size") -> ExperimentOutcome:
    """Tables, claims and figures from the store rows of a sample-size sweep."""
    outcome = ExperimentOutcome(name)
    table: list[dict] = []
    gap_series, bound_series = [], []
    for key, rs in sorted(group_rows(rows, _series_key).items()):
        by_S = dict(sorted(group_rows(rs, lambda r: r["config"]["sample_size"]).items()))
        S = list(by_S)
        stats: dict[str, list] = {"error_gap": [], "loss_gap": [], "test_error": [], "bound": []}
        for s, cell in by_S.items():
            ok = [r for r in cell if r["status"] == "done"]
            row = {"data": key[0], "family": key[1], "S": s, "seeds": len(ok),
                   "diverged": len(cell) - len(ok)}
            for name_, get in (("error_gap", lambda r: r["metrics"]["error_gap"]),
                               ("loss_gap", lambda r: r["metrics"]["loss_gap"]),
                               ("test_error", lambda r: 1.0 - r["metrics"]["test_acc"]),
                               ("bound", _bound_value)):
                vals = [v for v in (get(r) for r in ok) if v is not None and math.isfinite(v)]
                ci = mean_ci(vals) if vals else None
                stats[name_].append(ci)
                row[name_] = ci.mean if ci else None
                row[f"{name_}_ci"] = [ci.lo, ci.hi] if ci else None
            table.append(row)
        fits = {}
        for name_ in ("error_gap", "loss_gap", "test_error", "bound"):
            means = [c.mean if c else None for c in stats[name_]]
            if all(m is None for m in means):
                continue
            fits[name_] = fit_positive(S, means)
        label = _label(key)
        outcome.data.setdefault("fits", {})[label] = fits
        outcome.data.setdefault("series", {})[label] = {
            "S": S, **{k: [c.as_dict() if c else None for c in v] for k, v in stats.items()}}
        eg = fits["error_gap"]
        if eg["fit"] is None:
            outcome.claims.append(Claim(
                f"{label}: the generalization gap decays like S^-1/2",
                f"no fit: seed-averaged error gap positive at only {eg['n']} sizes "
                f"(not positive at S = {eg['dropped_S']})", False,
                "-0.5 inside the 95% interval of the log-log slope of the seed-averaged error gap",
                eg))
        else:
            f = eg["fit"]
            lo, hi = f["ci95"]
            note = f"; not positive at S = {eg['dropped_S']}, left out" if eg["dropped_S"] else ""
            outcome.claims.append(Claim(
                f"{label}: the generalization gap decays like S^-1/2",
                f"slope {f['slope']:.3f}, 95% CI [{lo:.3f}, {hi:.3f}], p = {f['pvalue']:.2g}{note}",
                lo <= -0.5 <= hi,
                "-0.5 inside the 95% interval of the log-log slope of the seed-averaged error gap",
                eg))
        pos = [(s, c) for s, c in zip(S, stats["error_gap"], strict=True) if c and c.mean > 0]
        if pos:
            entry = {"label": f"{label}", "x": [p[0] for p in pos],
                     "y": [p[1].mean for p in pos],
                     # A log axis has no room for an interval that reaches 0: clip at mean / 10.
                     "lo": [max(p[1].lo, p[1].mean / 10) for p in pos],
                     "hi": [p[1].hi for p in pos], "style": "errorbar"}
            if eg["fit"] is not None:
                entry["fit"] = _fit_line([p[0] for p in pos], eg["fit"])
            gap_series.append(entry)
        if "bound" in fits:
            bound_series.append({"label": f"{label} bound", "x": S,
                                 "y": [c.mean for c in stats["bound"]], "ls": "--"})
            bound_series.append({"label": f"{label} test error", "x": S,
                                 "y": [c.mean for c in stats["test_error"]]})
    outcome.tables["gap against S"] = table
    _bound_claim(rows, outcome)
    outcome.data["figures"] = {"gap": gap_series, "bound": bound_series}
    if out_dir is not None:
        from ..plotting import line_figure

        if gap_series:
            outcome.figures["gap against S (log-log)"] = line_figure(
                Path(out_dir) / f"{name}-gap.png", gap_series, "training samples S",
                "error gap (train acc - test acc)", "Generalization gap against S", True, True)
        if bound_series:
            outcome.figures["bound against test error"] = line_figure(
                Path(out_dir) / f"{name}-bound.png", bound_series, "training samples S",
                "test error / bound", "Test-error bound and measured test error", True, True)
    return outcome
