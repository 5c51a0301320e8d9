"""Every CUDA check in one command, and a table of what each method costs on the GPU.

Runs the CUDA tests (``tests/test_devices.py``: GIST on CUDA against the CPU,
with the coordinator on the CPU, and two ranks per method on NCCL, or on
gloo sharing one GPU where there is only one), then trains each method on
the GPU, in one process and with two processes, and on the CPU for
comparison, and prints a table: method, device, backend, seconds per round,
peak GPU memory of the coordinator's process, best validation accuracy.

Usage (on a machine with CUDA; elsewhere it says so and exits with status 2)::

    python benchmarks/gpu_check.py [--root DATA_ROOT] [--dataset cora] [--rounds 20] [--out results/gpu.md]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch
from _report import emit, markdown_table_report

from gist.config import RunConfig
from gist.run import launch_local, run_training

REPO = Path(__file__).resolve().parents[1]


def cases(two_gpus: bool) -> list[tuple[str, str, str, int]]:
    """``(method, device, dist backend or "-", processes)`` to time."""
    backend = "nccl" if two_gpus else "gloo"
    out = []
    for method in ("full", "gist", "ddp", "local-sgd"):
        out.append((method, "cpu", "-", 1))
        out.append((method, "cuda", "-", 1))
        if method != "full":
            out.append((method, "cuda", backend, 2))
    out.append(("gist", "cuda (coordinator cpu)", "-", 1))
    return out


def run_case(base: RunConfig, method: str, device: str, backend: str, procs: int) -> dict:
    coordinator = "cpu" if "coordinator cpu" in device else None
    cfg = base.replace(
        method=method,
        subnets=1 if method == "full" else 2,
        device=device.split(" ")[0],
        coordinator_device=coordinator,
        dist_backend=None if backend == "-" else backend,
    )
    torch.cuda.reset_peak_memory_stats()
    log = launch_local(cfg, procs, progress=False) if procs > 1 else run_training(cfg, progress=False)
    s = log["summary"]
    return {
        "seconds_per_round": s["seconds"] / s["rounds"],
        "peak_gpu_mb": log["environment"].get("peak_gpu_bytes", 0) / 2**20,
        "best_val": s["best_val"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="data root (default: $GIST_DATA_ROOT or ./datasets)")
    parser.add_argument("--dataset", default="cora")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--skip-tests", action="store_true", help="only the table")
    parser.add_argument("--out", default=None, help="also write the report here (e.g. results/gpu.md)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; the CUDA paths are tested only where CUDA exists", file=sys.stderr)
        return 2
    tests = "skipped (--skip-tests)"
    if not args.skip_tests:
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_devices.py"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        tests = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
        print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n", flush=True)
        if proc.returncode != 0:
            print("gpu_check: the CUDA tests failed", file=sys.stderr)
            return 1
    base = RunConfig.from_flat(
        dataset=args.dataset, root=args.root, hidden=args.hidden, local_steps=5, rounds=args.rounds, threads=4
    )
    two = torch.cuda.device_count() >= 2
    rows = []
    for method, device, backend, procs in cases(two):
        r = run_case(base, method, device, backend, procs)
        print(f"{method:9s} {device:22s} {backend:5s} procs={procs} {r}", flush=True)
        rows.append(
            f"| {method} | {device} | {backend} | {procs} | {r['seconds_per_round']:.3f} | "
            f"{r['peak_gpu_mb']:.0f} | {r['best_val']:.4f} |"
        )
    gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    notes = [
        f"GPUs: {gpus}; torch {torch.__version__}; {args.dataset}, GCN 3 x {args.hidden}, m = 2 "
        f"(full: m = 1), ζ = 5, {args.rounds} rounds, seed 0. CUDA tests: {tests}.",
        "With one GPU the two ranks share it over gloo (NCCL refuses two ranks on one device).",
        "Peak GPU memory: the coordinator's process (rank 0).",
    ]
    header = ["method", "device", "backend", "processes", "s / round", "peak GPU MiB", "best val"]
    text = markdown_table_report("GIST on GPUs: every method, in one process and in two", notes, header, rows)
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
