"""Parameters to and from safetensors files, written atomically, with the model in the metadata."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from .base import Model, Params
from .registry import model_from_dict, model_to_dict

__all__ = ["CheckpointError", "load_params", "params_from_bytes", "save_params"]

#: Largest safetensors header read (its JSON: tensor names, shapes, the model's description).
MAX_HEADER = 16 * 2**20


class CheckpointError(ValueError):
    """A file that is not a readable resdyn checkpoint; the message names it and the fault."""


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


def _metadata(data: bytes, where: str) -> dict[str, str]:
    """The ``__metadata__`` table of a safetensors file's header (8-byte length, then JSON)."""
    if len(data) < 8:
        raise CheckpointError(f"{where} is not a safetensors file: {len(data)} bytes")
    n = int.from_bytes(data[:8], "little")
    if n > min(MAX_HEADER, len(data) - 8):
        raise CheckpointError(f"{where} is not a safetensors file: its header claims {n} bytes")
    try:
        head = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{where} has an unreadable header ({type(err).__name__})") from None
    meta = head.get("__metadata__") if isinstance(head, dict) else None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{where} is not a resdyn checkpoint: its header has no metadata table")
    return meta


def params_from_bytes(data: bytes, where: str,
                      device: str | torch.device = "cpu") -> tuple[Model, Params, dict]:
    """The model, parameters and ``extra`` metadata of a checkpoint's bytes (see
    :func:`save_params`); :class:`CheckpointError` naming ``where`` for anything else."""
    meta = _metadata(data, where)
    if "model" not in meta:
        raise CheckpointError(f"{where} is not a resdyn checkpoint: its metadata has no 'model' entry")
    try:
        described = json.loads(meta["model"])
        extra = json.loads(meta.get("extra", "{}"))
        if not isinstance(extra, dict):
            raise TypeError("'extra' must be a JSON object")
        model = model_from_dict(described)  # the model codec: the inverse of model_to_dict
        tensors = load_bytes(data)
    except Exception as err:  # an untrusted file: any fault is one error naming it
        raise CheckpointError(f"{where} is not a readable resdyn checkpoint ({type(err).__name__}: "
                              f"{str(err)[:200]})") from None
    return model, {k: v.to(device) for k, v in tensors.items()}, extra


def load_params(path: str | Path, device: str | torch.device = "cpu") -> tuple[Model, Params, dict]:
    """The model, its parameters and the ``extra`` metadata saved by :func:`save_params`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return params_from_bytes(path.read_bytes(), str(path), device)
