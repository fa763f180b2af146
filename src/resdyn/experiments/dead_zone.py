"""The dead-zone reproduction: relu and tanh against activations with an explicit dead zone.

The spec sweeps ``weight_decay`` (docs/theory.md, 14). A regime (one weight decay) **trains**
when relu's mean test accuracy there is at least ``TRAINS`` = 0.9; the claims are made only in
regimes that train, and the term claim at the largest such weight decay. A regime where relu does
not train (at 0.03 every unit is dead and every activation falls to about 0.67) stays in the
tables as a labelled illustration ("collapsed"), with no claim.

Every comparison is paired: a dead-zone cell (activation a, width tau) is matched with the relu
cell of the same seed and every other setting (data, S, network width, depth, weight decay), and
the replication unit is the seed: its value is the mean over tau of the paired differences. By
the one rule (:mod:`resdyn.analysis.verdicts`), per dead-zone activation a:

* "the dead-zone term is positive": d_s = mean_tau [term(a, tau) - term(relu)] (relu has no dead
  zone: its term is 0 when not recorded); one-sided t across seeds of E d > 0, the exact sign test
  when every d_s is equal (a term that is 0 in every seed is 'not held' once the seeds are enough
  for the sign test, 5 or more: p = 2^-n). The test accuracy of every activation and its paired
  difference to the best activation (90% t interval, margin ``ACC_MARGIN`` = 0.02) are reported
  beside the term.
* "a generalizes better than relu": d_s = mean_tau [gap(a, tau) - gap(relu)], one-sided t of
  E d < 0, in every regime that trains.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..analysis.summary import group_rows, mean_ci
from ..analysis.verdicts import mean_test, no_test
from ..sweeps.records import CellRecord
from .base import Claim, ExperimentOutcome, outcome_per_data_set
from .checks import bound_claims, rank_against_gap

__all__ = ["ACC_MARGIN", "TRAINS", "analyze"]

DEAD_ZONE = ("soft_threshold", "shifted_relu", "smooth_dead_zone")
TRAINS = 0.9
ACC_MARGIN = 0.02


def _key(r: CellRecord) -> tuple[float, str, float]:
    m = r.cell.model
    tau = getattr(m, "tau", 0.0) if m.activation in DEAD_ZONE else 0.0
    return float(r.cell.training.config.weight_decay or 0.0), m.activation, tau


def _pair_key(r: CellRecord) -> str:
    """Every setting of the cell except the activation and its tau (seed and weight decay included)."""
    import json

    settings = {k: v for k, v in r.settings.items() if k not in ("model.activation", "model.tau")}
    return json.dumps(settings, sort_keys=True, default=str)


def _term(r: CellRecord) -> float | None:
    v = r.measures.get("dead_zone")
    if v is None and r.cell.model.activation not in DEAD_ZONE:
        return 0.0  # no dead zone, no term
    return v if v is not None and math.isfinite(v) else None


def _gap(r: CellRecord) -> float | None:
    v = r.metrics.get("error_gap")
    return v if v is not None and math.isfinite(v) else None


def _acc(r: CellRecord) -> float | None:
    v = r.metrics.get("test_acc")
    return v if v is not None and math.isfinite(v) else None


def _paired(ok: list[CellRecord], act: str, get) -> dict:
    """seed -> mean over the dead-zone widths of get(a cell) - get(its relu match)."""
    relu = {_pair_key(r): r for r in ok if _key(r)[1] == "relu"}
    per_seed: dict = {}
    for r in ok:
        if _key(r)[1] != act or _key(r)[2] <= 0:
            continue
        base = relu.get(_pair_key(r))
        a, b = get(r), (get(base) if base is not None else None)
        if a is not None and b is not None:
            per_seed.setdefault(r.cell.seed, []).append(a - b)
    return {s: float(np.mean(v)) for s, v in sorted(per_seed.items(), key=lambda kv: str(kv[0]))}


def _relu_acc(ok: list[CellRecord], wd: float) -> float | None:
    accs = [a for a in (_acc(r) for r in ok if _key(r)[:2] == (wd, "relu")) if a is not None]
    return float(np.mean(accs)) if accs else None


def _accuracy_beside(ok: list[CellRecord], act: str) -> str:
    """Mean test accuracy of every activation, and act's paired difference to the best one."""
    means = {}
    for a in dict.fromkeys(_key(r)[1] for r in ok):
        accs = [x for x in (_acc(r) for r in ok if _key(r)[1] == a) if x is not None]
        if accs:
            means[a] = float(np.mean(accs))
    if act not in means:
        return "no test accuracy recorded"
    best = max(means, key=means.get)
    words = "test accuracy " + ", ".join(f"{a} {m:.3f}" for a, m in means.items())
    if best == act:
        return f"{words}; {act} is the best"
    if best == "relu":
        d = list(_paired(ok, act, _acc).values())
    else:
        by_seed: dict = {}
        for r in ok:
            if _key(r)[1] in (act, best) and _acc(r) is not None:
                by_seed.setdefault(r.cell.seed, {}).setdefault(_key(r)[1], []).append(_acc(r))
        d = [float(np.mean(v[act]) - np.mean(v[best])) for v in by_seed.values() if act in v and best in v]
    if len(d) >= 2:
        ci = mean_ci(d, 0.90)
        inside = ci.lo > -ACC_MARGIN
        words += (f"; {act} - {best} (best) {ci.mean:+.3f}, 90% CI [{ci.lo:+.3f}, {ci.hi:+.3f}] "
                  f"({'within' if inside else 'not shown within'} the margin {ACC_MARGIN})")
    return words


