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

Every error names its key path and what is allowed, and validation happens here, before any file
is created: every number anywhere in the spec is finite; each [train] key satisfies the constraint
declared on its dataclass field (``TrainConfig``, ``ControlConfig``, the learning rate
``engine.LEARNING_RATE``: ``lr > 0``, ``eps > 0``, ``betas`` two numbers in ``[0, 1)``,
``momentum`` in ``[0, 1)``, ``weight_decay >= 0``, sizes up to :data:`LIMITS`), checked by the same
validator (``resdyn._checks``) that the dataclasses run when built, so the words are the same; [run]
is built as :class:`RunOptions`; a model whose parameters and Adam state would need more than
:data:`MAX_MODEL_BYTES` is refused with the memory it would need; ``name`` matches
:data:`resdyn._paths.NAME_PATTERN` (it names the default store file).
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._checks import (
    Constraint,
    ConstraintError,
    Interval,
    Kind,
    Options,
    OrNone,
    Table,
    constraints_of,
    declare,
    validate,
)
from .._paths import check_name, safe_file_name
from ..training.certify import CertificateConfig
from ..training.control import ControlConfig
from ..training.engine import LEARNING_RATE, MAX_BATCH_SIZE, MAX_CHUNK_SIZE, MAX_STEPS, TrainConfig

__all__ = ["ModelMemory", "RunOptions", "Spec", "SpecError", "available_memory",
           "check_fits_memory", "load_spec", "model_fields", "model_memory", "parse_spec",
           "read_spec_text", "spec_path", "sweep_target"]

TOP_KEYS = ("name", "description", "data", "model", "train", "measures", "trackers", "sweep", "run",
            "warm_start", "certificate")
CELL_KEYS = ("sample_size", "seed")
VARIANT_SECTIONS = ("model", "train", "data", "certificate")
#: Cell keys a ``sweep.variant`` entry may set (a data set with its own sample size).
VARIANT_CELL_KEYS = ("sample_size",)

#: Upper limits of sizes (inclusive). Model sizes not listed are bounded by MAX_MODEL_BYTES. The
#: training limits are TrainConfig's own (declared on its fields).
LIMITS: dict[str, int] = {
    "train.steps": MAX_STEPS, "train.batch_size": MAX_BATCH_SIZE, "train.chunk_size": MAX_CHUNK_SIZE,
    "sample_size": 100_000_000, "run.group_size": 100_000, "trackers.every": 10_000_000,
    "model": 1_000_000,
}
#: Most bytes one model's parameters, gradients and Adam moments (4 copies, float64) and the
#: activations its backward keeps may need.
MAX_MODEL_BYTES = 16 * 2**30
#: Most bytes a synthetic data set (pool and test, float64, with its generator's hidden layer)
#: may need.
MAX_DATA_BYTES = 4 * 2**30
#: A lease must outlive the renewal interval (``max(1 s, lease / 3)``) with room to spare.
MIN_LEASE_SECONDS = 5.0
#: Longest lease or checkpoint interval: 30 days.
MAX_SECONDS = 30 * 24 * 3600.0
#: Largest magnitude of any float in a spec (no setting needs more; 1e308 overflows timers).
MAX_MAGNITUDE = 1e12
#: Largest spec file read.
MAX_SPEC_BYTES = 2**20
SEED_MAX = 2**63 - 1

# The constraints of the spec's own keys. The [train] keys are TrainConfig's declarations, the
# learning rate's (engine.LEARNING_RATE), INIT_SEED_STRIDE and ControlConfig's; [run] is RunOptions'.
INIT_SEED_STRIDE = Interval(0, None, integer=True)
SAMPLE_SIZE = Interval(1, LIMITS["sample_size"], integer=True)
SEED = Interval(-SEED_MAX - 1, SEED_MAX, integer=True)
EVERY = Interval(1, LIMITS["trackers.every"], integer=True)
_STRING = Kind(str, "a string")
_FAMILY = Kind(str, "a string naming a model family")
_DATA_NAME = Kind(str, "a string naming a data set")
_INLINE_TABLE = Kind(dict, "a table (inline {key = value})")
_VARIANT = Kind(dict, "a table {model = {...}, train = {...}, data = {...}}")
_SECTION = Kind(dict, "a table")
_CONTROL = "a table ([train.control])"


