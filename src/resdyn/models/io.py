"""Parameters to and from safetensors files, written atomically, with the model in the metadata."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .base import Model, Params
from .registry import build_model, model_to_dict

__all__ = ["load_params", "save_params"]


def save_params(path: str | Path, model: Model, params: Params, extra: dict | None = None) -> None:
    """Write ``params`` (any leading axes) and the model's description to ``path``.

    The file appears complete or not at all: it is written beside its target and renamed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": json.dumps(model_to_dict(model)), "extra": json.dumps(extra or {})}
    tensors = {k: v.detach().cpu().contiguous() for k, v in params.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_params(path: str | Path, device: str | torch.device = "cpu") -> tuple[Model, Params, dict]:
    """The model, its parameters and the ``extra`` metadata saved by :func:`save_params`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "model" not in meta:
        raise ValueError(f"{path} is not a resdyn checkpoint: its metadata has no 'model' entry")
    model = build_model(**json.loads(meta["model"]))
    params = {k: v.to(device) for k, v in load_file(str(path)).items()}
    return model, params, json.loads(meta.get("extra", "{}"))
