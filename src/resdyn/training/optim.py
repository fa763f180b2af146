"""Batched optimisers: one update for E models, each with its own learning rate.

Learning rates are a tensor of shape (E,) applied inside the update (scaling a loss would do
nothing under Adam, which is invariant to it). A model may scale the rate of a parameter by name
(``lr_scales``), e.g. the mean-field rates eta L M. Frozen models keep their parameters and
optimiser state: updates are selected with ``torch.where``, never multiplied by a 0/1 mask, which
would turn a NaN into NaN rather than into the old value.

Adam:  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
       p <- p - lr_e s_name (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
SGD:   u <- mu u + g;  p <- p - lr_e s_name u        (plain gradient descent when mu = 0)
Weight decay adds wd * p to g in both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.base import Params

__all__ = ["OPTIMIZERS", "OptimizerSpec", "init_state", "update"]

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.0
    weight_decay: float = 0.0


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def init_state(spec: OptimizerSpec, params: Params) -> dict[str, Tensor]:
    if spec.name == "adam":
        return {f"{s}.{k}": torch.zeros_like(v) for k, v in params.items() for s in ("m", "v")}
    if spec.name == "sgd":
        if spec.momentum == 0.0:
            return {}
        return {f"u.{k}": torch.zeros_like(v) for k, v in params.items()}
    raise ValueError(f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}; got {spec.name!r}")


def update(
    spec: OptimizerSpec,
    params: Params,
    grads: Mapping[str, Tensor],
    state: dict[str, Tensor],
    lr: Tensor,
    step: int,
    active: Tensor,
    lr_scales: Mapping[str, float] | None = None,
) -> tuple[Params, dict[str, Tensor]]:
    """One step for every model; ``step`` counts from 1; models with ``active[e]`` False are kept."""
    scales = lr_scales or {}
    new_params: Params = {}
    new_state: dict[str, Tensor] = {}
    b1, b2 = spec.betas
    for k, p in params.items():
        keep = _bcast(active, p)
        g = grads[k]
        if spec.weight_decay:
            g = g + spec.weight_decay * p
        rate = _bcast(lr, p) * scales.get(k, 1.0)
        if spec.name == "adam":
            m = b1 * state[f"m.{k}"] + (1 - b1) * g
            v = b2 * state[f"v.{k}"] + (1 - b2) * g * g
            denom = torch.sqrt(v / (1 - b2**step)) + spec.eps
            step_k = rate * (m / (1 - b1**step)) / denom
            new_state[f"m.{k}"] = torch.where(keep, m, state[f"m.{k}"])
            new_state[f"v.{k}"] = torch.where(keep, v, state[f"v.{k}"])
        elif spec.momentum:
            u = spec.momentum * state[f"u.{k}"] + g
            step_k = rate * u
            new_state[f"u.{k}"] = torch.where(keep, u, state[f"u.{k}"])
        else:
            step_k = rate * g
        new_params[k] = torch.where(keep, p - step_k, p)
    return new_params, new_state
