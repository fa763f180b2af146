"""From a spec to cells (one trained model each) and groups (cells trained as one computation).

A cell's configuration is fully resolved (every model and training field explicit, input and
output sizes filled from the data set) and its identity is the hash of that configuration. Cells
that differ only in sample size, seed and learning rate share a group key: the engine trains
them together, with per-model S, seed and rate, and a cell's numbers do not depend on its group.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from .._checks import ConstraintError, Kind, Options
from ..data.base import Dataset
from ..models.registry import build_model
from ..training.certify import CertificateConfig
from ..training.control import ControlConfig, can_prolong
from ..training.engine import LEARNING_RATE, TrainConfig
from .cells import SAMPLE_KEYS, SAMPLES, Cell, DataConfig, TrainingConfig, cell_hash
from .spec import INIT_SEED_STRIDE, VARIANT_CELL_KEYS, Spec, SpecError, sweep_target

__all__ = ["data_config", "expand", "group_cells"]


def _fill_shapes(model: dict[str, Any], data: Dataset) -> dict[str, Any]:
    """Input and output sizes from the data set, where the family has them and the spec is silent."""
    from ..models.registry import family_class

    fields = {f.name for f in dataclasses.fields(family_class(model["family"]))}
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
            if section in VARIANT_CELL_KEYS:  # a scalar: the variant's own sample size
                tables["cell"][section] = table
                continue
            for k, v in table.items():
                old = tables[section].get(k)
                tables[section][k] = {**old, **v} if isinstance(old, dict) and isinstance(v, dict) else v
    elif target == "variants":
        tables[key].update(value)
    else:
        tables[target][key.split(".", 1)[1] if "." in key else key] = value


#: How a cell samples the pool (the keys of a [data] table that are not options of the data set).
SAMPLE_CONSTRAINTS = {"sample": Options(*SAMPLES),
                      "sample_stream": Kind(str, "a non-empty string", nonempty=True)}


def _spec_error(section: str, where: str, err: Exception) -> SpecError:
    """``err`` as a SpecError at ``section`` (with its key where a declaration names one)."""
    if isinstance(err, ConstraintError):
        return SpecError(f"spec key {section}.{err.path} ({where}): {err.reason}")
    return SpecError(f"spec key {section} ({where}): {err}")


def data_config(table: dict[str, Any], where: str) -> DataConfig:
    options = {k: v for k, v in table.items() if k not in ("name", "root", *SAMPLE_KEYS)}
    sample = table.get("sample", "stratified")
    stream = table.get("sample_stream", "subsample")
    try:
        for key, value in (("sample", sample), ("sample_stream", stream)):
            SAMPLE_CONSTRAINTS[key].check(key, value)
    except ConstraintError as err:
        raise _spec_error("data", where, err) from None
    return DataConfig(table["name"], tuple(options.items()), table.get("root"), sample, stream)


def expand(spec: Spec, dtype: str | None = None) -> list[Cell]:
    """Every cell of the spec's grid, in a deterministic order (the product of the sweep lists in
    file order). Raises :class:`SpecError` naming the key path of a value that cannot be built."""
    dtype = dtype or spec.run.dtype
    from .spec import model_fields

    fields = model_fields(spec.model["family"])
    keys = list(spec.sweep)
    targets = {k: sweep_target(k, fields) for k in keys}
    cells: list[Cell] = []
    for combo in itertools.product(*(spec.sweep[k] for k in keys)):
        tables = {"data": dict(spec.data), "model": dict(spec.model), "train": dict(spec.train),
                  "cell": {}, "certificate": dict(spec.certificate or {})}
        where = ", ".join(f"{k}={v!r}" for k, v in zip(keys, combo, strict=True))
        for k, v in zip(keys, combo, strict=True):
            _assign(tables, k, v, targets[k])
        data_cfg = data_config(tables["data"], where)
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
        training = _training_config(tables["train"], where)
        if training.control is not None and not can_prolong(model):
            raise SpecError(f"spec key train.control ({where}): the control objective needs a dnl "
                            "model without shared operator parameters or a resnet with "
                            "block='one_layer' and tied=false")
        certificate = (None if spec.certificate is None
                       else _certificate_config(tables["certificate"], where))
        cells.append(Cell(model, data_cfg, training, S,
                          tables["cell"].get("seed", 0), dtype,
                          {k: dict(v) for k, v in spec.measures.items()},
                          {k: dict(v) for k, v in spec.trackers.items()}, certificate=certificate))
    if spec.warm_start:
        cells = _resolve_warm_starts(cells, spec)
    unique = {c.cell_id: c for c in cells}
    return list(unique.values())


def _training_config(train: dict[str, Any], where: str) -> TrainingConfig:
    """A cell's [train] table (base, swept and variant values merged) as its TrainingConfig: the
    dataclasses check every value against their declarations (parse_spec checked each key alone;
    here the whole table, e.g. ``warmup_steps`` against ``lr_schedule``)."""
    train = dict(train)
    lr = train.pop("lr", 1e-2)
    stride = train.pop("init_seed_stride", 0)
    control = train.pop("control", None)
    try:
        LEARNING_RATE.check("lr", lr)
        INIT_SEED_STRIDE.check("init_seed_stride", stride)
        config = TrainConfig(**train)
    except (ValueError, TypeError) as err:
        raise _spec_error("train", where, err) from None
    try:
        control = None if control is None else ControlConfig(**control)
    except (ValueError, TypeError) as err:
        raise _spec_error("train.control", where, err) from None
    return TrainingConfig(config, float(lr), stride, control)


def _certificate_config(table: dict[str, Any], where: str) -> CertificateConfig:
    """A cell's [certificate] table (base and swept values merged) as its CertificateConfig."""
    try:
        return CertificateConfig(**table)
    except (ValueError, TypeError) as err:
        raise _spec_error("certificate", where, err) from None


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
