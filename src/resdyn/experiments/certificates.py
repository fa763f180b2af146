"""The certificates reproduction: PAC-Bayes risk certificates of knot-parametrised residual
networks against the sample size S and the depth L, on two spirals, digits and mnist-5k.

One cell = (data set, S, L, seed). For each data set and seed:

1. the sample of size S (stratified, nested in S) is split by the ``(seed, 'certificate/prior-split')``
   stream into a prior part (``prior_fraction`` of S) and a bound part of n examples;
2. the prior mean is the knot path trained by ERM on the prior part with the engine, the loss
   averaged over the networks of depths ``prior_depths`` (:class:`DepthStack`; data-dependent
   prior), or the initialisation (``prior = 'init'``, n = S);
3. for every depth L the posterior N(mu, diag softplus(rho)^2), started at the prior mean, is
   trained on the bound part with a bound objective (f-quad by default), the network of depth L
   evaluating the knot path at t_k = k T / L;
4. the certificate is computed afresh (never read from training): hat R by ``rounds`` passes over
   the bound part, every example with its own draw from Q; its kl inversion with m = n rounds;
   PAC-Bayes-kl with KL(Q || P_j) at each prior scale of the grid and a union over it; 0-1 and
   bounded cross-entropy versions. The stochastic predictor's test error (the same per-example
   draws on the test set) is stored beside it.

Every cell is a store row (config, metrics, training-objective series, timing, provenance),
written in a transaction like every sweep's; a re-run trains only missing cells.
"""

from __future__ import annotations

import functools
import math
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._checks import check_choice, check_int, check_positive, resolve_device, resolve_dtype
from .._seeds import generator_for
from ..analysis.summary import group_rows
from ..data import load, subsample
from ..data.base import Dataset
from ..models.base import Params, init_params
from ..models.conv_resnet import ConvResNet
from ..models.knot_resnet import DepthStack, KnotResNet, at_depth
from ..models.resnet import ResNet
from ..models.stochastic import init_posterior, posterior_parts, sample
from ..sweeps.cells import cell_hash
from ..sweeps.spec import spec_path
from ..sweeps.store import CellResult, Store, provenance
from ..theory.pacbayes import (
    OBJECTIVES,
    bounded_cross_entropy,
    certify,
    kl_to_prior,
    make_combine,
)
from ..training.engine import TrainConfig, train
from ..training.objective import Objective
from .base import Claim, ExperimentOutcome

__all__ = ["CertificateSpec", "DataPlan", "analyze", "load_certificate_spec", "run", "run_spec",
           "train_posterior"]

SPEC_NAME = "certificates"


# ------------------------------------------------------------------------------------ spec


@dataclass(frozen=True)
class DataPlan:
    """One data set of the reproduction: its options, sample sizes, model and training lengths."""

    name: str
    sample_sizes: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    prior_steps: int = 1000
    posterior_steps: int = 500
    lr: float = 1e-2
    posterior_lr: float = 1e-3
    batch_size: int = 128


@dataclass(frozen=True)
class CertificateSpec:
    """See ``resdyn/specs/certificates.toml`` for the meaning of every key."""

    name: str
    data: tuple[DataPlan, ...]
    depths: tuple[int, ...] = (4, 16, 64, 256)
    seeds: tuple[int, ...] = (0,)
    prior: str = "data"
    prior_fraction: float = 0.5
    prior_depths: tuple[int, ...] = (16,)
    objective: str = "f-quad"
    prior_scales: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1)
    train_prior_scale: float = 0.01
    delta: float = 0.025
    delta_mc: float = 0.01
    rounds: int = 10
    test_rounds: int = 5
    p_min: float = 1e-4
    dtype: str = "float32"
    description: str = ""


_RUN_KEYS = {"depths", "seeds", "prior", "prior_fraction", "prior_depths", "objective", "prior_scales",
             "train_prior_scale", "delta", "delta_mc", "rounds", "test_rounds", "p_min", "dtype"}
_DATA_KEYS = {"name", "sample_sizes", "options", "model", "prior_steps", "posterior_steps", "lr",
              "posterior_lr", "batch_size"}


def _unknown(keys: set[str], allowed: set[str], where: str) -> None:
    extra = sorted(keys - allowed)
    if extra:
        raise ValueError(f"{where}: unknown key {extra[0]!r}; allowed: {', '.join(sorted(allowed))}")


