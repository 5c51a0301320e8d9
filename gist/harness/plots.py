"""Plots of accuracy versus communication and time from sweep logs (see :mod:`gist.harness.tables`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..methods import METHODS
from .curves import GROUP, axes_label, match_axes, mean_curves

M_STYLES = ["-", "--", ":", "-."]
SPARE_COLORS = ["tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]


def method_color(name: str) -> str:
    """A method's colour in plots: its registered ``color``, else a spare one."""
    cls = METHODS.get(name)
    if cls is not None and cls.color:
        return cls.color
    return SPARE_COLORS[sum(map(ord, name)) % len(SPARE_COLORS)]


def write_plots(
    runs: pd.DataFrame, axes: Sequence[str], out_dir: Path, goal: dict[tuple, float], title: str = ""
) -> list[Path]:
    """``accuracy_vs_bytes[-<axes>].png`` (log x) and ``accuracy_vs_time[-<axes>].png``:
    validation accuracy (mean over seeds) per method (colour) and ``m`` (line style)."""
    import matplotlib  # heavy: loaded only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    keys = list(goal)
    for key in keys:
        sel = runs[match_axes(runs, axes, key)] if axes else runs
        curves = mean_curves(sel)
        if curves.empty:
            continue
        suffix = "".join(f"-{a}={v}" for a, v in zip(axes, key))
        several_zeta = curves["zeta"].nunique() > 1
        m_values = sorted(curves.loc[curves["m"] > 1, "m"].unique())
        order = {name: i for i, name in enumerate(METHODS)}
        groups = sorted(curves.groupby(GROUP, sort=False), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1:]))
        for x, xlabel, stem, log_x in (
            ("bytes_per_worker", "cumulative MB per worker", "accuracy_vs_bytes", True),
            ("seconds", "wall time, s (workers in parallel)", "accuracy_vs_time", False),
        ):
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for (method, m, zeta), c in groups:
                c = c.dropna(subset=["val"])
                label = f"{method}" + (f" m={m}" if m > 1 else "") + (f" ζ={zeta}" if several_zeta else "")
                xs = c[x] / 1e6 if x == "bytes_per_worker" else c[x]
                style = "-" if m == 1 else M_STYLES[m_values.index(m) % len(M_STYLES)]
                ax.plot(
                    xs,
                    c["val"],
                    style,
                    marker=".",
                    markersize=3,
                    linewidth=1.2,
                    color=method_color(method),
                    label=label,
                )
            if not math.isnan(goal[key]):
                ax.axhline(goal[key], color="grey", linestyle="--", linewidth=0.8, label="target")
            if log_x:
                ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("validation accuracy (mean over seeds)")
            ax.set_title(" — ".join(t for t in (title, axes_label(axes, key)) if t) or "all runs")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
            fig.tight_layout()
            path = out_dir / f"{stem}{suffix}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written
