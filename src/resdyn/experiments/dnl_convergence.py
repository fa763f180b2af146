"""``resdyn reproduce dnl-convergence``: optimal values and minimizers of the regularised DNL
training problem as the depth N doubles (docs/dnl.md, section 5).

It is a sweep: the specs ``dnl-convergence.toml`` and ``dnl-convergence-quick.toml`` hold every
number (data, lifting, weights alpha, beta, gamma, Adam and L-BFGS budgets, N, restarts, the warm
start), the runner trains every (variant, N, seed) cell with the control objective
(``[train.control]``: ``resdyn.training.control.train_control``, which is the engine) and writes
one row per cell, and :func:`analyze` computes everything reported from those rows.

Task: two spirals (turns 1, noise 0.05), lifted to R^m by a fixed z_0 = A x with A = 2 Q, Q an
orthonormal (m x 2) frame drawn once (A and c = 0 are frozen: the state equation's initial value).
For N = 2, 4, ..., N_max the regularised problem J_N is solved in float64 from several random
restarts (smooth kernels K(t_k, t_j) drawn from seeds 0..R-1, the same function for every N) and
from the warm start Pi theta*_{N/2} (seed R: the prolongation of the best minimizer one level
down, a dependency the runner resolves from the store). Every cell after the first N depends on
the level below and records its distance to the best minimizer there (``source_distance``).

Variants (same data, same budget), told apart by their configuration: 'dnl' (the scaled DNL
network, form A, dense kernels), 'dnl_no_h1' (beta = 0), 'densenet_unscaled' (h replaced by 1: a
plain pre-activation DenseNet with a skip from z_0) and 'resnet' (``ResNet(block='one_layer')``,
the neural-ODE baseline, under the DNL regulariser restricted to K_{k,j} = K_j).

Reported per variant and N, from the rows: J*_N (best over restarts and warm start), the spread
over starts (max - min of the final J_N of every start), training accuracies, the final gradient
norms, the continuous objective J(Pi theta*_N) (state equation by the trapezoid rule on a fine
grid, P1 norms exactly; recorded per cell), the distance D_N = ||Pi theta*_N - Pi theta*_{2N}||
_{L^2(Delta)} between successive minimizers (the ``source_distance`` of the best cell at 2N) and
the H^1 seminorm of Pi theta*_N.
"""

from __future__ import annotations

import itertools
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from ..sweeps.cells import Cell
from ..sweeps.records import CellRecord
from .base import Claim, ExperimentOutcome

__all__ = ["VARIANTS", "analyze", "levels", "variant_of"]

VARIANTS = ("dnl", "dnl_no_h1", "densenet_unscaled", "resnet")
TABLE_KEYS = ("variant", "N", "J_star", "dJ_next", "spread", "acc_min", "grad_norm_star", "J_cont",
              "D_next", "h1_seminorm", "loss_star", "init_grad_norm", "best_is_warm", "seconds")


def variant_of(cell: Cell) -> str:
    """The variant a cell describes (see the module docstring)."""
    model, control = cell.model, cell.training.control
    if model.family == "resnet":
        return "resnet"
    if not getattr(model, "scaled", True):
        return "densenet_unscaled"
    return "dnl_no_h1" if control is None or control.beta == 0.0 else "dnl"


def _is_warm(row: CellRecord) -> bool:
    """Whether the cell starts from the best of the level below (not only measures against it)."""
    return bool(row.cell.warm_from) and row.cell.warm_init


def _is_control(row: CellRecord) -> bool:
    return row.cell.training.control is not None


def _level(variant: str, N: int, cells: list[CellRecord]) -> dict[str, Any]:
    """The numbers of one (variant, N) from its cells: restarts by seed, then the warm start."""
    cells = sorted(cells, key=lambda r: (_is_warm(r), r.cell.seed))
    m = [r.metrics for r in cells]
    J = [x["J"] for x in m]
    finite = [(j, e) for e, j in enumerate(J) if math.isfinite(j)]
    e_best = min(finite)[1] if finite else 0  # the first of equal minima, as torch.argmin
    best, first = m[e_best], m[0]
    curve = cells[0].series.get("train_objective", {})
    row: dict[str, Any] = {
        "variant": variant, "N": N,
        "J_star": J[e_best],
        "J_all": J,
        "spread": max(J) - min(J) if len(finite) == len(J) else math.nan,
        "best_is_warm": _is_warm(cells[e_best]),
        "loss_star": best["loss"],
        "penalty_star": best["penalty"],
        "acc_all": [x["acc"] for x in m],
        "acc_min": min(x["acc"] for x in m),
        "grad_norm_all": [x["grad_norm"] for x in m],
        "grad_norm_star": best["grad_norm"],
        "lbfgs_iters": [int(x["lbfgs_iters"]) for x in m],
        "init_loss": first["init_loss"],
        "init_grad_norm": first["init_grad_norm"],
        "adam_curve_seed0": [curve[t] for t in sorted(curve)],
        "h1_seminorm": best["h1_seminorm"],
    }
    if "J_cont" in best:
        row["J_cont"], row["loss_cont"] = best["J_cont"], best["loss_cont"]
    if "source_distance" in best:
        row["D_prev"] = best["source_distance"]
    row["seconds"] = sum(r.timing.get("seconds_per_model", 0.0) for r in cells)
    return row