def load_certificate_spec(path: str | Path) -> CertificateSpec:
    """Read and check a certificates spec (TOML); errors name the key path."""
    raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    _unknown(set(raw), {"name", "description", "run", "data"}, str(path))
    run_cfg = dict(raw.get("run", {}))
    _unknown(set(run_cfg), _RUN_KEYS, "run")
    plans = []
    for i, d in enumerate(raw.get("data", [])):
        _unknown(set(d), _DATA_KEYS, f"data[{i}]")
        plan = DataPlan(**{k: tuple(v) if k == "sample_sizes" else v for k, v in d.items()})
        for S in plan.sample_sizes:
            check_int(f"data[{i}].sample_sizes", S, 2)
        for k in ("prior_steps", "posterior_steps", "batch_size"):
            check_int(f"data[{i}].{k}", getattr(plan, k), 1)
        check_positive(f"data[{i}].lr", plan.lr)
        check_positive(f"data[{i}].posterior_lr", plan.posterior_lr)
        plans.append(plan)
    if not plans:
        raise ValueError(f"{path}: at least one [[data]] table is needed")
    spec = CertificateSpec(name=raw["name"], description=raw.get("description", ""), data=tuple(plans),
                           **{k: tuple(v) if isinstance(v, list) else v for k, v in run_cfg.items()})
    check_choice("run.prior", spec.prior, ("data", "init"))
    check_choice("run.objective", spec.objective, OBJECTIVES)
    if not 0 < spec.prior_fraction < 1:
        raise ValueError(f"run.prior_fraction must lie in (0, 1), got {spec.prior_fraction}")
    if spec.train_prior_scale not in spec.prior_scales:
        raise ValueError(f"run.train_prior_scale {spec.train_prior_scale} must be one of the grid "
                         f"run.prior_scales {list(spec.prior_scales)} (the grid is fixed in advance)")
    for L in spec.depths:
        check_int("run.depths", L, 1)
    if not spec.prior_depths:
        raise ValueError("run.prior_depths must name at least one depth, e.g. [4, 64]")
    for L in spec.prior_depths:
        check_int("run.prior_depths", L, 1)
    return spec


# ----------------------------------------------------------------------------------- model


def knot_model(plan: DataPlan, data: Dataset, depth: int) -> KnotResNet:
    """The knot-parametrised network of ``plan`` at depth L: an MLP ResNet on flattened inputs,
    or (``model.conv = true``) a convolutional ResNet on images."""
    opts = dict(plan.model)
    knots = opts.pop("knots", 4)
    interpolation = opts.pop("interpolation", "linear")
    if opts.pop("conv", False):
        inner = ConvResNet(in_channels=data.input_shape[0], out_dim=data.num_classes, depth=depth, **opts)
    else:
        inner = ResNet(in_dim=data.in_dim, out_dim=data.num_classes, depth=depth, **opts)
    return KnotResNet(inner, knots=knots, interpolation=interpolation)


def split_sample(idx: Tensor, seed: int, fraction: float) -> tuple[Tensor, Tensor]:
    """(prior part, bound part) of a sample: a permutation from ``(seed, 'certificate/prior-split')``,
    the first round(fraction S) rows to the prior; both sorted. Disjoint by construction."""
    perm = torch.randperm(len(idx), generator=generator_for(seed, "certificate/prior-split"))
    k = round(fraction * len(idx))
    return torch.sort(idx[perm[:k]]).values, torch.sort(idx[perm[k:]]).values


# ------------------------------------------------------------------------------ training


def train_posterior(
    model: Any,
    post: Params,
    data: Dataset,
    indices: Sequence[Tensor],
    lr: Tensor | float,
    steps: int,
    seeds: Sequence[int],
    combine: Callable[[Tensor, Params], Tensor],
    batch_size: int,
    p_min: float,
    chunk_size: int = 64,
) -> tuple[Params, Tensor]:
    """Train the E posteriors in ``post`` on a bound objective with the engine; returns
    (posterior, objective history (steps, E)).

    The networks of step t are ``sample(post, t, seeds)`` (each model's own ``posterior/t``
    stream), the data loss is the bounded cross-entropy (p_min) and the objective is
    ``combine(loss, post)`` (docs/theory.md, "PAC-Bayes risk certificates")."""
    objective = Objective(loss=functools.partial(bounded_cross_entropy, p_min=p_min), sample=sample,
                          combine=combine)
    config = TrainConfig(steps=steps, batch_size=batch_size, chunk_size=chunk_size)
    result = train(model, post, data, indices, lr, config, seeds, objective=objective,
                   evaluate_test=False)
    return result.params, result.state.loss_history.cpu()


