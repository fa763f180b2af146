"""``resdyn reproduce mean-field``: generalization of the mean-field ResNet on two spirals.

The experiment of the second paper (Chen et al., ICLR 2024, App. C.6), with numbers chosen by
resdyn because the seed text lost them (docs/meanfield.md, "Numbers"; none of them is the paper's).
It is a sweep: the specs ``mean-field.toml`` and ``mean-field-quick.toml`` hold the numbers
(data, model, Adam, n, seeds, trackers and measures), the runner trains and records every (n, seed)
cell as a row of the store, and :func:`analyze` computes everything reported from those rows:

* 0-1 test error (1 - test_acc) per seed against n, through :mod:`resdyn.analysis.rates`: the
  mean of the per-seed slopes with a t interval over seeds (linear-scale per-seed fits when some
  error is 0; nothing floored), the straightness test of the log-log curve beside it, and the two
  rate claims ("falls as a power of n": H1 b < 0; "faster than n^-1/2": H1 b < -1/2, one-sided t
  across seeds) decided by the one rule over the range of n where the curve is not curved;
* per cell: train error, train loss, the k-NN KL radii and the KL-ball formula with them plugged
  in (measure ``meanfield_kl_plugin``: a plug-in estimate, not a bound; docs/meanfield.md);
* trajectories of the loss, lambda_min(G1), lambda_min(G2) and the k-NN KL (the store's series).

The two checks of the theory under plain gradient descent with the mean-field rate scaling
(:func:`gradient_descent_check`, :func:`lambda_min_settling`) are functions of their own.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..analysis.diagnostics import displacement, fit_linear_rate, gram_lambda_min, particle_kl
from ..analysis.gram import gram_matrices, lambda_min
from ..data.base import Dataset
from ..data.synthetic import two_spirals
from ..models.base import init_params
from ..models.meanfield import PREDICTOR_PARAMS, MeanFieldResNet
from ..sweeps.records import CellRecord
from ..training import TrainConfig, train
from .base import Claim, ExperimentOutcome

__all__ = ["GDCheck", "analyze", "gd_check_from_row", "gradient_descent_check", "lambda_min_settling",
           "spirals_dataset", "trajectories"]


def spirals_dataset(n_pool: int, n_test: int, seed: int) -> Dataset:
    """Two spirals: a pool of ``n_pool`` and a test set of ``n_test`` points, standardised by the
    pool's per-coordinate mean and standard deviation."""
    x, y = two_spirals(n_pool + n_test, seed=seed)
    pool = x[:n_pool]
    return Dataset("two_spirals", pool, y[:n_pool], x[n_pool:], y[n_pool:], 2,
                   mean=pool.mean(0), std=pool.std(0))


# ---------------------------------------------------------------------------------------------
# Theory checks under gradient descent with the mean-field scaling
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GDCheck:
    """Trajectory of one gradient-descent run (numbers behind the GD claims)."""

    width: int
    steps: list[int]
    loss: list[float]
    lambda_min_g1: list[float]
    lambda_min_g2: list[float]
    kl_enc_knn: list[float]
    kl_pred_knn: list[float]
    kl_enc_gauss: list[float]
    kl_pred_gauss: list[float]
    w2_enc: list[float]
    w2_pred: list[float]
    linear_rate: float
    rate_bound: float
    loss_ratio: float
    lambda_ratio: float
    kl_last_quarter_fraction: float
    seconds: float


