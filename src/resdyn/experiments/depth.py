"""The depth reproduction: loss and accuracy against L at fixed horizon T.

Claim tested (first paper): the curves settle as L grows, toward the continuous-time model
(depth-uniformity). The claim holds when the 95% seed intervals of the test accuracy at the three
largest depths and of the continuous-time model share a point. A second check reports whether
the run is below saturation (continuous-model test accuracy between 0.7 and 0.95), where
differences could show.
"""

from __future__ import annotations

from pathlib import Path

from ..analysis.summary import group_rows, mean_ci, overlap
from .base import Claim, ExperimentOutcome

__all__ = ["analyze"]

METRICS = ("test_acc", "train_acc", "test_loss", "train_loss")


def analyze(rows: list[dict], out_dir: Path | None = None, name: str = "depth") -> ExperimentOutcome:
    outcome = ExperimentOutcome(name)
    ok = [r for r in rows if r["status"] == "done"]
    disc = [r for r in ok if r["config"]["model"]["family"] == "resnet"]
    cont = [r for r in ok if r["config"]["model"]["family"] == "ode_resnet"]
    by_L = dict(sorted(group_rows(disc, lambda r: r["config"]["model"]["depth"]).items()))
    table, stats = [], {m: [] for m in METRICS}
    for L, rs in by_L.items():
        row = {"model": "discrete", "L": L, "seeds": len(rs)}
        for m in METRICS:
            ci = mean_ci([r["metrics"][m] for r in rs])
            stats[m].append(ci)
            row[m], row[f"{m}_ci"] = ci.mean, [ci.lo, ci.hi]
        table.append(row)
    cont_ci = {}
    if cont:
        row = {"model": "continuous", "L": "ODE", "seeds": len(cont)}
        for m in METRICS:
            ci = mean_ci([r["metrics"][m] for r in cont])
            cont_ci[m] = ci
            row[m], row[f"{m}_ci"] = ci.mean, [ci.lo, ci.hi]
        table.append(row)
    outcome.tables["loss and accuracy against depth"] = table
    Ls = list(by_L)
    outcome.data["figures"] = {
        m: {"L": Ls, "discrete": [c.as_dict() for c in stats[m]],
            "continuous": cont_ci[m].as_dict() if m in cont_ci else None} for m in METRICS}
    if len(Ls) >= 3 and cont_ci:
        top = stats["test_acc"][-3:]
        held = overlap([*top, cont_ci["test_acc"]])
        shown = ", ".join(f"L={L}: {c}" for L, c in zip(Ls[-3:], top, strict=True))
        outcome.claims.append(Claim(
            "test accuracy settles as L grows, toward the continuous-time model",
            f"{shown}; continuous: {cont_ci['test_acc']}", held,
            "95% seed intervals of the three largest depths and the continuous model share a point",
            {"largest": [c.as_dict() for c in top], "continuous": cont_ci["test_acc"].as_dict()}))
        acc = cont_ci["test_acc"].mean
        outcome.claims.append(Claim(
            "the depth study runs below saturation (test accuracy 0.7 to 0.95)",
            f"continuous-model test accuracy {cont_ci['test_acc']}", 0.7 <= acc <= 0.95,
            "mean continuous-model test accuracy within [0.7, 0.95]", {"acc": acc}))
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
            outcome.figures[f"{title} against depth"] = line_figure(
                Path(out_dir) / f"{name}-{m}.png", series, "depth L (fixed T)", m,
                f"{title} against depth", logx=True)
    return outcome
