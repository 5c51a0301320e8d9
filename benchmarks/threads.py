"""How torch's CPU threads behave when another process shares the cores.

Times one ``gist train`` run (a fresh process each time, so that thread
settings take effect from the start) with 1 thread and with every core
(OpenMP threads that spin while they wait, and ones that sleep), once on the
otherwise idle machine and once beside one competing CPU-bound process (a
single-threaded busy loop, as another job on the machine would be). The
ratio ``loaded / idle`` is what oversubscription costs.

Usage::

    python benchmarks/threads.py [--out results/threads.md] [--repeats 2] [-- GIST TRAIN FLAGS]

Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

import torch
from _report import emit

DEFAULT_RUN = [
    "--dataset", "csbm", "--method", "full", "--model", "sage", "--hidden", "256",
    "--local-steps", "5", "--rounds", "40", "--norm", "batch_norm",
]  # fmt: skip
BUSY_LOOP = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"


@contextmanager
def competitor(on: bool) -> Iterator[None]:
    """One single-threaded CPU-bound process beside the run, if ``on``."""
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        time.sleep(0.5)
        yield
    finally:
        proc.kill()
        proc.wait()


def time_run(flags: list[str], threads: Optional[int], env: dict[str, str]) -> float:
    cmd = [sys.executable, "-m", "gist", "train", *flags, "--no-progress", "--root", "/tmp/gist-threads-bench"]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return time.perf_counter() - started


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the Markdown report here")
    parser.add_argument("--repeats", type=int, default=2, help="runs per cell (median)")
    parser.add_argument("flags", nargs="*", help="`gist train` flags of the timed run")
    args = parser.parse_args(argv)
    flags = args.flags or DEFAULT_RUN
    cores = os.cpu_count() or 1
    rows = []
    for threads, policy in ((1, "PASSIVE"), (cores, "ACTIVE"), (cores, "PASSIVE")):
        env = {**os.environ, "OMP_WAIT_POLICY": policy}
        cells = []
        for loaded in (False, True):
            with competitor(loaded):
                times = [time_run(flags, threads, env) for _ in range(args.repeats)]
            cells.append(statistics.median(times))
        rows.append((threads, policy, *cells))
    lines = [
        "# Torch threads and a competing process",
        "",
        f"Made by: `python benchmarks/threads.py{' --out ' + args.out if args.out else ''}` "
        f"(torch {torch.__version__}, {cores} cores, median of {args.repeats} runs per cell)",
        "",
        f"Timed: `gist train {' '.join(flags)}` (whole process: start-up, data, training, evaluation).",
        "Loaded: beside one single-threaded CPU-bound process.",
        "",
        "OMP_WAIT_POLICY: ACTIVE threads spin while they wait for each other, PASSIVE ones sleep",
        "(`gist` sets PASSIVE unless the variable is set; it changes no result, only the time).",
        "",
        "| torch threads | OMP_WAIT_POLICY | idle (s) | loaded (s) | loaded / idle |",
        "|---|---|---|---|---|",
    ]
    for threads, policy, idle, loaded in rows:
        lines.append(f"| {threads} | {policy} | {idle:.1f} | {loaded:.1f} | {loaded / idle:.2f} |")
    emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