def gradient_descent_check(
    width: int = 1024,
    n: int = 32,
    depth: int = 10,
    alpha: float = 1.0,
    beta: float = 16.0,
    eta_beta2: float = 3.2,
    steps: int = 1600,
    records: int = 16,
    seed: int = 0,
    data_seed: int = 5,
) -> GDCheck:
    """Plain GD (SGD, momentum 0) with the mean-field rates eta L M, eta K, M = K = ``width``,
    eta = ``eta_beta2`` / beta^2, on ``n`` standardised two-spirals points, float64.

    Records, ``records`` + 1 times: loss, lambda_min(G1), lambda_min(G2) on the n points, the KL
    (k-NN and Gaussian fit; encoder averaged over layers) and the W2 upper bounds. loss_ratio =
    loss(0) / loss(end); lambda_ratio = min_t lambda_min(G2)(t) / lambda_min(G2)(0);
    kl_last_quarter_fraction = [KL(T) - KL(3T/4)] / [KL(T) - KL(0)] for KL = encoder + predictor
    k-NN estimates. linear_rate: fitted rate per unit time t = eta * step; rate_bound: the rate
    2 lambda_min(G1 + G2)(0) / n of the bound L(t) <= exp(-2 lambda t / n) L(0).
    """
    data = spirals_dataset(n, 16, data_seed)
    model = MeanFieldResNet(in_dim=2, depth=depth, width=width, predictor_width=width, alpha=alpha,
                            beta=beta)
    params = init_params(model, [seed], torch.float64)
    eta = eta_beta2 / beta**2
    xs = [data.prepare(data.x, torch.float64, "cpu")]
    rec: dict[str, list[float]] = {k: [] for k in ("steps", "loss", "lambda_min_G1", "lambda_min_G2",
                                                    "lambda_min_total", "kl_enc_knn", "kl_pred_knn",
                                                    "kl_enc_gauss", "kl_pred_gauss", "w2_enc", "w2_pred")}
    every = max(1, steps // records)

    def hook(step: int, state: Any) -> None:
        g = gram_lambda_min(model, state.params, xs)
        kl = particle_kl(model, state.params, per_layer=False)
        mv = displacement(model, state.params, params)
        with torch.no_grad():
            f = model.forward(state.params, xs[0].unsqueeze(0))[0, :, 0]
        loss = float(0.5 * (f - (2 * data.y - 1).to(f)).square().mean())
        rec["steps"].append(step)
        rec["loss"].append(loss)
        for key in ("lambda_min_G1", "lambda_min_G2", "lambda_min_total"):
            rec[key].append(float(g[key][0]))
        for key in ("kl_enc_knn", "kl_pred_knn", "kl_enc_gauss", "kl_pred_gauss"):
            rec[key].append(float(kl[key][0]))
        for key in ("w2_enc", "w2_pred"):
            rec[key].append(float(mv[key][0]))

    t0 = time.perf_counter()
    res = train(model, params, data, [torch.arange(n)], lr=eta,
                config=TrainConfig(steps=steps, loss="squared", optimizer="sgd"), seeds=[seed],
                hooks=[(every, hook)], evaluate_test=False)
    seconds = time.perf_counter() - t0
    kl = np.add(rec["kl_enc_knn"], rec["kl_pred_knn"])
    q = int(np.searchsorted(rec["steps"], 0.75 * steps))
    total = kl[-1] - kl[0]
    frac = float((kl[-1] - kl[q]) / total) if total > 0 else float("nan")
    rate = float(fit_linear_rate(res.state.loss_history[:, 0])[0]) / eta
    return GDCheck(
        width=width, steps=rec["steps"], loss=rec["loss"], lambda_min_g1=rec["lambda_min_G1"],
        lambda_min_g2=rec["lambda_min_G2"], kl_enc_knn=rec["kl_enc_knn"], kl_pred_knn=rec["kl_pred_knn"],
        kl_enc_gauss=rec["kl_enc_gauss"], kl_pred_gauss=rec["kl_pred_gauss"], w2_enc=rec["w2_enc"],
        w2_pred=rec["w2_pred"], linear_rate=rate, rate_bound=2 * rec["lambda_min_total"][0] / n,
        loss_ratio=rec["loss"][0] / rec["loss"][-1],
        lambda_ratio=min(rec["lambda_min_G2"]) / rec["lambda_min_G2"][0],
        kl_last_quarter_fraction=frac, seconds=seconds,
    )


def lambda_min_settling(
    widths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096),
    n: int = 16,
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7),
    depth: int = 10,
    beta: float = 1.0,
    data_seed: int = 5,
) -> dict[str, Any]:
    """lambda_min(G2) at initialisation on ``n`` fixed standardised two-spirals points for
    M = K in ``widths`` (mean and sd over ``seeds``), with the relative change of the mean
    between consecutive widths, and a Monte-Carlo value of the width-to-infinity limit (encoder
    = identity, K = 2^18 predictor particles)."""
    data = spirals_dataset(n, 16, data_seed)
    x = data.prepare(data.x, torch.float64, "cpu")
    means, sds = [], []
    groups = {"G2": PREDICTOR_PARAMS}
    for W in widths:
        model = MeanFieldResNet(in_dim=2, depth=depth, width=W, predictor_width=W, beta=beta)
        vals = lambda_min(gram_matrices(model, init_params(model, list(seeds), torch.float64), x,
                                        groups=groups)["G2"])
        means.append(float(vals.mean()))
        sds.append(float(vals.std()) if len(seeds) > 1 else 0.0)
    limit_model = MeanFieldResNet(in_dim=2, depth=1, width=1, predictor_width=1 << 18, alpha=0.0, beta=beta)
    limit = float(lambda_min(gram_matrices(limit_model, init_params(limit_model, [12345], torch.float64), x,
                                           groups=groups)["G2"])[0])
    rel = [abs(means[i + 1] - means[i]) / means[i] for i in range(len(means) - 1)]
    return {"widths": list(widths), "n": n, "mean": means, "sd": sds, "relative_change": rel,
            "limit_mc": limit, "relative_error_to_limit": [abs(m - limit) / limit for m in means]}


