"""One certified network: the recipe of :mod:`resdyn.training.pac_bayes` run end to end on one
sample, with every choice declared in :class:`CertificateConfig` (docs/depth-prior.md).

Given the (data, model, sample, seed) of a cell and the engine settings of its prior mean:

1. split the sample by the seed into a prior part S_p and a bound part S_b;
2. normalise the inputs with statistics of S_p;
3. train the prior mean m on S_p (the engine, ``prior_config``);
4. choose the prior scale s: the largest of ``scales`` whose Gibbs error on S_p is within
   ``scale_slack`` of m's error on S_p (else the last), reading S_p only (at most
   ``rule_examples`` rows of it, drawn by the seed);
5. train the posterior u on the whole sample (``posterior_steps`` SGD steps of rate
   ``posterior_lr / s^2`` in whitened units, f-quad with n = |S_b|; with ``average`` > 0 the
   mean of the last iterates);
6. certify on S_b (``rounds`` draws per bound example), with the hold-out bound of m on S_b and
   the Gibbs test error (``test_rounds`` draws per test example) beside it.

With ``baseline`` the cell also certifies under a data-independent prior, computed the same way:
steps 4-6 with the prior mean replaced by the network's initialisation (which reads no data).

Which parameters are the "layers" the depth prior correlates (:func:`layer_names`): W, b, V of a
per-layer ``resnet``; W{s}, b{s}, V{s} of each stage of an ``image_resnet`` (layers) or an
``image_ode_resnet`` (the knots of theta_s(t), at the knot times). Everything else (embedding,
stem, transitions, readout) is i.i.d. at the prior scale.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._checks import Interval, Kind, Options, declare, validate
from .._seeds import generator_for
from ..data.base import Dataset
from ..models.base import Params
from ..theory.depth_prior import BrownianPrior, WhitenedGaussian, iid_kl
from ..theory.pacbayes import OBJECTIVES, Certificate, certify
from .engine import TrainConfig, train
from .pac_bayes import (
    gibbs_risks,
    holdout_bound,
    network_errors,
    normalised_on,
    split_sample,
    train_posterior,
)

__all__ = ["PRIORS", "CertificateConfig", "Certified", "Recertified", "certify_sample", "kl_in_depth",
           "layer_names", "make_prior", "recertify"]

PRIORS = ("brownian", "iid")
_PROBABILITY = Interval(0, 1, closed="neither")
_SCALE = Interval(0, None, closed="neither")


@dataclass(frozen=True)
class CertificateConfig:
    """prior: 'brownian' (the depth-correlated prior) or 'iid' (independent over layers);
    prior_fraction: |S_p| / |S|; scales, scale_slack: the rule of step 4; posterior_lr (weight
    units), posterior_steps, batch_size: step 5; objective: the bound objective; rounds,
    test_rounds: draws per bound and per test example; delta, delta_mc: PAC-Bayes-kl and
    Monte-Carlo confidence (the hold-out bound uses delta); p_min: the bounded cross-entropy's floor;
    rule_examples: at most this many rows of S_p for the scale rule; baseline: also certify under
    the data-independent prior (mean: the initialisation); attempts: 1 + how many recipes
    (settings of the prior) had their certificates on these bound halves seen before this one's
    settings were fixed: each attempt's
    certificate is computed at delta / attempts and delta_mc / attempts (the hold-out bound at
    delta / attempts), so the certificates of all attempts hold together with probability
    >= 1 - delta - delta_mc, whichever attempt is reported (a union bound over them)."""

    #: Fields added after stores existed, with their defaults (``resdyn._checks.described``).
    later_fields: ClassVar[dict[str, Any]] = {"average": 0.0}

    prior: str = declare("brownian", Options(*PRIORS))
    prior_fraction: float = declare(0.5, _PROBABILITY)
    scales: tuple[float, ...] = declare((0.1, 0.03, 0.01), Kind((tuple, list), "a non-empty list of "
                                                               "numbers > 0", nonempty=True))
    scale_slack: float = declare(0.01, Interval(0, 1))
    posterior_lr: float = declare(0.1, _SCALE)
    posterior_steps: int = declare(1000, Interval(0, 10_000_000, integer=True))
    batch_size: int = declare(256, Interval(1, 10_000_000, integer=True))
    objective: str = declare("f-quad", Options(*OBJECTIVES))
    average: float = declare(0.0, Interval(0, 1, closed="left"))
    rounds: int = declare(10, Interval(1, 10_000, integer=True))
    test_rounds: int = declare(2, Interval(1, 10_000, integer=True))
    delta: float = declare(0.025, _PROBABILITY)
    delta_mc: float = declare(0.01, _PROBABILITY)
    p_min: float = declare(1e-2, _PROBABILITY)
    rule_examples: int = declare(5000, Interval(1, 10_000_000, integer=True))
    baseline: bool = declare(True, Kind(bool, "true or false"))
    attempts: int = declare(1, Interval(1, 1_000_000, integer=True))

    def __post_init__(self) -> None:
        validate(self)
        object.__setattr__(self, "scales", tuple(self.scales))
        for i, s in enumerate(self.scales):
            _SCALE.check(f"scales[{i}]", s)
        if self.delta + self.delta_mc >= 1:
            raise ValueError(f"delta + delta_mc must be < 1, got {self.delta} + {self.delta_mc}")


def layer_names(model: Any) -> tuple[str, ...]:
    """The parameters whose axis 1 (after the model axis) runs over layers or knots in depth: W, b,
    V of a ``resnet``; W{s}, b{s}, V{s} of every stage s of the image families."""
    family = getattr(model, "family", None)
    if family == "resnet":
        return ("W", "b", "V")
    if family in ("image_resnet", "image_ode_resnet"):
        return tuple(f"{n}{s}" for s in range(model.stages) for n in ("W", "b", "V"))
    raise ValueError(f"a certificate needs a per-layer 'resnet', an 'image_resnet' or an "
                     f"'image_ode_resnet'; got a model of family {family!r}")


def make_prior(kind: str, mean: Params, s: float, horizon: float,
               layers: tuple[str, ...] = ("W", "b", "V")) -> WhitenedGaussian:
    """The prior of scale s around ``mean``. Brownian: marginal standard deviation s at the last
    layer time (s0^2 = sigma^2 T = s^2 / 2); i.i.d.: s per layer. Every parameter not in
    ``layers`` (embedding, readout): s."""
    law = (BrownianPrior(s / math.sqrt(2), s / math.sqrt(2 * horizon), horizon) if kind == "brownian"
           else s)
    return WhitenedGaussian(mean, law, s, tuple(layers))


def kl_in_depth(model: Any, kind: str, mean: Params, u: Params, s: float,
                coarse: tuple[int, ...] = (4, 16)) -> dict[str, float]:
    """Where the posterior u (whitened, model axis 1) around ``mean`` under the prior
    ``make_prior(kind, mean, s, ...)`` pays its KL (:meth:`WhitenedGaussian.kl_in_depth`). Keys:
    ``kl``, ``io``, ``layers``; ``start``, the part of ``layers`` that pays for the first layer's
    deviation (every coarse reading pays it too); for each L_c of ``coarse`` that divides the
    depth L and is below it, ``coarse_{L_c}``, the layer deviation read at L_c's layer times under
    the same law at depth L_c; ``iid_layers`` and ``iid_coarse_{L_c}``, the same deviation under
    the i.i.d. prior of scale s."""
    names = layer_names(model)
    models, depth = mean[names[0]].shape[:2]
    if models != 1:
        raise ValueError(f"kl_in_depth reads one model (a model axis of 1), got {models}")
    prior = make_prior(kind, mean, s, model.horizon, names)
    iid = make_prior("iid", mean, s, model.horizon, names)
    w = {n: prior.color(n, u[n]) / s if n in names else u[n] for n in u}
    whole = prior.kl_in_depth(u, depth)  # L_c = L: the layers read at every layer time
    out = {"kl": float(whole.total[0]), "io": float(whole.io[0]), "layers": float(whole.layers[0]),
           "start": float(whole.start[0]), "iid_layers": float(iid.kl_in_depth(w, depth).layers[0])}
    for Lc in coarse:
        if Lc < depth and depth % Lc == 0:
            out[f"coarse_{Lc}"] = float(prior.coarse_kl(u, Lc)[0])
            out[f"iid_coarse_{Lc}"] = float(iid.coarse_kl(w, Lc)[0])
    return out


@dataclass(frozen=True)
class Certified:
    """What :func:`certify_sample` found: ``numbers`` (the certificate and every term beside it,
    floats), the prior mean m, the whitened posterior mean u and the posterior mean network
    m + A u (each with a model axis of 1), the objective histories of both trainings, and the
    whitened posterior of the data-independent baseline (None without one)."""

    numbers: dict[str, float]
    prior_mean: Params
    posterior: Params
    posterior_mean: Params
    prior_history: Tensor
    posterior_history: Tensor
    baseline_posterior: Params | None = None


def _certify_bound_half(model: Any, pr: WhitenedGaussian, u: Params, data: Dataset, bound_idx: Tensor,
                        seed: int, scale: float, cfg: CertificateConfig, rounds: int,
                        stream: str) -> tuple[float, float, Certificate]:
    """(Gibbs error on S_b from ``rounds`` draws per example of the ``(seed, stream/r)`` streams,
    KL(Q || P), the certificate): step 6, shared by :func:`certify_sample` and :func:`recertify`."""
    n = len(bound_idx)
    err, _ = gibbs_risks(model, pr, u, data, [bound_idx], [seed], rounds, stream, cfg.p_min)
    kl = float(pr.kl(u)[0])
    return float(err[0]), kl, certify(float(err[0]), n * rounds, [kl], [scale], n,
                                      cfg.delta / cfg.attempts, cfg.delta_mc / cfg.attempts)


def _rule_rows(prior_idx: Tensor, seed: int, k: int) -> Tensor:
    """At most k rows of S_p for the scale rule, drawn by ``(seed, 'certificate/rule-rows')``
    (all of S_p, unpermuted, when it has no more than k)."""
    if len(prior_idx) <= k:
        return prior_idx
    perm = torch.randperm(len(prior_idx), generator=generator_for(seed, "certificate/rule-rows"))
    return torch.sort(prior_idx[perm[:k]]).values


def _choose_scale(model: Any, cfg: CertificateConfig, mean: Params, data: Dataset, prior_idx: Tensor,
                  seed: int) -> float:
    rows = _rule_rows(prior_idx, seed, cfg.rule_examples)
    det = int(network_errors(model, mean, data, [rows])[0]) / len(rows)
    for s in cfg.scales[:-1]:
        pr = make_prior(cfg.prior, mean, s, model.horizon, layer_names(model))
        g, _ = gibbs_risks(model, pr, pr.zeros(), data, [rows], [seed], 1, "certificate/scale-rule")
        if float(g[0]) <= det + cfg.scale_slack:
            return s
    return cfg.scales[-1]


@dataclass(frozen=True)
class _Around:
    """Steps 4-6 around one prior mean: the scale, the prior, the posterior and its numbers."""

    scale: float
    prior: WhitenedGaussian
    u: Params
    history: Tensor
    numbers: dict[str, float]


def _certify_around(model: Any, mean: Params, data: Dataset, sample: Tensor, prior_idx: Tensor,
                    bound_idx: Tensor, seed: int, cfg: CertificateConfig) -> _Around:
    """Steps 4-6 of the module docstring around the prior mean ``mean`` (model axis 1)."""
    n = len(bound_idx)
    s = _choose_scale(model, cfg, mean, data, prior_idx, seed)
    pr = make_prior(cfg.prior, mean, s, model.horizon, layer_names(model))
    u, hist = train_posterior(model, pr, data, [sample], n_bound=[n], lr=cfg.posterior_lr / s**2,
                              steps=cfg.posterior_steps, batch_size=cfg.batch_size, seeds=[seed],
                              objective=cfg.objective, delta=cfg.delta, p_min=cfg.p_min,
                              average=cfg.average)
    err, kl, cert = _certify_bound_half(model, pr, u, data, bound_idx, seed, s, cfg, cfg.rounds,
                                        "certificate/bound")
    test_err, _ = gibbs_risks(model, pr, u, data, None, [seed], cfg.test_rounds, "certificate/test",
                              cfg.p_min)
    numbers = {"certificate": cert.value, "kl": kl, "scale": s, "gibbs_bound": err,
               "gibbs_test": float(test_err[0]), "pac_bayes_term": cert.pac_bayes_term,
               "sample_risk_bound": cert.sample_risk_bound}
    return _Around(s, pr, u, hist, numbers)


def certify_sample(model: Any, params0: Params, data: Dataset, sample: Tensor, seed: int, lr: float,
                   prior_config: TrainConfig, cfg: CertificateConfig) -> Certified:
    """Steps 1-6 of the module docstring for one model (``params0``: its initial parameters, with
    a model axis of 1), and with ``cfg.baseline`` steps 4-6 again around ``params0`` (numbers
    prefixed ``baseline_``). ``data``'s own normalisation is replaced by that of S_p."""
    t0 = time.time()
    prior_idx, bound_idx = split_sample(sample, seed, cfg.prior_fraction)
    data = normalised_on(data, prior_idx)
    n = len(bound_idx)
    res = train(model, params0, data, [prior_idx], lr=lr, config=prior_config, seeds=[seed],
                evaluate_test=True)
    mean = {k: v.detach() for k, v in res.params.items()}
    k_bound = int(network_errors(model, mean, data, [bound_idx])[0])
    learned = _certify_around(model, mean, data, sample, prior_idx, bound_idx, seed, cfg)
    post_mean = learned.prior.params(learned.u)
    layers = [p for p in learned.prior.layer_names if p in mean]
    numbers = {
        **learned.numbers, "n": n, "prior_size": len(prior_idx),
        "test_draws": len(data.y_test) * cfg.test_rounds,
        "holdout": holdout_bound(k_bound, n, cfg.delta / cfg.attempts),
        "prior_mean_bound_error": k_bound / n,
        "prior_mean_test_acc": float(res.metrics["test_acc"][0]),
        "layer_kl_under_iid": float(sum(iid_kl(post_mean[p] - mean[p], learned.scale) for p in layers)),
        "delta": cfg.delta, "delta_mc": cfg.delta_mc, "attempts": cfg.attempts,
        "delta_pac_bayes": cfg.delta / cfg.attempts, "delta_mc_split": cfg.delta_mc / cfg.attempts,
        "draws": n * cfg.rounds,
    }
    base_u = None
    if cfg.baseline:
        init = {k: v.detach() for k, v in params0.items()}
        base = _certify_around(model, init, data, sample, prior_idx, bound_idx, seed, cfg)
        numbers.update({f"baseline_{k}": v for k, v in base.numbers.items()})
        base_u = base.u
    numbers["seconds"] = time.time() - t0
    return Certified(numbers, mean, learned.u, post_mean, res.state.loss_history.cpu(), learned.history,
                     base_u)


