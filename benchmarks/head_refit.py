"""How much can a classifier refit give partitioned GIST? (issue 23's "head" suspect)

Trains runs of a sweep config (the partitioned recipe by default), then
refits only the classifier (the layer that produces the logits) of each
final model, everything else frozen and in evaluation mode (no dropout;
BatchNorm with the model's own statistics, which the recipe re-estimates at
the end), by full-batch Adam on

.. math::

    L(W) = \\frac{1}{\\sum_i n_i} \\sum_i \\sum_{v \\in T_i} \\ell(f_W(G_i)_v, y_v)

the pooled training loss of the parts: worker ``i`` holds part ``G_i`` with
training nodes ``T_i``, and the gradient of ``L`` is the sum of the parts'
gradients, which is what a refit over the transport would compute (``parts``
column). The ``graph`` column refits on the whole graph instead (edges
between parts present): the most any refit of the classifier could give.
Every model is scored on the whole graph, as the tables score them; the best
validation over the refit steps is reported with the test accuracy at that
step (selected on validation, as the tables select rounds).

An end-of-run refit is a bound on the classifier's share of the gap only: a
refit after every merge would also change what the layers below learn.

    python benchmarks/head_refit.py experiments/cora.toml --m 4 8 --seeds 0 1 2 \\
        --root /tmp/gd --out results/head_refit-cora.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit, markdown_table_report  # noqa: E402

from gist.engine import full_model  # noqa: E402
from gist.engine.evaluation import evaluate  # noqa: E402
from gist.engine.setup import load_run_dataset  # noqa: E402
from gist.engine.training import worker_graphs  # noqa: E402
from gist.graph import AdjacencyFormat  # noqa: E402
from gist.harness.sweep import PlannedRun, load_config, plan  # noqa: E402
from gist.nn.slicing import build_split_spec  # noqa: E402
from gist.run import run_training  # noqa: E402


def head_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of the layer that produces the logits (the split spec's layer with no output group)."""
    heads = [entry.path for entry in build_split_spec(model).layers if entry.out_group is None]
    if len(heads) != 1:
        raise ValueError(f"expected one output layer, found {heads}")
    prefix = heads[0] + "."
    return {n: p for n, p in model.named_parameters() if n.startswith(prefix)}


def pooled_loss(model: nn.Module, graphs: Sequence[tuple[Data, Tensor]]) -> Tensor:
    """The parts' summed training cross-entropy over their total training nodes."""
    total = sum(int(g.train_mask.sum()) for g, _ in graphs)
    loss = torch.zeros(())
    for graph, adj in graphs:
        logits = model(graph.x, adj)[graph.train_mask]
        loss = loss + nn.functional.cross_entropy(logits, graph.y[graph.train_mask], reduction="sum")
    return loss / total