def levels(rows: list[CellRecord]) -> dict[str, list[dict[str, Any]]]:
    """Per variant (in :data:`VARIANTS` order), one dict per N (ascending) from the finished rows
    of trained control cells: J*, spread, accuracies, ..., and the differences to the next level
    ``dJ_next`` = |J*_2N - J*_N| and ``D_next`` = D_N. A level counts the cells the rows hold (a
    store read while its run goes on gives the levels as far as they are stored)."""
    by: dict[str, dict[int, list]] = {}
    for r in rows:
        if r.status not in ("done", "diverged") or not _is_control(r):
            continue
        by.setdefault(variant_of(r.cell), {}).setdefault(r.cell.model.depth, []).append(r)
    out = {}
    for v in (v for v in VARIANTS if v in by):
        out[v] = [_level(v, N, by[v][N]) for N in sorted(by[v])]
        for a, b in itertools.pairwise(out[v]):
            a["dJ_next"] = abs(b["J_star"] - a["J_star"])
            if "D_prev" in b:
                a["D_next"] = b["D_prev"]
        for r in out[v]:
            r.pop("D_prev", None)
    return out


def _plot(out_dir: Path, sweeps: dict[str, list[dict]]) -> dict[str, Path]:
    import matplotlib.pyplot as plt

    from ..plotting import save_figure

    figs: dict[str, Path] = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    for v, rows in sweeps.items():
        Ns = [r["N"] for r in rows]
        ax.plot(Ns, [r["J_star"] for r in rows], "o-", label=f"{v}: J*_N")
        if "J_cont" in rows[0]:
            ax.plot(Ns, [r["J_cont"] for r in rows], "x--", label=f"{v}: J(Pi theta*_N)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("N (layers)")
    ax.set_ylabel("objective")
    ax.legend(fontsize=6)
    ax.set_title("Optimal values against depth")
    fig.tight_layout()
    figs["optimal_values"] = save_figure(fig, out_dir / "dnl_optimal_values.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for v, rows in sweeps.items():
        if v == "densenet_unscaled":
            continue
        pts = [(r["N"], r["dJ_next"], r["D_next"]) for r in rows if "dJ_next" in r]
        if not pts:
            continue
        Ns = [p[0] for p in pts]
        ax.plot(Ns, [max(p[1], 1e-16) for p in pts], "o-", label=f"{v}: |J*_2N - J*_N|")
        ax.plot(Ns, [p[2] for p in pts], "s:", label=f"{v}: D_N")
        ax.plot([r["N"] for r in rows], [max(r["spread"], 1e-16) for r in rows], "^", ms=4,
                label=f"{v}: spread over restarts")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("N")
    ax.legend(fontsize=6)
    ax.set_title("Differences of optimal values and minimizers")
    fig.tight_layout()
    figs["differences"] = save_figure(fig, out_dir / "dnl_differences.png")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for v in ("dnl", "densenet_unscaled"):
        rows = sweeps.get(v)
        if not rows:
            continue
        Ns = [r["N"] for r in rows]
        axes[0].plot(Ns, [r["loss_star"] for r in rows], "o-", label=f"{v}: final data loss")
        axes[0].plot(Ns, [r["init_loss"] for r in rows], "x--", label=f"{v}: initial data loss")
        axes[1].plot(Ns, [r["init_grad_norm"] for r in rows], "o-", label=f"{v}: |grad J_N| at init")
    for a in axes:
        a.set_xscale("log", base=2)
        a.set_yscale("log")
        a.set_xlabel("N")
        a.legend(fontsize=6)
    axes[0].set_title("Scaled DNL vs unscaled DenseNet")
    fig.tight_layout()
    figs["unscaled"] = save_figure(fig, out_dir / "dnl_unscaled_ablation.png")
    return figs


def _restarts(rows: list[CellRecord]) -> dict[str, dict[int, dict[Any, dict[str, float]]]]:
    """variant -> N -> restart seed -> metrics of the finished random-restart cells (the warm start
    is not a replication: it depends on the level below)."""
    out: dict[str, dict[int, dict[Any, dict[str, float]]]] = {}
    for r in rows:
        if r.status != "done" or not _is_control(r) or _is_warm(r):
            continue
        out.setdefault(variant_of(r.cell), {}).setdefault(r.cell.model.depth, {})[r.cell.seed] = r.metrics
    return out


def _paths(by_N: dict[int, dict[Any, dict[str, float]]], f: Any) -> tuple[list, list, list]:
    """(N, restart, value) of f(metrics at N, metrics at 2N) over restarts present at both."""
    Ns = sorted(by_N)
    pts = []
    for a, b in itertools.pairwise(Ns):
        for seed in by_N[a]:
            if seed in by_N[b]:
                v = f(by_N[a][seed], by_N[b][seed])
                if v is not None and math.isfinite(v):
                    pts.append((a, seed, v))
    return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]


def _decay(text: str, x: list, g: list, y: list) -> Claim:
    """A "decreases as N grows" claim: per-restart slopes of y on N (resdyn.analysis.rates), one-sided
    t across restarts of b < 0, the straightness test beside it where there are 4 or more N."""
    from ..analysis.rates import fit_rate, rate_claim, straightness
    from ..analysis.verdicts import no_test

    try:
        fit = fit_rate(x, y, g)
    except ValueError as err:
        return no_test("one-sided t, H1: b < 0 (per-restart slopes)", str(err), "restart").claim(
            text, f"{len(y)} values")
    try:
        note = straightness(x, y, g).words()
    except ValueError as err:
        note = f"no straightness test: {err}"
    v = rate_claim(fit, 0.0, "faster", 0.0, unit="restart")
    d = v.decision
    shown = f"{v.words.removesuffix('; ' + d.words())}; {note}"
    return d.claim(text, shown, {**v.values, "values": list(zip(x, g, y, strict=True))})


def _claims(rows: list[CellRecord], sweeps: dict[str, list[dict]]) -> list[Claim]:
    """The claims of the reproduction, each a test across random restarts (the replication unit:
    restart r is the same initial kernel function at every N) by the one rule
    (:mod:`resdyn.analysis.verdicts`); the optimal values J*_N (best over starts) are reported."""
    from ..analysis.verdicts import joint, mean_test

    runs = _restarts(rows)
    main = runs.get("dnl", {})
    claims: list[Claim] = []
    acc = {}
    for N in main:
        for seed, m in main[N].items():
            acc[seed] = min(acc.get(seed, 1.0), m["acc"])
    claims.append(mean_test(list(acc.values()), 0.9, "greater", unit="restart",
                            what="mean over restarts of the lowest training accuracy over N").claim(
        "Trained scaled-DNL models (every N, per restart) reach training accuracy >= 0.9",
        "lowest training accuracy over N per restart " + ", ".join(f"{a:.3f}" for a in acc.values()),
        {"acc": acc}))
    claims.append(_decay("|J_2N - J_N| of a restart decreases as N doubles (per-restart slope on N < 0)",
                         *_paths(main, lambda a, b: abs(b["J"] - a["J"]))))
    x, g, y = [], [], []
    for N, cells in sorted(main.items()):
        for seed, m in cells.items():
            if "J_cont" in m:
                x.append(N)
                g.append(seed)
                y.append(abs(m["J_cont"] - m["J"]))
    claims.append(_decay("The discrete optimal value approaches the continuous objective at the extended "
                         "minimizer (|J(Pi theta_N) - J_N| per restart decreases with N)", x, g, y))
    # D_N of the continuation path (the warm start, one run per N) is in the table, not a claim:
    # it has no replication. The claim tested is each restart's distance to the extended best
    # minimizer one level down.
    claims.append(_decay("Minimizers found at 2N approach the extended best minimizer at N as N grows "
                         "(per restart: the distance recorded at 2N decreases with N)",
                         *_paths(main, lambda a, b: b.get("source_distance"))))
    if "densenet_unscaled" in runs:
        un = runs["densenet_unscaled"]

        def degrade(by_N: dict) -> dict:
            Ns = sorted(by_N)
            return {s: math.log(by_N[Ns[-1]][s]["loss"] / max(min(by_N[N][s]["loss"] for N in Ns
                                                                  if s in by_N[N]), 1e-300))
                    for s in by_N[Ns[-1]] if all(s in by_N[N] for N in Ns)}

        du, ds = degrade(un), degrade(main)
        v = joint([("unscaled degrades", mean_test(list(du.values()), math.log(2.0), "greater",
                                                   unit="restart", what="mean log(loss(N max)/min loss)")),
                   ("scaled does not", mean_test(list(ds.values()), math.log(2.0), "less", unit="restart",
                                                 what="mean log(loss(N max)/min loss)"))])
        claims.append(v.claim(
            "The unscaled DenseNet's training degrades as N grows while the scaled DNL's does not",
            "final data loss at N_max / best over N per restart: unscaled "
            + ", ".join(f"{math.exp(x):.2f}" for x in du.values()) + "; scaled "
            + ", ".join(f"{math.exp(x):.2f}" for x in ds.values()), {"unscaled": du, "scaled": ds}))
    if "resnet" in runs:
        rs = runs["resnet"]
        excess = {}
        for N in main:
            for seed, m in main[N].items():
                if N in rs and seed in rs[N]:
                    e = (m["J"] - rs[N][seed]["J"]) / abs(rs[N][seed]["J"])
                    excess[seed] = max(excess.get(seed, -math.inf), e)
        pairs = [(a["J_star"], b["J_star"]) for a, b in zip(sweeps.get("dnl", []), sweeps["resnet"],
                                                             strict=False)]
        what = "mean over restarts of max over N of (J_DNL - J_ResNet)/J_ResNet"
        claims.append(mean_test(list(excess.values()), 0.0, "less", unit="restart", what=what).claim(
            "DNL contains the ResNet under the matched regulariser, so its optimal value is no larger",
            "largest relative excess of DNL over ResNet per restart " + ", ".join(
                f"{v:+.3g}" for v in excess.values()) + "; J*_N DNL vs ResNet: "
            + ", ".join(f"{a:.4f}/{b:.4f}" for a, b in pairs), {"excess": excess, "pairs": pairs}))
    return claims


def analyze(rows: list[CellRecord], out_dir: Path | None = None,
            name: str = "dnl-convergence") -> ExperimentOutcome:
    """Tables, claims and figures of the reproduction from its per-cell store rows (see the
    module docstring); ``rows`` may carry ``series`` (the Adam curve of seed 0). Figures and
    ``dnl_convergence.json`` go to ``out_dir`` (default: a fresh temporary folder)."""
    sweeps = levels(rows)
    outcome = ExperimentOutcome(name)
    if not sweeps:
        return outcome
    if "dnl" in sweeps and len(sweeps["dnl"]) >= 2:
        outcome.claims = _claims(rows, sweeps)
    outcome.tables = {"convergence": [{k: r.get(k) for k in TABLE_KEYS}
                                      for v_rows in sweeps.values() for r in v_rows]}
    cell0 = next(r.cell for r in rows if _is_control(r))
    ctl, data = cell0.training.control, dict(cell0.data.options)
    restarts = sorted({r.cell.seed for r in rows if _is_control(r) and not _is_warm(r)})
    warm_lr = [r.cell.training.lr for r in rows if _is_warm(r)]
    outcome.data = {
        "config": {"Ns": [r["N"] for r in next(iter(sweeps.values()))], "restarts": len(restarts),
                   "adam_steps": cell0.training.config.steps, "lbfgs_iters": ctl.lbfgs_iters,
                   "fine_steps": ctl.fine_steps, "alpha": ctl.alpha, "beta": ctl.beta,
                   "gamma": ctl.gamma, "width": cell0.model.width,
                   "n_train": cell0.sample_size, "turns": data.get("turns"),
                   "noise": data.get("noise"), "horizon": cell0.model.horizon,
                   "lr": cell0.training.lr, "warm_lr": warm_lr[0] if warm_lr else None,
                   "quick": name.endswith("-quick"), "dtype": cell0.dtype},
        "sweeps": sweeps,
        "seconds": sum(r["seconds"] for v_rows in sweeps.values() for r in v_rows),
    }
    out_dir = Path(tempfile.mkdtemp(prefix="dnl_convergence_")) if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outcome.figures = _plot(out_dir, sweeps)
    (out_dir / "dnl_convergence.json").write_text(json.dumps(outcome.data, indent=1))
    return outcome
