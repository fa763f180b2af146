"""PAC-Bayes certificates of a trained network, by the recipe of docs/certificates.md.

A training sample S of size N is split once, by its seed, into a prior part S_p (a fraction
``prior_fraction``) and a bound part S_b (n = |S_b| examples). Everything the prior depends on
comes from S_p: the input normalisation, the prior mean m (the network trained by the engine on
S_p) and the prior's scales (chosen by a rule that reads S_p only). The posterior Q = N(m + A u, A A^T)
(:class:`resdyn.theory.depth_prior.WhitenedGaussian`) is trained on the whole of S, prior part and
bound part, with a bound-minimising objective; PAC-Bayes-kl holds for every Q at once, so Q may
depend on S_b, while P may not. The certificate is then computed on S_b alone:

    R(Q) <= kl^{-1}( kl^{-1}(hat R_m, ln(2 / delta') / m), (KL(Q || P) + ln(2 sqrt(n) / delta)) / n ),

hat R_m the 0-1 loss of m = n * rounds networks drawn from Q, one per bound example and round.
Beside it, the hold-out bound of the prior mean m on the same S_b (Langford 2005): with k errors
in n, R(m) <= kl^{-1}(k / n, ln(1 / delta) / n). Both hold with probability >= 1 - delta (- delta').

Everything here is a function of tensors; the spec, the store and the report live above.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._seeds import generator_for
from ..data.base import Dataset
from ..models.base import Params
from ..theory.depth_prior import WhitenedGaussian
from ..theory.pacbayes import bound_objective, bounded_cross_entropy, kl_inv
from .engine import TrainConfig, train
from .objective import Objective

__all__ = ["gibbs_risks", "holdout_bound", "network_errors", "normalised_on", "posterior_objective",
           "split_sample", "train_posterior"]


def split_sample(indices: Tensor, seed: int, fraction: float) -> tuple[Tensor, Tensor]:
    """(prior part, bound part) of a sample: a permutation from ``(seed, 'certificate/prior-split')``,
    the first round(fraction N) rows to the prior; both sorted, disjoint by construction."""
    if not 0 < fraction < 1:
        raise ValueError(f"prior_fraction must lie in (0, 1), got {fraction!r}")
    perm = torch.randperm(len(indices), generator=generator_for(seed, "certificate/prior-split"))
    k = round(fraction * len(indices))
    return torch.sort(indices[perm[:k]]).values, torch.sort(indices[perm[k:]]).values


def normalised_on(data: Dataset, rows: Tensor) -> Dataset:
    """``data`` with its normalisation statistics computed from the pool rows ``rows`` alone (the
    same shape and units as the data set's own: per channel of x / 255 for images); a data set
    without normalisation is returned as it is."""
    if data.mean is None and data.std is None:
        return data
    ref = data.mean if data.mean is not None else data.std
    x = data.x[rows]
    raw = x.double() / 255.0 if x.dtype == torch.uint8 else x.double()
    # Reduce over the rows and every axis where the data set's statistics broadcast (size 1).
    shape = (1,) * (raw.dim() - 1 - ref.dim()) + tuple(ref.shape)
    dims = (0, *(i + 1 for i, s in enumerate(shape) if s == 1))
    mean = raw.mean(dim=dims, keepdim=True)[0].reshape(ref.shape)
    std = raw.std(dim=dims, keepdim=True, correction=0)[0].reshape(ref.shape).clamp_min(1e-12)
    return dataclasses.replace(data, mean=mean if data.mean is not None else None,
                               std=std if data.std is not None else None)


def posterior_objective(prior: WhitenedGaussian, name: str, n: Tensor, delta: float,
                        p_min: float) -> Objective:
    """The engine's objective for the whitened posterior u: the networks of step t are
    ``prior.draw(u, seeds, 'posterior/t')``, the data loss the bounded cross-entropy (p_min), and
    J = ``bound_objective(name, risk, |u|^2 / 2, n, delta)`` (n[e]: model e's bound examples)."""

    def sample(u: Params, step: int, seeds: Sequence[int]) -> Params:
        return prior.draw(u, seeds, f"posterior/{step}")

    def combine(risk: Tensor, u: Params) -> Tensor:
        return bound_objective(name, risk, prior.kl(u), n.to(risk), delta)

    return Objective(loss=functools.partial(bounded_cross_entropy, p_min=p_min), sample=sample,
                     combine=combine)


def train_posterior(model: Any, prior: WhitenedGaussian, data: Dataset, indices: Sequence[Tensor], *,
                    n_bound: Sequence[int], lr: float, steps: int, batch_size: int,
                    seeds: Sequence[int], objective: str = "f-quad", delta: float = 0.025,
                    p_min: float = 1e-4, momentum: float = 0.9,
                    average: float = 0.0) -> tuple[Params, Tensor]:
    """Train the E posteriors (whitened means u, started at 0: Q = P) on ``indices[e]`` (the whole
    sample) with the engine, by SGD with ``momentum``; returns (u, objective history (steps, E)).

    ``average`` in [0, 1): the u returned is the mean of the iterates u_t after the last
    ``ceil(average * steps)`` updates (Polyak-Ruppert averaging); 0 returns the last iterate.
    Why: the KL term's pull towards u = 0 is weak (its gradient is u / n), so the last iterate
    sits wherever the last few hundred steps' gradient noise left it, and |u|^2 / 2 measures that
    noise more than what the posterior learned. Averaging T iterates divides the variance of
    that noise by about T_eff, the number of effectively independent iterates among them (fewer
    than T: momentum correlates successive iterates). The history returned is the objective of
    the iterates along the way, not of the averaged u.

    SGD, not Adam: most coordinates of u have a gradient dominated by the draws' noise, and Adam,
    which moves every coordinate by about lr whatever its gradient's size, turns that noise into
    a random walk of u (KL growing, risk not falling). In whitened units the gradient is A^T
    times the gradient in theta, so a step moves theta by about lr s^2 grad: ``lr`` is large."""
    if not (0 <= average < 1):
        raise ValueError(f"average must lie in [0, 1), got {average!r}")
    n = torch.tensor([float(v) for v in n_bound], dtype=torch.float64)
    obj = posterior_objective(prior, objective, n, delta, p_min)
    # Iterates u_t, t > first, are averaged; the rounding keeps 0.07 * 100 at 7, not 8.
    first = steps - math.ceil(round(average * steps, 9))
    total: dict[str, Tensor] = {}

    def accumulate(step: int, state: Any) -> None:
        if step > first:
            for k, v in state.params.items():
                total[k] = total[k] + v.detach() if k in total else v.detach().clone()

    result = train(model, prior.zeros(), data, indices, lr=lr,
                   config=TrainConfig(steps=steps, batch_size=batch_size, optimizer="sgd",
                                      momentum=momentum), seeds=seeds,
                   objective=obj, evaluate_test=False, hooks=[(1, accumulate)] if average else ())
    if not total:
        return result.params, result.state.loss_history.cpu()
    return {k: v / (steps - first) for k, v in total.items()}, result.state.loss_history.cpu()


def _rows(data: Dataset, indices: Tensor | None) -> tuple[Tensor, Tensor]:
    return (data.x_test, data.y_test) if indices is None else (data.x[indices], data.y[indices])


def gibbs_risks(model: Any, prior: WhitenedGaussian, u: Params, data: Dataset,
                indices: Sequence[Tensor] | None, seeds: Sequence[int], rounds: int, stream: str,
                p_min: float = 1e-4, chunk: int = 500) -> tuple[Tensor, Tensor]:
    """(mean 0-1 loss, mean bounded cross-entropy), each (E,) float64, of Q_e on its examples
    (``indices[e]`` of the pool, or the test set when None), every example of every round with its
    own network m + A (u + eps) drawn from the ``(seeds[e], stream/r)`` stream. The n * rounds
    losses are independent given the data, in [0, 1], with mean R_S(Q_e)."""
    E = len(seeds)
    err = torch.zeros(E, dtype=torch.float64)
    ce = torch.zeros(E, dtype=torch.float64)
    ref = next(iter(u.values()))
    with torch.no_grad():
        for e in range(E):
            xs, ys = _rows(data, None if indices is None else indices[e])
            x_all = data.prepare(xs, ref.dtype, ref.device)
            for r in range(rounds):
                g = generator_for(int(seeds[e]), f"{stream}/{r}")
                for s in range(0, len(ys), chunk):
                    x, y = x_all[s : s + chunk], ys[s : s + chunk].to(ref.device)
                    params = {}
                    for name in sorted(u):
                        # Drawn in the networks' dtype: the draws are most of the cost here.
                        eps = torch.randn((len(x), *u[name].shape[1:]), generator=g, dtype=ref.dtype)
                        params[name] = prior.mean[name][e] + prior.color(name, u[name][e] + eps.to(ref))
                    out = model.forward(params, x.unsqueeze(1))[:, 0]
                    err[e] += float((out.argmax(-1) != y).double().sum())
                    ce[e] += float(bounded_cross_entropy(out.double(), y, p_min).sum())
            err[e] /= rounds * len(ys)
            ce[e] /= rounds * len(ys)
    return err, ce


def network_errors(model: Any, params: Params, data: Dataset, indices: Sequence[Tensor] | None,
                   chunk: int = 2000) -> Tensor:
    """(E,) int64: how many of its examples (``indices[e]``, or the test set) network e misclassifies."""
    ref = next(iter(params.values()))
    out = torch.zeros(ref.shape[0], dtype=torch.int64)
    with torch.no_grad():
        for e in range(ref.shape[0]):
            xs, ys = _rows(data, None if indices is None else indices[e])
            one = {k: v[e : e + 1] for k, v in params.items()}
            for s in range(0, len(ys), chunk):
                x = data.prepare(xs[s : s + chunk], ref.dtype, ref.device).unsqueeze(0)
                pred = model.forward(one, x)[0].argmax(-1).cpu()
                out[e] += int((pred != ys[s : s + chunk]).sum())
    return out


def holdout_bound(errors: int, n: int, delta: float) -> float:
    """The binomial test-set bound (Langford 2005): kl^{-1}(k / n, ln(1 / delta) / n), the largest
    p with kl(k / n || p) <= ln(1 / delta) / n; R <= it with probability >= 1 - delta."""
    if not (isinstance(n, int) and n >= 1 and 0 <= errors <= n):
        raise ValueError(f"need 0 <= errors <= n and n >= 1, got errors={errors!r}, n={n!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
    return float(kl_inv(errors / n, math.log(1 / delta) / n))