# ---------------------------------------------------------------------------------------------
# The reproduction
# ---------------------------------------------------------------------------------------------
def _plot(out_dir: Path, name: str, draw: Any) -> Path:
    """``draw(plt)`` -> figure, written as the report's other figures are (PNG 150 dpi, PDF, SVG)."""
    import matplotlib.pyplot as plt

    from ..plotting import save_figure

    fig = draw(plt)
    fig.tight_layout()
    return save_figure(fig, out_dir / f"{name}.png")


def _main_rows(rows: list[CellRecord]) -> list[CellRecord]:
    return [r for r in rows if r.spec in ("mean-field", "mean-field-quick") and r.status == "done"]


def trajectories(rows: list[CellRecord]) -> dict[str, list]:
    """Loss, lambda_min(G1), lambda_min(G2) and k-NN KL of every cell at the tracked steps, from the
    rows' ``series`` (step -> value per series name; the loss at step t is the objective before
    update t + 1, so the loss shown at a tracked step t > 0 is that of step t - 1, NaN at 0)."""
    names = {"lambda_min_G1": "gram.lambda_min_G1", "lambda_min_G2": "gram.lambda_min_G2",
             "kl_enc_knn": "kl.kl_enc_knn", "kl_pred_knn": "kl.kl_pred_knn"}
    series = [r.series for r in rows]
    steps = sorted(series[0].get(names["lambda_min_G1"], {})) if series else []
    out: dict[str, list] = {"step": steps, "loss": []}
    for key in names:
        out[key] = []
    for t in steps:
        out["loss"].append([s.get("train_objective", {}).get(t - 1, float("nan")) if t > 0
                            else float("nan") for s in series])
        for key, name in names.items():
            out[key].append([s.get(name, {}).get(t, float("nan")) for s in series])
    return out


def gd_check_from_row(row: CellRecord) -> GDCheck:
    """The :class:`GDCheck` of one cell of ``mean-field-gd.toml``, from its record and series."""
    ser = row.series
    steps = sorted(ser["gram.lambda_min_G2"])

    def at(name: str) -> list[float]:
        return [ser[name][t] for t in steps]

    eta, n, T = row.cell.training.lr, row.cell.sample_size, row.cell.training.config.steps
    loss, g2 = at("train_loss.loss"), at("gram.lambda_min_G2")
    kl = np.add(at("kl.kl_enc_knn"), at("kl.kl_pred_knn"))
    q = int(np.searchsorted(steps, 0.75 * T))
    total = kl[-1] - kl[0]
    return GDCheck(
        width=row.cell.model.width, steps=steps, loss=loss, lambda_min_g1=at("gram.lambda_min_G1"),
        lambda_min_g2=g2, kl_enc_knn=at("kl.kl_enc_knn"), kl_pred_knn=at("kl.kl_pred_knn"),
        kl_enc_gauss=at("kl.kl_enc_gauss"), kl_pred_gauss=at("kl.kl_pred_gauss"),
        w2_enc=at("displacement.w2_enc"), w2_pred=at("displacement.w2_pred"),
        linear_rate=ser["linear_rate"][T] / eta, rate_bound=2 * ser["gram.lambda_min_total"][0] / n,
        loss_ratio=loss[0] / loss[-1], lambda_ratio=min(g2) / g2[0],
        kl_last_quarter_fraction=float((kl[-1] - kl[q]) / total) if total > 0 else float("nan"),
        seconds=row.timing["train_seconds"],
    )


