"""Full model (m = 1) against GIST m = 2, 4, 8 on real graphs.

Usage::

    python benchmarks/accuracy_table.py --root DATA_ROOT [--datasets cora coauthor-cs] \
        [--out results/gist_vs_full.md] [--logs results/logs]

Every run is an in-process simulation of m workers (replicated data, full
batch). ``seconds`` is the simulation's wall time (workers one after
another); ``parallel s`` replaces each round's worker time by its slowest
worker's, i.e. what m real workers would take. ``MB/worker`` counts the
parameters each worker received and returned (the byte ledger).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import pandas as pd
from _report import emit

from gist.config import RunConfig
from gist.run import run_training

SETUPS = {
    "cora": dict(
        model="gcn",
        layers=3,
        hidden=256,
        local_steps=5,
        rounds=20,
        lr=0.01,
        weight_decay=5e-4,
        dropout=0.5,
        eval_every=1,
    ),
    "citeseer": dict(
        model="gcn",
        layers=3,
        hidden=256,
        local_steps=5,
        rounds=20,
        lr=0.01,
        weight_decay=5e-4,
        dropout=0.5,
        eval_every=1,
    ),
    "coauthor-cs": dict(
        model="gcn",
        layers=3,
        hidden=256,
        local_steps=5,
        rounds=20,
        lr=0.01,
        weight_decay=0.0,
        dropout=0.5,
        eval_every=2,
    ),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--datasets", nargs="+", default=["cora", "coauthor-cs"], choices=sorted(SETUPS))
    parser.add_argument("--subnets", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--logs", default=None, help="folder for each run's JSON log")
    args = parser.parse_args(argv)
    command = "python benchmarks/accuracy_table.py " + shlex.join(argv if argv is not None else sys.argv[1:])

    rows = []
    for name in args.datasets:
        for m in args.subnets:
            settings = RunConfig.from_flat(dataset=name, root=args.root, subnets=m, seed=args.seed, **SETUPS[name])
            log_path = Path(args.logs) / f"{name}-m{m}.json" if args.logs else None
            s = run_training(settings, progress=False, log_path=log_path)["summary"]
            rows.append(
                {
                    "dataset": name,
                    "m": m,
                    "best val": s["best_val"],
                    "test at best val": s["test_at_best_val"],
                    "best round": s["best_round"],
                    "MB/worker": s["bytes_per_worker"] / 1e6,
                    "seconds": s["seconds"],
                    "parallel s": s["parallel_seconds"],
                }
            )
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    setup_lines = [f"- `{n}`: " + ", ".join(f"{k}={v}" for k, v in SETUPS[n].items()) for n in args.datasets]
    text = "\n".join(
        [
            "# Full model vs GIST sub-networks",
            "",
            f"Made by: `{command}`",
            "",
            "Settings (seed " + str(args.seed) + ", replicated data, full batch, in-process simulation):",
            *setup_lines,
            "",
            table.to_markdown(index=False, floatfmt=".4g"),
            "",
        ]
    )
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
