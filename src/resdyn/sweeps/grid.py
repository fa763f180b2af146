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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .._seeds import generator_for
from ..data.base import Dataset
from ..models.base import Model
from ..models.registry import build_model, model_to_dict
from ..training.control import ControlConfig, can_prolong
from ..training.engine import TrainConfig
from .spec import Spec, SpecError, _sweep_target

__all__ = ["Cell", "DataConfig", "TrainingConfig", "cell_hash", "expand", "group_cells", "load_dataset"]

_PER_MODEL = ("sample_size", "seed")
SAMPLES = ("stratified", "permutation", "prefix")
# Keys of a spec's [data] table that say how a cell samples the pool (not options of the data set).
SAMPLE_KEYS = ("sample", "sample_stream")


@dataclass(frozen=True)
class DataConfig:
    """The data set (``name``, its ``options``, the ``root`` of file-backed sets) and how a cell
    draws its training sample of size S with seed s from the pool (``sample``):

    * 'stratified' (default): ``resdyn.data.subsample`` (nested, class proportions kept);
    * 'permutation': the first S entries of one permutation of the pool drawn from the
      ``(s, sample_stream)`` stream (nested, in permutation order);
    * 'prefix': the first S points of the pool (the seed plays no part).
    """

    name: str
    options: tuple[tuple[str, Any], ...] = ()
    root: str | None = None
    sample: str = "stratified"
    sample_stream: str = "subsample"

    def load(self) -> Dataset:
        return _load(json.dumps({"name": self.name, **dict(self.options),
                                 **({"root": self.root} if self.root is not None else {})},
                                sort_keys=True))

    def indices(self, data: Dataset, S: int, seed: int) -> torch.Tensor:
        """The training sample of size ``S`` for ``seed`` (see the class docstring)."""
        if self.sample == "stratified":
            from ..data import subsample

            return subsample(data, S, seed)
        if self.sample == "prefix":
            return torch.arange(S)
        return torch.randperm(len(data.y), generator=generator_for(seed, self.sample_stream))[:S]

    def to_dict(self) -> dict[str, Any]:
        """The serialised form (part of a cell's identity; ``root`` is not)."""
        out = {"name": self.name, **dict(self.options)}
        if self.sample != "stratified":
            out.update(sample=self.sample, sample_stream=self.sample_stream)
        return out


# TrainConfig fields added after stores existed, with their defaults: left out of a cell's config
# at their default, so that the cells of older stores keep their ids.
_LATER_TRAIN_FIELDS: dict[str, Any] = {"lr_schedule": "constant", "warmup_steps": 0}


@dataclass(frozen=True)
class TrainingConfig:
    """The engine's settings, the learning rate, and where initial weights come from: seed s
    (``init_seed_stride`` = 0) or seed ``init_seed_stride`` * s + S (the numbering of the
    mean-field reproduction). ``control``: train with the control objective J_N
    (``resdyn.training.control``: ``config.steps`` Adam steps, then L-BFGS) instead of the loss."""

    config: TrainConfig
    lr: float
    init_seed_stride: int = 0
    control: ControlConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {**{k: (list(v) if isinstance(v, tuple) else v)
                  for k, v in dataclasses.asdict(self.config).items()
                  if k not in _LATER_TRAIN_FIELDS or v != _LATER_TRAIN_FIELDS[k]},
               "lr": float(self.lr)}
        if self.init_seed_stride:
            out["init_seed_stride"] = self.init_seed_stride
        if self.control is not None:
            out["control"] = dataclasses.asdict(self.control)
        return out


@dataclass(frozen=True, eq=False)
class Cell:
    """One trained model, typed: the model (a frozen model dataclass), its data and training
    configuration, sample size, seed, dtype and the measures and trackers it records. ``config``
    is the serialised form the store keeps (computed once); ``cell_id`` hashes it."""

    model: Model
    data: DataConfig
    training: TrainingConfig
    sample_size: int
    seed: int
    dtype: str
    measures: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    trackers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # A warm cell starts from the best (lowest final training objective) of the cells ``warm_from``,
    # prolonged along the model key ``warm_key`` (docs/sweeps.md, "Dependencies").
    warm_from: tuple[str, ...] = ()
    warm_key: str = ""
    # False: the cell depends on ``warm_from`` (its row measures against the best of them) but
    # starts from its seed ([warm_start] depend = "all").
    warm_init: bool = True

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        config = {
            "data": self.data.to_dict(),
            "model": model_to_dict(self.model),
            "train": self.training.to_dict(),
            "sample_size": self.sample_size,
            "seed": self.seed,
            "dtype": self.dtype,
            "measures": {k: dict(v) for k, v in self.measures.items()},
            "trackers": {k: dict(v) for k, v in self.trackers.items()},
        }
        if self.warm_from:
            config["warm_start"] = {"key": self.warm_key, "from": list(self.warm_from)}
            if not self.warm_init:
                config["warm_start"]["init"] = False
        if self.data.root is not None:
            config["data_root"] = self.data.root
        return config

    @functools.cached_property
    def cell_id(self) -> str:
        return cell_hash({k: v for k, v in self.config.items() if k != "data_root"})

    @property
    def init_seed(self) -> int:
        """The seed of the cell's initial weights."""
        stride = self.training.init_seed_stride
        return stride * self.seed + self.sample_size if stride else self.seed

    @property
    def lr(self) -> float:
        return self.training.lr

    @property
    def group_key(self) -> str:
        shared = {k: v for k, v in self.config.items() if k not in _PER_MODEL}
        shared["train"] = {k: v for k, v in shared["train"].items() if k != "lr"}
        if "warm_start" in shared:  # where a cell starts is per model: warm and cold train together
            shared["warm_start"] = {k: v for k, v in shared["warm_start"].items() if k != "init"}
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
    return _load(json.dumps({k: v for k, v in data_cfg.items() if k not in SAMPLE_KEYS}, sort_keys=True))


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
    elif target == "variant":  # {model = {...}, train = {...}, data = {...}}; nested tables merged
        for section, table in value.items():
            for k, v in table.items():
                old = tables[section].get(k)
                tables[section][k] = {**old, **v} if isinstance(old, dict) and isinstance(v, dict) else v
    elif target == "variants":
        tables[key].update(value)
    else:
        tables[target][key.split(".", 1)[1] if "." in key else key] = value


