"""From a spec to cells (one trained model each) and groups (cells trained as one computation).

A cell's configuration is fully resolved (every model and training field explicit, input and
output sizes filled from the data set) and its identity is the hash of that configuration. Cells
that differ only in sample size, seed and learning rate share a group key: the engine trains
them together, with per-model S, seed and rate, and a cell's numbers do not depend on its group.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

from ..data.base import Dataset
from ..models.registry import build_model, model_to_dict
from ..training.engine import TrainConfig
from .spec import Spec, SpecError, _sweep_target

__all__ = ["Cell", "cell_hash", "expand", "group_cells", "load_dataset"]

_PER_MODEL = ("sample_size", "seed")


@dataclass(frozen=True)
class Cell:
    """One trained model: its id (hash of ``config``) and its resolved configuration."""

    cell_id: str
    config: dict[str, Any]

    @property
    def sample_size(self) -> int:
        return self.config["sample_size"]

    @property
    def seed(self) -> int:
        return self.config["seed"]

    @property
    def lr(self) -> float:
        return self.config["train"]["lr"]

    @property
    def group_key(self) -> str:
        shared = {k: v for k, v in self.config.items() if k not in _PER_MODEL}
        shared["train"] = {k: v for k, v in shared["train"].items() if k != "lr"}
        return cell_hash(shared)


def cell_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@functools.lru_cache(maxsize=8)
def _load(key: str) -> Dataset:
    from ..data import load

    cfg = json.loads(key)
    return load(cfg.pop("name"), cfg.pop("root", None), **cfg)


def load_dataset(data_cfg: dict[str, Any]) -> Dataset:
    """The data set a cell's ``data`` table describes (cached per process)."""
    return _load(json.dumps(data_cfg, sort_keys=True))


def _fill_shapes(model: dict[str, Any], data: Dataset) -> dict[str, Any]:
    """Input and output sizes from the data set, where the family has them and the spec is silent."""
    from ..models.registry import _family_class

    fields = {f.name for f in dataclasses.fields(_family_class(model["family"]))}
    out = dict(model)
    if "in_channels" in fields and len(data.input_shape) == 3:
        out.setdefault("in_channels", data.input_shape[0])
    if "in_dim" in fields:
        out.setdefault("in_dim", data.in_dim)
    if "out_dim" in fields:
        out.setdefault("out_dim", data.num_classes)
    return out


def _assign(tables: dict[str, dict], key: str, value: Any, target: str) -> None:
    if target == "cell":
        tables["cell"][key] = value
    elif target == "variants":
        tables[key].update(value)
    else:
        tables[target][key.split(".", 1)[1] if "." in key else key] = value


def expand(spec: Spec, dtype: str | None = None) -> list[Cell]:
    """Every cell of the spec's grid, in a deterministic order (the product of the sweep lists in
    file order). Raises :class:`SpecError` naming the key path of a value that cannot be built."""
    dtype = dtype or spec.run.dtype
    from .spec import _model_fields

    fields = _model_fields(spec.model["family"])
    keys = list(spec.sweep)
    targets = {k: _sweep_target(k, fields) for k in keys}
    cells: list[Cell] = []
    for combo in itertools.product(*(spec.sweep[k] for k in keys)):
        tables = {"data": dict(spec.data), "model": dict(spec.model), "train": dict(spec.train),
                  "cell": {}}
        where = ", ".join(f"{k}={v!r}" for k, v in zip(keys, combo, strict=True))
        for k, v in zip(keys, combo, strict=True):
            _assign(tables, k, v, targets[k])
        try:
            data = load_dataset(tables["data"])
        except (ValueError, TypeError, FileNotFoundError) as err:
            raise SpecError(f"spec key data ({where}): {err}") from None
        S = tables["cell"]["sample_size"]
        if len(data.y) < S:
            raise SpecError(f"spec key sweep.sample_size ({where}): S={S} exceeds the training pool "
                            f"of {data.name!r} ({len(data.y)} samples)")
        try:
            model = build_model(**_fill_shapes(tables["model"], data))
        except (ValueError, TypeError) as err:
            raise SpecError(f"spec key model ({where}): {err}") from None
        train = tables["train"]
        lr = train.pop("lr", 1e-2)
        try:
            tc = TrainConfig(**train)
        except (ValueError, TypeError) as err:
            raise SpecError(f"spec key train ({where}): {err}") from None
        if isinstance(lr, bool) or not isinstance(lr, int | float) or lr <= 0:
            raise SpecError(f"spec key train.lr ({where}): must be a number > 0, got {lr!r}")
        config = {
            "data": {k: v for k, v in tables["data"].items() if k != "root"},
            "model": model_to_dict(model),
            "train": {**{k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in dataclasses.asdict(tc).items()}, "lr": float(lr)},
            "sample_size": S,
            "seed": tables["cell"].get("seed", 0),
            "dtype": dtype,
            "measures": {k: dict(v) for k, v in spec.measures.items()},
            "trackers": {k: dict(v) for k, v in spec.trackers.items()},
        }
        if "root" in tables["data"]:
            config["data_root"] = tables["data"]["root"]
        identity = {k: v for k, v in config.items() if k != "data_root"}
        cells.append(Cell(cell_hash(identity), config))
    unique = {c.cell_id: c for c in cells}
    return list(unique.values())


def group_cells(
    cells: list[Cell], group_size: int, resume_step: dict[str, int] | None = None
) -> list[list[Cell]]:
    """Cells with one group key (and one checkpoint step, for resumed cells) in slices of at most
    ``group_size``, in first-appearance order: deterministic for a given list of cells."""
    resume_step = resume_step or {}
    buckets: dict[tuple[str, int], list[Cell]] = {}
    for c in cells:
        buckets.setdefault((c.group_key, resume_step.get(c.cell_id, 0)), []).append(c)
    groups = []
    for members in buckets.values():
        groups.extend(members[i : i + group_size] for i in range(0, len(members), group_size))
    return groups