def _train_constraints(merged_control: bool) -> dict[str, Constraint]:
    """Each [train] key's constraint; ``merged_control``: a ``control`` table that is merged into
    the base one (a ``sweep.variant`` entry), so each of its keys is checked on its own."""
    return {**constraints_of(TrainConfig), "lr": LEARNING_RATE, "init_seed_stride": INIT_SEED_STRIDE,
            "control": Table(ControlConfig, _CONTROL, whole=not merged_control)}


TRAIN_CONSTRAINTS = _train_constraints(merged_control=False)
_VARIANT_TRAIN_CONSTRAINTS = _train_constraints(merged_control=True)
TRAIN_KEYS = tuple(TRAIN_CONSTRAINTS)
#: The [certificate] keys: CertificateConfig's declarations (docs/certificates.md).
CERTIFICATE_CONSTRAINTS = constraints_of(CertificateConfig)


class SpecError(ValueError):
    """A spec that cannot be run; the message names the key path and what is allowed."""


def _fail(path: str, msg: str) -> SpecError:
    shown = path if path.isprintable() else repr(path)  # a key with a newline stays one line
    return SpecError(f"spec key {shown}: {msg}")


def _check(path: str, value: Any, constraint: Constraint) -> Any:
    """``constraint.check`` with its error as a :class:`SpecError` naming the key path."""
    try:
        return constraint.check(path, value)
    except ConstraintError as err:
        raise _fail(err.path, err.reason) from None


def _check_in(path: str, key: str, value: Any, constraints: Mapping[str, Constraint]) -> None:
    """``key`` (at ``path``) is one of ``constraints`` and ``value`` satisfies its constraint."""
    if key not in constraints:
        raise _fail(path, f"unknown key; allowed: {', '.join(constraints)}")
    _check(path, value, constraints[key])


_SECONDS = f"a finite number of seconds > 0 and <= {MAX_SECONDS:g} (30 days)"
_LEASE = (f"a finite number of seconds >= {MIN_LEASE_SECONDS:g} and <= {MAX_SECONDS:g} (30 days; a "
          "lease is renewed every third of it, at most once a second)")


@dataclass(frozen=True)
class RunOptions:
    """How a spec runs: ``dtype``, most models trained as one computation (``group_size``), how
    often a long group checkpoints, how long a claim on a cell lasts, torch CPU threads when the
    command line does not say (None: the default)."""

    dtype: str = declare("float32", Options("float32", "float64", what="'float32' or 'float64'"))
    group_size: int = declare(256, Interval(1, LIMITS["run.group_size"], integer=True))
    checkpoint_seconds: float = declare(120.0, Interval(0, MAX_SECONDS, closed="right",
                                                        what=_SECONDS))
    lease_seconds: float = declare(900.0, Interval(MIN_LEASE_SECONDS, MAX_SECONDS, what=_LEASE))
    threads: int | None = declare(None, OrNone(Interval(1, 1024, integer=True)))

    def __post_init__(self) -> None:
        validate(self)


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
    # [certificate]: the cells are PAC-Bayes certificates (resdyn.training.certify); None: not.
    certificate: Mapping[str, Any] | None = None


def _table(raw: Mapping[str, Any], key: str, required: bool = True) -> dict[str, Any]:
    if key not in raw:
        if required:
            raise _fail(key, "missing; a spec needs [data], [model], [train] and [sweep] tables")
        return {}
    v = raw[key]
    if not isinstance(v, Mapping):
        raise _fail(key, f"must be a table, got {type(v).__name__}")
    return dict(v)


def model_fields(family: str) -> set[str]:
    from ..models.registry import FAMILIES, family_class

    if family not in FAMILIES:
        raise _fail("model.family", f"unknown family {family!r}; allowed: {', '.join(FAMILIES)}")
    try:
        return {f.name for f in dataclasses.fields(family_class(family))}
    except ValueError as err:
        raise _fail("model.family", str(err)) from None


