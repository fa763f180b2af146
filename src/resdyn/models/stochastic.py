"""Stochastic networks: a Gaussian posterior Q = N(mu, diag sigma^2) over every parameter of a
model, sigma = softplus(rho), sampled by reparametrisation theta = mu + sigma * eps.

A posterior is a ``Params`` dict with keys ``mu.<name>`` and ``rho.<name>`` for every parameter
``<name>`` of the model, each with the leading model axis E. The noise eps of model e at step t
comes from the ``(seed_e, 'posterior/t')`` stream of :func:`resdyn._seeds.generator_for`, drawn
in float64 on the CPU one model at a time and then cast: model e's draws depend on its seed and
step only, so a posterior trained in a group is bitwise the one trained alone, and a seed means
the same draws on every device. ``sample`` has the signature of the engine's
``Objective.sample``: (trainable params, step, per-model seeds) -> params for ``model.forward``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .._seeds import generator_for
from .base import Params

__all__ = ["evaluation_draw", "init_posterior", "noise_like", "posterior_parts", "sample", "sample_draw",
           "softplus_inv"]


def softplus_inv(sigma: float) -> float:
    """rho with softplus(rho) = ln(1 + e^rho) = sigma (sigma > 0)."""
    if not sigma > 0:
        raise ValueError(f"a posterior scale must be > 0, got {sigma!r}")
    return sigma + math.log(-math.expm1(-sigma))


def init_posterior(params: Params, sigma: float) -> Params:
    """mu = ``params`` (e.g. the prior mean), every sigma = ``sigma``."""
    rho = softplus_inv(sigma)
    out: Params = {}
    for k, v in params.items():
        out[f"mu.{k}"] = v.detach().clone()
        out[f"rho.{k}"] = torch.full_like(v, rho)
    return out


def posterior_parts(post: Params) -> tuple[Params, Params]:
    """(mu, sigma), each keyed by the model's parameter names."""
    names = [k[3:] for k in post if k.startswith("mu.")]
    if not names or any(f"rho.{n}" not in post for n in names) or len(post) != 2 * len(names):
        raise ValueError("a posterior has keys mu.<name> and rho.<name> for the same names, got "
                         f"{sorted(post)}")
    mu = {n: post[f"mu.{n}"] for n in names}
    # softplus one model at a time: a vectorised transcendental kernel may round the tail of a
    # tensor differently from its body, so a model's sigma must not depend on where its
    # entries sit in a stack of E models.
    sigma = {n: torch.stack([torch.nn.functional.softplus(r) for r in post[f"rho.{n}"].unbind(0)])
             for n in names}
    return mu, sigma


def noise_like(mu: Params, seeds: Sequence[int], stream: str) -> Params:
    """Standard normal draws shaped like ``mu`` (leading model axis E): model e's from the
    ``(seeds[e], stream)`` stream, in float64 and sorted-name order, then cast to ``mu``'s dtype and
    device, so its numbers depend on its seed and stream alone."""
    E = next(iter(mu.values())).shape[0]
    if len(seeds) != E:
        raise ValueError(f"sample: {len(seeds)} seeds for {E} models")
    per_model = []
    for s in seeds:
        g = generator_for(int(s), stream)
        # Sorted names: the draw order, hence the numbers, do not depend on dict order.
        per_model.append({n: torch.randn(mu[n].shape[1:], generator=g, dtype=torch.float64)
                          for n in sorted(mu)})
    return {n: torch.stack([d[n] for d in per_model]).to(dtype=mu[n].dtype, device=mu[n].device)
            for n in mu}


def sample_draw(post: Params, seeds: Sequence[int], stream: str) -> Params:
    """theta = mu + softplus(rho) * eps with eps of model e from the ``(seeds[e], stream)`` stream."""
    mu, sigma = posterior_parts(post)
    eps = noise_like(mu, seeds, stream)
    return {n: mu[n] + sigma[n] * eps[n] for n in mu}


def sample(post: Params, step: int, seeds: Sequence[int]) -> Params:
    """The networks of training step ``step``: :func:`sample_draw` on the ``posterior/<step>`` stream
    (differentiable in mu and rho: the reparametrisation trick)."""
    return sample_draw(post, seeds, f"posterior/{step}")


def evaluation_draw(post: Params, seeds: Sequence[int], j: int) -> Params:
    """The j-th Monte-Carlo network of the certificate: its own stream, disjoint from training's."""
    return sample_draw(post, seeds, f"certificate/{j}")