def refit(
    model: nn.Module, graphs: Sequence[tuple[Data, Tensor]], data: Data, adj: Tensor, steps: int, lr: float, every: int
) -> tuple[float, float, int]:
    """Refit the head of ``model`` (a copy is not made: pass a fresh one) for ``steps`` Adam steps;
    the best whole-graph validation (step 0 included), the test there, and its step."""
    head = head_parameters(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.values():
        p.requires_grad_(True)
    model.eval()
    optimizer = torch.optim.Adam(head.values(), lr=lr)
    first = evaluate(model, data, adj)
    best = (first["val"], first["test"], 0)
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        pooled_loss(model, graphs).backward()
        optimizer.step()
        if step % every == 0 or step == steps:
            score = evaluate(model, data, adj)
            if score["val"] > best[0]:
                best = (score["val"], score["test"], step)
    return best


def measure(run: PlannedRun, root: str, steps: int, lr: float, every: int) -> dict[str, Any]:
    """Train ``run``, then refit its final model's head on the parts and on the whole graph."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = run.settings.replace(root=root, save_model=str(Path(tmp) / "model.pt"))
        log = run_training(cfg, progress=False)
        state = torch.load(Path(tmp) / "model.pt", weights_only=True)
    dataset = load_run_dataset(cfg)
    data = dataset.data

    def trained() -> nn.Module:
        model = full_model(cfg, dataset.num_features, dataset.num_classes)
        model.load_state_dict(state)
        return model

    fmt = AdjacencyFormat.for_model(trained(), cfg.data.sparse_adjacency)
    adj = fmt.of(data)
    parts = [(g, fmt.of(g)) for g in worker_graphs(data, cfg)]
    before = evaluate(trained(), data, adj)
    out: dict[str, Any] = {"run": run.run_id, "best_val_run": max(r["val"] for r in log["rounds"] if "val" in r)}
    out["final"] = (before["val"], before["test"])
    out["parts"] = refit(trained(), parts, data, adj, steps, lr, every)
    out["graph"] = refit(trained(), [(data, adj)], data, adj, steps, lr, every)
    return out


def _mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="sweep config (TOML)")
    parser.add_argument("--method", default="gist", help="the sweep's method (or variant) to train")
    parser.add_argument("--m", type=int, nargs="+", default=[8], help="worker counts")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="AXIS=VALUE",
        help="keep runs with this axis value (repeat for several)",
    )
    parser.add_argument("--root", default=None, help="data root")
    parser.add_argument("--steps", type=int, default=200, help="refit steps")
    parser.add_argument("--lr", type=float, default=0.01, help="refit learning rate (Adam)")
    parser.add_argument("--every", type=int, default=10, help="score every this many refit steps")
    parser.add_argument("--out", default=None, help="write the Markdown report here too")
    args = parser.parse_args(argv)
    sweep = load_config(args.config)
    picked: dict[str, set[str]] = {}
    for item in args.set:
        axis, _, value = item.partition("=")
        picked.setdefault(axis, set()).add(value)
    runs = [
        r
        for r in plan(sweep)
        if r.method == args.method
        and r.subnets in args.m
        and r.seed in args.seeds
        and all(str(r.context.get(k)) in values for k, values in picked.items())
    ]
    if not runs:
        parser.error("no run of the config matches --method, --m, --seeds and --set")
    root = args.root or sweep.settings.data.root
    results = []
    for run in runs:
        print(f"training {run.run_id} ...", file=sys.stderr, flush=True)
        results.append((run, measure(run, root, args.steps, args.lr, args.every)))
    rows = []
    by_cell: dict[tuple, list[dict[str, Any]]] = {}
    for run, res in results:
        by_cell.setdefault((tuple(sorted(run.context.items())), run.subnets), []).append(res)
    for (context, m), cell in by_cell.items():
        where = ", ".join(f"{k}={v}" for k, v in context) or "—"
        row = [where, str(m), str(len(cell)), _mean_std([c["best_val_run"] for c in cell])]
        row += [_mean_std([c["final"][0] for c in cell])]
        for kind in ("parts", "graph"):
            row += [_mean_std([c[kind][0] for c in cell]), _mean_std([c[kind][1] for c in cell])]
            row += [_mean_std([c[kind][0] - c["final"][0] for c in cell])]
        rows.append("| " + " | ".join(row) + " |")
    notes = [
        f"Config `{args.config}`, method `{args.method}`, seeds {args.seeds}; refit: {args.steps} full-batch Adam "
        f"steps at lr {args.lr} on the classifier alone (scored every {args.every}), the rest frozen in evaluation "
        "mode. 'best val (run)': the run's best validation over its rounds; 'final val': its final model's; "
        "'parts': refit on the pooled loss of the METIS parts (edges between parts missing), what a refit over "
        "the transport would compute; 'graph': refit on the whole graph, the bound. Gains are over the final "
        "model's validation, best over the refit steps (selected on validation). ± is one std over seeds.",
    ]
    header = [
        "cell",
        "m",
        "seeds",
        "best val (run)",
        "final val",
        "val, parts refit",
        "test, parts refit",
        "gain, parts",
        "val, graph refit",
        "test, graph refit",
        "gain, graph",
    ]
    emit(markdown_table_report("Classifier refit after partitioned GIST", notes, header, rows), args.out)


if __name__ == "__main__":
    main()