def sweep_target(key: str, fields: set[str]) -> str:
    """Where a swept key lands: 'cell', 'train', 'model', 'data' or a whole-table variant."""
    if key in CELL_KEYS:
        return "cell"
    if key == "variant":
        return "variant"
    if key in ("model", "data", "train"):
        return "variants"
    if "." in key:
        section = key.split(".", 1)[0]
        if section in ("model", "data", "train", "certificate"):
            return section
    if key in TRAIN_KEYS:
        return "train"
    if key in fields:
        return "model"
    allowed = sorted({*CELL_KEYS, "lr", "model", "data", "train", *fields, *TRAIN_KEYS})
    raise _fail(f"sweep.{key}", "is not a model, train or cell key; use 'data.OPTION' for data "
                f"options. Allowed: {', '.join(allowed)}")


def parse_spec(raw: Mapping[str, Any], source: str = "") -> Spec:
    """Validate a spec already read from TOML (a dict): each table against its declarations (the
    [train] keys against TrainConfig's, [run] built as :class:`RunOptions`), then the sizes the
    whole grid needs. The checks run in a fixed order; the first failure is a :class:`SpecError`."""
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise _fail(unknown[0], f"unknown top-level key; allowed: {', '.join(TOP_KEYS)}")
    name = _spec_name(raw, source)
    data, model, train = _table(raw, "data"), _table(raw, "model"), _table(raw, "train")
    sweep = _table(raw, "sweep")
    _check_data_name(data)
    fields = _check_model_keys(model)
    for k, v in train.items():
        _check_in(f"train.{k}", k, v, TRAIN_CONSTRAINTS)
    _check_sweep(sweep, fields)
    measures, trackers = _options(raw, "measures"), _options(raw, "trackers")
    _check_names(measures, trackers)
    _check_no_trackers_under_control(trackers, train, sweep)
    for k, v in model.items():
        if k != "family":
            _check_model_value(f"model.{k}", k, v)
    _check_model_memory(model, sweep, train)
    _check_data_memory(data, sweep)
    _check_applicable(model, sweep, fields, measures, trackers)
    run = _run_options(_table(raw, "run", required=False))
    description = _check("description", raw.get("description", ""), _STRING)
    _check_finite(raw, "")  # the rest: data options, measure options, model floats
    warm = _warm_start(_table(raw, "warm_start", required=False), sweep, fields, model["family"],
                       "control" in train)
    certificate = _certificate(raw, model, train, sweep, fields, bool(measures or trackers or warm))
    return Spec(name, data, model, train, sweep, measures, trackers, run, description, source, warm,
                certificate)


def _certificate(raw: Mapping[str, Any], model: Mapping[str, Any], train: Mapping[str, Any],
                 sweep: Mapping[str, list], fields: set[str], extras: bool) -> dict[str, Any] | None:
    """[certificate]: each key against CertificateConfig's declarations, the whole table built
    once (its cross-field checks); every model the sweep builds a per-layer resnet (two_layer
    block, tied = false); no [train.control], measures, trackers or warm start beside it."""
    swept = [k for k in sweep if k.startswith("certificate.")]
    if "certificate" not in raw:
        if swept:
            raise _fail(f"sweep.{swept[0]}", "sweeps a certificate setting, but the spec has no "
                        "[certificate] table")
        return None
    table = _table(raw, "certificate", required=False)
    for k, v in table.items():
        _check_in(f"certificate.{k}", k, v, CERTIFICATE_CONSTRAINTS)
    try:
        CertificateConfig(**table)
    except ConstraintError as err:
        raise _fail(f"certificate.{err.path}", err.reason) from None
    except (ValueError, TypeError) as err:
        raise _fail("certificate", str(err)) from None
    for where, m in _model_variants(model, sweep, fields):
        _check_certified_model(where, m)
    if "control" in train or any("control" in v.get("train", {}) for v in sweep.get("variant", [])):
        raise _fail("train.control", "a certificate trains its prior mean with the engine; remove "
                    "[train.control]")
    if extras:
        raise _fail("certificate", "certificate cells record no measures or trackers and do not "
                    "start warm; remove [measures], [trackers] and [warm_start]")
    return table


#: The model families a certificate cell takes, and the settings each needs (layers of their own).
_CERTIFIED = {"resnet": (("block", "two_layer"), ("tied", False)), "image_resnet": (("tied", False),),
              "image_ode_resnet": ()}


