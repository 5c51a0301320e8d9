"""A GCN step and an evaluation with dense node features, and with them as a sparse CSR matrix.

``--sparse-features`` (:func:`gist.graph.with_sparse_features`) hands the
model its features as a ``torch.sparse_csr`` matrix, so that the first
``GCNConv`` computes :math:`XW` as a sparse-dense product. Bag-of-words
features are mostly zeros; this measures what that saves, per dataset.

Usage::

    python benchmarks/sparse_features.py --root DATA_ROOT [--dataset cora coauthor-cs amazon-computers] \
        [--hidden 256] [--threads 1] [--out results/sparse_features.md]

Reports the median of ``--steps`` timed steps (after 3 warm-up steps) of the
harness's 3-layer GCN (BatchNorm, dropout 0.5, Adam) on the whole graph, the
median of as many evaluations (eval mode, no gradient), the bytes of the
features either way, and the largest difference of the first step's logits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from _report import emit, markdown_table_report

from gist.comm.ledger import tensor_nbytes
from gist.data import load_dataset
from gist.graph import adjacency, with_sparse_features
from gist.nn import build_model


def _median_seconds(fn, steps: int) -> float:
    times = []
    for i in range(steps + 3):
        start = time.perf_counter()
        fn()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(ds, x: torch.Tensor, adj: torch.Tensor, hidden: int, steps: int) -> tuple[float, float, torch.Tensor]:
    """(seconds per training step, seconds per evaluation, the untrained model's logits)."""
    torch.manual_seed(0)
    model = build_model("gcn", ds.num_features, hidden, ds.num_classes, 3, norm="batch_norm", prenormalized=True)
    model.eval()
    with torch.no_grad():
        logits = model(x, adj)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    data, mask = ds.data, ds.data.train_mask

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x, adj)[mask], data.y[mask]).backward()
        opt.step()

    @torch.no_grad()
    def evaluate() -> None:
        model.eval()
        model(x, adj).argmax(-1)
        model.train()

    return _median_seconds(step, steps), _median_seconds(evaluate, steps), logits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None)
    parser.add_argument("--dataset", nargs="+", default=["cora", "coauthor-cs", "amazon-computers"])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.dataset:
        ds = load_dataset(name, root=args.root)
        g = ds.data
        adj = adjacency(g, normalized=True)
        sparse_x = with_sparse_features(g).x
        density = sparse_x.values().numel() / (g.num_nodes * ds.num_features)
        step_d, eval_d, logits_d = measure(ds, g.x, adj, args.hidden, args.steps)
        step_s, eval_s, logits_s = measure(ds, sparse_x, adj, args.hidden, args.steps)
        diff = (logits_d - logits_s).abs().max().item()
        rows.append(
            f"| {name} ({g.num_nodes} nodes, {ds.num_features} features) | {100 * density:.2f}% "
            f"| {tensor_nbytes(g.x) / 1e6:.1f} / {tensor_nbytes(sparse_x) / 1e6:.1f} "
            f"| {step_d * 1e3:.0f} / {step_s * 1e3:.0f} ({step_d / step_s:.1f}x) "
            f"| {eval_d * 1e3:.0f} / {eval_s * 1e3:.0f} ({eval_d / eval_s:.1f}x) | {diff:.1e} |"
        )
        print(rows[-1], flush=True)
    notes = [
        f"3-layer GCN (`PrenormalizedGCN`, hidden {args.hidden}, BatchNorm, dropout 0.5), full batch on the whole "
        f"graph, Adam, {args.threads} thread(s), torch {torch.__version__}; median of {args.steps} steps and of "
        f"{args.steps} evaluations, each after 3 warm-up ones.",
        "Dense / sparse: `data.x` as stored, and as a `torch.sparse_csr` matrix (`--sparse-features`). "
        "MB: the features' bytes (CSR: values and indices). Logit difference: the largest absolute difference "
        "of the untrained model's outputs (float rounding: the products sum in another order).",
    ]
    header = ["graph", "non-zero", "features MB dense / sparse", "ms / step", "ms / evaluation", "logit difference"]
    text = markdown_table_report("Node features dense and as a sparse matrix", notes, header, rows)
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