def _term_claim(ok: list[CellRecord], wd: float, act: str) -> Claim | None:
    d = _paired(ok, act, _term)
    if not any(_key(r)[1] == act for r in ok):
        return None
    text = f"{act}: the dead-zone term is positive where the networks train (weight decay {wd:g})"
    acc = _accuracy_beside(ok, act)
    per_tau = group_rows([r for r in ok if _key(r)[1] == act and _key(r)[2] > 0], lambda r: _key(r)[2])
    means = {t: [x for x in (_term(r) for r in rs) if x is not None] for t, rs in per_tau.items()}
    terms = "; ".join(f"tau={t:g}: mean term {np.mean(v):.3g}" for t, v in sorted(means.items()) if v)
    if not d:
        return no_test("one-sided t, H1: mean term difference > 0", "no dead-zone cell has a relu match "
                       "with a recorded term").claim(text, f"{terms}; {acc}")
    v = mean_test(list(d.values()), 0.0, "greater", what="mean paired term (dead zone - relu)")
    zero = all(x == 0 for x in d.values())
    measured = f"{terms}; the term is 0 in every seed; {acc}" if zero else f"{terms}; {acc}"
    return v.claim(text, f"paired per seed (mean over tau) {np.mean(list(d.values())):.3g}; {measured}",
                   {"paired": d, "weight_decay": wd, "term_is_zero": zero})


def _gap_claim(ok: list[CellRecord], wd: float, act: str) -> Claim | None:
    if not any(_key(r)[1] == act for r in ok):
        return None
    d = _paired(ok, act, _gap)
    text = f"{act} generalizes better than relu: smaller error gap (weight decay {wd:g}, paired by seed)"
    if not d:
        return no_test("one-sided t, H1: mean gap difference < 0", "no dead-zone cell has a relu match"
                       ).claim(text, "no pairs")
    vals = list(d.values())
    v = mean_test(vals, 0.0, "less", what="mean paired gap (dead zone - relu)")
    ci = mean_ci(vals)
    return v.claim(text, f"paired gap difference (dead zone - relu, mean over tau) {ci}",
                   {"paired": d, "weight_decay": wd})


def _regimes(ok: list[CellRecord]) -> dict[float, str]:
    """weight decay -> 'trains' or the words of why it is collapsed (relu below TRAINS)."""
    out = {}
    for wd in sorted({_key(r)[0] for r in ok}):
        acc = _relu_acc(ok, wd)
        if acc is None:
            out[wd] = "no relu cell: not a claim regime"
        elif acc >= TRAINS:
            out[wd] = "trains"
        else:
            out[wd] = f"collapsed: relu test accuracy {acc:.3f} < {TRAINS} (illustration, no claim)"
    return out