def _check_certified_model(where: str, m: Mapping[str, Any]) -> None:
    """A certificate needs layers (or knots) with their own weights: a per-layer resnet (two_layer
    block, untied), an untied image_resnet or an image_ode_resnet."""
    family = m.get("family")
    if family not in _CERTIFIED:
        raise _fail(where or "model.family", f"a certificate needs a model of family "
                    f"{', '.join(repr(f) for f in _CERTIFIED)}; model.family is {family!r}")
    for key, want in _CERTIFIED[family]:
        if m.get(key) != want:  # the family's defaults are filled in (_model_variants)
            raise _fail(where or f"model.{key}", f"a certificate of a {family} needs layers with "
                        f"their own weights (model.{key} = {want!r}); model.{key} is {m.get(key)!r}")


def _spec_name(raw: Mapping[str, Any], source: str) -> str:
    """``name`` (it names the default store file), or the source file's stem."""
    if "name" not in raw:
        return safe_file_name(Path(source).stem if source else "spec")
    _check("name", raw["name"], _STRING)
    try:
        return check_name("name", raw["name"])
    except ValueError as err:
        raise _fail("name", str(err).removeprefix("name ")) from None


def _check_data_name(data: Mapping[str, Any]) -> None:
    from ..data import DATASETS

    if "name" not in data:
        raise _fail("data.name", "missing; name the data set (see `resdyn data list`)")
    _check("data.name", data["name"], _DATA_NAME)
    if data["name"] not in DATASETS:
        raise _fail("data.name", f"unknown data set {data['name']!r}; allowed: {', '.join(DATASETS)}")


def _check_model_keys(model: Mapping[str, Any]) -> set[str]:
    """The fields of the model's family; every key of ``model`` is one of them."""
    if "family" not in model:
        raise _fail("model.family", "missing; name the model family")
    _check("model.family", model["family"], _FAMILY)
    fields = model_fields(model["family"])
    for k in model:
        if k != "family" and k not in fields:
            raise _fail(f"model.{k}", f"unknown option of family {model['family']!r}; "
                        f"allowed: {', '.join(sorted(fields))}")
    return fields


def _check_sweep(sweep: dict[str, Any], fields: set[str]) -> None:
    """Every swept list is non-empty and each value is valid where it lands; ``sample_size`` is
    there, ``seed`` defaults to [0]."""
    for k, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise _fail(f"sweep.{k}", f"must be a non-empty list of values, got {values!r}")
        target = sweep_target(k, fields)
        for i, v in enumerate(values):
            _check_swept(k, target, f"sweep.{k}[{i}]", v, fields)
    in_variants = [isinstance(v, Mapping) and "sample_size" in v for v in sweep.get("variant", [])]
    if any(in_variants) and ("sample_size" in sweep or not all(in_variants)):
        raise _fail("sweep.sample_size", "give the sample size in sweep.sample_size or in every "
                    "sweep.variant entry, not both")
    if "sample_size" not in sweep and not any(in_variants):
        raise _fail("sweep.sample_size", "missing; list the training-set sizes S to run")
    sweep.setdefault("seed", [0])


def _check_swept(key: str, target: str, path: str, value: Any, fields: set[str]) -> None:
    """One value of ``sweep.<key>`` (landing at ``target``, see :func:`sweep_target`)."""
    if key in CELL_KEYS:
        _check(path, value, SAMPLE_SIZE if key == "sample_size" else SEED)
    elif target == "variant":
        _check_variant(path, value, fields)
    elif target == "variants":
        _check(path, value, _INLINE_TABLE)
        for kk, vv in value.items():
            _check_key(key, kk, vv, f"{path}.{kk}")
    elif target in ("train", "model"):
        _check_key(target, key.split(".", 1)[1] if "." in key else key, value, path)
    elif target == "certificate":
        _check_in(path, key.split(".", 1)[1], value, CERTIFICATE_CONSTRAINTS)


def _check_no_trackers_under_control(trackers: Mapping[str, Any], train: Mapping[str, Any],
                                     sweep: Mapping[str, list]) -> None:
    if trackers and ("control" in train or any("control" in v.get("train", {})
                                               for v in sweep.get("variant", []))):
        raise _fail("trackers", "trackers are not recorded under [train.control] (its training runs "
                    "in two stages); remove them")


