"""Speed of GIST's own machinery on Coauthor CS.

1. Split + slice + merge as a share of a round's time (ζ = 10, hidden 256).
2. One local step of a sub-network (hidden 1024, 3 layers, m = 4) against one
   step of the full-width model.

Usage::

    python benchmarks/speed.py --root DATA_ROOT [--out results/speed.md]

``DATA_ROOT`` holds ``coauthor/CS/raw/ms_academic_cs.npz`` (a copy of
``../shared/data`` works). Timings are medians over repeated rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from _report import emit

from gist import GIST, RunConfig, draw_partition, slice_state
from gist.data import load_dataset
from gist.nn import build_model


def trainer_for(ds, hidden: int, m: int, zeta: int, layers: int = 3, seed: int = 0) -> GIST:
    torch.manual_seed(seed)
    model = build_model("gcn", ds.num_features, hidden, ds.num_classes, layers, dropout=0.5)
    cfg = RunConfig.from_flat(subnets=m, rounds=10_000, local_steps=zeta, eval_every=10_000, seed=seed)
    return GIST(model, ds.data, cfg)


def overhead_share(ds, hidden: int, m: int, zeta: int, rounds: int) -> dict:
    trainer = trainer_for(ds, hidden, m, zeta)
    trainer.run_round()  # warm-up
    records = [trainer.run_round() for _ in range(rounds)]
    share = [(r.split_seconds + r.merge_seconds) / r.seconds for r in records]
    return {
        "m": m,
        "round_s": statistics.median(r.seconds for r in records),
        "split_slice_s": statistics.median(r.split_seconds for r in records),
        "merge_s": statistics.median(r.merge_seconds for r in records),
        "share": statistics.median(share),
    }


def step_seconds(ds, hidden: int, m: int, repeats: int, zeta: int = 5) -> float:
    """Median seconds per local step of worker 0 (full graph, replicated)."""
    trainer = trainer_for(ds, hidden, m, zeta)
    worker = trainer.transport.workers[0]
    part = draw_partition(trainer.spec.widths, m, 0, 0)
    payload = trainer.layout.flatten(slice_state(trainer.model.state_dict(), trainer.spec, part, 0))
    worker.train_round(0, payload.clone())  # warm-up
    times = []
    for r in range(repeats):
        report = worker.train_round(r + 1, payload.clone())
        times.append(report.stats.seconds / zeta)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the Markdown report here")
    args = parser.parse_args(argv)

    ds = load_dataset("coauthor-cs", root=args.root)
    lines = [
        "# GIST machinery speed on Coauthor CS",
        "",
        f"Made by: `python benchmarks/speed.py --root {args.root} --rounds {args.rounds} --repeats {args.repeats}`"
        f" (torch {torch.__version__}, {torch.get_num_threads()} threads)",
        "",
        "## Split + slice + merge share of a round (GCN, 3 layers, hidden 256, ζ = 10, replicated full batch)",
        "",
        "| m | round (s) | split+slice (s) | merge (s) | share of round |",
        "|---|---|---|---|---|",
    ]
    for m in (2, 4, 8):
        r = overhead_share(ds, 256, m, 10, args.rounds)
        lines.append(
            f"| {m} | {r['round_s']:.3f} | {r['split_slice_s']:.4f} | {r['merge_s']:.4f} | {100 * r['share']:.2f}% |"
        )
        print(lines[-1], flush=True)
    full = step_seconds(ds, 1024, 1, args.repeats)
    sub = step_seconds(ds, 1024, 4, args.repeats)
    lines += [
        "",
        "## One local step: sub-network (m = 4) vs full model (GCN, 3 layers, hidden 1024)",
        "",
        "| model | width | seconds per step | ratio |",
        "|---|---|---|---|",
        f"| full (m = 1) | 1024 | {full:.3f} | 1.00 |",
        f"| sub-network (m = 4) | 256 | {sub:.3f} | {sub / full:.2f} |",
    ]
    report = "\n".join(lines) + "\n"
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
