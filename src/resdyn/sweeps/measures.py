"""Measures (computed after training) and trackers (recorded along training): the adapters that
turn theory's and analysis's pure functions into store columns.

A measure maps a :class:`MeasureContext` for a trained group of E models to named per-model
values, each a tensor of shape (E,): ``{"bound": ..., "bound.complexity": ...}``. A tracker maps a
:class:`TrackContext` (the group during training, at one step) the same way; the sweep records
its values every ``every`` steps as series in the store.

Each one declares what it applies to (:class:`Applies`: model families, activations, a scalar
output); :func:`check_applies` is what the spec parser calls, so a spec that asks for a measure its
model does not have fails before anything trains or any store is created.

=====================  ==========================================================================
measure                value (and terms)
=====================  ==========================================================================
path_norm_bound, flow_bound, dead_zone, spectral_bound, marion_bound, test_error_bound
                       the bounds of ``resdyn.theory.measures`` (its docstring lists each one's
                       value and terms)
meanfield_kl_plugin    the KL-ball formula of docs/meanfield.md with the k-NN KL radii of the trained
                       model plugged in: an estimate, not a bound (.rademacher, .r1_raw ...)
gram, kl, displacement mean-field diagnostics of the trained model (``resdyn.analysis.diagnostics``)
=====================  ==========================================================================

Trackers: gram, kl, displacement, linear_rate (``resdyn.analysis.diagnostics``), and train_loss
(``.loss``, ``.acc``: the engine's ``evaluate`` on each model's own sample).
The bound measures are evaluated per model on its own sample (float64, CPU); NaN marks a bound
whose class does not contain the model (``resdyn.theory.bounds.bound_terms``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..analysis.diagnostics import displacement, fit_linear_rate, gram_lambda_min, particle_kl
from ..data.base import Dataset
from ..models.base import Model, Params, init_params
from ..theory import meanfield as meanfield_theory
from ..theory.measures import group_bounds
from ..training.engine import TrainConfig, evaluate

__all__ = ["BOUND_MEASURES", "Applies", "MeasureContext", "TrackContext", "check_applies", "get_measure",
           "get_tracker", "measure_names", "tracker_names"]


@dataclass(frozen=True)
class MeasureContext:
    """model; params: trained, leading axis E; data; train_indices[e]: model e's sample;
    config: how it trained; metrics: the engine's per-model metrics; options: the spec's table
    for this measure; seeds[e]: model e's seed."""

    model: Model
    params: Params
    data: Dataset
    train_indices: list[Tensor]
    config: TrainConfig
    metrics: dict[str, Tensor]
    seeds: list[int]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrackContext:
    """As MeasureContext, during training: ``params`` after ``step`` updates, and the initial
    parameters ``params0`` (for distances and divergences from initialisation)."""

    model: Model
    params: Params
    params0: Params
    data: Dataset
    train_indices: list[Tensor]
    step: int
    loss_history: Tensor
    seeds: list[int]
    options: dict[str, Any] = field(default_factory=dict)
    config: TrainConfig | None = None


Measure = Callable[[MeasureContext], dict[str, Tensor]]
Tracker = Callable[[TrackContext], dict[str, Tensor]]


@dataclass(frozen=True)
class Applies:
    """What a measure or tracker applies to. families: the model families (None: every family);
    activations: the activations (None: every one); scalar_output: the model has one output
    (out_dim = 1; the mean-field family always has)."""

    families: tuple[str, ...] | None = None
    activations: tuple[str, ...] | None = None
    scalar_output: bool = False

    def reason(self, model: Mapping[str, Any]) -> str | None:
        """None when ``model`` ({'family': ..., field: value}) qualifies, else why not."""
        family = model.get("family")
        if self.families is not None and family not in self.families:
            return f"needs model family {' or '.join(map(repr, self.families))}, got {family!r}"
        act = model.get("activation")
        if self.activations is not None and act not in self.activations:
            return f"needs activation {' or '.join(map(repr, self.activations))}, got {act!r}"
        # out_dim left to the data set is its number of classes, >= 2 for every data set.
        if self.scalar_output and family != "meanfield" and model.get("out_dim") != 1:
            got = model.get("out_dim", "the number of classes")
            return f"needs a scalar-output model (out_dim = 1), got out_dim {got!r}"
        return None


@dataclass(frozen=True)
class _Entry:
    fn: Callable[[Any], dict[str, Tensor]]
    applies: Applies


# ----------------------------------------------------------------------------- bound measures
_bound_cache: dict[str, object] = {}


def _bounds(ctx: MeasureContext) -> list[dict[str, float]]:
    """The bound terms of every model of the group on its own sample, shared by the bound
    measures of one group (the runner gives each measure its own context over the same group)."""
    key = (id(ctx.params), id(ctx.train_indices), repr(sorted(ctx.options.items())))
    if _bound_cache.get("key") == key:
        return _bound_cache["value"]  # type: ignore[return-value]
    rows = group_bounds(ctx.model, ctx.params, ctx.data, ctx.train_indices, ctx.options, ctx.metrics)
    # Holding the keyed objects keeps their ids from being reused by a later group.
    _bound_cache["key"], _bound_cache["value"] = key, rows
    _bound_cache["refs"] = (ctx.params, ctx.train_indices)
    return rows


def _bound_measure(name: str) -> Measure:
    def fn(ctx: MeasureContext) -> dict[str, Tensor]:
        rows = _bounds(ctx)
        keys = [k for k in rows[0] if k == name or k.startswith(name + ".")]
        return {k: torch.tensor([r.get(k, float("nan")) for r in rows], dtype=torch.float64)
                for k in keys}

    fn.__name__ = name
    fn.__doc__ = f"The {name!r} bound and its terms, per model (listed in resdyn.theory.measures)."
    return fn


