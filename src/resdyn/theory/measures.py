"""The bounds as sweep measures: name -> function(ctx) -> {dotted name: tensor (E,)}.

Each model e is evaluated on its own sample ``ctx.train_indices[e]`` only (float64, CPU).
Options come from ``ctx.options`` (see :class:`resdyn.theory.bounds.BoundOptions`: delta, kappa,
gamma grid, level grid, families, substeps). NaN marks a bound that does not apply to the model.

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

from collections.abc import Callable

import torch
from torch import Tensor

from ..sweeps.measures import MeasureContext
from .bounds import BoundOptions, bound_terms

__all__ = ["MEASURES", "model_bounds"]

_cache: dict[str, object] = {}


def model_bounds(ctx: MeasureContext) -> list[dict[str, float]]:
    """:func:`bound_terms` of every model of the group on its own sample (cached per group)."""
    # The runner gives each measure its own context over the same trained group: key on the group
    # (its params, sample and options), so the six measures share one evaluation of the bounds.
    key = (id(ctx.params), id(ctx.train_indices), repr(sorted(ctx.options.items())))
    if _cache.get("key") == key:
        return _cache["value"]  # type: ignore[return-value]
    opts = BoundOptions.from_dict(ctx.options)
    E = next(iter(ctx.params.values())).shape[0]
    if len(ctx.train_indices) != E:
        raise ValueError(f"train_indices has {len(ctx.train_indices)} index sets for {E} models")
    rows = []
    for e in range(E):
        idx = torch.as_tensor(ctx.train_indices[e], dtype=torch.long).cpu()
        x = ctx.data.prepare(ctx.data.x[idx], torch.float64, "cpu")
        y = ctx.data.y[idx]
        pe = {k: v[e : e + 1].detach().cpu() for k, v in ctx.params.items()}
        row = bound_terms(ctx.model, pe, x, y, opts)
        if "test_acc" in ctx.metrics:
            row["test_error_bound.measured_test_error"] = 1.0 - float(ctx.metrics["test_acc"][e])
            if "train_acc" in ctx.metrics:
                row["test_error_bound.measured_gap"] = (float(ctx.metrics["train_acc"][e])
                                                        - float(ctx.metrics["test_acc"][e]))
        rows.append(row)
    # Holding the keyed objects keeps their ids from being reused by a later group.
    _cache["key"], _cache["value"], _cache["refs"] = key, rows, (ctx.params, ctx.train_indices)
    return rows


def _measure(name: str) -> Callable[[MeasureContext], dict[str, Tensor]]:
    def fn(ctx: MeasureContext) -> dict[str, Tensor]:
        rows = model_bounds(ctx)
        keys = [k for k in rows[0] if k == name or k.startswith(name + ".")]
        return {k: torch.tensor([r.get(k, float("nan")) for r in rows], dtype=torch.float64)
                for k in keys}

    fn.__name__ = name
    fn.__doc__ = f"The {name!r} bound and its terms, per model (see the module docstring)."
    return fn


MEASURES: dict[str, Callable[[MeasureContext], dict[str, Tensor]]] = {
    name: _measure(name)
    for name in ("path_norm_bound", "flow_bound", "dead_zone", "spectral_bound", "marion_bound",
                 "test_error_bound")
}
