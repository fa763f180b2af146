"""The depth reproduction: loss and accuracy against L at fixed horizon T.

Claim tested (first paper): the curves settle as L grows, toward the continuous-time model
(depth-uniformity). For each of the three largest depths, Welch's two one-sided tests ask whether
the mean test accuracy is within MARGIN = 0.03 of the continuous-time model's (alpha 0.05, seeds
as the replication unit); the three are joined by the one rule (:mod:`resdyn.analysis.verdicts`):
'held' when all three are shown equivalent (intersection-union), 'not held' when one is shown to
differ by more than the margin (Bonferroni over the three), 'inconclusive' otherwise. A second
claim, that the run is below saturation, is a TOST across seeds of 0.7 < E acc(ODE) < 0.95.
Every recorded measure is ranked against the gap, and the bound claims are made when the sweep
records bounds. A sweep over several data sets (the image reproduction: MNIST and Fashion-MNIST)
gets the table, figures and claims once per data set, each named by it.
"""

from __future__ import annotations

from pathlib import Path

from ..analysis.summary import group_rows, mean_ci, welch_tost
from ..analysis.verdicts import decide, equivalence_test, joint, no_test
from ..sweeps.records import CellRecord
from .base import ExperimentOutcome, outcome_per_data_set
from .checks import bound_claims, rank_against_gap

__all__ = ["MARGIN", "analyze"]

MARGIN = 0.03

METRICS = ("test_acc", "train_acc", "test_loss", "train_loss")
DISCRETE = ("resnet", "image_resnet", "conv_resnet")
CONTINUOUS = ("ode_resnet", "image_ode_resnet")


def analyze(rows: list[CellRecord], out_dir: Path | None = None, name: str = "depth") -> ExperimentOutcome:
    outcome = outcome_per_data_set(rows, out_dir, name, _analyze_set)
    outcome.claims += bound_claims(rows)
    rank_against_gap(rows, outcome, out_dir, name)
    return outcome


def _analyze_set(ok: list[CellRecord], outcome: ExperimentOutcome, out_dir: Path | None, name: str,
                 label: str) -> None:
    """Table, figures and the two claims of one data set's rows, each named with ``label``."""
    disc = [r for r in ok if r.cell.model.family in DISCRETE]
    cont = [r for r in ok if r.cell.model.family in CONTINUOUS]
    by_L = dict(sorted(group_rows(disc, lambda r: r.cell.model.depth).items()))
    table, stats = [], {m: [] for m in METRICS}
    for L, rs in by_L.items():
        row = {"model": "discrete", "L": L, "seeds": len(rs)}
        for m in METRICS:
            ci = mean_ci([r.metrics[m] for r in rs])
            stats[m].append(ci)
            row[m], row[f"{m}_ci"] = ci.mean, [ci.lo, ci.hi]
        table.append(row)
    cont_ci = {}
    if cont:
        row = {"model": "continuous", "L": "ODE", "seeds": len(cont)}
        for m in METRICS:
            ci = mean_ci([r.metrics[m] for r in cont])
            cont_ci[m] = ci
            row[m], row[f"{m}_ci"] = ci.mean, [ci.lo, ci.hi]
        table.append(row)
    outcome.tables[f"{label}loss and accuracy against depth"] = table
    Ls = list(by_L)
    figures = {m: {"L": Ls, "discrete": [c.as_dict() for c in stats[m]],
                   "continuous": cont_ci[m].as_dict() if m in cont_ci else None} for m in METRICS}
    if label:
        outcome.data.setdefault("figures", {})[label.rstrip(": ")] = figures
    else:
        outcome.data["figures"] = figures
    if len(Ls) >= 3 and cont_ci and len(cont) >= 2:
        acc_cont = [r.metrics["test_acc"] for r in cont]
        tests = {L: welch_tost([r.metrics["test_acc"] for r in by_L[L]], acc_cont, MARGIN)
                 for L in Ls[-3:] if len(by_L[L]) >= 2}
        parts = [(f"L={L}", decide(f"Welch TOST, H1: |acc(L={L}) - acc(ODE)| < {MARGIN}", t.pvalue,
                                   t.p_outside, "seed", len(by_L[L]) + len(acc_cont)))
                 for L, t in tests.items()]
        v = joint(parts) if parts else no_test("Welch TOST", "fewer than 2 seeds at the largest depths")
        shown = "; ".join(f"L={L}: difference {t.diff:+.3f}, 90% CI [{t.ci90[0]:+.3f}, {t.ci90[1]:+.3f}], "
                          f"TOST p = {t.pvalue:.2g}" for L, t in tests.items())
        outcome.claims.append(v.claim(
            f"{label}test accuracy settles as L grows, toward the continuous-time model",
            f"{shown}; continuous: {cont_ci['test_acc']}",
            {L: {"diff": t.diff, "ci90": list(t.ci90), "pvalue": t.pvalue, "p_outside": t.p_outside,
                 "verdict": t.verdict} for L, t in tests.items()}))
        c = cont_ci["test_acc"]
        sat = equivalence_test(acc_cont, 0.825, 0.125, what="continuous-model test accuracy")
        outcome.claims.append(sat.claim(
            f"{label}the depth study runs below saturation (test accuracy 0.7 to 0.95)",
            f"continuous-model test accuracy {c}", {"acc": c.as_dict()}))
    if out_dir is not None and Ls:
        from ..plotting import line_figure

        for m, title in (("test_acc", "Test accuracy"), ("train_loss", "Training loss"),
                         ("test_loss", "Test loss"), ("train_acc", "Training accuracy")):
            series = [{"label": "discrete ResNet", "x": Ls, "y": [c.mean for c in stats[m]],
                       "lo": [c.lo for c in stats[m]], "hi": [c.hi for c in stats[m]]}]
            if m in cont_ci:
                c = cont_ci[m]
                series.append({"label": "continuous-time", "x": [Ls[0], Ls[-1]], "y": [c.mean] * 2,
                               "lo": [c.lo] * 2, "hi": [c.hi] * 2, "marker": "", "ls": ":"})
            stem = f"{name}-{label.rstrip(': ')}-{m}" if label else f"{name}-{m}"
            outcome.figures[f"{label}{title} against depth"] = line_figure(
                Path(out_dir) / f"{stem}.png", series, "depth L (fixed T)", m,
                f"{label}{title} against depth", logx=True)
