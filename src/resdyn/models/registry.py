"""Model families by name, and models to and from plain dicts (for specs, stores, checkpoints)."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from .base import Model

__all__ = ["FAMILIES", "build_model", "model_to_dict"]

# family name -> "module:class"; families whose module is absent are not offered.
FAMILIES: dict[str, str] = {
    "resnet": "resdyn.models.resnet:ResNet",
    "ode_resnet": "resdyn.models.ode_resnet:ODEResNet",
    "conv_resnet": "resdyn.models.conv_resnet:ConvResNet",
    "meanfield": "resdyn.models.meanfield:MeanFieldResNet",
    "dnl": "resdyn.models.dnl:DNLNet",
}


def _family_class(family: str) -> type:
    target = FAMILIES.get(family)
    if target is not None:
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError:
            pass
    available = [f for f in FAMILIES if _importable(f)]
    raise ValueError(f"unknown model family {family!r}; allowed: {', '.join(available)}")


def _importable(family: str) -> bool:
    module = FAMILIES[family].split(":")[0]
    return importlib.util.find_spec(module) is not None


def build_model(family: str, **options: Any) -> Model:
    """The model of ``family`` with ``options`` (its dataclass fields); unknown options are named."""
    cls = _family_class(family)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"model family {family!r} has no option(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(sorted(fields))}")
    return cls(**options)


def model_to_dict(model: Model) -> dict[str, Any]:
    """``{'family': ..., **fields}``; ``build_model(**model_to_dict(m)) == m``."""
    out = {"family": model.family}
    for f in dataclasses.fields(model):
        v = getattr(model, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out
