"""The sample-size reproduction: the generalization gap against S, with log-log rate tests.

Claim tested (first paper): the gap decays like S^{-1/2}. For each data set and model family the
error gap (train accuracy - test accuracy) of every seed at every S enters a per-seed slope fit
(:mod:`resdyn.analysis.rates`: the mean of the per-seed slopes with a t interval over seeds, since
a seed's nested subsamples are not independent points). Beside the slope, a straightness test of
the log-log curve (per-seed quadratic term, t across seeds): the claim is made only over the
widest run of consecutive sizes where the curve is not significantly curved, and the words name
that range and the local slopes at its ends. Over that range, two one-sided tests of
|b + 1/2| < 0.15 (TOST) decide it by the one rule (:mod:`resdyn.analysis.verdicts`): 'held' when
they reject, 'not held' when the data show |b + 1/2| > 0.15, 'inconclusive' otherwise (and when
every range is curved). Gaps <= 0 switch the per-seed fit to the linear scale (no floor). The loss
gap, test error and bound get the same fit (descriptive). The bound claim (:mod:`.checks`) and
every recorded measure ranked against the gap complete the section.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.rates import MARGIN, fit_rate, rate_claim, straight_range
from ..analysis.summary import group_rows, mean_ci
from ..analysis.verdicts import no_test
from ..sweeps.records import CellRecord
from .base import Claim, ExperimentOutcome
from .checks import bound_claims, rank_against_gap

__all__ = ["analyze", "fit_series"]


def _series_key(row: CellRecord) -> tuple[str, str]:
    return row.cell.data.name, row.cell.model.family


def _label(key: tuple[str, str]) -> str:
    data, family = key
    return f"{data} / {family}"


def _bound_value(row: CellRecord) -> float | None:
    return row.measures.get("test_error_bound")


def certificate(row: CellRecord) -> str:
    """Which path-norm certificate covers the cell's model, or why none does (docs/theory.md, 10)."""
    model = row.cell.model
    family = model.family
    if family == "resnet":
        return "path norm (discrete)"
    if family == "ode_resnet":
        method = getattr(model, "method", "rk4")
        return "flow (Euler)" if method == "euler" else f"not covered: solver {method}"
    return f"not applicable: family {family}"


def _log_path_norm(row: CellRecord) -> float | None:
    m = row.measures
    v = m.get("path_norm_bound.log_path_norm")
    if v is None or not math.isfinite(v):
        v = m.get("flow_bound.log_path_norm")
    return v if v is not None and math.isfinite(v) else None


def fit_series(points: list[tuple[int, Any, float]]) -> dict[str, Any]:
    """Per-seed rate fit of (S, seed, value) points; {'fit': RateFit.as_dict() or None, 'reason'}."""
    pts = [p for p in points if p[2] is not None and math.isfinite(p[2])]
    try:
        f = fit_rate([p[0] for p in pts], [p[2] for p in pts], [p[1] for p in pts])
    except ValueError as err:
        return {"fit": None, "reason": str(err), "n": len(pts), "object": None}
    return {"fit": f.as_dict(), "n": len(pts), "object": f}


def _rate_claim(text: str, pts: list[tuple[int, Any, float]], eg: dict[str, Any], rate: Any) -> Claim:
    """The claim "gap ~ S^-1/2" by the rule of the module docstring; ``eg`` (the error-gap fit
    entry) gets the verdict, the straightness test and the range."""
    if rate is None:
        return no_test("TOST, H1: |b + 0.5| < 0.15", f"no per-seed slope could be fitted: {eg['reason']}"
                       ).claim(text, "no fit", eg)
    pts = [p for p in pts if p[2] is not None and math.isfinite(p[2])]
    x, g, y = (np.array([p[i] for p in pts]) for i in (0, 1, 2))
    try:
        full, rng = straight_range(x, y, g)
    except ValueError as err:
        lo, hi = rate.ci95
        return no_test("TOST, H1: |b + 0.5| < 0.15", f"no straightness test: {err}", "seed",
                       rate.seeds).claim(text, f"slope {rate.slope:.3f}, 95% CI [{lo:.3f}, {hi:.3f}] "
                                               f"({rate.seeds} seeds)", {**rate.as_dict()})
    fit = rate
    if rng is not None and rng is not full:
        keep = np.isin(x, rng.sizes)
        fit = fit_rate(x[keep], y[keep], g[keep])
    v = rate_claim(fit, -0.5, "equivalent", MARGIN, straight=(full, rng))
    eg.update(verdict=v.verdict, test_pvalue=v.pvalue, p_equal=v.values["p_equal"],
              p_faster=fit.p_faster(-0.5), straightness=full.as_dict(),
              range=v.values.get("range"), range_fit=fit.as_dict())
    return Claim(text, v.words, v.verdict, v.test, v.values)