def analyze(rows: list[CellRecord], out_dir: Path | None = None,
            name: str = "dead-zone") -> ExperimentOutcome:
    """Tables, claims and figures per data set (named by it when the sweep has several, as the
    image reproduction on MNIST and Fashion-MNIST does); bound claims and ranks over all rows."""
    outcome = outcome_per_data_set(rows, out_dir, name, _analyze_set)
    outcome.claims += bound_claims(rows)
    rank_against_gap(rows, outcome, out_dir, name)
    return outcome


def _analyze_set(ok: list[CellRecord], outcome: ExperimentOutcome, out_dir: Path | None, name: str,
                 label: str) -> None:
    groups = dict(sorted(group_rows(ok, _key).items()))
    table = []
    for (wd, act, tau), rs in groups.items():
        row = {"weight_decay": wd, "activation": act, "tau": tau, "seeds": len(rs)}
        for m, get in (("error_gap", lambda r: r.metrics["error_gap"]),
                       ("loss_gap", lambda r: r.metrics["loss_gap"]),
                       ("test_error", lambda r: 1 - r.metrics["test_acc"]),
                       ("dead_zone_term", lambda r: r.measures.get("dead_zone")),
                       ("dead_fraction", lambda r: r.measures.get("dead_zone.dead_fraction")),
                       ("mu_star", lambda r: r.measures.get("dead_zone.mu"))):
            vals = [v for v in (get(r) for r in rs) if v is not None and math.isfinite(v)]
            if vals:
                ci = mean_ci(vals)
                row[m], row[f"{m}_ci"] = ci.mean, [ci.lo, ci.hi]
        table.append(row)
    regime = _regimes(ok)
    for row in table:
        row["regime"] = regime[row["weight_decay"]]
    outcome.tables[f"{label}gap and dead-zone term by activation"] = table
    if label:
        outcome.data.setdefault("table", []).extend({"data": label.rstrip(": "), **r} for r in table)
        outcome.data.setdefault("regimes", {})[label.rstrip(": ")] = regime
    else:
        outcome.data["table"] = table
        outcome.data["regimes"] = regime
    regimes = sorted({k[0] for k in groups})
    trains = [wd for wd in regimes if regime[wd] == "trains"]
    acts = [a for a in DEAD_ZONE if any(_key(r)[1] == a for r in ok)]
    claims: list[Claim] = []
    for wd in trains:
        at = [r for r in ok if _key(r)[0] == wd]
        claims += [c for c in (_gap_claim(at, wd, a) for a in acts) if c is not None]
    if trains:
        wd = max(trains)
        at = [r for r in ok if _key(r)[0] == wd]
        claims += [c for c in (_term_claim(at, wd, a) for a in acts) if c is not None]
    elif acts:
        claims.append(no_test(
            "one-sided t, H1: mean term difference > 0",
            f"no weight decay where relu reaches test accuracy {TRAINS}: "
            + "; ".join(f"{wd:g}: {w}" for wd, w in regime.items())).claim(
            "the dead-zone term is positive where the networks train", "no regime trains"))
    outcome.claims += [Claim(f"{label}{c.text}", c.measured, c.verdict, c.test, c.values) for c in claims]
    if out_dir is not None and table:
        from ..plotting import line_figure

        for m, what in (("error_gap", "error gap"), ("dead_zone_term", "dead-zone term")):
            series = []
            for wd in regimes:
                for act in dict.fromkeys(r["activation"] for r in table):
                    rs = [r for r in table if r["activation"] == act and r["weight_decay"] == wd and m in r]
                    if rs:
                        series.append({"label": f"{act}, wd {wd:g}", "x": [r["tau"] for r in rs],
                                       "y": [r[m] for r in rs], "lo": [r[f"{m}_ci"][0] for r in rs],
                                       "hi": [r[f"{m}_ci"][1] for r in rs], "style": "errorbar"})
            if series:
                stem = f"{name}-{label.rstrip(': ')}-" if label else f"{name}-"
                outcome.figures[f"{label}{what} against dead-zone width"] = line_figure(
                    Path(out_dir) / f"{stem}{m.replace('_', '-')}.png", series,
                    "dead-zone width tau (0: none)", what, f"{label}{what.capitalize()} by activation")
