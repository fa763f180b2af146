"""Experiment specs: TOML -> a validated, frozen :class:`Spec`.

A spec names a data set, a model family and its shape, training settings, the measures and
trackers to compute, and a ``[sweep]`` table whose lists span the grid::

    name = "spirals-sample-size"

    [data]
    name = "two_spirals"          # any other key is an option of the data set

    [model]
    family = "resnet"             # any other key is a field of the family
    width = 16
    depth = 8

    [train]
    steps = 1000                  # TrainConfig fields, and lr
    lr = 1e-2

    [measures.test_error_bound]   # name = table of options
    delta = 0.05

    [trackers.gram]               # recorded along training every `every` steps
    every = 100

    [sweep]
    sample_size = [64, 128, 256]  # required
    seed = [0, 1, 2]              # default [0]
    activation = ["tanh", "relu"] # a model, train or data key; or model = [{...}, {...}]

    [run]
    dtype = "float32"             # float32 | float64
    group_size = 256              # most models trained as one computation
    checkpoint_seconds = 120      # a long group writes per-cell checkpoints this often
    lease_seconds = 900           # how long a claim on a cell lasts without renewal

Every error names its key path and what is allowed, and validation happens once, here.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..training.engine import TrainConfig

__all__ = ["RunOptions", "Spec", "SpecError", "load_spec", "parse_spec"]

TOP_KEYS = ("name", "description", "data", "model", "train", "measures", "trackers", "sweep", "run",
            "warm_start")
CELL_KEYS = ("sample_size", "seed")
TRAIN_KEYS = (*(f.name for f in dataclasses.fields(TrainConfig)), "lr", "init_seed_stride")


class SpecError(ValueError):
    """A spec that cannot be run; the message names the key path and what is allowed."""


def _fail(path: str, msg: str) -> SpecError:
    return SpecError(f"spec key {path}: {msg}")


@dataclass(frozen=True)
class RunOptions:
    dtype: str = "float32"
    group_size: int = 256
    checkpoint_seconds: float = 120.0
    lease_seconds: float = 900.0


@dataclass(frozen=True)
class Spec:
    """A validated spec. ``data``, ``model``, ``train`` are the base tables; ``sweep`` maps each
    swept key to its list of values (in file order); ``measures``/``trackers`` map names to
    option tables."""

    name: str
    data: Mapping[str, Any]
    model: Mapping[str, Any]
    train: Mapping[str, Any]
    sweep: Mapping[str, list]
    measures: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    trackers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    run: RunOptions = RunOptions()
    description: str = ""
    source: str = ""
    warm_start: Mapping[str, Any] = field(default_factory=dict)


def _table(raw: Mapping[str, Any], key: str, required: bool = True) -> dict[str, Any]:
    if key not in raw:
        if required:
            raise _fail(key, "missing; a spec needs [data], [model], [train] and [sweep] tables")
        return {}
    v = raw[key]
    if not isinstance(v, Mapping):
        raise _fail(key, f"must be a table, got {type(v).__name__}")
    return dict(v)


def _check_type(path: str, value: Any, types: tuple[type, ...], what: str) -> None:
    if isinstance(value, bool) and bool not in types:
        raise _fail(path, f"must be {what}, got {value!r}")
    if not isinstance(value, types):
        raise _fail(path, f"must be {what}, got {value!r}")


def _model_fields(family: str) -> set[str]:
    from ..models.registry import FAMILIES, _family_class

    if family not in FAMILIES:
        raise _fail("model.family", f"unknown family {family!r}; allowed: {', '.join(FAMILIES)}")
    try:
        return {f.name for f in dataclasses.fields(_family_class(family))}
    except ValueError as err:
        raise _fail("model.family", str(err)) from None


def _sweep_target(key: str, model_fields: set[str]) -> str:
    """Where a swept key lands: 'cell', 'train', 'model', 'data' or a whole-table variant."""
    if key in CELL_KEYS:
        return "cell"
    if key in ("model", "data", "train"):
        return "variants"
    if "." in key:
        section = key.split(".", 1)[0]
        if section in ("model", "data", "train"):
            return section
    if key in TRAIN_KEYS:
        return "train"
    if key in model_fields:
        return "model"
    allowed = sorted({*CELL_KEYS, "lr", "model", "data", "train", *model_fields, *TRAIN_KEYS})
    raise _fail(f"sweep.{key}", "is not a model, train or cell key; use 'data.OPTION' for data "
                f"options. Allowed: {', '.join(allowed)}")


def parse_spec(raw: Mapping[str, Any], source: str = "") -> Spec:
    """Validate a spec already read from TOML (a dict)."""
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise _fail(unknown[0], f"unknown top-level key; allowed: {', '.join(TOP_KEYS)}")
    name = raw.get("name", Path(source).stem if source else "spec")
    _check_type("name", name, (str,), "a string")
    data, model, train = _table(raw, "data"), _table(raw, "model"), _table(raw, "train")
    sweep = _table(raw, "sweep")
    if "name" not in data:
        raise _fail("data.name", "missing; name the data set (see `resdyn data list`)")
    from ..data import DATASETS

    if data["name"] not in DATASETS:
        raise _fail("data.name", f"unknown data set {data['name']!r}; allowed: {', '.join(DATASETS)}")
    if "family" not in model:
        raise _fail("model.family", "missing; name the model family")
    fields = _model_fields(model["family"])
    for k in model:
        if k != "family" and k not in fields:
            raise _fail(f"model.{k}", f"unknown option of family {model['family']!r}; "
                        f"allowed: {', '.join(sorted(fields))}")
    for k, v in train.items():
        if k not in TRAIN_KEYS:
            raise _fail(f"train.{k}", f"unknown key; allowed: {', '.join(TRAIN_KEYS)}")
        if k == "lr":
            _check_type("train.lr", v, (int, float), "a number > 0")
            if v <= 0:
                raise _fail("train.lr", f"must be a number > 0, got {v!r}")
    for k, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise _fail(f"sweep.{k}", f"must be a non-empty list of values, got {values!r}")
        target = _sweep_target(k, fields)
        if k == "sample_size":
            for i, s in enumerate(values):
                _check_type(f"sweep.sample_size[{i}]", s, (int,), "an integer >= 1")
                if s < 1:
                    raise _fail(f"sweep.sample_size[{i}]", f"must be an integer >= 1, got {s!r}")
        if k == "seed":
            for i, s in enumerate(values):
                _check_type(f"sweep.seed[{i}]", s, (int,), "an integer")
        if target == "variants":
            for i, v in enumerate(values):
                _check_type(f"sweep.{k}[{i}]", v, (dict,), "a table (inline {key = value})")
    if "sample_size" not in sweep:
        raise _fail("sweep.sample_size", "missing; list the training-set sizes S to run")
    sweep.setdefault("seed", [0])
    measures = {k: dict(v) for k, v in _table(raw, "measures", required=False).items()}
    trackers = {k: dict(v) for k, v in _table(raw, "trackers", required=False).items()}
    for section, table in (("measures", measures), ("trackers", trackers)):
        for k, v in table.items():
            if not isinstance(v, dict):
                raise _fail(f"{section}.{k}", "must be a table of options ([{section}.{k}])")
    _check_names(measures, trackers)
    _check_applicable(model, sweep, fields, measures, trackers)
    run_raw = _table(raw, "run", required=False)
    run = _run_options(run_raw)
    description = raw.get("description", "")
    _check_type("description", description, (str,), "a string")
    warm = _warm_start(_table(raw, "warm_start", required=False), sweep, fields, model["family"])
    return Spec(name, data, model, train, sweep, measures, trackers, run, description, source, warm)


def _warm_start(raw: dict[str, Any], sweep: Mapping[str, list], fields: set[str],
                family: str) -> dict[str, Any]:
    """[warm_start]: key (a swept model key: depth), seeds (the seeds whose cells start warm;
    default every seed). A warm cell at the i-th value of ``key`` depends on every cell at the
    (i-1)-th value that shares its other settings, and starts from the best of them."""
    if not raw:
        return {}
    for k in raw:
        if k not in ("key", "seeds"):
            raise _fail(f"warm_start.{k}", "unknown key; allowed: key, seeds")
    key = raw.get("key")
    if key not in sweep or _sweep_target(key, fields) != "model" or len(sweep[key]) < 2:
        raise _fail("warm_start.key", f"must name a swept model key with at least two values, got {key!r}")
    from ..models.registry import _family_class

    if not hasattr(_family_class(family), "prolong"):
        raise _fail("warm_start.key", f"model family {family!r} cannot start from a shallower solution "
                    "(no prolong); allowed: dnl")
    seeds = raw.get("seeds", list(sweep.get("seed", [0])))
    if not isinstance(seeds, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in seeds):
        raise _fail("warm_start.seeds", f"must be a list of integer seeds, got {seeds!r}")
    return {"key": key, "seeds": seeds}


def _check_names(measures: Mapping[str, Any], trackers: Mapping[str, Any]) -> None:
    from .measures import measure_names, tracker_names

    known_m, known_t = measure_names(), tracker_names()
    for k in measures:
        if k not in known_m:
            raise _fail(f"measures.{k}", f"unknown measure; allowed: {', '.join(known_m) or 'none'}")
    for k, opts in trackers.items():
        if k not in known_t:
            raise _fail(f"trackers.{k}", f"unknown tracker; allowed: {', '.join(known_t) or 'none'}")
        every = opts.get("every", 0)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise _fail(f"trackers.{k}.every", f"must be an integer >= 1 (steps), got {every!r}")


def _model_variants(model: Mapping[str, Any], sweep: Mapping[str, list],
                    fields: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """Every model table the sweep can produce (family defaults filled in), each with the swept
    key path that made it ('' for the base table)."""
    from ..models.registry import _family_class

    defaults = {f.name: f.default for f in dataclasses.fields(_family_class(model["family"]))
                if f.default is not dataclasses.MISSING}
    base = {**defaults, **model}
    out = [("", base)]
    for k, values in sweep.items():
        target = _sweep_target(k, fields)
        for i, v in enumerate(values):
            if target == "model":
                out.append((f"sweep.{k}[{i}]", {**base, k.split(".", 1)[-1]: v}))
            elif target == "variants" and k == "model":
                out.append((f"sweep.model[{i}]", {**base, **v}))
    return out


def _check_applicable(model: Mapping[str, Any], sweep: Mapping[str, list], fields: set[str],
                      measures: Mapping[str, Any], trackers: Mapping[str, Any]) -> None:
    """Every measure and tracker applies to every model the sweep builds (before any training)."""
    from .measures import check_applies

    variants = _model_variants(model, sweep, fields)
    for section, table in (("measures", measures), ("trackers", trackers)):
        for name in table:
            for where, m in variants:
                reason = check_applies(section, name, m)
                if reason is not None:
                    at = f" of {where}" if where else ""
                    raise _fail(f"{section}.{name}", f"does not apply to the model{at}: {reason}")


def _run_options(raw: Mapping[str, Any]) -> RunOptions:
    allowed = {f.name for f in dataclasses.fields(RunOptions)}
    for k in raw:
        if k not in allowed:
            raise _fail(f"run.{k}", f"unknown key; allowed: {', '.join(sorted(allowed))}")
    opts = RunOptions(**raw)
    if opts.dtype not in ("float32", "float64"):
        raise _fail("run.dtype", f"must be 'float32' or 'float64', got {opts.dtype!r}")
    if isinstance(opts.group_size, bool) or not isinstance(opts.group_size, int) or opts.group_size < 1:
        raise _fail("run.group_size", f"must be an integer >= 1, got {opts.group_size!r}")
    for k in ("checkpoint_seconds", "lease_seconds"):
        v = getattr(opts, k)
        if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
            raise _fail(f"run.{k}", f"must be a number of seconds > 0, got {v!r}")
    return opts


def load_spec(path: str | Path) -> Spec:
    """Read and validate the spec at ``path``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError(f"cannot read spec {path}: {err.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"spec {path} is not valid TOML: {err}") from None
    return parse_spec(raw, source=str(path))