def _fit_line(S: list[int], fit: dict[str, Any]) -> dict[str, list[float]]:
    x = np.asarray(S, dtype=float)
    lx = np.log(x)
    c = lx.mean()
    y0 = fit["intercept"] + fit["slope"] * c
    return {"x": list(x), "y": list(np.exp(y0 + fit["slope"] * (lx - c))),
            "lo": list(np.exp(y0 + fit["ci95"][0] * (lx - c))),
            "hi": list(np.exp(y0 + fit["ci95"][1] * (lx - c))),
            "label": f"fit slope {fit['slope']:.2f} [{fit['ci95'][0]:.2f}, {fit['ci95'][1]:.2f}]"}


def analyze(rows: list[CellRecord], out_dir: Path | None = None,
            name: str = "sample-size") -> ExperimentOutcome:
    """Tables, claims and figures from the store rows of a sample-size sweep."""
    outcome = ExperimentOutcome(name)
    table: list[dict] = []
    gap_series, bound_series = [], []
    for key, rs in sorted(group_rows(rows, _series_key).items()):
        by_S = dict(sorted(group_rows(rs, lambda r: r.cell.sample_size).items()))
        S = list(by_S)
        stats: dict[str, list] = {"error_gap": [], "loss_gap": [], "test_error": [], "bound": []}
        for s, cell in by_S.items():
            ok = [r for r in cell if r.status == "done"]
            row = {"data": key[0], "family": key[1], "S": s, "seeds": len(ok),
                   "diverged": len(cell) - len(ok)}
            for name_, get in (("error_gap", lambda r: r.metrics["error_gap"]),
                               ("loss_gap", lambda r: r.metrics["loss_gap"]),
                               ("test_error", lambda r: 1.0 - r.metrics["test_acc"]),
                               ("bound", _bound_value)):
                vals = [v for v in (get(r) for r in ok) if v is not None and math.isfinite(v)]
                ci = mean_ci(vals) if vals else None
                stats[name_].append(ci)
                row[name_] = ci.mean if ci else None
                row[f"{name_}_ci"] = [ci.lo, ci.hi] if ci else None
            if ok:
                cert = certificate(ok[0])
                row["certificate"] = cert
                if row["bound"] is None:
                    # a reason, not a blank: the bound does not exist for this model
                    row["bound"] = cert if cert.startswith("not") else "no finite bound"
                logs = [v for v in (_log_path_norm(r) for r in ok) if v is not None]
                row["log_path_norm"] = mean_ci(logs).mean if logs else "not applicable"
            table.append(row)
        getters = {"error_gap": lambda r: r.metrics["error_gap"],
                   "loss_gap": lambda r: r.metrics["loss_gap"],
                   "test_error": lambda r: 1.0 - r.metrics["test_acc"], "bound": _bound_value}
        done = [r for r in rs if r.status == "done"]
        fits: dict[str, Any] = {}
        rate = None
        for name_, get in getters.items():
            pts = [(r.cell.sample_size, r.cell.seed, get(r)) for r in done]
            if all(p[2] is None for p in pts):
                continue
            fs = fit_series(pts)
            if name_ == "error_gap":
                rate = fs.pop("object")
            else:
                fs.pop("object")
            fits[name_] = fs
        label = _label(key)
        outcome.data.setdefault("fits", {})[label] = fits
        outcome.data.setdefault("series", {})[label] = {
            "S": S, **{k: [c.as_dict() if c else None for c in v] for k, v in stats.items()}}
        eg = fits["error_gap"]
        text = f"{label}: the generalization gap decays like S^-1/2"
        gap_pts = [(r.cell.sample_size, r.cell.seed, r.metrics["error_gap"]) for r in done]
        outcome.claims.append(_rate_claim(text, gap_pts, eg, rate))
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
        with_bound = [(s, b, e) for s, b, e in zip(S, stats["bound"], stats["test_error"], strict=True)
                      if b is not None and e is not None]
        if with_bound:
            bound_series.append({"label": f"{label} bound", "x": [w[0] for w in with_bound],
                                 "y": [w[1].mean for w in with_bound], "ls": "--"})
            bound_series.append({"label": f"{label} test error", "x": [w[0] for w in with_bound],
                                 "y": [w[2].mean for w in with_bound]})
    outcome.tables["gap against S"] = table
    outcome.claims += bound_claims(rows)
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
    rank_against_gap(rows, outcome, out_dir, name)
    return outcome
