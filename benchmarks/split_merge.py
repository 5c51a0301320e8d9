"""Split and merge of wide models: the coordinator's own work per GIST round.

For a 3-layer GraphSAGE (128 input features, 40 classes) of hidden width
``d``, one round's split (draw the width partition, slice every sub-network
out of the full model and flatten it into its buffer) and merge (unflatten
every returned buffer and write it back) for ``m`` sub-networks, without
training: the time the workers wait on the coordinator. Medians over
``--repeats`` rounds.

Usage::

    python benchmarks/split_merge.py [--hidden 4096 8192] [--subnets 4 8] [--out results/split_merge.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from _report import emit

from gist import draw_partition, merge_states, slice_state, subnet_layout
from gist.nn import build_model, build_split_spec


def one_round(model: torch.nn.Module, spec, m: int, round: int) -> tuple[float, float]:
    layout = subnet_layout(model, spec, m)
    state = model.state_dict()
    start = time.perf_counter()
    partition = draw_partition(spec.widths, m, 0, round)
    payloads = [layout.flatten(slice_state(state, spec, partition, i)) for i in range(m)]
    split = time.perf_counter() - start
    start = time.perf_counter()
    returned = [layout.unflatten(p) for p in payloads]
    merge_states(state, spec, partition, returned)
    return split, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--subnets", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    lines = [
        "# Split and merge of wide models (the coordinator's work per round)",
        "",
        f"Made by: `python benchmarks/split_merge.py {' '.join(sys.argv[1:])}`"
        f" (torch {torch.__version__}, {torch.get_num_threads()} threads)",
        "",
        "3-layer GraphSAGE, 128 input features, 40 classes; medians over "
        f"{args.repeats} rounds after one warm-up round.",
        "",
        "| hidden | parameters | MB | m | split (s) | merge (s) |",
        "|---|---|---|---|---|---|",
    ]
    for hidden in args.hidden:
        torch.manual_seed(0)
        model = build_model("sage", 128, hidden, 40, 3)
        spec = build_split_spec(model)
        params = sum(p.numel() for p in model.parameters())
        for m in args.subnets:
            one_round(model, spec, m, 0)
            times = [one_round(model, spec, m, r + 1) for r in range(args.repeats)]
            split = statistics.median(t[0] for t in times)
            merge = statistics.median(t[1] for t in times)
            lines.append(f"| {hidden} | {params:,} | {params * 4 / 1e6:.0f} | {m} | {split:.3f} | {merge:.3f} |")
            print(lines[-1], flush=True)
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
