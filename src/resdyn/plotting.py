"""Figures: matplotlib (Agg), below experiments and reports so every layer can plot.

Every figure is written as PNG (for the HTML page, 150 dpi) with a PDF and an SVG beside it (for a
paper). Conventions, the same in every figure of a report:

* axes carry words and units (:func:`axis_label` turns a store key such as ``test_acc`` into
  "test accuracy (fraction of test set)");
* each variant keeps one colour and one marker in every panel (:class:`Palette`);
* series that share x positions are shifted slightly (a few percent on a log axis) so that no
  series hides another; seeds are faint points behind the means;
* on a log-log rate plot against the sample size, dotted reference lines of slope -1/2 and -1
  (S^-1/2, S^-1) pass through the first point of the first series;
* on a bound plot a grey line at y = 1 marks where a bound on an error becomes vacuous;
* intervals respect the range of the quantity: accuracies and errors are clipped to [0, 1]
  (their intervals are percentile intervals over seeds, see :func:`seed_interval`), positive
  quantities on a log axis never reach zero.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["LABELS", "Palette", "axis_label", "line_figure", "panel_figure", "save_figure",
           "seed_interval"]

COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
          "#7F7F7F", "#8C564B")  # Okabe-Ito, then two more: readable in grey and by colour-blind
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
LINESTYLES = ("-", "--", "-.", ":")

LABELS: dict[str, str] = {
    "sample_size": "training samples S (count)",
    "S": "training samples S (count)",
    "seed": "seed",
    "depth": "depth L (layers)",
    "knots": "knots P of theta(t) (count)",
    "width": "width m (units)",
    "channels": "channels C (count)",
    "tau": "dead-zone width tau (input units)",
    "lr": "learning rate (per step)",
    "steps": "training steps (count)",
    "horizon": "horizon T (time units)",
    "test_acc": "test accuracy (fraction of test set)",
    "train_acc": "training accuracy (fraction of sample)",
    "error_gap": "error gap: train acc - test acc (fraction)",
    "loss_gap": "loss gap: test loss - train loss (nats)",
    "test_loss": "test loss (nats per example)",
    "train_loss": "training loss (nats per example)",
    "final_train_objective": "final training objective (per example)",
    "test_error_bound": "test-error bound (fraction; > 1 is vacuous)",
    "path_norm_bound": "path-norm Rademacher bound (margin units)",
    "flow_bound": "flow Rademacher bound (margin units)",
    "spectral_bound": "spectral Rademacher bound (margin units)",
    "marion_bound": "Lipschitz-in-depth Rademacher bound (margin units)",
    "dead_zone": "dead-zone reduction of the path-norm bound",
    "seconds_per_model": "seconds per model (wall clock)",
}


def axis_label(key: str) -> str:
    """Words and units for a store key (``test_acc`` -> "test accuracy (fraction of test set)");
    text that is not a known key is returned unchanged."""
    if key in LABELS:
        return LABELS[key]
    base, _, term = key.partition(".")
    if term and base in LABELS:
        return f"{base.replace('_', ' ')}: {term.replace('_', ' ')}"
    return key


def is_fraction(key: str) -> bool:
    """True for quantities that live in [0, 1] (accuracies, errors, bounds on an error)."""
    k = key.lower()
    return k in ("test_acc", "train_acc") or "accuracy" in k or "test error" in k


class Palette:
    """One colour, marker and line style per variant, fixed for a whole report: a variant seen
    first in any panel keeps its style in every other panel."""

    def __init__(self, variants: Sequence[str] = ()):
        self.styles: dict[str, dict[str, Any]] = {}
        for v in variants:
            self.style(v)

    def style(self, variant: str) -> dict[str, Any]:
        if variant not in self.styles:
            i = len(self.styles)
            self.styles[variant] = {"color": COLORS[i % len(COLORS)],
                                    "marker": MARKERS[i % len(MARKERS)],
                                    "ls": LINESTYLES[(i // len(COLORS)) % len(LINESTYLES)]}
        return self.styles[variant]


def seed_interval(values: Sequence[float], fraction: bool = False,
                  positive: bool = False) -> tuple[float, float, float]:
    """(centre, lo, hi) of per-seed values, an interval that respects the quantity's range.

    fraction (a quantity in [0, 1]): the mean and the 2.5/97.5 percentile interval of the seeds
    (linear interpolation), inside [0, 1] by construction. positive (a quantity > 0 shown on a log
    axis): the geometric mean and the t interval on the log scale, exp(mean(log v) +- t s / sqrt(n)).
    Otherwise the mean and its 95% t interval. NaN values are left out; one value gives lo = hi.
    """
    from statistics import mean

    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return math.nan, math.nan, math.nan
    if fraction:
        s = sorted(v)

        def pct(q: float) -> float:
            pos = q * (len(s) - 1)
            i = math.floor(pos)
            j = min(i + 1, len(s) - 1)
            return s[i] + (s[j] - s[i]) * (pos - i)

        return mean(v), pct(0.025), pct(0.975)
    if positive and all(x > 0 for x in v):
        logs = [math.log(x) for x in v]
        c, lo, hi = _t_interval(logs)
        return math.exp(c), math.exp(lo), math.exp(hi)
    return _t_interval(v)


def _t_interval(v: list[float]) -> tuple[float, float, float]:
    from statistics import mean, stdev

    from scipy.stats import t

    m = mean(v)
    if len(v) < 2:
        return m, m, m
    h = float(t.ppf(0.975, len(v) - 1)) * stdev(v) / math.sqrt(len(v))
    return m, m - h, m + h


def _offsets(x: Sequence[float], i: int, n: int, log: bool, span: float) -> list[float]:
    """x shifted for series i of n: a factor 2^(+-0.04 k) on a log axis, +-0.8% of the span else."""
    if n <= 1:
        return list(x)
    k = i - (n - 1) / 2
    if log:
        return [xv * 2.0 ** (0.04 * k) if xv > 0 else xv for xv in x]
    return [xv + 0.008 * span * k for xv in x]


def _draw_series(ax, series: list[dict[str, Any]], palette: Palette, logx: bool, logy: bool,
                 y_range: tuple[float, float] | None) -> None:
    numeric = [s for s in series if all(isinstance(v, int | float) for v in s["x"])]
    xs = [float(v) for s in numeric for v in s["x"]]
    span = (max(xs) - min(xs)) if xs else 1.0
    for i, s in enumerate(series):
        st = palette.style(s["label"])
        color = s.get("color", st["color"])
        x = _offsets(s["x"], i, len(series), logx, span or 1.0) if s in numeric else s["x"]
        y = list(s["y"])
        if "seeds" in s:  # faint per-seed points behind the means
            for xv, pts in zip(x, s["seeds"], strict=True):
                pts = [p for p in pts if p is not None and math.isfinite(p)]
                ax.scatter([xv] * len(pts), pts, s=9, color=color, alpha=0.25, lw=0, zorder=1)
        lo, hi = s.get("lo"), s.get("hi")
        if lo is not None and y_range is not None:
            lo = [min(max(v, y_range[0]), y_range[1]) for v in lo]
            hi = [min(max(v, y_range[0]), y_range[1]) for v in hi]
        if logy and lo is not None:  # a band on a log axis stays above zero
            lo = [v if v > 0 else yv for v, yv in zip(lo, y, strict=True)]
        marker = s.get("marker", st["marker"])
        ls = s.get("ls", st["ls"])
        if lo is not None and (s.get("style") == "errorbar" or s not in numeric):
            yerr = [[max(yv - a, 0) for yv, a in zip(y, lo, strict=True)],
                    [max(b - yv, 0) for yv, b in zip(y, hi, strict=True)]]
            ax.errorbar(x, y, yerr=yerr, marker=marker, ms=5, capsize=3, color=color, ls=ls,
                        label=s["label"], zorder=3)
        else:
            ax.plot(x, y, marker=marker, ms=5, label=s["label"], ls=ls, color=color, zorder=3,
                    markeredgecolor="white", markeredgewidth=0.6)
            if lo is not None:
                ax.fill_between(x, lo, hi, alpha=0.15, color=color, lw=0, zorder=2)
        if "fit" in s:
            f = s["fit"]
            ax.plot(f["x"], f["y"], ls="--", lw=1.2, color=color, label=f.get("label", "fit"))
            if "lo" in f:
                ax.fill_between(f["x"], f["lo"], f["hi"], alpha=0.10, color=color, lw=0)


def _reference_slopes(ax, series: list[dict[str, Any]], slopes: Sequence[float]) -> None:
    """Dotted lines y = c x^slope through the first finite point of the first series."""
    for s in series:
        pts = [(x, y) for x, y in zip(s["x"], s["y"], strict=True)
               if isinstance(x, int | float) and x > 0 and y is not None and math.isfinite(y) and y > 0]
        if len(pts) >= 1:
            break
    else:
        return
    x0, y0 = pts[0]
    xmax = max(float(x) for s in series for x in s["x"] if isinstance(x, int | float))
    names = {-0.5: "S^-1/2", -1.0: "S^-1"}
    for k, slope in enumerate(slopes):
        xs = [x0, xmax]
        ax.plot(xs, [y0 * (x / x0) ** slope for x in xs], ls=(0, (1, 2)), lw=1.1, color="#555555",
                alpha=0.9 - 0.3 * k, label=f"reference slope {slope:g} ({names.get(slope, '')})"
                .replace(" ()", ""), zorder=1)


def save_figure(fig, path: Path, formats: Sequence[str] = ("pdf", "svg")) -> Path:
    """Write ``fig`` to ``path`` (PNG, 150 dpi) and beside it in each of ``formats``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    for ext in formats:
        fig.savefig(path.with_suffix(f".{ext}"))
    plt.close(fig)
    return path


