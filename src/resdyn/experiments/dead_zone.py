"""The dead-zone reproduction: relu and tanh against activations with an explicit dead zone.

Claim tested (first paper): activations with a dead zone generalize better. For each activation
and width tau the error gap, the test error and (when the spec asks for it) the dead-zone term of
the bound are averaged over seeds with 95% intervals. The claim holds when the error gap averaged
over all dead-zone cells (tau > 0) is below the error gap of both relu and tanh; whether the
intervals separate is reported beside it.
"""

from __future__ import annotations

from pathlib import Path

from ..analysis.summary import group_rows, mean_ci
from .base import Claim, ExperimentOutcome

__all__ = ["analyze"]

DEAD_ZONE = ("soft_threshold", "shifted_relu", "smooth_dead_zone")


def _key(r: dict) -> tuple[str, float]:
    m = r["config"]["model"]
    tau = m.get("tau", 0.0) if m["activation"] in DEAD_ZONE else 0.0
    return m["activation"], tau


def analyze(rows: list[dict], out_dir: Path | None = None, name: str = "dead-zone") -> ExperimentOutcome:
    outcome = ExperimentOutcome(name)
    ok = [r for r in rows if r["status"] == "done"]
    groups = dict(sorted(group_rows(ok, _key).items()))
    table = []
    for (act, tau), rs in groups.items():
        row = {"activation": act, "tau": tau, "seeds": len(rs)}
        for m, get in (("error_gap", lambda r: r["metrics"]["error_gap"]),
                       ("loss_gap", lambda r: r["metrics"]["loss_gap"]),
                       ("test_error", lambda r: 1 - r["metrics"]["test_acc"]),
                       ("dead_zone_term", lambda r: r["measures"].get("dead_zone"))):
            vals = [v for v in (get(r) for r in rs) if v is not None]
            if vals:
                ci = mean_ci(vals)
                row[m], row[f"{m}_ci"] = ci.mean, [ci.lo, ci.hi]
        table.append(row)
    outcome.tables["gap by activation"] = table
    outcome.data["table"] = table
    dz = [r["metrics"]["error_gap"] for r in ok if _key(r)[0] in DEAD_ZONE and _key(r)[1] > 0]
    base = {a: [r["metrics"]["error_gap"] for r in ok if _key(r)[0] == a] for a in ("relu", "tanh")}
    if dz and all(base.values()):
        dz_ci = mean_ci(dz)
        base_ci = {a: mean_ci(v) for a, v in base.items()}
        held = all(dz_ci.mean < c.mean for c in base_ci.values())
        separate = all(dz_ci.hi < c.lo for c in base_ci.values())
        outcome.claims.append(Claim(
            "activations with a dead zone generalize better (smaller error gap)",
            f"dead-zone gap {dz_ci}; relu {base_ci['relu']}; tanh {base_ci['tanh']}; intervals "
            f"{'separate' if separate else 'overlap'}", held,
            "mean error gap over dead-zone cells below the mean gap of relu and of tanh",
            {"dead_zone": dz_ci.as_dict(), **{a: c.as_dict() for a, c in base_ci.items()},
             "intervals_separate": separate}))
    if out_dir is not None and table:
        from ..plotting import line_figure

        series = []
        for act in dict.fromkeys(r["activation"] for r in table):
            rs = [r for r in table if r["activation"] == act and "error_gap" in r]
            series.append({"label": act, "x": [r["tau"] for r in rs], "y": [r["error_gap"] for r in rs],
                           "lo": [r["error_gap_ci"][0] for r in rs],
                           "hi": [r["error_gap_ci"][1] for r in rs], "style": "errorbar"})
        outcome.figures["error gap against dead-zone width"] = line_figure(
            Path(out_dir) / f"{name}-gap.png", series, "dead-zone width tau (0: none)",
            "error gap", "Generalization gap by activation")
    return outcome
