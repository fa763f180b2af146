"""Figures: matplotlib (Agg) to PNG files, below experiments and reports so every layer can plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["line_figure"]


def line_figure(
    path: Path,
    series: list[dict[str, Any]],
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
    logy: bool = False,
) -> Path:
    """One axes with a line per entry of ``series``: {label, x, y, lo?, hi?, style?, fit?}.

    ``lo``/``hi`` draw a band (or error bars when ``style == 'errorbar'``); ``fit`` is
    {x, y, lo, hi} for a fitted line with its band.
    """
    fig, ax = plt.subplots(figsize=(5.6, 3.8), dpi=110)
    for s in series:
        if s.get("style") == "errorbar" and "lo" in s:
            yerr = [[y - lo for y, lo in zip(s["y"], s["lo"], strict=True)],
                    [hi - y for y, hi in zip(s["y"], s["hi"], strict=True)]]
            color = ax.errorbar(s["x"], s["y"], yerr=yerr, marker="o", ms=4, capsize=3,
                                label=s["label"])[0].get_color()
        else:
            (line,) = ax.plot(s["x"], s["y"], marker=s.get("marker", "o"), ms=4, label=s["label"],
                              ls=s.get("ls", "-"))
            color = line.get_color()
            if "lo" in s:
                ax.fill_between(s["x"], s["lo"], s["hi"], alpha=0.2, color=color)
        if "fit" in s:
            f = s["fit"]
            ax.plot(f["x"], f["y"], ls="--", lw=1.2, color=color, label=f.get("label", "fit"))
            if "lo" in f:
                ax.fill_between(f["x"], f["lo"], f["hi"], alpha=0.12, color=color)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
