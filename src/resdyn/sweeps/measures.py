"""Measures (computed after training) and trackers (recorded along training) that a spec can ask
for by name.

A measure maps a :class:`MeasureContext` for a trained group of E models to named per-model
values, each a tensor of shape (E,): ``{"bound": ..., "bound.complexity": ...}``. A tracker maps a
:class:`TrackContext` (the group during training, at one step) the same way; the sweep records
its values every ``every`` steps as series in the store.

Providers are the modules listed in ``PROVIDERS``; each may define ``MEASURES`` and ``TRACKERS``
dicts of name -> function. A provider that is not installed is skipped.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..data.base import Dataset
from ..models.base import Model, Params
from ..training.engine import TrainConfig

__all__ = ["PROVIDERS", "MeasureContext", "TrackContext", "get_measure", "get_tracker",
           "measure_names", "tracker_names"]

PROVIDERS: tuple[str, ...] = (
    "resdyn.theory.measures",
    "resdyn.theory.meanfield",
    "resdyn.analysis.diagnostics",
    "resdyn.models.dnl",
)


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


Measure = Callable[[MeasureContext], dict[str, Tensor]]
Tracker = Callable[[TrackContext], dict[str, Tensor]]


def _collect(attr: str) -> dict[str, Callable]:
    out: dict[str, Callable] = {}
    for module in PROVIDERS:
        if importlib.util.find_spec(module) is None:
            continue
        out.update(getattr(importlib.import_module(module), attr, {}))
    return out


def measure_names() -> list[str]:
    return sorted(_collect("MEASURES"))


def tracker_names() -> list[str]:
    return sorted(_collect("TRACKERS"))


def get_measure(name: str) -> Measure:
    table = _collect("MEASURES")
    if name not in table:
        raise ValueError(f"unknown measure {name!r}; allowed: {', '.join(sorted(table)) or 'none'}")
    return table[name]


def get_tracker(name: str) -> Tracker:
    table = _collect("TRACKERS")
    if name not in table:
        raise ValueError(f"unknown tracker {name!r}; allowed: {', '.join(sorted(table)) or 'none'}")
    return table[name]
