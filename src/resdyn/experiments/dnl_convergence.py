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

from .base import Claim, ExperimentOutcome

__all__ = ["VARIANTS", "analyze", "levels", "variant_of"]

VARIANTS = ("dnl", "dnl_no_h1", "densenet_unscaled", "resnet")
TABLE_KEYS = ("variant", "N", "J_star", "dJ_next", "spread", "acc_min", "grad_norm_star", "J_cont",
              "D_next", "h1_seminorm", "loss_star", "init_grad_norm", "best_is_warm", "seconds")


def variant_of(config: dict[str, Any]) -> str:
    """The variant a cell's configuration describes (see the module docstring)."""
    model, control = config["model"], config["train"].get("control", {})
    if model["family"] == "resnet":
        return "resnet"
    if not model.get("scaled", True):
        return "densenet_unscaled"
    return "dnl_no_h1" if control.get("beta", 0.0) == 0.0 else "dnl"


def _is_warm(row: dict[str, Any]) -> bool:
    ws = row["config"].get("warm_start")
    return ws is not None and ws.get("init", True)


def _level(variant: str, N: int, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The numbers of one (variant, N) from its cells: restarts by seed, then the warm start."""
    cells = sorted(cells, key=lambda r: (_is_warm(r), r["config"]["seed"]))
    m = [r["metrics"] for r in cells]
    J = [x["J"] for x in m]
    finite = [(j, e) for e, j in enumerate(J) if math.isfinite(j)]
    e_best = min(finite)[1] if finite else 0  # the first of equal minima, as torch.argmin
    best, first = m[e_best], m[0]
    curve = cells[0].get("series", {}).get("train_objective", {})
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
    row["seconds"] = sum(r["timing"].get("seconds_per_model", 0.0) for r in cells)
    return row


def levels(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per variant (in :data:`VARIANTS` order), one dict per N (ascending) from the finished rows
    of trained control cells: J*, spread, accuracies, ..., and the differences to the next level
    ``dJ_next`` = |J*_2N - J*_N| and ``D_next`` = D_N. A level counts the cells the rows hold (a
    store read while its run goes on gives the levels as far as they are stored)."""
    by: dict[str, dict[int, list]] = {}
    for r in rows:
        if r.get("status", "done") not in ("done", "diverged") or "control" not in r["config"]["train"]:
            continue
        by.setdefault(variant_of(r["config"]), {}).setdefault(r["config"]["model"]["depth"], []).append(r)
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


def _last3_decrease(rows: list[dict]) -> tuple[list[float], list[float], bool]:
    d = [r["dJ_next"] for r in rows if "dJ_next" in r][-3:]
    spreads = [r["spread"] for r in rows[-4:]]
    ok = len(d) == 3 and d[0] > d[1] > d[2] and (d[0] - d[2]) > max(spreads)
    return d, spreads, ok


def _claims(sweeps: dict[str, list[dict]]) -> list[Claim]:
    main = sweeps["dnl"]
    claims: list[Claim] = []
    accs = [a for r in main for a in r["acc_all"]]
    claims.append(Claim(
        "Every trained scaled-DNL model (every N, restart and warm start) reaches training accuracy >= 0.9",
        f"min training accuracy {min(accs):.3f} over {len(accs)} models", min(accs) >= 0.9,
        "min over all trained models >= 0.9", {"acc": accs}))
    d, spreads, ok = _last3_decrease(main)
    claims.append(Claim(
        "|J*_2N - J*_N| decreases over the last three doublings by more than the spread over restarts",
        "differences " + ", ".join(f"{v:.2e}" for v in d) + "; max spread " + f"{max(spreads):.2e}",
        ok, "d1 > d2 > d3 and d1 - d3 > max spread over restarts at the four N involved",
        {"differences": d, "spreads": spreads}))
    gaps = [abs(r["J_cont"] - r["J_star"]) for r in main]
    claims.append(Claim(
        "The discrete optimal value approaches the continuous objective at the extended minimizer",
        "|J(Pi theta*_N) - J*_N| = " + ", ".join(f"{g:.2e}" for g in gaps),
        gaps[-1] < gaps[0] and gaps[-1] <= min(gaps[:-1]),
        "the gap at the largest N is the smallest and below the one at the smallest N",
        {"gaps": gaps}))
    Ds = [r["D_next"] for r in main if "D_next" in r]
    claims.append(Claim(
        "Successive minimizers approach each other after extension (continuation path)",
        "D_N = " + ", ".join(f"{v:.2e}" for v in Ds),
        len(Ds) >= 3 and Ds[-1] < Ds[-3], "D at the last doubling below D two doublings earlier",
        {"D": Ds}))
    if "densenet_unscaled" in sweeps:
        un = sweeps["densenet_unscaled"]
        un_loss = [r["loss_star"] for r in un]
        sc_loss = [r["loss_star"] for r in main]
        ratio_un = un_loss[-1] / max(min(un_loss), 1e-300)
        ratio_sc = sc_loss[-1] / max(min(sc_loss), 1e-300)
        claims.append(Claim(
            "The unscaled DenseNet's training degrades as N grows while the scaled DNL's does not",
            f"final data loss at N_max / best over N: unscaled {ratio_un:.2f}, scaled {ratio_sc:.2f}; "
            f"initial |grad J| at N_max: unscaled {un[-1]['init_grad_norm']:.2e}, "
            f"scaled {main[-1]['init_grad_norm']:.2e}",
            ratio_un > 2.0 and ratio_sc < 2.0,
            "unscaled final data loss at N_max more than twice its best over N; scaled less than twice",
            {"unscaled_loss": un_loss, "scaled_loss": sc_loss}))
    if "resnet" in sweeps:
        rs = sweeps["resnet"]
        pairs = [(a["J_star"], b["J_star"]) for a, b in zip(main, rs, strict=True)]
        claims.append(Claim(
            "DNL contains the ResNet under the matched regulariser, so its optimal value is no larger",
            "J*_N DNL vs ResNet: " + ", ".join(f"{a:.4f}/{b:.4f}" for a, b in pairs),
            all(a <= b + 1e-6 for a, b in pairs), "J*_N(DNL) <= J*_N(ResNet) + 1e-6 for every N",
            {"pairs": pairs}))
    return claims


def analyze(rows: list[dict[str, Any]], out_dir: Path | None = None,
            name: str = "dnl-convergence") -> ExperimentOutcome:
    """Tables, claims and figures of the reproduction from its per-cell store rows (see the
    module docstring); ``rows`` may carry ``series`` (the Adam curve of seed 0). Figures and
    ``dnl_convergence.json`` go to ``out_dir`` (default: a fresh temporary folder)."""
    sweeps = levels(rows)
    outcome = ExperimentOutcome(name)
    if not sweeps:
        return outcome
    if "dnl" in sweeps and len(sweeps["dnl"]) >= 2:
        outcome.claims = _claims(sweeps)
    outcome.tables = {"convergence": [{k: r.get(k) for k in TABLE_KEYS}
                                      for v_rows in sweeps.values() for r in v_rows]}
    cfg0 = next(r["config"] for r in rows if "control" in r["config"]["train"])
    ctl, data = cfg0["train"]["control"], cfg0["data"]
    restarts = sorted({r["config"]["seed"] for r in rows if "control" in r["config"]["train"]
                       and not _is_warm(r)})
    warm_lr = [r["config"]["train"]["lr"] for r in rows if _is_warm(r)]
    outcome.data = {
        "config": {"Ns": [r["N"] for r in next(iter(sweeps.values()))], "restarts": len(restarts),
                   "adam_steps": cfg0["train"]["steps"], "lbfgs_iters": ctl["lbfgs_iters"],
                   "fine_steps": ctl["fine_steps"], "alpha": ctl["alpha"], "beta": ctl["beta"],
                   "gamma": ctl["gamma"], "width": cfg0["model"]["width"],
                   "n_train": cfg0["sample_size"], "turns": data.get("turns"),
                   "noise": data.get("noise"), "horizon": cfg0["model"]["horizon"],
                   "lr": cfg0["train"]["lr"], "warm_lr": warm_lr[0] if warm_lr else None,
                   "quick": name.endswith("-quick"), "dtype": cfg0["dtype"]},
        "sweeps": sweeps,
        "seconds": sum(r["seconds"] for v_rows in sweeps.values() for r in v_rows),
    }
    out_dir = Path(tempfile.mkdtemp(prefix="dnl_convergence_")) if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outcome.figures = _plot(out_dir, sweeps)
    (out_dir / "dnl_convergence.json").write_text(json.dumps(outcome.data, indent=1))
    return outcome
