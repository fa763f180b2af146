"""Typed cells and their stored form: the one codec between a cell and the JSON a store keeps.

A :class:`Cell` is one trained model, typed: the model (a frozen model dataclass), the data set
and how the cell samples it (:class:`DataConfig`), the training settings
(:class:`TrainingConfig`), sample size S, seed, dtype, measures and trackers. Its stored form
(:attr:`Cell.config`) is fully resolved (every model and training field explicit) and its
identity is the hash of that form (:func:`cell_hash`). :func:`decode_cell` is the inverse:
``decode_cell(c.config).config == c.config``, so a stored cell decodes to the same id.
:func:`flat_settings` is the one flat view of a cell's settings (``model.depth``, ``train.lr``,
``data.name``, ``sample_size``, ...) for the reports that list swept settings as columns.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .._checks import described, plain
from .._seeds import generator_for
from ..data.base import Dataset
from ..models.base import Model
from ..models.registry import model_from_dict, model_to_dict
from ..training.certify import CertificateConfig
from ..training.control import ControlConfig
from ..training.engine import TrainConfig

__all__ = ["SAMPLES", "SAMPLE_KEYS", "Cell", "CellDecodeError", "DataConfig", "TrainingConfig", "cell_hash",
           "decode_cell", "flat_settings", "load_dataset"]

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
        out = {**described(self.config), "lr": float(self.lr)}
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
    # A certificate cell (a spec's [certificate]): trained by resdyn.training.certify.certify_sample,
    # its training settings those of the prior mean. Stored under "certificate" only when present.
    certificate: CertificateConfig | None = None

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
        if self.certificate is not None:
            config["certificate"] = described(self.certificate)
        if self.data.root is not None:
            config["data_root"] = self.data.root
        return config

    @functools.cached_property
    def cell_id(self) -> str:
        return cell_hash({k: v for k, v in self.config.items() if k != "data_root"})

    @functools.cached_property
    def settings(self) -> dict[str, Any]:
        """The flat view of :attr:`config` (see :func:`flat_settings`)."""
        return flat_settings(self.config)

    @functools.cached_property
    def full_settings(self) -> dict[str, Any]:
        """:attr:`settings` with every field added after stores existed (a ``later_fields`` entry of
        the model, the engine's TrainConfig or the certificate table, left out of :attr:`config`
        at its default) at that default: the value each setting has, whichever version wrote it."""
        out = dict(self.settings)
        for prefix, part in (("model", self.model), ("train", self.training.config),
                             ("certificate", self.certificate)):
            for name, default in getattr(part, "later_fields", {}).items():
                out.setdefault(f"{prefix}.{name}", plain(default))
        return out

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Cell:
        """The cell whose stored form is ``config`` (see :func:`decode_cell`)."""
        return decode_cell(config)

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


class CellDecodeError(ValueError):
    """A stored config that does not describe a cell; the message names the key and the fault."""


def decode_cell(config: Mapping[str, Any]) -> Cell:
    """The cell whose stored form (:attr:`Cell.config`) is ``config``: the inverse of
    ``Cell.config``, so ``decode_cell(c.config).config == c.config`` and the cell id is the same.

    Configs of older stores decode: training fields added later (``lr_schedule``,
    ``warmup_steps``) take their defaults when absent, as do ``measures`` and ``trackers`` (empty).
    Raises :class:`CellDecodeError` naming the key of anything else (a missing table, a model
    that cannot be built, a training field the engine does not have)."""
    if not isinstance(config, Mapping):
        raise CellDecodeError(f"a cell's config is a JSON object, got a {type(config).__name__}")
    for key in ("data", "model", "train", "sample_size", "seed", "dtype"):
        if key not in config:
            raise CellDecodeError(f"config has no {key!r}")
    warm = config.get("warm_start") or {}
    try:
        return Cell(
            model=model_from_dict(config["model"]),
            data=_decode_data(config["data"], config.get("data_root")),
            training=_decode_training(config["train"]),
            sample_size=_integer("sample_size", config["sample_size"]),
            seed=config["seed"],
            dtype=_text("dtype", config["dtype"]),
            measures=_tables("measures", config.get("measures", {})),
            trackers=_tables("trackers", config.get("trackers", {})),
            warm_from=tuple(warm.get("from", ())),
            warm_key=warm.get("key", ""),
            warm_init=bool(warm.get("init", True)),
            certificate=_decode_certificate(config.get("certificate")),
        )
    except CellDecodeError:
        raise
    except (ValueError, TypeError, AttributeError) as err:
        raise CellDecodeError(f"config does not describe a cell ({type(err).__name__}: "
                              f"{str(err)[:300]})") from None


def _decode_certificate(table: Any) -> CertificateConfig | None:
    """The inverse of the config's "certificate" table (absent: None)."""
    if table is None:
        return None
    if not isinstance(table, Mapping):
        raise CellDecodeError("config.certificate is not a table")
    return CertificateConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in table.items()})


def _integer(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CellDecodeError(f"config.{key} is {value!r}, not an integer")
    return value


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise CellDecodeError(f"config.{key} is {value!r}, not text")
    return value


def _tables(key: str, value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
        raise CellDecodeError(f"config.{key} is not a table of tables")
    return {k: dict(v) for k, v in value.items()}


def _decode_data(table: Any, root: Any) -> DataConfig:
    """The inverse of :meth:`DataConfig.to_dict` (``root``: the config's ``data_root``)."""
    if not isinstance(table, Mapping) or not isinstance(table.get("name"), str):
        raise CellDecodeError("config.data is not a table with a string 'name'")
    sample = table.get("sample", "stratified")
    if sample not in SAMPLES:
        raise CellDecodeError(f"config.data.sample is {sample!r}; allowed: {', '.join(SAMPLES)}")
    options = tuple((k, v) for k, v in table.items() if k not in ("name", *SAMPLE_KEYS))
    return DataConfig(table["name"], options, root if root is None else _text("data_root", root),
                      sample, table.get("sample_stream", "subsample"))


def _decode_training(table: Any) -> TrainingConfig:
    """The inverse of :meth:`TrainingConfig.to_dict`: the engine's fields (lists back to the
    tuples they were written from), ``lr``, and ``init_seed_stride`` and ``control`` where given."""
    if not isinstance(table, Mapping) or "lr" not in table:
        raise CellDecodeError("config.train is not a table with an 'lr'")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()
              if k not in ("lr", "init_seed_stride", "control")}
    control = table.get("control")
    return TrainingConfig(TrainConfig(**fields), float(table["lr"]),
                          _integer("train.init_seed_stride", table.get("init_seed_stride", 0)),
                          None if control is None else ControlConfig(**control))


def flat_settings(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A stored config as one flat table: nested tables joined with '.' (``data.name``,
    ``model.depth``, ``train.lr``, ``train.control.beta``, ``sample_size``, ``seed``), other
    values (lists included) as they are, in the config's order."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(flat_settings(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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


