"""The dead-zone reproduction: relu and tanh against activations with an explicit dead zone.

Two regimes (the spec sweeps ``weight_decay``):

* plain training (weight decay 0). Claim tested (first paper): activations with a dead zone
  generalize better. The error gaps of all dead-zone cells (tau > 0) are compared with those of
  relu and of tanh by Welch's t-test (one-sided, alpha 0.05): 'held' when the dead-zone gap is
  significantly below both, 'not held' when it is significantly above either, 'inconclusive'
  otherwise.
* weight decay lambda > 0 (docs/theory.md, 14). The dead-zone term of the path-norm bound is
  positive only for samples with mu* ||x~|| <= tau, where mu* is the largest unit pre-activation
  level; after plain training mu* is 1e4 to 1e10 and the term is 0 in every cell. With an L2
  penalty strong enough, the residual blocks' weights shrink until every unit's level is inside
  the band, and the term becomes visible. Claim: for every dead-zone activation and width tau > 0
  the seed-mean dead-zone term is positive, by a one-sided t-test (its 95% lower confidence bound
  is above 0: 'held'); 'not held' when some two-sided 95% interval lies at or below 0.

Both regimes report the error gap, test error, dead-zone term, dead fraction and mu* per activation
and tau with 95% seed intervals, the bound claim (:mod:`.checks`), and every measure ranked against
the gap.
"""

from __future__ import annotations

import math
from pathlib import Path

from scipy import stats

from ..analysis.summary import group_rows, mean_ci
from .base import Claim, ExperimentOutcome
from .checks import bound_claim, rank_against_gap

__all__ = ["analyze"]

DEAD_ZONE = ("soft_threshold", "shifted_relu", "smooth_dead_zone")


def _key(r: dict) -> tuple[float, str, float]:
    m = r["config"]["model"]
    tau = m.get("tau", 0.0) if m["activation"] in DEAD_ZONE else 0.0
    return float(r["config"].get("train", {}).get("weight_decay", 0.0) or 0.0), m["activation"], tau


def _welch_below(a: list[float], b: list[float]) -> tuple[float, float]:
    """One-sided Welch p-values of mean(a) < mean(b) and of mean(a) > mean(b)."""
    if len(a) < 2 or len(b) < 2:
        return 1.0, 1.0
    t = stats.ttest_ind(a, b, equal_var=False)
    if not math.isfinite(t.pvalue):
        return 1.0, 1.0
    half = t.pvalue / 2
    return (half, 1 - half) if t.statistic < 0 else (1 - half, half)


def _gap_claim(ok: list[dict], wd: float) -> Claim | None:
    dz = [r["metrics"]["error_gap"] for r in ok if _key(r)[1] in DEAD_ZONE and _key(r)[2] > 0]
    base = {a: [r["metrics"]["error_gap"] for r in ok if _key(r)[1] == a] for a in ("relu", "tanh")}
    if not (dz and all(base.values())):
        return None
    dz_ci = mean_ci(dz)
    base_ci = {a: mean_ci(v) for a, v in base.items()}
    p = {a: _welch_below(dz, v) for a, v in base.items()}
    if all(pb < 0.05 for pb, _ in p.values()):
        verdict = "held"
    elif any(pa < 0.05 for _, pa in p.values()):
        verdict = "not held"
    else:
        verdict = "inconclusive"
    words = (f"dead-zone gap {dz_ci}; relu {base_ci['relu']}; tanh {base_ci['tanh']}; one-sided Welch "
             f"p (dead zone smaller): relu {p['relu'][0]:.2g}, tanh {p['tanh'][0]:.2g}")
    if verdict == "inconclusive":
        words += "; inconclusive: no significant difference, which is not evidence for the claim"
    return Claim(
        f"activations with a dead zone generalize better (smaller error gap; weight decay {wd:g})",
        words, verdict,
        "Welch t-tests, one-sided, alpha 0.05: held when the dead-zone gap is below relu's and "
        "tanh's, not held when above either",
        {"dead_zone": dz_ci.as_dict(), **{a: c.as_dict() for a, c in base_ci.items()},
         "p_smaller": {a: v[0] for a, v in p.items()}, "p_larger": {a: v[1] for a, v in p.items()}})


def _lower_bound(vals: list[float], level: float = 0.95) -> float:
    """One-sided lower confidence bound mean - t_{level, n-1} s / sqrt(n) (the point when n = 1)."""
    ci = mean_ci(vals)
    if ci.n < 2:
        return ci.mean
    return ci.mean - float(stats.t.ppf(level, ci.n - 1)) * ci.std / math.sqrt(ci.n)


