"""The report of any sweep: every recorded metric and measure against each swept setting.

For one spec's rows: the settings that take more than one value in the store are the swept keys
(``seed`` is the replicate axis, never a facet), those without a column of their own included
(:func:`~resdyn.reports.tables.varying_settings`). Each cell of the summary table is one combination
of the swept keys with every quantity as its centre and seed interval; each figure shows one
quantity against one numeric swept key, one panel per value of the next swept key and one colour
per combination of the rest (the same colour in every figure of the report).

Intervals (see :func:`resdyn.plotting.seed_interval`): percentile intervals of the seeds for
accuracies, t intervals on the log scale for positive quantities shown on a log axis, t intervals
of the mean otherwise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..experiments.base import ExperimentOutcome
from ..plotting import Palette, axis_label, is_fraction, panel_figure, seed_interval
from ..sweeps.records import CellRecord
from .tables import flatten_row, swept_keys, table_value, varying_settings

__all__ = ["METRICS", "quantities", "sweep_outcome"]

METRICS = ("test_acc", "train_acc", "error_gap", "loss_gap", "test_loss", "train_loss")
_FIGURE_METRICS = ("test_acc", "train_acc", "error_gap", "loss_gap")
_RATES = ("error_gap", "loss_gap")


def quantities(rows: list[CellRecord]) -> list[str]:
    """The metrics and top-level measures (``name``, not ``name.term``) with a finite value."""
    finite = set()
    for r in rows:
        for k, v in {**r.metrics, **r.measures}.items():
            if isinstance(v, int | float) and math.isfinite(v):
                finite.add(k)
    measures = sorted({k for r in rows for k in r.measures if "." not in k} & finite)
    return [m for m in METRICS if m in finite] + measures


def _is_numeric(records: list[dict[str, Any]], key: str) -> bool:
    return all(isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)
               for r in records)


def _sort_key(v: Any) -> tuple:
    return (0, v, "") if isinstance(v, int | float) else (1, 0, str(v))


def _fmt(c: float, lo: float, hi: float) -> str | None:
    if not math.isfinite(c):
        return None
    if lo == hi:
        return f"{c:.4g}"
    return f"{c:.4g} [{lo:.3g}, {hi:.3g}]"


def _interval(key: str, values: list[float], positive_axis: bool) -> tuple[float, float, float]:
    return seed_interval(values, fraction=is_fraction(key), positive=positive_axis)


def sweep_outcome(spec: str, rows: list[CellRecord], fig_dir: Path | None,
                  palette: Palette) -> ExperimentOutcome:
    """The generic section of the report for the rows of one spec (see the module docstring)."""
    # Only what the rows determine: no timing, the weights file relative to the store, and a fixed
    # order (not the order cells finished in), so a resumed run reports exactly the same data.
    records = [{k: v for k, v in flatten_row(r).items() if k != "seconds_per_model"} for r in rows]
    # Settings without a column of their own that still differ within a group (a second recipe's
    # attempts, a later readout) split it too: cells of different settings are never pooled.
    flat = swept_keys(records)
    groups: dict[tuple, list[CellRecord]] = {}
    for rec, r in zip(records, rows, strict=True):
        groups.setdefault(tuple(json.dumps(rec.get(k)) for k in flat if k != "seed"), []).append(r)
    extra = varying_settings(list(groups.values()))
    for rec, r in zip(records, rows, strict=True):
        rec.update({k: table_value(r.full_settings.get(k)) for k in extra})
    swept_all = flat + extra
    records.sort(key=lambda r: (tuple(_sort_key(r.get(k)) for k in swept_all), r["cell_id"]))
    by_id = {r.cell_id: r for r in rows}
    swept = [k for k in swept_all if k != "seed"]
    qs = quantities(rows)
    seeds = sorted({r["seed"] for r in records})

    def value(rec: dict[str, Any], q: str) -> float:
        raw = by_id[rec["cell_id"]]
        v = raw.metrics.get(q, raw.measures.get(q))
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else math.nan

    combos: dict[tuple, list[dict[str, Any]]] = {}
    for rec in records:
        combos.setdefault(tuple(rec.get(k) for k in swept), []).append(rec)
    summary, data_rows = [], []
    for combo in sorted(combos, key=lambda c: tuple(_sort_key(v) for v in c)):
        recs = combos[combo]
        row: dict[str, Any] = dict(zip(swept, combo, strict=True))
        row["seeds"] = len(recs)
        row["diverged"] = sum(r["status"] == "diverged" for r in recs)
        numbers: dict[str, Any] = dict(row)
        for q in qs:
            c, lo, hi = _interval(q, [value(r, q) for r in recs], False)
            row[q] = _fmt(c, lo, hi)
            numbers[q] = {"centre": c, "lo": lo, "hi": hi, "seeds": [value(r, q) for r in recs]}
        summary.append(row)
        data_rows.append(numbers)

    tables = {f"{spec}: mean [95% seed interval] per setting": summary,
              f"{spec}: every cell": records}
    outcome = ExperimentOutcome(f"sweep {spec}", tables=tables,
                                data={"kind": "sweep", "swept": swept, "seeds": seeds,
                                      "quantities": qs,
                                      "summary": data_rows})
    if fig_dir is None or not records:
        return outcome
    numeric = [k for k in swept if _is_numeric(records, k)]
    x_keys = numeric or swept[:1]
    for x_key in x_keys:
        others = [k for k in swept if k != x_key]
        panel_key, variant_keys = (others[0], others[1:]) if others else (None, [])
        for q in [q for q in qs if q in _FIGURE_METRICS or q not in METRICS]:
            path = Path(fig_dir) / f"{spec}-{q}-vs-{x_key}.png".replace("/", "_")
            fig = _figure(path, spec, records, value, q, x_key, panel_key, variant_keys, palette)
            if fig is not None:
                outcome.figures[f"{axis_label(q)} against {axis_label(x_key)}"] = fig
    return outcome


def _figure(path, spec, records, value, q, x_key, panel_key, variant_keys, palette):
    """One quantity against one swept key, as panels (see the module docstring)."""
    numeric_x = _is_numeric(records, x_key)
    xs_all = sorted({r[x_key] for r in records}, key=_sort_key)
    categorical = None if numeric_x else [str(v) for v in xs_all]
    centres = [value(r, q) for r in records]
    positive = all(v > 0 for v in centres if math.isfinite(v)) and any(map(math.isfinite, centres))
    if not any(map(math.isfinite, centres)):
        return None
    spread = numeric_x and len(xs_all) > 2 and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 8
    logx = bool(spread)
    rate = x_key == "sample_size" and (q in _RATES or q.endswith("bound")) and positive and logx
    logy = rate or (q.endswith("_bound") and positive)
    panels_vals = sorted({r.get(panel_key) for r in records}, key=_sort_key) if panel_key else [None]
    variants = sorted({tuple(r.get(k) for k in variant_keys) for r in records},
                      key=lambda c: tuple(_sort_key(v) for v in c))
    panels = []
    for pv in panels_vals:
        series = []
        for var in variants:
            recs = [r for r in records if (panel_key is None or r.get(panel_key) == pv)
                    and tuple(r.get(k) for k in variant_keys) == var]
            if not recs:
                continue
            label = ", ".join(f"{k}={v}" for k, v in zip(variant_keys, var, strict=True)
                              if v is not None) or spec
            x, y, lo, hi, pts = [], [], [], [], []
            for i, xv in enumerate(xs_all):
                vals = [value(r, q) for r in recs if r[x_key] == xv]
                if not vals:
                    continue
                c, a, b = seed_interval(vals, fraction=is_fraction(q), positive=logy)
                if not math.isfinite(c):
                    continue
                x.append(xv if numeric_x else i)
                y.append(c)
                lo.append(a)
                hi.append(b)
                pts.append(vals)
            if x:
                series.append({"label": label, "x": x, "y": y, "lo": lo, "hi": hi, "seeds": pts})
        if series:
            panels.append((f"{panel_key}={pv}" if panel_key else "", series))
    if not panels:
        return None
    how = ("percentile interval of seeds" if is_fraction(q) else
           "t interval on the log scale" if logy else "95% t interval of the mean")
    title = f"{spec}: {axis_label(q).split(' (')[0]} against {x_key} (mean, {how}; points: seeds)"
    return panel_figure(path, panels, x_key, q, title, palette, logx=logx, logy=logy,
                        reference_slopes=(-0.5, -1.0) if rate else None,
                        hline=1.0 if q == "test_error_bound" else None,
                        y_range=(0.0, 1.0) if is_fraction(q) else None, categorical=categorical)
