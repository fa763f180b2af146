"""``resdyn reproduce dnl-convergence``: optimal values and minimizers of the regularised DNL
training problem as the depth N doubles (docs/dnl.md, section 5).

Task: two spirals (turns 1, noise 0.05), lifted to R^m by a fixed z_0 = A x with A = 2 Q, Q an
orthonormal (m x 2) frame drawn once (A and c = 0 are frozen: the state equation's initial value).
For N = 2, 4, ..., N_max the regularised problem J_N (``resdyn.training.control``) is solved in
float64 from several random restarts (smooth kernels K(t_k, t_j) drawn from seeds 0..R-1, the same
function for every N) and from the warm start Pi theta*_{N/2} (the prolongation of the best
minimizer one level down): batched Adam, then L-BFGS one model at a time. The weights alpha,
beta, gamma are module constants fixed before any run.

Variants (same data, same budget): 'dnl' (the scaled DNL network, form A, dense kernels),
'dnl_no_h1' (beta = 0), 'densenet_unscaled' (h replaced by 1: a plain pre-activation DenseNet
with a skip from z_0) and 'resnet' (``ResNet(block='one_layer')``, the neural-ODE baseline, under
the DNL regulariser restricted to K_{k,j} = K_j).

Reported per variant and N: J*_N (best over restarts and warm start), the spread over restarts
(max - min of the final J_N of every start), training accuracies, the final gradient norms, the
continuous objective J(Pi theta*_N) (state equation by the trapezoid rule on a fine grid, P1 norms
exactly), the distance D_N = ||Pi theta*_N - Pi theta*_{2N}||_{L^2(Delta)} between successive
minimizers and the H^1 seminorm of Pi theta*_N.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from ..data.synthetic import two_spirals
from ..models.base import init_params
from ..models.dnl import DNLNet
from ..models.resnet import ResNet
from ..models.volterra import p1_at_grid, p1_norms
from ..training.control import (
    ControlWeights,
    continuous_objective,
    control_l2_distance,
    objective,
    prolongate,
    train_control,
)
from .base import Claim, ExperimentOutcome

__all__ = ["ALPHA", "BETA", "GAMMA", "VARIANTS", "run"]

# Regularisation weights, fixed before the runs (docs/dnl.md, section 5).
ALPHA, BETA, GAMMA = 1e-2, 1e-1, 1e-3
WIDTH, N_TRAIN, TURNS, NOISE, HORIZON = 4, 160, 1.0, 0.05, 1.0
LR, WARM_LR = 1e-2, 1e-3
VARIANTS = ("dnl", "dnl_no_h1", "densenet_unscaled", "resnet")

FULL = {"Ns": [2, 4, 8, 16, 32, 64, 128], "restarts": 3, "adam_steps": 600, "lbfgs_iters": 400,
        "fine_steps": 512}
QUICK = {"Ns": [2, 4, 8, 16], "restarts": 2, "adam_steps": 300, "lbfgs_iters": 150,
         "fine_steps": 64}


def _data(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = two_spirals(N_TRAIN, seed=0, turns=TURNS, noise=NOISE)
    g = torch.Generator().manual_seed(20251002)
    Q, _ = torch.linalg.qr(torch.randn(WIDTH, 2, generator=g, dtype=torch.float64))
    return x.to(dtype=dtype, device=device), y.to(device), (2.0 * Q).to(dtype=dtype, device=device)


def _model(variant: str, N: int):
    if variant == "resnet":
        return ResNet(in_dim=2, out_dim=2, width=WIDTH, depth=N, horizon=HORIZON, block="one_layer",
                      init_scale=1.0, bias_scale=0.5)
    return DNLNet(in_dim=2, out_dim=2, width=WIDTH, depth=N, horizon=HORIZON,
                  scaled=variant != "densenet_unscaled", init_scale=1.0, bias_scale=0.5)


def _weights(variant: str) -> ControlWeights:
    return ControlWeights(ALPHA, 0.0 if variant == "dnl_no_h1" else BETA, GAMMA)


def _one(params: dict, e: int) -> dict:
    return {k: v[e : e + 1] for k, v in params.items()}


def _distance(variant: str, a: dict, Na: int, b: dict, Nb: int) -> float:
    """||Pi theta_a - Pi theta_b||_{L^2(Delta)} over the controls K and b."""
    total = 0.0
    for name in ("K", "b"):
        ta, tb = a[name], b[name]
        if variant == "resnet":  # theta(t, s) = theta(s): compare as triangle functions
            ta, tb = _as_triangle(ta, Na), _as_triangle(tb, Nb)
        total += float(control_l2_distance(ta, Na, tb, Nb, HORIZON)[0]) ** 2
    return math.sqrt(total)


def _as_triangle(theta: torch.Tensor, N: int) -> torch.Tensor:
    from ..models.volterra import pair_nodes

    _, j = pair_nodes(N)
    return theta.index_select(1, j.to(theta.device))


def _h1_seminorm(variant: str, p: dict, N: int) -> float:
    total = 0.0
    for name in ("K", "b"):
        th = _as_triangle(p[name], N) if variant == "resnet" else p[name]
        _, d = p1_norms(p1_at_grid(th, N, N, diagonal=True), N, HORIZON)
        total += float(d[0])
    return math.sqrt(total)


def _sweep(variant: str, cfg: dict, x, y, A, dtype, device, log) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    best_prev: tuple[Any, dict] | None = None
    weights = _weights(variant)
    for N in cfg["Ns"]:
        t0 = time.time()
        model = _model(variant, N)
        R = cfg["restarts"]
        params = init_params(model, list(range(R)), dtype, device)
        lrs = [LR] * R
        if best_prev is not None:
            _, warm = prolongate(best_prev[0], best_prev[1])
            params = {k: torch.cat([params[k], warm[k]]) for k in params}
            lrs.append(WARM_LR)
        E = len(lrs)
        params["A"] = A.expand(E, *A.shape).clone()
        params["c"] = torch.zeros(E, WIDTH, dtype=dtype, device=device)
        init_eval = objective(model, _one(params, 0), x, y, weights)
        leaves = {k: v.detach().requires_grad_(k not in ("A", "c")) for k, v in _one(params, 0).items()}
        J0 = objective(model, leaves, x, y, weights)["J"].sum()
        g0 = torch.autograd.grad(J0, [v for k, v in leaves.items() if k not in ("A", "c")])
        init_grad = math.sqrt(sum(float(g.square().sum()) for g in g0))
        res = train_control(model, params, x, y, weights, adam_steps=cfg["adam_steps"],
                            lr=torch.tensor(lrs, dtype=dtype), lbfgs_iters=cfg["lbfgs_iters"])
        J = res.metrics["J"]
        e_best = int(torch.argmin(torch.where(torch.isfinite(J), J, torch.full_like(J, math.inf))))
        best = _one(res.params, e_best)
        row: dict[str, Any] = {
            "variant": variant, "N": N,
            "J_star": float(J[e_best]),
            "J_all": [float(v) for v in J],
            "spread": float(J.max() - J.min()),
            "best_is_warm": bool(best_prev is not None and e_best == E - 1),
            "loss_star": float(res.metrics["loss"][e_best]),
            "penalty_star": float(res.metrics["penalty"][e_best]),
            "acc_all": [float(v) for v in res.metrics["acc"]],
            "acc_min": float(res.metrics["acc"].min()),
            "grad_norm_all": [float(v) for v in res.metrics["grad_norm"]],
            "grad_norm_star": float(res.metrics["grad_norm"][e_best]),
            "lbfgs_iters": [int(v) for v in res.metrics["lbfgs_iters"]],
            "init_loss": float(init_eval["loss"][0]),
            "init_grad_norm": init_grad,
            "adam_curve_seed0": [float(v) for v in res.history[:, 0]],
            "h1_seminorm": _h1_seminorm(variant, best, N),
        }
        if variant != "densenet_unscaled":
            cont = continuous_objective(model, best, x, y, weights, cfg["fine_steps"])
            row["J_cont"] = float(cont["J"][0])
            row["loss_cont"] = float(cont["loss"][0])
        if best_prev is not None:
            rows[-1]["D_next"] = _distance(variant, best_prev[1], best_prev[0].depth, best, N)
        row["seconds"] = time.time() - t0
        rows.append(row)
        log(f"{variant:18s} N={N:4d} J*={row['J_star']:.6f} spread={row['spread']:.2e} "
            f"acc_min={row['acc_min']:.3f} |grad|={row['grad_norm_star']:.1e} "
            f"J_cont={row.get('J_cont', float('nan')):.6f} ({row['seconds']:.0f}s)")
        best_prev = (model, best)
    for a, b in itertools.pairwise(rows):
        a["dJ_next"] = abs(b["J_star"] - a["J_star"])
    return rows


def _plot(out_dir: Path, sweeps: dict[str, list[dict]]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    figs["optimal_values"] = out_dir / "dnl_optimal_values.png"
    fig.tight_layout()
    fig.savefig(figs["optimal_values"], dpi=120)
    plt.close(fig)

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
    figs["differences"] = out_dir / "dnl_differences.png"
    fig.tight_layout()
    fig.savefig(figs["differences"], dpi=120)
    plt.close(fig)

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
    figs["unscaled"] = out_dir / "dnl_unscaled_ablation.png"
    fig.tight_layout()
    fig.savefig(figs["unscaled"], dpi=120)
    plt.close(fig)
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


def run(quick: bool = False, out_dir: Path | None = None, device: str = "cpu",
        dtype: torch.dtype = torch.float64, threads: int | None = None,
        variants: tuple[str, ...] = VARIANTS, log=print) -> ExperimentOutcome:
    """Run the depth sweep (``quick``: N <= 16, fewer restarts and steps) and return its outcome.

    out_dir: where figures and ``dnl_convergence.json`` go (default: a fresh temporary folder).
    variants: a subset of ``VARIANTS``. threads: torch CPU threads for the run (default 1).
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"variants must be a non-empty subset of {', '.join(VARIANTS)}; got {variants}")
    # One thread unless asked otherwise: every tensor here is tiny (width 4, 160 points), so an
    # op's work is microseconds and a second thread's synchronisation costs more than it saves
    # (profiled: the quick run took 7.5 CPU-minutes on 2 threads, under 1 on one; same numbers).
    torch.set_num_threads(1 if threads is None else int(threads))
    if out_dir is None:
        import tempfile

        out_dir = Path(tempfile.mkdtemp(prefix="dnl_convergence_"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    cfg = QUICK if quick else FULL
    x, y, A = _data(dtype, dev)
    t_start = time.time()
    sweeps = {v: _sweep(v, cfg, x, y, A, dtype, dev, log) for v in variants}
    seconds = time.time() - t_start

    claims: list[Claim] = []
    if "dnl" in sweeps:
        claims += _claims(sweeps)

    table = []
    for _v, rows in sweeps.items():
        for r in rows:
            table.append({k: r.get(k) for k in ("variant", "N", "J_star", "dJ_next", "spread", "acc_min",
                                                "grad_norm_star", "J_cont", "D_next", "h1_seminorm",
                                                "loss_star", "init_grad_norm", "best_is_warm",
                                                "seconds")})
    figures = _plot(out_dir, sweeps)
    data = {"config": {**cfg, "alpha": ALPHA, "beta": BETA, "gamma": GAMMA, "width": WIDTH,
                       "n_train": N_TRAIN, "turns": TURNS, "noise": NOISE, "horizon": HORIZON,
                       "lr": LR, "warm_lr": WARM_LR, "quick": quick, "dtype": str(dtype)},
            "sweeps": sweeps, "seconds": seconds}
    (out_dir / "dnl_convergence.json").write_text(json.dumps(data, indent=1))
    return ExperimentOutcome("dnl-convergence", {"convergence": table}, claims, figures, data)