def _term_claim(ok: list[dict], wd: float) -> Claim | None:
    groups = group_rows([r for r in ok if _key(r)[0] == wd and _key(r)[2] > 0],
                        lambda r: _key(r)[1:])
    stats_ = []
    for (act, tau), rs in sorted(groups.items()):
        vals = [v for v in (r["measures"].get("dead_zone") for r in rs) if v is not None and math.isfinite(v)]
        frac = [r["measures"].get("dead_zone.dead_fraction", math.nan) for r in rs]
        if vals:
            stats_.append((act, tau, mean_ci(vals), _lower_bound(vals), float(sum(frac) / len(frac))))
    if not stats_:
        return None
    if all(lb > 0 for *_, lb, _ in stats_):
        verdict = "held"
    elif any(ci.hi <= 0 for _, _, ci, _, _ in stats_):
        verdict = "not held"
    else:
        verdict = "inconclusive"
    shown = "; ".join(f"{act} tau={tau:g}: {ci.mean:.3g} (95% lower bound {lb:.3g}, seeds {ci.n}), "
                      f"dead fraction {fr:.2f}" for act, tau, ci, lb, fr in stats_)
    return Claim(f"the dead-zone term is positive for tau > 0 (weight decay {wd:g})", shown, verdict,
                 "one-sided t, H0: mean term <= 0, alpha 0.05, for every (activation, tau > 0): held "
                 "when the 95% lower confidence bound is > 0 for all; not held when some 95% "
                 "interval lies at or below 0",
                 {"rows": [{"activation": act, "tau": tau, "mean": ci.mean, "lower_bound": lb,
                            "dead_fraction": fr} for act, tau, ci, lb, fr in stats_]})


def analyze(rows: list[dict], out_dir: Path | None = None, name: str = "dead-zone") -> ExperimentOutcome:
    outcome = ExperimentOutcome(name)
    ok = [r for r in rows if r["status"] == "done"]
    groups = dict(sorted(group_rows(ok, _key).items()))
    table = []
    for (wd, act, tau), rs in groups.items():
        row = {"weight_decay": wd, "activation": act, "tau": tau, "seeds": len(rs)}
        for m, get in (("error_gap", lambda r: r["metrics"]["error_gap"]),
                       ("loss_gap", lambda r: r["metrics"]["loss_gap"]),
                       ("test_error", lambda r: 1 - r["metrics"]["test_acc"]),
                       ("dead_zone_term", lambda r: r["measures"].get("dead_zone")),
                       ("dead_fraction", lambda r: r["measures"].get("dead_zone.dead_fraction")),
                       ("mu_star", lambda r: r["measures"].get("dead_zone.mu"))):
            vals = [v for v in (get(r) for r in rs) if v is not None and math.isfinite(v)]
            if vals:
                ci = mean_ci(vals)
                row[m], row[f"{m}_ci"] = ci.mean, [ci.lo, ci.hi]
        table.append(row)
    outcome.tables["gap and dead-zone term by activation"] = table
    outcome.data["table"] = table
    regimes = sorted({k[0] for k in groups})
    for wd in regimes:
        claim = _gap_claim([r for r in ok if _key(r)[0] == wd], wd) if wd == 0 else None
        if claim is not None:
            outcome.claims.append(claim)
    for wd in regimes:
        if wd > 0:
            claim = _term_claim(ok, wd)
            if claim is not None:
                outcome.claims.append(claim)
    claim = bound_claim(rows)
    if claim is not None:
        outcome.claims.append(claim)
    if out_dir is not None and table:
        from ..plotting import line_figure

        for m, label in (("error_gap", "error gap"), ("dead_zone_term", "dead-zone term")):
            series = []
            for wd in regimes:
                for act in dict.fromkeys(r["activation"] for r in table):
                    rs = [r for r in table if r["activation"] == act and r["weight_decay"] == wd and m in r]
                    if rs:
                        series.append({"label": f"{act}, wd {wd:g}", "x": [r["tau"] for r in rs],
                                       "y": [r[m] for r in rs], "lo": [r[f"{m}_ci"][0] for r in rs],
                                       "hi": [r[f"{m}_ci"][1] for r in rs], "style": "errorbar"})
            if series:
                outcome.figures[f"{label} against dead-zone width"] = line_figure(
                    Path(out_dir) / f"{name}-{m.replace('_', '-')}.png", series,
                    "dead-zone width tau (0: none)", label, f"{label.capitalize()} by activation")
    rank_against_gap(rows, outcome, out_dir, name)
    return outcome
