"""Store rows as flat records: identifiers first, JSON-safe values, filters and column choice.

A flat record has, in this order: the cell's identity (``cell_id``, ``spec``, ``status``), the
settings that vary across the store (data set, family, sample size, seed, model and training
fields), then metrics, measures, timing and the weights file. Missing or non-finite numbers are
``None`` in memory and ``null`` in JSON; the reason is kept in :data:`MISSING_NOTE`.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["MISSING_NOTE", "apply_where", "choose_columns", "clean", "flatten_row",
           "parse_where", "strict_dumps", "swept_keys", "table_value", "varying_settings"]

MODEL_KEYS = ("depth", "knots", "width", "channels", "activation", "tau", "method", "horizon",
              "operator", "form", "init")
MISSING_NOTE = ("'not applicable' marks a value that was not measured for that row (a bound that "
                "does not apply to the model, a measure the spec did not ask for) or that is not a "
                "number (e.g. a diverged model); JSON writes it as null. 'infinite' marks a value "
                "that overflowed; JSON writes it as the string \"infinite\".")

# test_error_bound.family stores the index of the winning family; shown as its name.
_BOUND_FAMILIES = ("path_norm", "spectral", "marion")


def clean(v: Any) -> Any:
    """``v`` with NaN replaced by ``None`` (not applicable) and infinities by ``"infinite"`` /
    ``"-infinite"``, recursively (valid JSON, and the two cases stay distinct)."""
    if isinstance(v, float):
        if math.isnan(v):
            return None  # not applicable
        return v if math.isfinite(v) else ("infinite" if v > 0 else "-infinite")
    if isinstance(v, dict):
        return {k: clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [clean(x) for x in v]
    return v


def _reject(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def strict_dumps(obj: Any, **kwargs: Any) -> str:
    """JSON with NaN written as null and infinities as "infinite"; fails rather than write a
    non-standard constant."""
    return json.dumps(clean(obj), allow_nan=False, **kwargs)


def strict_loads(text: str) -> Any:
    """``json.loads`` that rejects NaN, Infinity and -Infinity."""
    return json.loads(text, parse_constant=_reject)


def table_value(v: Any) -> Any:
    """A setting as a table cell: None, numbers, strings and booleans as they are, anything else
    (a list, a table) as JSON."""
    return v if v is None or isinstance(v, int | float | str | bool) else json.dumps(v)


def flatten_row(record: Any, store_files: Path | None = None) -> dict[str, Any]:
    """A store record (:class:`resdyn.sweeps.records.CellRecord`) as one flat record (see the
    module docstring); the settings come from the cell's flat view (``record.settings``)."""
    s = record.settings
    out: dict[str, Any] = {"cell_id": record.cell_id, "spec": record.spec, "status": record.status,
                           "data": s["data.name"], "family": s["model.family"],
                           "sample_size": s["sample_size"], "seed": s["seed"],
                           "lr": s.get("train.lr"), "steps": s.get("train.steps")}
    for k in MODEL_KEYS:
        if f"model.{k}" in s:
            out[k] = table_value(s[f"model.{k}"])
    out.update(sorted(record.metrics.items()))
    for k, v in sorted(record.measures.items()):
        if k == "test_error_bound.family" and isinstance(v, float) and math.isfinite(v):
            v = _BOUND_FAMILIES[int(v)]
        out[k] = v
    out["seconds_per_model"] = record.timing.get("seconds_per_model")
    w = record.weights
    out["weights"] = (str(store_files / w) if store_files is not None else w) if w else None
    return clean(out)


def swept_keys(records: Sequence[dict[str, Any]]) -> list[str]:
    """The setting columns (identifiers and model/training fields) that take more than one value.

    A field that only some families have (None in the others' rows) counts only when it takes two
    values of its own: it otherwise just follows ``family``."""
    settings = ("data", "family", "sample_size", "seed", "lr", "steps", *MODEL_KEYS)
    out = []
    for k in settings:
        vals = {json.dumps(r.get(k)) for r in records if r.get(k) is not None}
        if len(vals) > 1:
            out.append(k)
    return out


