"""Time to the target over a slow network: GIST's ratios to DDP and local SGD, per graph, bandwidth and m.

Reads the ``table.csv`` that ``gist sweep`` wrote for each slow-network
sweep (``experiments/slow-network-*.toml``) and writes one Markdown table
per graph: for every bandwidth, topology (where the sweep has a ``hosts``
axis: one host, or several with only the links between them shaped) and
``m``, the seconds to the target of
``gist``, ``local-sgd`` and ``ddp`` (mean over the seeds that reach it, with
how many do), and the ratios GIST / DDP and GIST / local SGD (below 1: GIST
is faster). A method that never reaches the target has no ratio.

Usage::

    python benchmarks/slow_network_summary.py results/slow_network/synthetic results/slow_network/coauthor-cs \
        --out results/slow_network/summary.md
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

import pandas as pd
from _report import emit

from gist.harness.sweep import load_results_config

BASELINES = ("local-sgd", "ddp")
LINKS = {"none": "unshaped", "1gbit": "1 Gbit/s", "100mbit": "100 Mbit/s"}


def _cell(row: pd.Series | None) -> str:
    """``seconds (reached/seeds)`` of a table row; ``never (0/3)`` where no seed reaches the target."""
    if row is None:
        return "—"
    reached = f"{int(row['reached'])}/{int(row['seeds'])}"
    if int(row["reached"]) == 0 or math.isnan(row["seconds_to_target"]):
        return f"never ({reached})"
    return f"{row['seconds_to_target']:.1f} ({reached})"


def _ratio(gist: pd.Series | None, other: pd.Series | None) -> str:
    if gist is None or other is None:
        return "—"
    a, b = gist["seconds_to_target"], other["seconds_to_target"]
    if math.isnan(a) or int(gist["reached"]) == 0:
        return "gist never"
    if math.isnan(b) or int(other["reached"]) == 0:
        return "only gist reaches"
    return f"{a / b:.2f}"


def _row(table: pd.DataFrame, method: str, m: int) -> pd.Series | None:
    hit = table[(table["method"] == method) & (table["m"] == m)]
    return hit.iloc[0] if len(hit) else None


def _topology(hosts: int) -> str:
    return "one host: every byte crosses the link" if hosts == 1 else f"{hosts} hosts: only what goes between them"


def summary_table(table: pd.DataFrame) -> list[str]:
    """Markdown rows: one per bandwidth, topology (a ``hosts`` axis) and ``m``."""
    by_hosts = "hosts" in table.columns
    header = ["link", *(["topology"] if by_hosts else []), "m", "gist s", "local-sgd s", "ddp s"]
    header += ["gist / ddp", "gist / local-sgd", "full s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    bandwidths = [b for b in LINKS if b in set(table["bandwidth"])]
    for bandwidth in bandwidths:
        for hosts in sorted(set(table["hosts"])) if by_hosts else [1]:
            at = table[(table["bandwidth"] == bandwidth) & ((table["hosts"] == hosts) if by_hosts else True)]
            full = at[at["method"] == "full"]
            full_cell = _cell(full.iloc[0]) if len(full) else "—"
            for m in sorted(set(at[at["method"] != "full"]["m"])):
                gist, local_sgd, ddp = (_row(at, method, m) for method in ("gist", *BASELINES))
                cells = [LINKS[bandwidth], *([_topology(int(hosts))] if by_hosts else []), str(m)]
                cells += [_cell(gist), _cell(local_sgd), _cell(ddp)]
                cells += [_ratio(gist, ddp), _ratio(gist, local_sgd), full_cell]
                lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="results folders of slow-network sweeps (with table.csv)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    command = shlex.join(["python", "benchmarks/slow_network_summary.py", *sys.argv[1:]])
    lines = [
        "# Time to accuracy over a slow network: GIST against DDP and local SGD",
        "",
        f"Command: `{command}`",
        "",
        "Seconds to the target (the full model's best validation, mean over seeds, less `target_drop`): "
        "wall-clock time of the real processes, mean over the seeds that reach it (how many do, in brackets). "
        "Ratios below 1: GIST reaches the target sooner. `full` is one process on the whole graph, which no "
        "link slows.",
        "",
    ]
    for folder in args.results:
        cfg = load_results_config(folder)
        table = pd.read_csv(Path(folder) / "table.csv")
        s = cfg.settings
        lines += [
            f"## {s.data.dataset} (`{folder}`)",
            "",
            f"`{cfg.name}`: {'/'.join(cfg.axes.get('model', [s.model.kind])).upper()} "
            f"{s.model.layers}x{s.model.hidden}, ζ = {'/'.join(map(str, cfg.local_steps))}, "
            f"{s.rounds} rounds, seeds {', '.join(map(str, cfg.seeds))}; table: `{folder}/table.md`.",
            "",
            *summary_table(table),
            "",
        ]
    emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
