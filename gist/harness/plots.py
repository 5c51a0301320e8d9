"""Plots of accuracy versus communication and time from sweep logs (see :mod:`gist.harness.tables`).

Each figure has one panel per number of workers ``m``: the methods are lines
(one colour per method, the same in every panel and every figure of a
sweep), the one-worker reference (``full``) is drawn in every panel, and a
band of ± one standard deviation over seeds surrounds each mean curve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..methods import METHODS
from .curves import axes_label, match_axes, mean_curves

ZETA_STYLES = ["-", "--", ":", "-."]
SPARE_COLORS = [
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
    "tab:gray",
    "gold",
    "navy",
    "lime",
]
LOG_SPAN = 30.0
"""An axis is logarithmic where its largest positive value is more than this times its smallest."""


def method_colors(names: Sequence[str]) -> dict[str, str]:
    """A colour per method name: a registered method's ``color``, the others
    a spare colour each, given in name order (so a sweep's plots agree)."""
    colors: dict[str, str] = {}
    for name in names:
        cls = METHODS.get(name)
        if cls is not None and cls.color:
            colors[name] = cls.color
    spare = [c for c in SPARE_COLORS if c not in colors.values()]
    for i, name in enumerate(sorted(n for n in names if n not in colors)):
        colors[name] = spare[i % len(spare)]
    return colors


def spans_decades(values: pd.Series, span: float = LOG_SPAN) -> bool:
    """Whether the positive ``values`` range over more than a factor ``span``."""
    positive = values[values > 0]
    return not positive.empty and positive.max() > span * positive.min()


def write_plots(
    runs: pd.DataFrame, axes: Sequence[str], out_dir: Path, goal: dict[tuple, float], title: str = ""
) -> list[Path]:
    """``accuracy_vs_bytes[-<axes>].png`` and ``accuracy_vs_time[-<axes>].png``:
    validation accuracy (mean over seeds, ± one std) against cumulative bytes
    per worker (log axis) and training seconds (log where they span decades),
    one panel per ``m``."""
    import matplotlib  # heavy: loaded only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    colors = method_colors(sorted(runs["method"].unique())) if not runs.empty else {}
    order = {name: i for i, name in enumerate(METHODS)}
    for key in goal:
        sel = runs[match_axes(runs, axes, key)] if axes else runs
        curves = mean_curves(sel)
        if curves.empty:
            continue
        curves = curves.dropna(subset=["val"])
        suffix = "".join(f"-{a}={v}" for a, v in zip(axes, key))
        zetas = sorted(curves["zeta"].unique())
        panels = sorted(curves.loc[curves["m"] > 1, "m"].unique()) or [1]
        groups = sorted(
            curves.groupby(["method", "m", "zeta"], sort=False),
            key=lambda kv: (order.get(kv[0][0], len(order)), kv[0][0], kv[0][2]),
        )
        for x, xlabel, stem in (
            ("bytes_per_worker", "cumulative MB per worker", "accuracy_vs_bytes"),
            ("seconds", "training seconds (workers in parallel)", "accuracy_vs_time"),
        ):
            scale = 1e6 if x == "bytes_per_worker" else 1.0
            fig, panel_axes = plt.subplots(
                1, len(panels), figsize=(max(6.0, 4.2 * len(panels)), 4.5), sharey=True, squeeze=False
            )
            for ax, m_panel in zip(panel_axes[0], panels):
                for (method, m, zeta), c in groups:
                    if m not in (1, m_panel):
                        continue
                    xs = c[x] / scale
                    label = method + (" (m=1)" if m == 1 and m_panel > 1 else "")
                    label += f" ζ={zeta}" if len(zetas) > 1 else ""
                    color = colors[method]
                    style = ZETA_STYLES[zetas.index(zeta) % len(ZETA_STYLES)]
                    ax.plot(xs, c["val"], style, marker=".", markersize=3, linewidth=1.2, color=color, label=label)
                    if (c["seeds"] > 1).any():
                        ax.fill_between(
                            xs, c["val"] - c["val_std"], c["val"] + c["val_std"], color=color, alpha=0.15, linewidth=0
                        )
                if not math.isnan(goal[key]):
                    ax.axhline(goal[key], color="grey", linestyle="--", linewidth=0.8, label="target")
                if x == "bytes_per_worker" or spans_decades(curves[x] / scale):
                    ax.set_xscale("log")
                ax.set_xlabel(xlabel)
                ax.set_title(f"m = {m_panel}")
                ax.grid(True, alpha=0.3)
                ax.legend(fontsize=7)
            panel_axes[0][0].set_ylabel("validation accuracy (mean ± std over seeds)")
            fig.suptitle(" — ".join(t for t in (title, axes_label(axes, key)) if t) or "all runs")
            fig.tight_layout()
            path = out_dir / f"{stem}{suffix}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written