def _gd_claim(gd: dict[str, list[GDCheck]]) -> Claim:
    """Mean-field GD at M = K = 1024, one run per seed: three parts, each a one-sided t test across
    seeds (:mod:`resdyn.analysis.verdicts`), joined by the intersection-union rule: log10 of
    loss(0)/loss(T) > 1, min_t lambda_min(G2)(t) / lambda_min(G2)(0) > 1/2, and the KL increase in
    the last quarter below 0.1 of the total. Width 16 is shown for contrast, not tested."""
    from ..analysis.verdicts import joint, mean_test

    wide, narrow = gd["1024"], gd["16"]
    logr = [float(np.log10(r.loss_ratio)) for r in wide]
    lam = [r.lambda_ratio for r in wide]
    klf = [r.kl_last_quarter_fraction for r in wide]
    v = joint([("loss falls >= 10x", mean_test(logr, 1.0, "greater", what="mean log10 loss ratio")),
               ("lambda_min(G2) above half", mean_test(lam, 0.5, "greater", what="mean min lambda ratio")),
               ("KL plateaus", mean_test(klf, 0.1, "less", what="mean last-quarter KL fraction"))])

    def mean(xs: list[float]) -> str:
        return f"{np.mean(xs):.3g}" if xs else "n/a"

    measured = (f"{len(wide)} seeds at width 1024: mean log10 loss ratio {mean(logr)}, mean min "
                f"lambda_min(G2)/initial {mean(lam)}, mean KL last-quarter fraction {mean(klf)} "
                f"(width 16, {len(narrow)} seeds: {mean([float(np.log10(r.loss_ratio)) for r in narrow])}, "
                f"{mean([r.lambda_ratio for r in narrow])}, "
                f"{mean([r.kl_last_quarter_fraction for r in narrow])})")
    return v.claim(
        "Mean-field GD at M = K = 1024: loss falls >= 10x, lambda_min(G2) stays above half its "
        "initial value, KL from initialisation plateaus", measured,
        {k: [{f: getattr(r, f) for f in ("loss_ratio", "lambda_ratio", "kl_last_quarter_fraction",
                                          "linear_rate", "rate_bound")} for r in runs]
         for k, runs in gd.items()})


def _rate_claims(n_arr: np.ndarray, err_grid: np.ndarray, seeds: list[Any]) -> tuple[Any, list[Claim]]:
    """The per-seed rate fit of test error on n (every n) and the two rate claims of the module
    docstring, each over the range of n where the log-log curve is not significantly curved."""
    from ..analysis.rates import fit_rate, rate_claim, straight_range

    x = np.tile(n_arr, len(seeds))
    g = np.repeat(np.arange(len(seeds)), n_arr.size)
    y = err_grid.ravel()
    fit = fit_rate(x, y, g)  # raises ValueError when a seed has no positive error to fit
    try:
        full, rng = straight_range(x, y, g)
    except ValueError as err:
        from ..analysis.verdicts import no_test

        why = f"no straightness test: {err}"
        return fit, [no_test("one-sided t, H1: b < 0", why, "seed", fit.seeds).claim(
                         "Test 0-1 error falls as a power of n", f"slope {fit.slope:.3f}"),
                     no_test("one-sided t, H1: b < -0.5", why, "seed", fit.seeds).claim(
                         "The measured rate is faster than the O(n^-1/2) of the bound",
                         f"slope {fit.slope:.3f}")]
    on = fit
    if rng is not None and rng is not full:
        keep = np.isin(x, rng.sizes)
        on = fit_rate(x[keep], y[keep], g[keep])
    claims = []
    for text, b0 in (("Test 0-1 error falls as a power of n", 0.0),
                     ("The measured rate is faster than the O(n^-1/2) of the bound", -0.5)):
        v = rate_claim(on, b0, "faster", 0.0, straight=(full, rng))
        claims.append(Claim(text, v.words, v.verdict, v.test, v.values))
    return fit, claims