def _finish_axes(ax, xlabel: str, ylabel: str, title: str, logx: bool, logy: bool,
                 hline: float | None, categorical: Sequence[str] | None) -> None:
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    if hline is not None:
        ax.axhline(hline, color="#888888", lw=1.0, ls="-", zorder=0,
                   label=f"y = {hline:g} (bound vacuous above)")
    # Long labels wrap instead of running off the figure.
    ax.set_xlabel(textwrap.fill(axis_label(xlabel), 48))
    ax.set_ylabel(textwrap.fill(axis_label(ylabel), 36))
    if title:
        ax.set_title(title, fontsize=10)
    if categorical:
        ax.set_xticks(range(len(categorical)))
        ax.set_xticklabels(categorical, rotation=30 if max(map(len, categorical)) > 6 else 0,
                           ha="right" if max(map(len, categorical)) > 6 else "center", fontsize=8)
    ax.grid(alpha=0.3, which="both")


def _auto(value: Any, auto: Any) -> Any:
    return auto if isinstance(value, str) and value == "auto" else value


def line_figure(
    path: Path,
    series: list[dict[str, Any]],
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
    logy: bool = False,
    *,
    reference_slopes: Sequence[float] | str | None = "auto",
    hline: float | str | None = "auto",
    y_range: tuple[float, float] | str | None = "auto",
    palette: Palette | None = None,
) -> Path:
    """One axes with a line per entry of ``series``: {label, x, y, lo?, hi?, seeds?, style?, fit?}.

    ``lo``/``hi`` draw a band (or error bars when ``style == 'errorbar'``); ``seeds[i]`` are the
    per-seed values at ``x[i]`` (faint points); ``fit`` is {x, y, lo, hi} for a fitted line.
    reference_slopes: slopes of dotted reference lines ('auto': -1/2 and -1 on a log-log plot
    against the sample size). hline: a horizontal line ('auto': y = 1 when the y label names a
    bound). y_range: the quantity's range, intervals are clipped to it ('auto': [0, 1] for
    accuracies). Writes PNG, PDF and SVG; returns the PNG path.
    """
    rate = logx and logy and ("sample" in xlabel.lower() or xlabel.strip() in ("S", "sample_size"))
    reference_slopes = _auto(reference_slopes, (-0.5, -1.0) if rate else None)
    hline = _auto(hline, 1.0 if "bound" in ylabel.lower() else None)
    y_range = _auto(y_range, (0.0, 1.0) if is_fraction(ylabel) else None)
    palette = palette or Palette()
    fig, ax = plt.subplots(figsize=(8.4, 4.4))
    _draw_series(ax, series, palette, logx, logy, y_range)
    if reference_slopes:
        _reference_slopes(ax, series, reference_slopes)
    _finish_axes(ax, xlabel, ylabel, textwrap.fill(title, 70), logx, logy, hline, None)
    # Beside the axes, where it hides no data.
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def panel_figure(
    path: Path,
    panels: list[tuple[str, list[dict[str, Any]]]],
    xlabel: str,
    ylabel: str,
    title: str,
    palette: Palette,
    logx: bool = False,
    logy: bool = False,
    reference_slopes: Sequence[float] | None = None,
    hline: float | None = None,
    y_range: tuple[float, float] | None = None,
    categorical: Sequence[str] | None = None,
) -> Path:
    """Panels side by side (at most three per row) sharing the y axis, one legend for all: each
    panel is (panel title, series) as in :func:`line_figure`. With ``categorical``, x values are
    positions 0..n-1 labelled by those names."""
    n = max(len(panels), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 1.0, 3.1 * rows + 0.6), squeeze=False,
                             sharey=True)
    for k, (ptitle, series) in enumerate(panels):
        ax = axes[k // cols][k % cols]
        _draw_series(ax, series, palette, logx, logy, y_range)
        if reference_slopes:
            _reference_slopes(ax, series, reference_slopes)
        _finish_axes(ax, xlabel, ylabel if k % cols == 0 else "", ptitle, logx, logy, hline,
                     categorical)
    for k in range(len(panels), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    handles, labels = {}, []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.suptitle(textwrap.fill(title, int(fig.get_figwidth() * 11)), fontsize=11)
    # As many legend columns as fit the figure's width (about 17 characters per inch at 7 pt).
    width_chars = fig.get_figwidth() * 17
    ncol = max(1, min(len(labels), int(width_chars // (max(map(len, labels), default=1) + 6))))
    legend_rows = math.ceil(len(labels) / ncol) if labels else 0
    if labels:
        fig.legend([handles[lab] for lab in labels], labels, loc="lower center", fontsize=7,
                   ncol=ncol, frameon=False)
    bottom = (0.02 + 0.16 * legend_rows / fig.get_figheight()) if labels else 0.0
    fig.tight_layout(rect=(0, min(bottom, 0.5), 1, 0.95))
    return save_figure(fig, path)