def _data_config(table: dict[str, Any], where: str) -> DataConfig:
    options = {k: v for k, v in table.items() if k not in ("name", "root", *SAMPLE_KEYS)}
    sample = table.get("sample", "stratified")
    if sample not in SAMPLES:
        raise SpecError(f"spec key data.sample ({where}): must be one of "
                        f"{', '.join(map(repr, SAMPLES))}, got {sample!r}")
    stream = table.get("sample_stream", "subsample")
    if not isinstance(stream, str) or not stream:
        raise SpecError(f"spec key data.sample_stream ({where}): must be a non-empty string, got {stream!r}")
    return DataConfig(table["name"], tuple(options.items()), table.get("root"), sample, stream)


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
        data_cfg = _data_config(tables["data"], where)
        try:
            data = data_cfg.load()
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
        stride = train.pop("init_seed_stride", 0)
        control = train.pop("control", None)
        try:
            tc = TrainConfig(**train)
            control = None if control is None else ControlConfig(**control)
        except (ValueError, TypeError) as err:
            raise SpecError(f"spec key train ({where}): {err}") from None
        if isinstance(lr, bool) or not isinstance(lr, int | float) or lr <= 0:
            raise SpecError(f"spec key train.lr ({where}): must be a number > 0, got {lr!r}")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 0:
            raise SpecError(f"spec key train.init_seed_stride ({where}): must be an integer >= 0, "
                            f"got {stride!r}")
        if control is not None and not can_prolong(model):
            raise SpecError(f"spec key train.control ({where}): the control objective needs a dnl "
                            "model without shared operator parameters or a resnet with "
                            "block='one_layer' and tied=false")
        cells.append(Cell(model, data_cfg, TrainingConfig(tc, float(lr), stride, control), S,
                          tables["cell"].get("seed", 0), dtype,
                          {k: dict(v) for k, v in spec.measures.items()},
                          {k: dict(v) for k, v in spec.trackers.items()}))
    if spec.warm_start:
        cells = _resolve_warm_starts(cells, spec)
    unique = {c.cell_id: c for c in cells}
    return list(unique.values())


def _resolve_warm_starts(cells: list[Cell], spec: Spec) -> list[Cell]:
    """Give each warm cell at the i-th value of the warm-start key the ids of every cell at the
    (i-1)-th value with the same other settings (any seed; any learning rate when ``lr`` is
    given). Deeper levels are resolved after the levels they depend on, since a cell's id covers
    the ids it depends on. Options (docs/sweeps.md, "Dependencies"): ``lr``, the learning rate of
    warm cells; ``warm_only``: the warm seeds have no cell at the first level; ``depend = 'all'``:
    every cell after the first level depends on the level below, only the warm seeds start from it."""
    ws = spec.warm_start
    key = ws["key"]
    field_name = key.split(".", 1)[-1]
    values = spec.sweep[key]
    warm_seeds = set(ws["seeds"])

    def level(c: Cell) -> int:
        return values.index(getattr(c.model, field_name))

    def signature(c: Cell) -> str:
        cfg = {k: v for k, v in c.config.items() if k not in ("seed", "warm_start", "data_root")}
        cfg["model"] = {k: v for k, v in cfg["model"].items() if k != field_name}
        if "lr" in ws:
            cfg["train"] = {k: v for k, v in cfg["train"].items() if k != "lr"}
        return cell_hash(cfg)

    resolved: list[Cell] = []
    for i in range(len(values)):
        below = [c for c in resolved if level(c) == i - 1]
        for c in (c for c in cells if level(c) == i):
            warm = c.seed in warm_seeds
            if i == 0 and warm and ws.get("warm_only"):
                continue
            if i > 0 and (warm or ws.get("depend") == "all"):
                deps = tuple(d.cell_id for d in below if signature(d) == signature(c))
                if deps and warm and not hasattr(c.model, "prolong") and not (
                        c.training.control is not None and can_prolong(c.model)):
                    raise SpecError(f"spec key warm_start.key: model family {c.model.family!r} cannot "
                                    "start from a shallower solution; allowed: dnl, or resnet "
                                    "(one_layer) trained with [train.control]")
                training = c.training
                if deps and warm and "lr" in ws:
                    training = dataclasses.replace(training, lr=float(ws["lr"]))
                if deps:
                    c = dataclasses.replace(c, warm_from=deps, warm_key=field_name, warm_init=warm,
                                            training=training)
            resolved.append(c)
    return resolved


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