#: The settings that :func:`flatten_row` gives columns of their own.
_FLAT_SETTINGS = frozenset({"data.name", "model.family", "sample_size", "seed", "train.lr", "train.steps",
                            *(f"model.{k}" for k in MODEL_KEYS)})
_PROVENANCE = frozenset({"data_root"})


def varying_settings(groups: Sequence[Sequence[Any]]) -> list[str]:
    """The other settings (``record.settings`` keys without a flat column, e.g.
    ``certificate.attempts``, ``model.readout_grid``) on which two cells of the same seed differ
    within one of ``groups`` (lists of store records that a table would otherwise pool), read from
    ``record.full_settings`` (a later field's default counts as its value). A setting that only follows the
    seed (the cells a warm start reads) does not split a group, and where the data files were
    read from (``data_root``) is not a setting of the model. Sorted by name."""
    keys = sorted({k for g in groups for r in g for k in r.full_settings} - _FLAT_SETTINGS - _PROVENANCE)

    def splits(k: str, g: Sequence[Any]) -> bool:
        by_seed: dict[Any, set[str]] = {}
        for r in g:
            by_seed.setdefault(r.settings.get("seed"), set()).add(json.dumps(r.full_settings.get(k)))
        return any(len(v) > 1 for v in by_seed.values())

    return [k for k in keys if any(splits(k, g) for g in groups)]


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le, ">=": operator.ge, "!=": operator.ne, "==": operator.eq, "=": operator.eq,
    "<": operator.lt, ">": operator.gt,
}
_WHERE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|!=|==|=|<|>)\s*(.*?)\s*$")


def parse_where(expr: str) -> tuple[str, str, str]:
    """``KEY OP VALUE`` (OP one of = == != < <= > >=) as (key, op, value)."""
    m = _WHERE.match(expr)
    if not m:
        raise ValueError(f"--where {expr!r}: write KEY OP VALUE with OP one of = != < <= > >=, "
                         "e.g. --where data=digits --where sample_size>=64")
    return m.group(1), m.group(2), m.group(3)


def _coerce(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def apply_where(records: Iterable[dict[str, Any]], exprs: Sequence[str]) -> list[dict[str, Any]]:
    """The records that satisfy every ``KEY OP VALUE`` of ``exprs`` (numbers compare as numbers).

    An unknown key is an error that lists the keys the records have."""
    records = list(records)
    conds = [parse_where(e) for e in exprs]
    known = {k for r in records for k in r}
    for key, _, _ in conds:
        if records and key not in known:
            raise ValueError(f"--where: no column {key!r}; columns: {', '.join(sorted(known))}")
    out = []
    for r in records:
        ok = True
        for key, op, text in conds:
            v, want = r.get(key), _coerce(text)
            if v is None:
                ok = False
            elif isinstance(v, int | float) and isinstance(want, int | float):
                ok = _OPS[op](v, want)
            elif op in ("=", "==", "!="):
                ok = _OPS[op](str(v), text)
            else:
                raise ValueError(f"--where {key}{op}{text}: {op} compares numbers; {key} is {v!r}")
            if not ok:
                break
        if ok:
            out.append(r)
    return out


def choose_columns(records: Sequence[dict[str, Any]], columns: str | None) -> list[str]:
    """The columns to show: every key in first-appearance order, or the comma list ``columns``
    (unknown names are an error that lists the known ones)."""
    keys: list[str] = []
    for r in records:
        keys.extend(k for k in r if k not in keys)
    if not columns:
        return keys
    wanted = [c.strip() for c in columns.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in keys]
    if unknown and records:
        raise ValueError(f"--columns: no column {', '.join(map(repr, unknown))}; columns: "
                         + ", ".join(keys))
    return wanted