def analyze(rows: list[CellRecord], out_dir: Path | None = None,
            name: str = "mean-field") -> ExperimentOutcome:
    """The reproduction's tables, claims and figures from its per-cell store rows (see the module
    docstring). Rows may carry ``series`` ({name: {step: value}}) for the training curves."""
    main = _main_rows(rows)
    outcome = ExperimentOutcome(name)
    if not main:
        return outcome
    n_values = sorted({r.cell.sample_size for r in main})
    seeds = sorted({r.cell.seed for r in main})
    by_cell = {(r.cell.sample_size, r.cell.seed): r for r in main}
    cells = [(n, s) for s in seeds for n in n_values if (n, s) in by_cell]
    if len(cells) != len(n_values) * len(seeds):
        return outcome  # an incomplete grid: nothing to fit yet
    ordered = [by_cell[c] for c in cells]
    n_test = int(dict(ordered[0].cell.data.options)["test_size"])
    err = np.array([1.0 - r.metrics["test_acc"] for r in ordered])
    floor = 1.0 / n_test
    n_arr = np.array(n_values, dtype=float)
    err_grid = err.reshape(len(seeds), len(n_values))
    mean_err = err_grid.mean(0)
    fit, claims = _rate_claims(n_arr, err_grid, seeds)
    table = []
    for (n, s), r in zip(cells, ordered, strict=True):
        m = r.measures
        table.append({"n": n, "seed": s, "test_error": 1.0 - r.metrics["test_acc"],
                      "train_error": 1.0 - r.metrics["train_acc"],
                      "train_loss": r.metrics["train_loss"],
                      "kl_enc_knn": m["meanfield_kl_plugin.plugin.r1"],
                      "kl_pred_knn": m["meanfield_kl_plugin.plugin.r2"],
                      "kl_plugin_estimate": m["meanfield_kl_plugin.plugin"],
                      "kl_plugin_rademacher": m["meanfield_kl_plugin.plugin.rademacher"]})
    summary = [{"n": int(n), "mean_test_error": float(m), "sd_test_error": float(sd),
                "floored": bool(m < floor)}
               for n, m, sd in zip(n_values, mean_err, err_grid.std(0), strict=True)]
    fit_row = {"slope": fit.slope, "ci95_low": fit.ci95[0], "ci95_high": fit.ci95[1],
               "stderr": fit.stderr, "seeds": fit.seeds, "method": fit.method,
               "nonpositive": fit.nonpositive, "intercept": fit.intercept, "n_points": fit.n,
               "floor_shown_in_figure": floor}
    outcome.claims = claims
    gd_rows = [r for r in rows if r.spec == "mean-field-gd" and r.status == "done" and r.series]
    gd: dict[str, list[GDCheck]] = {}
    for r in sorted(gd_rows, key=lambda r: r.cell.seed):
        gd.setdefault(str(r.cell.model.width), []).append(gd_check_from_row(r))
    if {"1024", "16"} <= set(gd):
        outcome.claims.append(_gd_claim(gd))
    traj = trajectories(ordered)
    outcome.tables = {"cells": table, "error_by_n": summary, "fit": [fit_row]}
    outcome.data = {"cells": [{"n": n, "seed": s} for n, s in cells], "test_error": err.tolist(),
                    "mean_test_error": mean_err.tolist(), "fit": fit_row, "trajectories": traj,
                    "train_seconds": max(r.timing["train_seconds"] for r in ordered)}
    if gd:
        outcome.data["gradient_descent"] = {k: [asdict(r) for r in v] for k, v in gd.items()}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        first = {k: v[0] for k, v in gd.items()}  # the figure shows each width's first seed
        outcome.figures = _figures(out_dir, n_values, seeds, err_grid, mean_err, fit, floor, traj, cells,
                                   first)
        (out_dir / "meanfield.json").write_text(json.dumps(outcome.data, indent=1, default=float))
    return outcome


