"""Models wider than one process can train: 3-layer GraphSAGE on Cora at hidden 4096 and wider.

For each width, three ways of training it, each a ``gist train`` command
in its own processes:

* ``full``: the whole model and its Adam state in one process (2 threads);
* ``central``: GIST, ``m`` real processes (1 thread each), rank 0 holding
  the full model (``--coordinator central``);
* ``sharded``: the same with ``--coordinator sharded``: every rank holds
  ``1/m`` of the model;
* ``ddp``: ``m`` real processes each holding the whole model and its Adam
  state, the gradient averaged every step;
* ``fsdp``: ``m`` real processes, the model under ``fully_shard`` per layer:
  every rank holds ``1/m`` of the parameters, gradients and Adam state and
  gathers one layer at a time.

Every process is watched by a sampler (every 50 ms) that records its peak
resident memory; a process above ``--budget-gb`` (the memory of the machine
it stands for) is killed at once and the attempt recorded as *over budget*
(an out-of-memory), as is any attempt once the machine's own free memory
runs low. A way that went over budget is not tried at wider widths.

Reported per attempt and process: peak resident memory, that peak above a
bare ``import torch, torch_geometric`` process, the parameter bytes the
process holds (full: ``|θ|``; central rank 0: ``|θ|`` + its sub-network;
other ranks: their sub-network; sharded: ``|θ|/m`` + the sub-network), and
from rank 0's run log the seconds per round after the first and their split
(the workers' local steps, split and merge, the rest: transfers and
waiting), the evaluation's seconds, and the parameter bytes per round.

Usage::

    python benchmarks/ultra_wide.py --root DATA [--hidden 4096 8192 16384 32768] [--rounds 3] [--budget-gb 8]
        [--out results/ultra_wide.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

from _memory import GB, attempt, bare_rss
from _report import emit, markdown_table_report

from gist.host_memory import KEEP_FREED_MEMORY_ENV

WAYS = ("full", "central", "sharded", "ddp", "fsdp")


def param_counts(hidden: int, m: int, features: int = 1433, classes: int = 7) -> tuple[int, int, int]:
    """``(|θ|, |θ_sub|, |θ| / m)`` of a 3-layer GraphSAGE (two weights per conv, one bias)."""
    full = 2 * features * hidden + hidden + 2 * hidden * hidden + hidden + 2 * hidden * classes + classes
    h = hidden // m
    sub = 2 * features * h + h + 2 * h * h + h + 2 * h * classes + classes
    return full, sub, (full - classes) // m + classes


def command(way: str, args: argparse.Namespace, hidden: int, log: Path) -> list[str]:
    cmd = [sys.executable, "-m", "gist", "train", "--dataset", "cora", "--root", args.root, "--model", "sage"]
    cmd += ["--layers", "3", "--hidden", str(hidden), "--local-steps", str(args.local_steps)]
    cmd += ["--rounds", str(args.rounds), "--eval-every", str(args.rounds), "--log", str(log), "--no-progress"]
    if way == "full":
        return cmd + ["--method", "full", "--threads", "2"]
    if way in ("ddp", "fsdp"):
        return cmd + ["--method", way, "--subnets", str(args.m), "--procs", str(args.m), "--threads", "1",
                      "--timeout", "600"]  # fmt: skip
    return cmd + ["--method", "gist", "--subnets", str(args.m), "--procs", str(args.m), "--threads", "1",
                  "--coordinator", way, "--timeout", "600"]  # fmt: skip


def summarise_log(path: Path) -> dict:
    """Rank 0's seconds per round and their split, over the rounds after the
    first (which also pays for first-touch allocations), and the evaluation
    after the last round."""
    log = json.loads(path.read_text())
    rounds = log["rounds"][1:] or log["rounds"]
    last = log["rounds"][-1]
    n = len(rounds)
    mean = lambda key: sum(r[key] or 0.0 for r in rounds) / n  # noqa: E731
    seconds = mean("seconds")
    worker = mean("worker_seconds")
    split_merge = mean("split_seconds") + mean("merge_seconds")
    return {
        "round_s": seconds,
        "train_s": worker,
        "split_merge_s": split_merge,
        "other_s": max(0.0, seconds - worker - split_merge),
        "eval_s": last["eval_seconds"],
        "mb_per_round": sum(r["bytes_to_workers"] + r["bytes_from_workers"] for r in rounds) / n / 1e6,
        "val": last["val"],
    }


def held_bytes(way: str, rank: int, hidden: int, m: int) -> int:
    full, sub, shard = param_counts(hidden, m)
    if way in ("full", "ddp"):
        return 4 * full
    if way == "fsdp":
        return 4 * full // m
    if way == "central":
        return 4 * (full + sub) if rank == 0 else 4 * sub
    return 4 * (shard + sub)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="data root holding planetoid/Cora")
    parser.add_argument("--hidden", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--m", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=1)
    parser.add_argument("--budget-gb", type=float, default=8.0, help="memory of the machine one process stands for")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one attempt may take")
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=WAYS)
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="sharded ranks keep glibc's default (GIST_KEEP_FREED_MEMORY=1): what the memory release costs",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.keep_freed_memory:
        os.environ[KEEP_FREED_MEMORY_ENV] = "1"  # the attempts inherit it

    bare = bare_rss()
    budget = args.budget_gb * GB
    load = os.getloadavg()[0]  # before any attempt: the work of others
    rows, failed_at = [], {}
    raw: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for hidden in args.hidden:
            for way in args.ways:
                full, sub, shard = param_counts(hidden, args.m)
                if way in failed_at:
                    rows.append(_row(hidden, way, f"not tried (over budget at {failed_at[way]})", None, None, bare))
                    continue
                log = Path(tmp) / f"{way}-{hidden}.json"
                print(f"hidden {hidden}, {way} ...", file=sys.stderr, flush=True)
                result = attempt(command(way, args, hidden, log), budget, args.timeout)
                stats: Optional[dict] = summarise_log(log) if result["outcome"] == "ok" and log.exists() else None
                if result["outcome"] != "ok":
                    failed_at[way] = hidden
                    print(result["tail"], file=sys.stderr)
                raw.append({"hidden": hidden, "way": way, **result, **(stats or {})})
                rows.append(_row(hidden, way, result["outcome"], result, stats, bare, args.m))
    notes = [
        f"3-layer GraphSAGE on Cora, ζ = {args.local_steps}, {args.rounds} rounds (evaluation after the last; "
        f"seconds per round: the mean over the rounds after the first), "
        f"m = {args.m} real processes for GIST, `ddp` and `fsdp` (1 thread each), 2 threads for `full`; seed 0. "
        f"Budget: {args.budget_gb:g} GB per process (a process above it is killed: out of memory on a machine of that "
        f"size). A bare `import torch, torch_geometric` process holds {bare / GB:.2f} GB.",
        "",
        "Freed memory: "
        + (
            "sharded ranks keep glibc's default (`--keep-freed-memory`): freed blocks below its mmap threshold stay "
            "in the process for reuse."
            if args.keep_freed_memory
            else "sharded ranks return every freed block of 1 MiB or more to the system at once (`gist.host_memory`)."
        ),
        "",
        "Columns: peak resident memory per process (rank 0 first); *above bare / held*: (peak − bare) divided by the "
        "parameter bytes the process holds (full and ddp: |θ|; central rank 0: |θ| + its sub-network, other ranks: "
        "their sub-network; sharded: |θ|/m + its sub-network; fsdp: |θ|/m), the largest over the processes; seconds "
        "per round (mean) and "
        "their split: local steps (slowest worker), split + merge, the rest (transfers, waiting); the evaluation "
        "after the last round; parameter MB moved per round.",
        "",
        "Targets from issue 11: every worker process at most 3× its sub-network's parameter bytes above bare, and "
        "with `sharded` no process above 2× (|θ|/m + its sub-network).",
        "",
        f"Machine load when the benchmark started (1-minute load average, {os.cpu_count()} cores): {load:.1f}"
        + (
            ": other work shared the cores, so read the memory columns only; the seconds are not this benchmark's."
            if load > 0.5
            else " (idle)."
        ),
    ]
    header = ["hidden", "way", "outcome", "|θ| (GB)", "peak per process (GB)", "above bare / held",
              "s/round", "train", "split+merge", "rest", "eval s", "MB/round", "val"]  # fmt: skip
    emit(markdown_table_report("Ultra-wide GraphSAGE: memory and time per process", notes, header, rows), args.out)
    if args.out:
        Path(args.out).with_suffix(".json").write_text(json.dumps(raw, indent=1))


def _row(
    hidden: int,
    way: str,
    outcome: str,
    result: Optional[dict],
    stats: Optional[dict],
    bare: int,
    m: int = 4,
) -> str:
    full = param_counts(hidden, m)[0]
    cells = [str(hidden), way, outcome, f"{4 * full / GB:.2f}"]
    if result is None:
        return "| " + " | ".join(cells + ["—"] * 9) + " |"
    peaks = result["rank_peaks"]
    ratio = max((p - bare) / held_bytes(way, r, hidden, m) for r, p in enumerate(peaks))
    cells += [" / ".join(f"{p / GB:.2f}" for p in peaks), f"{ratio:.1f}×"]
    if stats is None:
        cells += ["—"] * 7
    else:
        cells += [f"{stats['round_s']:.1f}", f"{stats['train_s']:.1f}", f"{stats['split_merge_s']:.2f}"]
        cells += [f"{stats['other_s']:.1f}", f"{stats['eval_s']:.1f}", f"{stats['mb_per_round']:.0f}"]
        cells += [f"{stats['val']:.3f}"]
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