WARM_KEYS = ("key", "seeds", "lr", "warm_only", "depend")
_WARM_ONLY = Kind(bool, "true or false")
_DEPEND = Options("warm", "all", what="'warm' or 'all'")


def _warm_start(raw: dict[str, Any], sweep: Mapping[str, list], fields: set[str],
                family: str, control: bool = False) -> dict[str, Any]:
    """[warm_start]: key (a swept model key: depth), seeds (the seeds whose cells start warm;
    default every seed). A warm cell at the i-th value of ``key`` depends on every cell at the
    (i-1)-th value that shares its other settings, and starts from the best of them. Optional:
    lr (the warm cells' learning rate), warm_only (no cell of the warm seeds at the first value),
    depend ('warm', default, or 'all': every cell after the first value depends on the level
    below and its row measures against the best of it; only the warm seeds start from it)."""
    if not raw:
        return {}
    for k in raw:
        if k not in WARM_KEYS:
            raise _fail(f"warm_start.{k}", f"unknown key; allowed: {', '.join(WARM_KEYS)}")
    key = raw.get("key")
    if key not in sweep or sweep_target(key, fields) != "model" or len(sweep[key]) < 2:
        raise _fail("warm_start.key", f"must name a swept model key with at least two values, got {key!r}")
    from ..models.registry import family_class

    if not hasattr(family_class(family), "prolong") and not (control and family == "resnet"):
        raise _fail("warm_start.key", f"model family {family!r} cannot start from a shallower solution "
                    "(no prolong); allowed: dnl, or resnet trained with [train.control]")
    seeds = raw.get("seeds", list(sweep.get("seed", [0])))
    if not isinstance(seeds, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in seeds):
        raise _fail("warm_start.seeds", f"must be a list of integer seeds, got {seeds!r}")
    out: dict[str, Any] = {"key": key, "seeds": seeds}
    for k, constraint in (("lr", LEARNING_RATE), ("warm_only", _WARM_ONLY), ("depend", _DEPEND)):
        if k in raw:
            out[k] = _check(f"warm_start.{k}", raw[k], constraint)
    if "lr" in out:
        out["lr"] = float(out["lr"])
    return out