# ------------------------------------------------------------------------------ evaluation


def per_example_risks(model: Any, post: Params, data: Dataset, indices: Sequence[Tensor] | None,
                      seeds: Sequence[int], rounds: int, p_min: float, stream: str,
                      chunk: int = 500) -> tuple[Tensor, Tensor]:
    """(mean 0-1 loss, mean bounded cross-entropy), each (E,), of the stochastic predictor Q_e on
    its examples (``indices[e]`` of the pool, or the test set when ``indices`` is None), every
    example of every round with its own network drawn from Q_e (``(seeds[e], stream/r)`` streams).

    The E * n * rounds losses are independent given the data, in [0, 1], with mean R_S(Q_e), so
    their mean is hat R_m with m = n * rounds draws (see docs/theory.md)."""
    mu, sigma = posterior_parts(post)
    E = next(iter(mu.values())).shape[0]
    err, ce = torch.zeros(E, dtype=torch.float64), torch.zeros(E, dtype=torch.float64)
    p0 = next(iter(mu.values()))
    with torch.no_grad():
        for e in range(E):
            if indices is None:
                xs, ys = data.x_test, data.y_test
            else:
                xs, ys = data.x[indices[e]], data.y[indices[e]]
            x_all = data.prepare(xs, p0.dtype, p0.device)
            tot_err = tot_ce = 0.0
            for r in range(rounds):
                g = generator_for(int(seeds[e]), f"{stream}/{r}")
                for s in range(0, len(ys), chunk):
                    x = x_all[s : s + chunk]
                    c = len(x)
                    params = {}
                    for name in sorted(mu):
                        eps = torch.randn((c, *mu[name].shape[1:]), generator=g, dtype=torch.float64)
                        params[name] = mu[name][e] + sigma[name][e] * eps.to(p0)
                    out = model.forward(params, x.unsqueeze(1))[:, 0]
                    y = ys[s : s + chunk].to(p0.device)
                    tot_err += float((out.argmax(-1) != y).double().sum())
                    tot_ce += float(bounded_cross_entropy(out.double(), y, p_min).sum())
            err[e] = tot_err / (rounds * len(ys))
            ce[e] = tot_ce / (rounds * len(ys))
    return err, ce


# ------------------------------------------------------------------------------------- run


def cell_config(spec: CertificateSpec, plan: DataPlan, S: int, L: int, seed: int) -> dict[str, Any]:
    return {
        "reproduction": SPEC_NAME, "data": {"name": plan.name, **plan.options}, "sample_size": S,
        "seed": seed, "depth": L, "model": dict(plan.model), "prior": spec.prior,
        "prior_fraction": spec.prior_fraction if spec.prior == "data" else 0.0,
        "prior_depths": list(spec.prior_depths), "objective": spec.objective,
        "prior_scales": list(spec.prior_scales), "train_prior_scale": spec.train_prior_scale,
        "delta": spec.delta, "delta_mc": spec.delta_mc, "rounds": spec.rounds,
        "test_rounds": spec.test_rounds, "p_min": spec.p_min, "dtype": spec.dtype,
        "train": {"prior_steps": plan.prior_steps, "posterior_steps": plan.posterior_steps, "lr": plan.lr,
                  "posterior_lr": plan.posterior_lr, "batch_size": plan.batch_size},
    }


def _certify_all(model, post, prior_mu, data, bound_idx, seeds, spec: CertificateSpec) -> list[dict]:
    n = [len(i) for i in bound_idx]
    err, ce = per_example_risks(model, post, data, bound_idx, seeds, spec.rounds, spec.p_min,
                                "certificate/bound")
    t_err, t_ce = per_example_risks(model, post, data, None, seeds, spec.test_rounds, spec.p_min,
                                    "certificate/test")
    kls = torch.stack([kl_to_prior({k: v.double() for k, v in post.items()},
                                   {k: v.double() for k, v in prior_mu.items()}, s)
                       for s in spec.prior_scales], 1)                       # (E, K)
    out = []
    for e in range(len(seeds)):
        m = n[e] * spec.rounds
        c01 = certify(float(err[e]), m, kls[e], list(spec.prior_scales), n[e], spec.delta, spec.delta_mc)
        cce = certify(float(ce[e]), m, kls[e], list(spec.prior_scales), n[e], spec.delta, spec.delta_mc)
        out.append({"c01": c01, "cce": cce, "test_error": float(t_err[e]), "test_ce": float(t_ce[e]),
                    "kl_train_scale": float(kls[e, list(spec.prior_scales).index(spec.train_prior_scale)])})
    return out


