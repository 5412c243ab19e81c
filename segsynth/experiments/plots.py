"""Learning-curve plots (metric vs number of labelled cases, one line per method), drawn with Agg.

Figures are built with ``matplotlib.figure.Figure`` on an Agg canvas, never through ``pyplot``, so no
global backend or figure state is touched and nothing needs a display.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from segsynth.utils.files import atomic_path

# Colour-blind-friendly palette (Okabe-Ito); baselines get the first colours in the report's order.
PALETTE = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7", "#F0E442"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG atomically (the file appears whole or not at all)."""
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def learning_curve(
    rows: Sequence[Mapping[str, Any]],
    out_path: str | Path,
    *,
    ylabel: str,
    title: str | None = None,
    methods: Sequence[str] | None = None,
    higher_is_better: bool = True,
) -> Path:
    """Plot mean ± sd over seeds against N (log2 axis), one line per method, and save it as a PNG.

    Args:
        rows: ``segsynth.evaluate.stats.summarise_runs`` rows of one comparison group (keys ``method``,
            ``n_train``, ``mean``, ``sd``, ``values``).
        out_path: the PNG to write.
        ylabel: y-axis label, e.g. "mean foreground Dice".
        title: figure title.
        methods: the methods to draw, in legend order (default: order of first appearance).
        higher_is_better: only changes the hint in the axis label.

    Individual seeds are drawn as faint dots; runs without a value (failed, or HD95 undefined) are not
    drawn. Lines are shifted slightly along x per method so error bars do not hide each other.
    """
    if methods is None:
        methods = list(dict.fromkeys(r["method"] for r in rows))
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    all_n = sorted({int(r["n_train"]) for r in rows})
    n_methods = max(1, len(methods))
    drawn = 0
    for i, method in enumerate(methods):
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["n_train"])
        pts = [r for r in pts if r["mean"] is not None and math.isfinite(r["mean"])]
        if not pts:
            continue
        # Multiplicative offset on the log2 axis: at most ±0.08 octaves between the outermost methods.
        shift = 2 ** (0.16 * (i - (n_methods - 1) / 2) / max(1, n_methods - 1)) if n_methods > 1 else 1.0
        xs = [r["n_train"] * shift for r in pts]
        ys = [r["mean"] for r in pts]
        errs = [r["sd"] if r["sd"] is not None and math.isfinite(r["sd"]) else 0.0 for r in pts]
        colour, marker = PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]
        ax.errorbar(xs, ys, yerr=errs, color=colour, marker=marker, capsize=3, lw=1.6, ms=5, label=method)
        for r, x in zip(pts, xs):
            vals = [v for v in r.get("values", []) if v is not None and math.isfinite(v)]
            ax.scatter([x] * len(vals), vals, color=colour, alpha=0.3, s=12, lw=0)
        drawn += 1
    ax.set_xscale("log", base=2)
    if all_n:
        ax.xaxis.set_major_locator(FixedLocator(all_n))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(n) for n in all_n])
        ax.set_xlim(all_n[0] / 1.3, all_n[-1] * 1.3)
    ax.set_xlabel("labelled training cases N (log2 scale)")
    hint = "higher is better" if higher_is_better else "lower is better"
    ax.set_ylabel(f"{ylabel}\n({hint}; mean ± sd over seeds)")
    if title:
        ax.set_title(title, fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    if drawn:
        ax.legend(frameon=False, fontsize=9)
    else:
        ax.text(0.5, 0.5, "no finished runs with a value", ha="center", va="center", transform=ax.transAxes)
    return save_figure(fig, out_path)


def split_differences(verdicts: Sequence[Mapping[str, Any]], out_path: str | Path, *, title: str | None = None
                      ) -> Path:
    """One row per comparison (method vs baseline at N): each split's mean Dice difference as a dot, the mean
    of the splits as a bar with its 95 % interval, in Dice points; 0 marked. Rows whose interval lies above 0
    are green, below 0 red, the rest grey."""
    rows = list(verdicts)
    fig = Figure(figsize=(8.0, 0.9 + 0.42 * max(1, len(rows))))
    ax = fig.add_subplot(1, 1, 1)
    colours = {"helped": "#009E73", "hurt": "#D55E00"}
    labels = []
    for i, v in enumerate(rows):
        y = len(rows) - 1 - i
        s = v["split"]
        c = colours.get(v["word"], "#66707a")
        diffs = [100 * d for d in s["split_diffs"]]
        ax.scatter(diffs, [y] * len(diffs), s=18, color=c, alpha=0.7, zorder=3)
        if math.isfinite(s["ci_low"]):
            ax.plot([100 * s["ci_low"], 100 * s["ci_high"]], [y, y], color=c, lw=2.2, zorder=2)
        if math.isfinite(s["mean"]):
            ax.plot([100 * s["mean"]], [y], marker="|", markersize=14, color=c, mew=2.5, zorder=4)
        where = f"{v.get('test_set', '')}, " if v.get("test_set") not in (None, "", "in-domain") else ""
        labels.append(f"{where}N={v['n_train']}: {v['method_a']} vs {v['method_b']} ({v['word']})")
    ax.axvline(0, color="#000000", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(list(reversed(labels)), fontsize=8)
    ax.set_xlabel("Dice difference, points (dots: splits; bar: mean and 95 % interval)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, out_path)
