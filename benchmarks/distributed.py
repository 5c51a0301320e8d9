"""GIST in real processes against the single-process full model, on Coauthor CS.

Runs ``gist train`` twice as subprocesses (3-layer GCN, hidden 1024, ζ = 10):
the full model in one process (m = 1), and GIST with m = 2 processes on
``torch.distributed`` (gloo). Reports, from the runs' JSON logs and a psutil
poll of every process: time to reach the full model's best validation
accuracy minus 1 point, bytes moved, each process's peak resident memory,
and the distributed transport's per-round overhead (round time not spent in
local training) as a share of the round.

Usage::

    python benchmarks/distributed.py --root DATA_ROOT [--rounds 8] [--out results/distributed.md]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from _report import emit


def run_and_watch(cmd: list[str]) -> dict[int, int]:
    """Run ``cmd``; return the peak RSS (bytes) of it and each of its descendants."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks: dict[int, int] = {}
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    peaks[p.pid] = max(peaks.get(p.pid, 0), p.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.2)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{out[-3000:]}")
    print(out.strip().splitlines()[-2] if out.strip() else "", flush=True)
    return peaks


def time_to_target(log: dict, target: float) -> tuple[float | None, int | None, int | None]:
    """Seconds, bytes per worker and rounds until validation first reaches ``target``."""
    elapsed, moved = 0.0, 0
    m = log["config"]["subnets"]
    for r in log["rounds"]:
        elapsed += r["seconds"] + (r["eval_seconds"] or 0.0)
        moved += r["bytes_to_workers"] + r["bytes_from_workers"]
        if r["val"] is not None and r["val"] >= target:
            return elapsed, moved // m, r["round"] + 1
    return None, None, None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    command = "python benchmarks/distributed.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    common = [
        "--dataset",
        "coauthor-cs",
        "--root",
        args.root,
        "--model",
        "gcn",
        "--layers",
        "3",
        "--hidden",
        str(args.hidden),
        "--local-steps",
        str(args.local_steps),
        "--rounds",
        str(args.rounds),
        "--lr",
        "0.01",
        "--dropout",
        "0.5",
        "--no-progress",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        full_log, dist_log = Path(tmp) / "full.json", Path(tmp) / "dist.json"
        full_peaks = run_and_watch(
            [sys.executable, "-m", "gist", "train", *common, "--subnets", "1", "--threads", "2", "--log", str(full_log)]
        )
        dist_peaks = run_and_watch(
            [sys.executable, "-m", "gist", "train", *common, "--procs", "2", "--log", str(dist_log)]
        )
        full, dist = json.loads(full_log.read_text()), json.loads(dist_log.read_text())

    target = full["summary"]["best_val"] - 0.01
    rows = []
    for name, log, peaks in (
        ("full model, 1 process (2 threads)", full, full_peaks),
        ("GIST m = 2, 2 processes (1 thread each)", dist, dist_peaks),
    ):
        seconds, moved, rounds = time_to_target(log, target)
        rss = sorted(peaks.values(), reverse=True)
        rows.append(
            (
                name,
                log["summary"]["best_val"],
                log["summary"]["test_at_best_val"],
                seconds,
                rounds,
                moved,
                log["summary"]["bytes_per_worker"],
                log["summary"]["seconds"],
                rss,
            )
        )
    overhead = [(r["seconds"] - r["worker_seconds"]) / r["seconds"] for r in dist["rounds"]]

    def fmt(x, spec):
        return "never" if x is None else format(x, spec)

    lines = [
        "# GIST in real processes vs the full model (Coauthor CS)",
        "",
        f"Made by: `{command}`",
        "",
        f"3-layer GCN, hidden {args.hidden}, ζ = {args.local_steps}, {args.rounds} rounds, lr 0.01, dropout 0.5, "
        f"replicated full-batch data, gloo on loopback, 2 CPU cores. Target: the full model's best validation "
        f"accuracy minus 1 point = {target:.4f}.",
        "",
        "| run | best val | test at best val | seconds to target | rounds to target | MB/worker to target "
        "| MB/worker total | seconds total | peak RSS per process (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, best, test, seconds, rounds, moved, total, secs, rss in rows:
        lines.append(
            f"| {name} | {best:.4f} | {test:.4f} | {fmt(seconds, '.1f')} | {fmt(rounds, 'd')} | "
            f"{fmt(None if moved is None else moved / 1e6, '.1f')} | {total / 1e6:.1f} | {secs:.1f} | "
            + ", ".join(f"{r / 1e6:.0f}" for r in rss)
            + " |"
        )
    lines += [
        "",
        "Peak RSS lists every process of the run, largest first (for `--procs` the launcher comes too).",
        "",
        f"Distributed transport overhead per round (round time not spent in rank 0's wait for the slowest "
        f"worker's local steps: split, slice, send, receive, merge): median "
        f"{100 * statistics.median(overhead):.2f}% of the round, max {100 * max(overhead):.2f}% "
        f"(median round {statistics.median(r['seconds'] for r in dist['rounds']):.2f} s).",
        "",
    ]
    text = "\n".join(lines)
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
