"""How GIST's machinery scales with the graph: csbm at 10k, 100k and 1M nodes.

For each size, in a fresh child process (so that its peak memory is its
own): the seconds to generate the graph (``make_csbm``, mean degree 10), to
partition it with METIS into ``m`` parts and to cut the workers' induced
subgraphs, to build GIST's workers (which partitions again), the seconds
per round of GIST (``m`` simulated workers, partitioned data, 3-layer GCN,
ζ local steps; training, and the evaluation on the whole graph after every
round) and the child's peak resident memory. GIST's build partitions the
graph again: :func:`~gist.graph.partition_nodes` returns its cached result.

Usage::

    python benchmarks/graph_scale.py [--nodes 10000 100000 1000000] [--out results/graph_scale.md]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from _report import emit, markdown_table_report


def measure(nodes: int, m: int, hidden: int, zeta: int, rounds: int, threads: int) -> dict:
    """One size, in this process."""
    from gist.config import RunConfig
    from gist.data import make_csbm
    from gist.graph import partition_nodes, worker_subgraph
    from gist.methods import get_method
    from gist.nn import build_model

    torch.set_num_threads(threads)
    out: dict = {"nodes": nodes}
    start = time.perf_counter()
    ds = make_csbm(num_nodes=nodes, seed=0)
    out["generate_s"] = time.perf_counter() - start
    data = ds.data
    out["edges"] = int(data.edge_index.shape[1])
    start = time.perf_counter()
    parts = partition_nodes(data.edge_index, nodes, m, "metis", 0)
    out["partition_s"] = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(m):
        worker_subgraph(data, parts, i, 0)
    out["subgraphs_s"] = time.perf_counter() - start
    cfg = RunConfig.from_flat(
        dataset="csbm", subnets=m, hidden=hidden, local_steps=zeta, rounds=rounds, data_mode="partitioned"
    )
    torch.manual_seed(0)
    model = build_model("gcn", ds.num_features, hidden, ds.num_classes, 3, prenormalized=True)
    start = time.perf_counter()
    driver = get_method("gist")(model, data, cfg)
    out["build_s"] = time.perf_counter() - start
    driver.fit(progress=False)
    seconds = [r.seconds for r in driver.history]
    evals = [r.eval_seconds or 0.0 for r in driver.history]
    out["round_s"] = sum(seconds) / len(seconds)
    out["eval_s"] = sum(evals) / len(evals)
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--subnets", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.child:
        (nodes,) = args.nodes
        result = measure(nodes, args.subnets, args.hidden, args.local_steps, args.rounds, args.threads)
        print(json.dumps(result))
        return 0
    rows = []
    for nodes in args.nodes:
        cmd = [sys.executable, __file__, "--child", "--nodes", str(nodes), "--subnets", str(args.subnets)]
        cmd += ["--hidden", str(args.hidden), "--local-steps", str(args.local_steps), "--rounds", str(args.rounds)]
        cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append(f"| {nodes:,} | failed: {proc.stderr.strip().splitlines()[-1][:80]} | | | | | | | |")
            print(rows[-1], flush=True)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(
            f"| {nodes:,} | {r['edges']:,} | {r['generate_s']:.2f} | {r['partition_s']:.2f} | "
            f"{r['subgraphs_s']:.2f} | {r['build_s']:.2f} | {r['round_s']:.2f} | {r['eval_s']:.2f} | "
            f"{r['peak_rss_gb']:.2f} |"
        )
        print(rows[-1], flush=True)
    notes = [
        f"csbm (mean degree 10), GIST m = {args.subnets} simulated workers on METIS parts (partitioned), "
        f"3-layer GCN hidden {args.hidden}, ζ = {args.local_steps}, {args.rounds} rounds, evaluation on the "
        f"whole graph every round, {args.threads} threads, torch {torch.__version__}. Each size runs in a "
        "child process of its own; peak RSS is that child's.",
    ]
    header = ["nodes", "edges (directed)", "generate s", "METIS s", "subgraphs s", "build GIST s"]
    header += ["train s / round", "eval s / round", "peak RSS GB"]
    text = markdown_table_report("Graph size: csbm from 10k to 1M nodes", notes, header, rows)
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