BOUND_MEASURES: dict[str, Measure] = {
    name: _bound_measure(name)
    for name in ("path_norm_bound", "flow_bound", "dead_zone", "spectral_bound", "marion_bound",
                 "test_error_bound")
}

# The classes the bounds of docs/theory.md are stated for.
_RESNETS = Applies(families=("resnet", "ode_resnet", "conv_resnet"))


# ----------------------------------------------------------------------------- diagnostics
def _train_inputs(ctx: MeasureContext | TrackContext, max_points: int) -> list[Tensor]:
    dev = next(iter(ctx.params.values())).device
    return [ctx.data.prepare(ctx.data.x[torch.as_tensor(idx)[:max_points]], torch.float64, dev)
            for idx in ctx.train_indices]


def _gram(ctx: MeasureContext | TrackContext) -> dict[str, Tensor]:
    """lambda_min of G1, G2 and G1 + G2 on the first ``max_points`` (default 128) training points
    (float64 parameters)."""
    params = {k: v.to(torch.float64) for k, v in ctx.params.items()}
    return gram_lambda_min(ctx.model, params, _train_inputs(ctx, int(ctx.options.get("max_points", 128))))


def _kl(ctx: MeasureContext | TrackContext) -> dict[str, Tensor]:
    """KL of the encoder and predictor particles from N(0, I): k-NN and Gaussian-fit estimates."""
    return particle_kl(ctx.model, ctx.params, ctx.options.get("k"))


def _track_displacement(ctx: TrackContext) -> dict[str, Tensor]:
    """Mean, max and root-mean-square particle displacement since the initial parameters."""
    return displacement(ctx.model, ctx.params, ctx.params0)


def _measure_displacement(ctx: MeasureContext) -> dict[str, Tensor]:
    """Mean, max and root-mean-square particle displacement of the trained model since its init."""
    # A cell's initial parameters are a function of its seed alone (resdyn._seeds).
    p = next(iter(ctx.params.values()))
    return displacement(ctx.model, ctx.params, init_params(ctx.model, ctx.seeds, p.dtype, p.device))


def _train_loss(ctx: TrackContext) -> dict[str, Tensor]:
    """The training loss and accuracy of every model at the current parameters (the engine's
    ``evaluate`` on its own sample), float64."""
    return _evaluated(ctx, "train")


def _test_loss(ctx: TrackContext) -> dict[str, Tensor]:
    """The test loss and accuracy of every model at the current parameters (the learning curve
    of a report; never used to stop or select: the stopping rule is the spec's), float64."""
    return _evaluated(ctx, "test")


def _evaluated(ctx: TrackContext, split: str) -> dict[str, Tensor]:
    """Loss and accuracy of every model on its sample ('train') or the test set, float64."""
    # Without the run's configuration: the loss each output size is trained with by default.
    cfg = ctx.config or TrainConfig(loss="squared" if int(ctx.model.out_dim) == 1 else "cross_entropy")
    res = evaluate(ctx.model, ctx.params, ctx.data, ctx.train_indices, cfg.loss, cfg.chunk_size, split)
    return {"loss": res["loss"].to(torch.float64), "acc": res["acc"].to(torch.float64)}


def _linear_rate(ctx: TrackContext) -> dict[str, Tensor]:
    """Least-squares slope of log training loss against step since option ``start`` (default 0)."""
    return {"linear_rate": fit_linear_rate(ctx.loss_history[: ctx.step], int(ctx.options.get("start", 0)))}


_MEANFIELD = Applies(families=("meanfield",))
_MEANFIELD_BOUND = Applies(families=("meanfield",),
                           activations=tuple(meanfield_theory.ACTIVATION_CONSTANTS))
_SCALAR = Applies(scalar_output=True)

MEASURES: dict[str, _Entry] = {
    **{name: _Entry(fn, _RESNETS) for name, fn in BOUND_MEASURES.items()},
    "meanfield_kl_plugin": _Entry(meanfield_theory.MEASURES["meanfield_kl_plugin"], _MEANFIELD_BOUND),
    "gram": _Entry(_gram, _SCALAR),
    "kl": _Entry(_kl, _MEANFIELD),
    "displacement": _Entry(_measure_displacement, _MEANFIELD),
}

TRACKERS: dict[str, _Entry] = {
    "gram": _Entry(_gram, _SCALAR),
    "kl": _Entry(_kl, _MEANFIELD),
    "displacement": _Entry(_track_displacement, _MEANFIELD),
    "linear_rate": _Entry(_linear_rate, Applies()),
    "train_loss": _Entry(_train_loss, Applies()),
    "test_loss": _Entry(_test_loss, Applies()),
}


def measure_names() -> list[str]:
    return sorted(MEASURES)


def tracker_names() -> list[str]:
    return sorted(TRACKERS)


def _get(table: dict[str, _Entry], kind: str, name: str) -> _Entry:
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; allowed: {', '.join(sorted(table))}")
    return table[name]


def get_measure(name: str) -> Measure:
    return _get(MEASURES, "measure", name).fn


def get_tracker(name: str) -> Tracker:
    return _get(TRACKERS, "tracker", name).fn


def check_applies(kind: str, name: str, model: Mapping[str, Any]) -> str | None:
    """None when measure (``kind='measures'``) or tracker (``'trackers'``) ``name`` applies to
    ``model`` ({'family': ..., field: value}), else the reason it does not."""
    table = MEASURES if kind == "measures" else TRACKERS
    return _get(table, kind[:-1], name).applies.reason(model)
