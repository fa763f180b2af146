"""The bounds of every model of a trained group, each on its own sample: pure math (tensors in,
numbers out). ``resdyn.sweeps.measures`` turns them into store columns.

Each model is evaluated on its own sample only (float64, CPU); options are those of
:class:`resdyn.theory.bounds.BoundOptions` (delta, kappa, gamma grid, level grid, families,
substeps). NaN marks a bound whose class does not contain the model.

=====================  ==========================================================================
measure                value (and terms)
=====================  ==========================================================================
path_norm_bound        Rad_S bound of the path-norm class at the model's own path norm
                       (.path_norm, .log_path_norm, .factor, .depth0)
flow_bound             the same for the continuous-time class, path norm through the linear ODE
                       (.path_norm, .log_path_norm, .log = log of the bound, finite when the bound
                       overflows; .covered = 1 when the certificate covers the function the
                       model computes: discrete nets and Euler-solved continuous ones, else 0
                       and the bound is NaN: "not covered: solver rk4")
dead_zone              the non-negative dead-zone term subtracted from path_norm_bound
                       (.dead_fraction, .mu, .band, .refined)
spectral_bound         Rad_S bound of the spectrally normalised class (.capacity, .radius)
marion_bound           Rad_S bound of the Lipschitz-in-depth class (.pieces, .K_W, .K_V)
test_error_bound       the assembled bound on the test error (.margin_loss, .complexity,
                       .confidence, .gamma, .family, .path_norm, .spectral, .marion and, when the
                       engine measured them, .measured_test_error, .measured_gap)
=====================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..data.base import Dataset
from ..models.base import Model, Params
from .bounds import BoundOptions, bound_terms

__all__ = ["group_bounds"]


def group_bounds(model: Model, params: Params, data: Dataset, train_indices: Sequence[Tensor],
                 options: Mapping[str, Any] | None = None,
                 metrics: Mapping[str, Tensor] | None = None) -> list[dict[str, float]]:
    """:func:`bound_terms` of every model e of ``params`` (leading axis E) on its own sample
    ``train_indices[e]``; with the engine's ``metrics`` (test_acc, train_acc), also
    test_error_bound.measured_test_error = 1 - test_acc and .measured_gap = train_acc - test_acc."""
    opts = BoundOptions.from_dict(dict(options or {}))
    metrics = metrics or {}
    E = next(iter(params.values())).shape[0]
    if len(train_indices) != E:
        raise ValueError(f"train_indices has {len(train_indices)} index sets for {E} models")
    rows = []
    for e in range(E):
        idx = torch.as_tensor(train_indices[e], dtype=torch.long).cpu()
        x = data.prepare(data.x[idx], torch.float64, "cpu")
        pe = {k: v[e : e + 1].detach().cpu() for k, v in params.items()}
        row = bound_terms(model, pe, x, data.y[idx], opts)
        if "test_acc" in metrics:
            row["test_error_bound.measured_test_error"] = 1.0 - float(metrics["test_acc"][e])
            if "train_acc" in metrics:
                row["test_error_bound.measured_gap"] = (float(metrics["train_acc"][e])
                                                        - float(metrics["test_acc"][e]))
        rows.append(row)
    return rows