def _figures(out_dir: Path, n_values: list[int], seeds: list[int], err_grid: np.ndarray,
             mean_err: np.ndarray, fit: Any, floor: float, traj: dict[str, list],
             cells: list[tuple[int, int]], gd: dict[str, GDCheck] | None = None,
             settle: dict[str, Any] | None = None) -> dict[str, Path]:
    figs: dict[str, Path] = {}
    n_arr = np.array(n_values, dtype=float)

    def loglog(plt: Any) -> Any:
        fig, ax = plt.subplots(figsize=(5, 4))
        for i, s in enumerate(seeds):
            ax.scatter(n_arr, np.maximum(err_grid[i], floor), s=12, alpha=0.5, label=f"seed {s}")
        ax.plot(n_arr, np.maximum(mean_err, floor), "ko-", label="mean over seeds")
        ax.plot(n_arr, np.exp(fit.intercept) * n_arr**fit.slope, "r-",
                label=f"fit slope {fit.slope:.2f} [{fit.ci95[0]:.2f}, {fit.ci95[1]:.2f}]")
        ref = np.maximum(mean_err, floor)[0] * (n_arr / n_arr[0]) ** -0.5
        ax.plot(n_arr, ref, "b--", label="slope -1/2 (bound's rate)")
        ax.axhline(floor, color="gray", lw=0.8, ls=":", label="floor 1/n_test")
        ax.set(xscale="log", yscale="log", xlabel="n (training points)", ylabel="test 0-1 error",
               title="Mean-field ResNet on two spirals")
        ax.legend(fontsize=7)
        return fig

    figs["test_error_vs_n"] = _plot(out_dir, "meanfield_test_error_vs_n", loglog)

    def curves(plt: Any) -> Any:
        fig, axes = plt.subplots(2, 2, figsize=(9, 7))
        steps = np.array(traj["step"])
        for key, ax, title in (("loss", axes[0, 0], "training loss"),
                               ("lambda_min_G1", axes[0, 1], "lambda_min(G1)"),
                               ("lambda_min_G2", axes[1, 0], "lambda_min(G2)"),
                               ("kl_enc_knn", axes[1, 1], "KL (k-NN): encoder solid, predictor dashed")):
            vals = np.array(traj[key], dtype=float)
            for n in n_values:
                cols = [e for e, (nn, _) in enumerate(cells) if nn == n]
                with warnings.catch_warnings():  # the loss before step 0 is NaN
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mean_curve = np.nanmean(vals[:, cols], axis=1)
                line = ax.plot(steps, mean_curve, label=f"n={n}")
                if key == "kl_enc_knn":
                    pv = np.array(traj["kl_pred_knn"], dtype=float)[:, cols]
                    ax.plot(steps, np.nanmean(pv, axis=1), ls="--", color=line[0].get_color())
            if key in ("loss", "lambda_min_G1", "lambda_min_G2"):
                ax.set_yscale("log")
            ax.set(title=title, xlabel="Adam step")
        axes[0, 0].legend(fontsize=7)
        fig.tight_layout()
        return fig

    if traj["step"]:
        figs["training_curves"] = _plot(out_dir, "meanfield_training_curves", curves)

    if gd:
        def gd_fig(plt: Any) -> Any:
            fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
            for w, run_ in gd.items():
                axes[0].plot(run_.steps, run_.loss, label=f"M=K={w}")
                ratio = np.array(run_.lambda_min_g2) / run_.lambda_min_g2[0]
                axes[1].plot(run_.steps, ratio, label=f"M=K={w}")
                axes[2].plot(run_.steps, np.add(run_.kl_enc_knn, run_.kl_pred_knn), label=f"M=K={w}")
            axes[0].set(yscale="log", title="loss (GD, mean-field rates)", xlabel="step")
            axes[1].axhline(0.5, color="gray", ls=":")
            axes[1].set(title="lambda_min(G2) / initial", xlabel="step")
            axes[2].set(title="KL enc + pred (k-NN)", xlabel="step")
            axes[0].legend(fontsize=7)
            fig.tight_layout()
            return fig

        figs["gradient_descent"] = _plot(out_dir, "meanfield_gradient_descent", gd_fig)
    if settle is not None:
        def settle_fig(plt: Any) -> Any:
            fig, ax = plt.subplots(figsize=(5, 3.6))
            ax.errorbar(settle["widths"], settle["mean"], yerr=settle["sd"], fmt="o-", label="mean +- sd")
            ax.axhline(settle["limit_mc"], color="r", ls="--", label="limit (Monte Carlo)")
            ax.set(xscale="log", xlabel="M = K", ylabel="lambda_min(G2) at init", title=f"n = {settle['n']}")
            ax.legend(fontsize=7)
            return fig

        figs["lambda_min_settling"] = _plot(out_dir, "meanfield_lambda_min_settling", settle_fig)
    return figs