def _check_finite(value: Any, path: str) -> None:
    """Every float anywhere in ``value`` is finite (TOML admits nan and inf; no setting wants them)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(path or "(top)", f"must be a finite number, got {value!r}")
    if isinstance(value, float) and abs(value) > MAX_MAGNITUDE:
        raise _fail(path or "(top)", f"must be a finite number of magnitude at most "
                    f"{MAX_MAGNITUDE:g}, got {value!r}")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, f"{path}[{i}]")


def _check_variant(path: str, value: Any, fields: set[str]) -> None:
    """One entry of ``sweep.variant``: a table of ``model``, ``train``, ``data`` and ``certificate``
    tables (each merged into the base table, so each key is checked on its own)."""
    _check(path, value, _VARIANT)
    for section, table in value.items():
        if section in VARIANT_CELL_KEYS:
            _check(f"{path}.{section}", table, SAMPLE_SIZE)
            continue
        if section not in VARIANT_SECTIONS:
            raise _fail(f"{path}.{section}", f"unknown section; allowed: "
                        f"{', '.join(VARIANT_SECTIONS + VARIANT_CELL_KEYS)}")
        _check(f"{path}.{section}", table, _SECTION)
        if section == "model" and "family" in table:
            _check(f"{path}.model.family", table["family"], _FAMILY)
            fields = model_fields(table["family"])
        for k, v in table.items():
            if section == "model" and k != "family" and k not in fields:
                raise _fail(f"{path}.model.{k}", f"unknown option of the model; allowed: "
                            f"{', '.join(sorted(fields))}")
            if section == "train":
                _check_in(f"{path}.train.{k}", k, v, _VARIANT_TRAIN_CONSTRAINTS)
            elif section == "certificate":
                _check_in(f"{path}.certificate.{k}", k, v, CERTIFICATE_CONSTRAINTS)
            else:
                _check_key(section, k, v, f"{path}.{section}.{k}")


def _check_key(section: str, key: str, value: Any, path: str) -> None:
    """One setting of ``section`` ('train', 'model' or 'data'), wherever it appears."""
    if section == "train":
        _check_in(path, key, value, TRAIN_CONSTRAINTS)
    elif section == "model":
        _check_model_value(path, key, value)
    elif section == "data" and key == "name":
        _check(path, value, _DATA_NAME)


def _check_model_value(path: str, key: str, value: Any) -> None:
    """A model setting is one value and no size is over ``LIMITS['model']`` (the family's own
    checks run when the model is built, in ``grid.expand``)."""
    if key == "family":
        _check(path, value, _FAMILY)
    elif isinstance(value, int) and not isinstance(value, bool) and value > LIMITS["model"]:
        raise _fail(path, f"must be at most {LIMITS['model']:,}, got {value!r}")
    elif isinstance(value, list | dict):
        raise _fail(path, f"must be a single value, got {type(value).__name__} {value!r}")


# Input size assumed for the memory estimate when the spec does not give one: a CIFAR image.
_ASSUMED_IN = 3 * 32 * 32


def _biggest(base: Mapping[str, Any], sweep: Mapping[str, list], section: str, key: str,
             default: int) -> int:
    """The largest integer ``key`` of ``section`` ('model' or 'data') takes over the base table
    and the sweep (``key``, ``section.key``, whole-table and variant entries)."""
    vals = [base.get(key, default)]
    if section == "model":
        vals += list(sweep.get(key, []))
    vals += list(sweep.get(f"{section}.{key}", []))
    vals += [v.get(key) for v in sweep.get(section, []) if isinstance(v, Mapping)]
    vals += [v.get(section, {}).get(key) for v in sweep.get("variant", [])
             if isinstance(v, Mapping) and isinstance(v.get(section, {}), Mapping)]
    ints = [v for v in vals if isinstance(v, int) and not isinstance(v, bool)]
    return max(ints, default=default)


def _gib(n: float) -> str:
    """A byte count in GiB, or in MiB below one GiB."""
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


@dataclass(frozen=True)
class ModelMemory:
    """The memory estimate of one model of a spec (its largest sizes): ``state`` bytes for its
    parameters, gradients and two Adam moments (float64), ``activations`` bytes its backward
    keeps; ``key``, the spec key most responsible; the sizes behind it."""

    state: int
    activations: int
    key: str
    parameters: int
    width: int
    depth: int
    rows: int

    @property
    def total(self) -> int:
        return self.state + self.activations


def model_memory(model: Mapping[str, Any], sweep: Mapping[str, list],
                 train: Mapping[str, Any] | None = None) -> ModelMemory:
    """The estimate behind :data:`MAX_MODEL_BYTES`, each size at its largest value over the base
    table and the sweep: P ~ D (W + in) + L W^2 (times L/2 for the dense non-local family, whose
    every layer reads every earlier one) + K W parameters, with W the width (or channels), L the
    depth (or knots), K the predictor width, 4 float64 copies of them; activations ~ 2 L R
    (W + H + K) float64 numbers for R training rows (the largest sample size, or the batch size)
    and hidden width H."""

    def biggest(key: str, default: int) -> int:
        return _biggest(model, sweep, "model", key, default)

    W = max(biggest("width", 16), biggest("channels", 0), biggest("att_dim", 0))
    L = max(biggest("depth", 8), biggest("knots", 0))
    K = biggest("predictor_width", 0)
    H = max(biggest("hidden", 0), W)
    in_dim = max(biggest("in_dim", 0), _ASSUMED_IN)
    layers = L * max(1, L // 2) if model.get("family") == "dnl" else L
    n = W * (W + in_dim) + layers * W * W * 2 + K * (W + 1)
    sizes_S = [*sweep.get("sample_size", [1]),
               *(v.get("sample_size") for v in sweep.get("variant", []) if isinstance(v, Mapping))]
    rows = max([v for v in sizes_S if isinstance(v, int) and not isinstance(v, bool)], default=1)
    batch = (train or {}).get("batch_size")
    if isinstance(batch, int) and not isinstance(batch, bool):
        rows = min(rows, batch)
    sizes = {"model.depth": L / 8, "model.width": W / 16, "sweep.sample_size": rows / 256}
    key = max(sizes, key=lambda k: sizes[k])
    return ModelMemory(4 * 8 * n, 2 * 8 * layers * rows * (W + H + K), key, n, W, L, rows)


def _check_model_memory(model: Mapping[str, Any], sweep: Mapping[str, list],
                        train: Mapping[str, Any] | None = None) -> None:
    """Refuse a model whose :func:`model_memory` exceeds :data:`MAX_MODEL_BYTES`."""
    est = model_memory(model, sweep, train)
    W, L, n, need = est.width, est.depth, est.parameters, est.state
    if need > MAX_MODEL_BYTES:
        raise _fail("model", f"a model of width {W} and depth {L} has about {n:,} parameters and "
                    f"would need about {need / 2**30:,.1f} GiB for its parameters, gradients and "
                    f"optimiser state; at most {MAX_MODEL_BYTES / 2**30:.0f} GiB is allowed")
    if est.total > MAX_MODEL_BYTES:
        raise _fail(est.key, _memory_text(est) + f"; at most {_gib(MAX_MODEL_BYTES)} is allowed")


def _memory_text(est: ModelMemory) -> str:
    return (f"a model of width {est.width} and depth {est.depth} trained on {est.rows:,} rows "
            f"would need about {_gib(est.total)} ({_gib(est.state)} for its parameters, gradients "
            f"and optimiser state, {_gib(est.activations)} for the activations of its backward)")


def available_memory() -> int:
    """Bytes this process may use: the machine's physical memory, or less where an
    address-space limit (``ulimit -v``) says so."""
    import resource

    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return min(total, soft) if soft not in (resource.RLIM_INFINITY, -1) else total


def check_fits_memory(spec: Spec, cells: int, available: int | None = None) -> None:
    """A :class:`SpecError` naming the key and the estimate when one group of the spec (up to
    ``run.group_size`` of its ``cells`` models trained at once; each model's state, the
    activations of one) would not fit in ``available`` bytes (default :func:`available_memory`):
    checked before anything is allocated."""
    available = available_memory() if available is None else available
    est = model_memory(spec.model, spec.sweep, spec.train)
    E = max(1, min(spec.run.group_size, cells))
    if est.total > available:
        raise _fail(est.key, _memory_text(est) + f"; this machine has {_gib(available)}")
    if E * est.state + est.activations > available:
        most = max(1, (available - est.activations) // max(est.state, 1))
        raise _fail("run.group_size", f"{E} models trained at once would need about "
                    f"{_gib(E * est.state + est.activations)} ({_gib(est.state)} each for "
                    f"parameters, gradients and optimiser state); this machine has "
                    f"{_gib(available)}: set run.group_size to at most {most}")


#: A synthetic data set's sizes with their defaults (registry.INFO): pool and test points,
#: inputs, and the teacher's hidden width and classes.
_DATA_SIZES = {"pool_size": 4096, "test_size": 2000, "dim": 10, "hidden": 16, "classes": 2}


def _check_data_memory(data: Mapping[str, Any], sweep: Mapping[str, list]) -> None:
    """Refuse a synthetic data set whose points (pool and test, float64, with the teacher's
    hidden layer while they are labelled) would need more than :data:`MAX_DATA_BYTES`."""
    size = {k: _biggest(data, sweep, "data", k, d) for k, d in _DATA_SIZES.items()}
    teacher = data.get("name") == "teacher"
    width = size["dim"] + size["hidden"] + size["classes"] if teacher else 2
    points = size["pool_size"] + size["test_size"]
    need = 2 * 8 * points * width + (8 * size["hidden"] * (size["dim"] + size["classes"])
                                     if teacher else 0)
    if need > MAX_DATA_BYTES:
        keys = ("pool_size", "test_size", *(("dim", "hidden", "classes") if teacher else ()))
        key = max(keys, key=lambda k: size[k] / _DATA_SIZES[k])
        raise _fail(f"data.{key}", f"a data set of {points:,} points of {width:,} numbers each "
                    f"(pool_size {size['pool_size']:,}, test_size {size['test_size']:,}) would "
                    f"need about {_gib(need)}; at most {_gib(MAX_DATA_BYTES)} is allowed")


def _options(raw: Mapping[str, Any], section: str) -> dict[str, dict[str, Any]]:
    out = {}
    for k, v in _table(raw, section, required=False).items():
        if not isinstance(v, Mapping):
            raise _fail(f"{section}.{k}", f"must be a table of options ([{section}.{k}]), got "
                        f"{type(v).__name__}")
        out[k] = dict(v)
    return out


def _check_names(measures: Mapping[str, Any], trackers: Mapping[str, Any]) -> None:
    from .measures import measure_names, tracker_names

    known_m, known_t = measure_names(), tracker_names()
    for k in measures:
        if k not in known_m:
            raise _fail(f"measures.{k}", f"unknown measure; allowed: {', '.join(known_m) or 'none'}")
    for k, opts in trackers.items():
        if k not in known_t:
            raise _fail(f"trackers.{k}", f"unknown tracker; allowed: {', '.join(known_t) or 'none'}")
        if "every" not in opts:
            raise _fail(f"trackers.{k}.every", "missing; the number of steps between records")
        _check(f"trackers.{k}.every", opts["every"], EVERY)


def _model_variants(model: Mapping[str, Any], sweep: Mapping[str, list],
                    fields: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """Every model table the sweep can produce (family defaults filled in), each with the swept
    key path that made it ('' for the base table)."""
    from ..models.registry import family_class

    defaults = {f.name: f.default for f in dataclasses.fields(family_class(model["family"]))
                if f.default is not dataclasses.MISSING}
    base = {**defaults, **model}
    out = [("", base)]
    for k, values in sweep.items():
        target = sweep_target(k, fields)
        for i, v in enumerate(values):
            if target == "model":
                out.append((f"sweep.{k}[{i}]", {**base, k.split(".", 1)[-1]: v}))
            elif target == "variants" and k == "model":
                out.append((f"sweep.model[{i}]", {**base, **v}))
            elif target == "variant" and "model" in v:
                out.append((f"sweep.variant[{i}]", {**base, **v["model"]}))
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
    """[run] as :class:`RunOptions` (whose declarations check each value)."""
    allowed = constraints_of(RunOptions)
    for k in raw:
        if k not in allowed:
            raise _fail(f"run.{k}", f"unknown key; allowed: {', '.join(sorted(allowed))}")
    try:
        return RunOptions(**raw)
    except ConstraintError as err:
        raise _fail(f"run.{err.path}", err.reason) from None


def read_spec_text(path: str | Path) -> str:
    """The text of the spec file at ``path``: a regular file (not a FIFO, device or folder; a
    FIFO is never opened for reading, so nothing waits on a writer) of at most
    :data:`MAX_SPEC_BYTES`, in UTF-8. Anything else is a one-line :class:`SpecError`."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as err:
        raise SpecError(f"cannot read spec {path}: {err.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = ("a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode)
                    else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                    else "not a regular file")
            raise SpecError(f"spec {path} is {kind}; a spec must be a regular TOML file")
        if info.st_size > MAX_SPEC_BYTES:
            raise SpecError(f"spec {path} is {info.st_size:,} bytes; a spec may be at most "
                            f"{MAX_SPEC_BYTES:,} bytes (1 MiB)")
        data = os.read(fd, MAX_SPEC_BYTES + 1)
        while len(data) <= MAX_SPEC_BYTES:
            more = os.read(fd, MAX_SPEC_BYTES + 1 - len(data))
            if not more:
                break
            data += more
    except OSError as err:
        raise SpecError(f"cannot read spec {path}: {err.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"spec {path} is over {MAX_SPEC_BYTES:,} bytes; a spec may be at most "
                        f"{MAX_SPEC_BYTES:,} bytes (1 MiB)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(f"spec {path} is not UTF-8 text (byte {err.start} is 0x{data[err.start]:02x}); "
                        "save it as UTF-8") from None


def load_spec(path: str | Path) -> Spec:
    """Read (:func:`read_spec_text`) and validate the spec at ``path``."""
    path = Path(path)
    text = read_spec_text(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"spec {path} is not valid TOML: {err}") from None
    except RecursionError:
        raise SpecError(f"spec {path} nests its tables or arrays too deeply") from None
    return parse_spec(raw, source=str(path))


def spec_path(spec_name: str) -> Path:
    """The shipped spec file ``resdyn/specs/<spec_name>.toml``."""
    from importlib import resources

    path = Path(str(resources.files("resdyn") / "specs" / f"{spec_name}.toml"))
    if not path.is_file():
        raise ValueError(f"no built-in spec {spec_name!r}")
    return path