@dataclass(frozen=True)
class Recertified:
    """A certificate recomputed from stored weights (:func:`recertify`): every term, and the
    Monte-Carlo standard errors of the Gibbs estimate (sqrt(g (1 - g) / draws)) and of the
    certificate (that error carried through the bound: half the change of the certificate between
    g - se and g + se)."""

    n: int
    prior_size: int
    scale: float
    kl: float
    rounds: int
    draws: int
    gibbs_bound: float
    gibbs_se: float
    sample_risk_bound: float
    pac_bayes_term: float
    certificate: float
    certificate_se: float
    stream: str


def recertify(model: Any, mean: Params, u: Params, scale: float, data: Dataset, sample: Tensor,
              seed: int, cfg: CertificateConfig, rounds: int | None = None,
              stream: str = "certificate/recheck") -> Recertified:
    """The certificate of the posterior ``u`` (whitened, model axis 1) around the prior mean
    ``mean`` at ``scale``, recomputed as :func:`certify_sample` computes it: the same split of
    ``sample`` by ``seed``, the normalisation of S_p, the prior :func:`make_prior`, the Gibbs
    error on S_b by ``rounds`` (default ``cfg.rounds``) draws per example, here from the
    ``(seed, stream/r)`` streams (``'certificate/bound'`` is the one :func:`certify_sample` used:
    with it and cfg.rounds the stored numbers come back exactly)."""
    rounds = cfg.rounds if rounds is None else int(rounds)
    if rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    prior_idx, bound_idx = split_sample(sample, seed, cfg.prior_fraction)
    data = normalised_on(data, prior_idx)
    n = len(bound_idx)
    pr = make_prior(cfg.prior, mean, scale, model.horizon, layer_names(model))
    g, kl, cert = _certify_bound_half(model, pr, u, data, bound_idx, seed, scale, cfg, rounds, stream)
    draws = n * rounds
    se = math.sqrt(max(g * (1 - g), 1 / draws) / draws)

    def at(x: float) -> float:
        return certify(min(max(x, 0.0), 1.0), draws, [kl], [scale], n, cfg.delta / cfg.attempts,
                       cfg.delta_mc / cfg.attempts).value

    return Recertified(n, len(prior_idx), scale, kl, rounds, draws, g, se, cert.sample_risk_bound,
                       cert.pac_bayes_term, cert.value, (at(g + se) - at(g - se)) / 2, stream)
