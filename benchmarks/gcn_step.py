"""One GCN training step with the normalisation computed in every layer, and computed once.

Stock ``GCN`` (``GCNConv(normalize=True)``) recomputes
:math:`D^{-1/2}(A + I)D^{-1/2}` in every layer of every step; ``gist`` builds a
:class:`~gist.nn.PrenormalizedGCN` instead and normalises each graph once
(:func:`gist.graph.adjacency` with ``normalized=True``). Both give the same
model bit for bit (``tests/test_split.py``); this measures the step.

Usage::

    python benchmarks/gcn_step.py [--root DATA_ROOT] [--dataset csbm-clustered coauthor-cs] [--out results/gcn_step.md]

Reports the median of ``--steps`` timed steps (after 3 warm-up steps) of a
3-layer GCN at each hidden width, full batch, Adam, on the whole graph.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from _report import emit, markdown_table_report

from gist.data import load_dataset
from gist.graph import adjacency
from gist.nn import build_model


def step_seconds(ds, hidden: int, prenormalized: bool, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model("gcn", ds.num_features, hidden, ds.num_classes, 3, prenormalized=prenormalized)
    adj = adjacency(ds.data, sparse=True, normalized=prenormalized)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    data, mask = ds.data, ds.data.train_mask
    times = []
    for i in range(steps + 3):
        start = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(data.x, adj)[mask], data.y[mask]).backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None)
    parser.add_argument("--dataset", nargs="+", default=["csbm-clustered", "coauthor-cs"])
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.dataset:
        ds = load_dataset(name, root=args.root)
        g = ds.data
        graph = f"{name} ({g.num_nodes} nodes, {g.num_edges} edges, {ds.num_features} features)"
        for hidden in args.hidden:
            stock = step_seconds(ds, hidden, False, args.steps)
            cached = step_seconds(ds, hidden, True, args.steps)
            rows.append(f"| {graph} | {hidden} | {stock * 1e3:.1f} | {cached * 1e3:.1f} | {stock / cached:.2f} |")
            print(rows[-1], flush=True)
    notes = [
        f"3-layer GCN, full batch, Adam, {args.threads} threads, torch {torch.__version__}; median of "
        f"{args.steps} steps after 3 warm-up steps.",
        "Stock: `GCN` (`GCNConv(normalize=True)`), the normalisation recomputed by each layer at every step. "
        "Once: `PrenormalizedGCN` on the graph normalised once (what `gist` trains); the same model bit for bit.",
    ]
    header = ["graph", "hidden", "stock ms / step", "normalised once ms / step", "speed-up"]
    text = markdown_table_report("A GCN step: normalisation in every layer against once per graph", notes, header, rows)
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
