"""Model families by name, and models to and from plain dicts (for specs, stores, checkpoints)."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from .._checks import described
from .base import Model

__all__ = ["FAMILIES", "build_model", "build_model_for", "check_model_fits", "family_class", "fill_shapes",
           "model_from_dict", "model_to_dict"]

# family name -> "module:class"; families whose module is absent are not offered.
FAMILIES: dict[str, str] = {
    "resnet": "resdyn.models.resnet:ResNet",
    "ode_resnet": "resdyn.models.ode_resnet:ODEResNet",
    "conv_resnet": "resdyn.models.conv_resnet:ConvResNet",
    "image_resnet": "resdyn.models.image_resnet:ImageResNet",
    "image_ode_resnet": "resdyn.models.image_ode_resnet:ImageODEResNet",
    "meanfield": "resdyn.models.meanfield:MeanFieldResNet",
    "dnl": "resdyn.models.dnl:DNLNet",
}


def family_class(family: str) -> type:
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
    cls = family_class(family)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"model family {family!r} has no option(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(sorted(fields))}")
    return cls(**options)


def model_to_dict(model: Model) -> dict[str, Any]:
    """``{'family': ..., **fields}``; ``build_model(**model_to_dict(m)) == m``. Fields a family
    added after stores existed (its ``later_fields``: name -> default) are left out at their
    default, so that older stores' cells keep their ids."""
    return {"family": model.family, **described(model)}


def model_from_dict(described: Any) -> Model:
    """The inverse of :func:`model_to_dict`: the model a stored ``{'family': ..., **fields}``
    describes. ``ValueError`` naming the fault for anything else (not an object, no string
    family, an unknown family or field, a bad value)."""
    if not isinstance(described, dict) or not isinstance(described.get("family"), str):
        raise ValueError(f"a model description is an object with a string 'family', got "
                         f"{str(described)[:100]}")
    options = {k: v for k, v in described.items() if k != "family"}
    try:
        return build_model(described["family"], **options)
    except TypeError as err:  # a field the dataclass refuses
        raise ValueError(f"model family {described['family']!r}: {err}") from None


def fill_shapes(family: str, options: dict[str, Any], input_shape: tuple[int, ...],
                num_classes: int) -> dict[str, Any]:
    """``options`` with the sizes the data fix (``in_dim``, ``out_dim``, ``in_channels``) filled
    where the family has them and ``options`` is silent.

    in_dim is the number of input features (the product of ``input_shape``); out_dim the number of
    classes; in_channels the first axis of an image's ``(C, H, W)``.
    """
    fields = {f.name for f in dataclasses.fields(family_class(family))}
    out = dict(options)
    if "in_channels" in fields and len(input_shape) == 3:
        out.setdefault("in_channels", int(input_shape[0]))
    if "in_dim" in fields:
        n = 1
        for s in input_shape:
            n *= int(s)
        out.setdefault("in_dim", n)
    if "out_dim" in fields:
        out.setdefault("out_dim", int(num_classes))
    return out


def build_model_for(family: str, input_shape: tuple[int, ...], num_classes: int,
                    **options: Any) -> Model:
    """The model of ``family`` sized for a data set: unspecified in_dim / out_dim / in_channels
    come from ``input_shape`` and ``num_classes`` (given ones are checked against them)."""
    model = build_model(family, **fill_shapes(family, options, input_shape, num_classes))
    check_model_fits(model, input_shape, num_classes)
    return model


def check_model_fits(model: Model, input_shape: tuple[int, ...], num_classes: int,
                     what: str = "the data") -> None:
    """Raise ``ValueError`` naming both sizes when ``model`` cannot read inputs of ``input_shape``
    or its output size does not match ``num_classes`` (a one-output model fits two classes)."""
    n = 1
    for s in input_shape:
        n *= int(s)
    in_dim = getattr(model, "in_dim", None)
    in_channels = getattr(model, "in_channels", None)
    problems = []
    if in_channels is not None:
        if len(input_shape) != 3 or int(input_shape[0]) != in_channels:
            problems.append(f"in_channels={in_channels} but {what} has inputs of shape "
                            f"{tuple(input_shape)} (need (C, H, W) with C = in_channels)")
    elif in_dim is not None and in_dim != n:
        problems.append(f"in_dim={in_dim} but {what} has {n} input features "
                        f"(inputs of shape {tuple(input_shape)})")
    k = int(model.out_dim)
    if not (k == num_classes or (k == 1 and num_classes == 2)):
        problems.append(f"out_dim={k} but {what} has {num_classes} classes")
    if problems:
        raise ValueError(f"{model.family} model does not fit {what}: " + "; ".join(problems)
                         + f". Build it with in_dim/out_dim from the data set, e.g. "
                         f"build_model_for({model.family!r}, data.input_shape, data.num_classes, ...)")