def run_spec(spec: CertificateSpec, store_path: str | Path, device: str = "cpu",
             say: Callable[[str], None] = lambda msg: None) -> list[dict[str, Any]]:
    """Train and certify every cell of ``spec`` missing from the store; return the store's rows
    of this spec."""
    dev, dtype = resolve_device(device), resolve_dtype(spec.dtype)
    with Store(store_path) as store:
        done = store.done_ids()
        prov = provenance(spec.dtype, str(dev))
        for plan in spec.data:
            data = load(plan.name, **plan.options)
            cells = [(S, L, s) for S in plan.sample_sizes for L in spec.depths for s in spec.seeds]
            ids = {c: cell_hash(cell_config(spec, plan, *c)) for c in cells}
            if all(i in done for i in ids.values()):
                continue
            t0 = time.perf_counter()
            members = [(S, s) for S in plan.sample_sizes for s in spec.seeds]
            seeds = [s for _, s in members]
            samples = [subsample(data, S, s) for S, s in members]
            base = knot_model(plan, data, spec.prior_depths[0])
            params0 = init_params(base, seeds, dtype, dev)
            if spec.prior == "data":
                parts = [split_sample(i, s, spec.prior_fraction) for i, s in zip(samples, seeds, strict=True)]
                prior_idx, bound_idx = [p for p, _ in parts], [b for _, b in parts]
                cfg = TrainConfig(steps=plan.prior_steps, batch_size=plan.batch_size)
                prior_model = DepthStack(base, tuple(spec.prior_depths))
                prior_mu = train(prior_model, params0, data, prior_idx, plan.lr, cfg, seeds,
                                 evaluate_test=False).params
            else:
                bound_idx, prior_mu = samples, params0
            t_prior = time.perf_counter() - t0
            n = torch.tensor([len(b) for b in bound_idx], dtype=torch.float64)
            combine = make_combine(spec.objective, prior_mu, spec.train_prior_scale, n, spec.delta)
            for L in spec.depths:
                todo = [k for k, (S, s) in enumerate(members) if ids[(S, L, s)] not in done]
                if not todo:
                    continue
                t1 = time.perf_counter()
                model = at_depth(base, L)
                post0 = init_posterior(prior_mu, spec.train_prior_scale)
                post, hist = train_posterior(model, post0, data, bound_idx, plan.posterior_lr,
                                             plan.posterior_steps, seeds, combine, plan.batch_size,
                                             spec.p_min)
                t_train = time.perf_counter() - t1
                certs = _certify_all(model, post, prior_mu, data, bound_idx, seeds, spec)
                seconds = time.perf_counter() - t1
                for k in todo:
                    S, s = members[k]
                    c = certs[k]
                    metrics = {"certificate_01": c["c01"].value, "certificate_ce": c["cce"].value,
                               "test_error": c["test_error"], "test_bounded_ce": c["test_ce"],
                               "kl": c["c01"].kl, "kl_train_scale": c["kl_train_scale"],
                               "n": c["c01"].n, "diverged": 0,
                               **{f"c01.{a}": v for a, v in c["c01"].as_dict().items()},
                               **{f"cce.{a}": v for a, v in c["cce"].as_dict().items()}}
                    stride = max(1, plan.posterior_steps // 100)
                    series = {"train_objective": [(t, float(hist[t, k])) for t in
                                                  range(0, plan.posterior_steps, stride)]}
                    result = CellResult(ids[(S, L, s)], cell_config(spec, plan, S, L, s), metrics,
                                        series=series, provenance=dict(prov),
                                        timing={"prior_seconds": t_prior, "train_seconds": t_train,
                                                "group_seconds": seconds, "group_size": len(members)})
                    store.write(spec.name, result)
                    say(f"{plan.name} S={S} L={L} seed={s}: certificate {c['c01'].value:.4f} "
                        f"(bounded CE {c['cce'].value:.4f}), stochastic test error "
                        f"{c['test_error']:.4f}, KL {c['c01'].kl:.1f}, n {c['c01'].n}")
                    for line in c["c01"].lines(f"  0-1 certificate of {plan.name} S={S} L={L}"):
                        say(line)
        return [r for r in store.rows() if r["spec"] == spec.name]


# --------------------------------------------------------------------------------- analyse


def analyze(rows: list[dict], out_dir: Path | None = None, name: str = SPEC_NAME,
            thresholds: dict[str, float] | None = None) -> ExperimentOutcome:
    """Table (data, S, L, seed, certificate, test error, KL, n) and the claims, each decided by
    the one rule (:mod:`resdyn.analysis.verdicts`) with the seed as the replication unit (a
    certificate run with one seed is inconclusive: no test across seeds):

    * non-vacuous at every depth: per seed, the largest over (data, L) at each data set's largest S
      of certificate - min(1, thresholds[data]); one-sided t of E < 0;
    * depth-uniform: per seed, the largest over data sets (at their largest S; separately, over
      every S) of log(certificate(L max) / certificate(L = 16)); one-sided t of E < log 1.1;
    * certificate decays with S: per (data, L), the per-seed slopes of log certificate on log S,
      one-sided t of b < 0 (:mod:`resdyn.analysis.rates`, straightness reported where 4 or more
      sizes), all (data, L) joined by the intersection-union rule;
    * the certificate is above the stochastic predictor's test error where it is non-vacuous: per
      seed, the smallest certificate - test error over cells with certificate < 1; one-sided t of
      E > 0 (cells with certificate >= 1 cannot fail and are left out).
    """
    from ..analysis.verdicts import mean_test, no_test

    outcome = ExperimentOutcome(name)
    ok = [r for r in rows if r["status"] == "done"]
    key = lambda r: (r["config"]["data"]["name"], r["config"]["sample_size"], r["config"]["depth"],  # noqa: E731
                     r["config"]["seed"])
    ok.sort(key=key)
    table = [{"data": r["config"]["data"]["name"], "S": r["config"]["sample_size"],
              "L": r["config"]["depth"], "seed": r["config"]["seed"], "n": r["metrics"]["n"],
              "certificate": r["metrics"]["certificate_01"], "certificate_ce": r["metrics"]["certificate_ce"],
              "test_error": r["metrics"]["test_error"], "KL": r["metrics"]["kl"],
              "prior_scale": r["metrics"]["c01.prior_scale"],
              "margin": r["metrics"]["certificate_01"] - r["metrics"]["test_error"]} for r in ok]
    outcome.tables["certificates"] = table
    if not table:
        return outcome
    if out_dir is not None:
        outcome.figures.update(_figures(table, Path(out_dir), name))
    thresholds = thresholds or {}
    by_data = group_rows(table, lambda r: r["data"])
    seeds = sorted({r["seed"] for r in table}, key=str)
    largest = {d: max(r["S"] for r in rs) for d, rs in by_data.items()}

    def per_seed(rows_: list[dict], f: Any, pick: Any = max) -> dict:
        return {s: pick(f(r) for r in rows_ if r["seed"] == s) for s in seeds
                if any(r["seed"] == s for r in rows_)}

    live = [r for r in table if r["certificate"] < 1.0]
    text = "where it is non-vacuous, the certificate is above the stochastic predictor's measured test error"
    if not live:
        outcome.claims.append(no_test("one-sided t, H1: smallest margin > 0", "the certificate is >= 1 in "
                                      "every cell: it cannot fall below a test error there", "seed",
                                      len(seeds)).claim(text, "vacuous in every cell"))
    else:
        m = per_seed(live, lambda r: r["margin"], min)
        worst = min(live, key=lambda r: r["margin"])
        outcome.claims.append(mean_test(list(m.values()), 0.0, "greater", what="mean smallest margin").claim(
            text, f"{len(live)} of {len(table)} cells non-vacuous; smallest margin per seed "
            + ", ".join(f"{v:.4f}" for v in m.values())
            + f" (overall {worst['margin']:.4f}: {worst['data']}, S={worst['S']}, L={worst['L']})",
            {"smallest_margin_per_seed": m, "cell": worst}))
    top = [r for r in table if r["S"] == largest[r["data"]]]
    excess = per_seed(top, lambda r: r["certificate"] - min(1.0, thresholds.get(r["data"], 1.0)))
    shown = "; ".join(f"{d}: max over L {max(r['certificate'] for r in top if r['data'] == d):.3f}"
                      for d in by_data)
    bar = "1" + "".join(f" ({d}: {t:g})" for d, t in sorted(thresholds.items()))
    what = f"mean over seeds of max over (data, L) of certificate - {bar}"
    outcome.claims.append(mean_test(list(excess.values()), 0.0, "less", what=what).claim(
        "non-vacuous at every depth", f"{shown}; per seed largest excess "
        + ", ".join(f"{v:+.3f}" for v in excess.values()), {"excess_per_seed": excess}))
    ratios = []
    for (d, S, s), rs in group_rows(table, lambda r: (r["data"], r["S"], r["seed"])).items():
        by_L = {r["L"]: r["certificate"] for r in rs}
        if 16 in by_L and max(by_L) > 16:
            ratios.append({"data": d, "S": S, "seed": s, "L": max(by_L),
                           "ratio": by_L[max(by_L)] / by_L[16]})
    for where, subset in (("at the largest S of each data set",
                           [r for r in ratios if r["S"] == largest[r["data"]]]),
                          ("at every S", ratios)):
        if not subset:
            continue
        lr = {s: max(math.log(r["ratio"]) for r in subset if r["seed"] == s)
              for s in sorted({r["seed"] for r in subset}, key=str)}
        w = max(subset, key=lambda r: r["ratio"])
        what = "mean over seeds of the largest log(cert(L max)/cert(16))"
        outcome.claims.append(mean_test(list(lr.values()), math.log(1.1), "less", what=what).claim(
            f"depth-uniform {where}", f"largest certificate(L={w['L']}) / certificate(L=16) = "
            f"{w['ratio']:.3f} ({w['data']}, S={w['S']}, seed {w['seed']}; {len(subset)} ratios); per seed "
            "largest ratio " + ", ".join(f"{math.exp(v):.3f}" for v in lr.values()), {"ratios": subset}))
    outcome.claims.append(_decay_claim(table))
    return outcome


def _decay_claim(table: list[dict]) -> Claim:
    """"The certificate decays with S", tested per (data, L) by :mod:`resdyn.analysis.rates`: the
    mean of the per-seed log-log slopes b of the certificate on S, one-sided t test of
    H0: b >= 0 (H1: b < 0) at alpha = 0.05, the straightness test beside it where there are 4 or
    more sizes; the (data, L) joined by :func:`resdyn.analysis.verdicts.joint` (held when every
    one rejects; not held when one shows b > 0 after Bonferroni; inconclusive otherwise, and when
    a (data, L) has fewer than 2 seeds with 2 sample sizes)."""
    from ..analysis.rates import fit_rate, rate_claim, straightness
    from ..analysis.verdicts import joint, no_test

    fits, parts = [], []
    for (d, L), rs in sorted(group_rows(table, lambda r: (r["data"], r["L"])).items()):
        x, y, g = [r["S"] for r in rs], [r["certificate"] for r in rs], [r["seed"] for r in rs]
        try:
            fit = fit_rate(x, y, g)
        except ValueError as err:
            fits.append({"data": d, "L": L, "verdict": "inconclusive", "reason": str(err)})
            parts.append((f"{d} L={L}", no_test("one-sided t, H1: b < 0", str(err))))
            continue
        try:
            st = straightness(x, y, g)
            note = st.words()
        except ValueError as err:
            st, note = None, f"no straightness test: {err}"
        v = rate_claim(fit, 0.0, "faster", 0.0)
        fits.append({"data": d, "L": L, "verdict": v.verdict, "words": f"{v.words}; {note}", **v.values,
                     "straightness": st.as_dict() if st else note})
        parts.append((f"{d} L={L}", v.decision))
    verdict = joint(parts)
    slopes = [f["slope"] for f in fits if "slope" in f]
    measured = (f"per-seed log-log slopes, mean per (data, L) in [{min(slopes):.3f}, {max(slopes):.3f}]; "
                if slopes else "no slope fitted; ")
    counts = {k: sum(v.verdict == k for _, v in parts) for k in ("held", "not held", "inconclusive")}
    measured += ", ".join(f"{c} {k}" for k, c in counts.items() if c) + f" of {len(parts)} (data, L)"
    reasons = sorted({f["reason"] for f in fits if "reason" in f})
    if reasons:
        measured += "; no test where: " + "; ".join(reasons)
    return verdict.claim("certificate decays with S", measured, {"fits": fits})


def _series(rows: list[dict], x: str, y: str, label: str) -> dict[str, Any]:
    """The seed mean of the fraction ``y`` against ``x`` with its percentile interval over seeds
    (:func:`resdyn.plotting.seed_interval`), the seeds as faint points."""
    from ..plotting import seed_interval

    by_x = group_rows(rows, lambda r: r[x])
    xs = sorted(by_x)
    seeds = [[r[y] for r in by_x[v]] for v in xs]
    centre, lo, hi = zip(*(seed_interval(v, fraction=True) for v in seeds), strict=True)
    return {"label": label, "x": xs, "y": list(centre), "lo": list(lo), "hi": list(hi), "seeds": seeds}


def _figures(table: list[dict], out_dir: Path, name: str) -> dict[str, Path]:
    """Per data set, the 0-1 certificate and the stochastic predictor's test error against depth L
    (one line per S; depth-uniformity is a flat certificate line), and one panel per data set of
    the certificate against S (one line per L)."""
    from ..plotting import Palette, line_figure, panel_figure

    palette, figs = Palette(), {}
    by_data = group_rows(table, lambda r: r["data"])
    for d, rs in by_data.items():
        series = []
        for S, at_S in sorted(group_rows(rs, lambda r: r["S"]).items()):
            series.append(_series(at_S, "L", "certificate", f"certificate, S={S}"))
            series.append(_series(at_S, "L", "test_error", f"test error, S={S}"))
        figs[f"{d}: certificate against depth"] = line_figure(
            out_dir / f"{name}_{d}_depth.png", series, "depth L (knot-path ResNet)",
            "0-1 error certificate / test error (fraction)", f"{d}: PAC-Bayes-kl certificate and "
            "measured test error of the stochastic predictor against depth", logx=True,
            hline=1.0, y_range=(0.0, 1.0), palette=palette)
    panels = [(d, [_series(at_L, "S", "certificate", f"L={L}")
                   for L, at_L in sorted(group_rows(rs, lambda r: r["L"]).items())])
              for d, rs in by_data.items()]
    figs["certificate against S"] = panel_figure(
        out_dir / f"{name}_sample_size.png", panels, "training samples S", "0-1 error certificate",
        "PAC-Bayes-kl certificate against S at each depth (seed means, seeds faint)", palette,
        logx=True, logy=True)
    return figs


THRESHOLDS = {"mnist-5k": 0.35, "two_spirals": 0.3}


def run(quick: bool = False, out_dir: Path | None = None, device: str = "cpu",
        dtype: torch.dtype | None = None, threads: int | None = None,
        store: str | Path | None = None, say: Callable[[str], None] = print) -> ExperimentOutcome:
    """``resdyn reproduce certificates [--quick]``: run the shipped spec into ``store`` (a
    temporary store under ``out_dir`` when None) and analyse its rows."""

    if threads is not None:
        torch.set_num_threads(int(threads))
    spec = load_certificate_spec(spec_path(f"{SPEC_NAME}-quick" if quick else SPEC_NAME))
    if dtype is not None:
        spec = _with_dtype(spec, str(dtype).removeprefix("torch."))
    if store is None:
        store = Path(out_dir or ".") / "certificates.sqlite"
    t0 = time.perf_counter()
    rows = run_spec(spec, store, device, say)
    outcome = analyze(rows, out_dir, spec.name, THRESHOLDS if not quick else None)
    outcome.data["seconds"] = time.perf_counter() - t0
    say(f"{'data':12s} {'S':>5s} {'L':>4s} {'seed':>4s} {'n':>5s} {'certificate':>11s} {'cert CE':>8s} "
        f"{'test err':>8s} {'KL':>9s}")
    for r in outcome.tables.get("certificates", []):
        say(f"{r['data']:12s} {r['S']:5d} {r['L']:4d} {r['seed']:4d} {r['n']:5d} {r['certificate']:11.4f} "
            f"{r['certificate_ce']:8.4f} {r['test_error']:8.4f} {r['KL']:9.3f}")
    say(f"{spec.name}: {len(rows)} cells in the store, {outcome.data['seconds']:.0f} s this run")
    return outcome


def _with_dtype(spec: CertificateSpec, dtype: str) -> CertificateSpec:
    from dataclasses import replace

    return replace(spec, dtype=dtype)
