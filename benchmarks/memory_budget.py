"""The widest model each method trains under a memory cap per process, how accurate, and how fast.

With this much memory per process, what is the widest model I can train,
with which method, how accurate is it, and how long does it take?

Every method trains the same 3-layer model on the same graph, width after
width, under one memory cap per process (:mod:`_memory`: a process above it is
killed, the cell recorded as *over budget*, and that method is not tried at
wider widths of the same model, data mode and link):

* ``full``: the whole model and its Adam state in one process (2 threads);
* ``ddp``, ``local-sgd``, ``fsdp``: ``m`` processes (1 thread each) on
  torch.distributed (gloo);
* ``gist-central``: GIST, rank 0 holding the full model;
* ``gist-sharded``: GIST with ``--coordinator sharded`` (every rank ``1/m`` of it);
* ``gist-sharded-carried``: the same, each owner also keeping Adam's two
  moments of its rows across rounds (``--optimizer-state carried``, float32:
  three times its shard; the partitioned recipe's default carries the second
  moment only, twice its shard).

Each cell is one ``gist train`` command: ``--rounds`` rounds of ``--local-steps``
optimizer steps per worker, every method scored on the whole graph after every
round. The learning rate follows the width: ``lr = --lr × min(1, --lr-ref /
hidden)`` (Adam moves every coordinate by about ``lr`` a step, so a layer's
output moves by about ``fan-in × lr``: keeping that fixed as the width grows
is μP's rule for Adam's hidden layers). With ``--bandwidth 1gbit`` the
processes talk over a loopback shaped to that rate (``gist train --bandwidth``).

Reported per cell: whether it fits, the peak resident memory of its largest
process, seconds per round and per step (mean over the rounds after the
first, training only), training MB moved per round (every worker's, both
directions), the best validation accuracy, the training seconds until the
round that reached it, and whether it was still rising (its best in the last
quarter of rounds beats the best before by more than 0.005). A summary per
model, data mode and link answers the question above.

Cells already in ``--out``'s JSON are kept (a long benchmark resumes where it
stopped); ``--retabulate`` rewrites the report from the JSON alone.

Usage::

    python benchmarks/memory_budget.py --root DATA [--dataset cora] [--models sage gcn]
        [--data-modes replicated partitioned] [--bandwidth none 1gbit] [--hidden 256 1024 4096 8192 16384]
        [--methods full ddp local-sgd fsdp gist-central gist-sharded gist-sharded-carried] [--m 4] [--budget-gb 2]
        [--rounds 4] [--local-steps 10] [--out results/memory_budget.md]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Optional

from _memory import GB, attempt, bare_rss
from _report import emit, markdown_report, markdown_table, script_command

METHODS: dict[str, list[str]] = {
    "full": ["--method", "full", "--threads", "2"],
    "ddp": ["--method", "ddp"],
    "local-sgd": ["--method", "local-sgd"],
    "fsdp": ["--method", "fsdp"],
    "gist-central": ["--method", "gist", "--coordinator", "central"],
    "gist-sharded": ["--method", "gist", "--coordinator", "sharded"],
    "gist-sharded-carried": ["--method", "gist", "--coordinator", "sharded", "--optimizer-state", "carried"],
}
"""Each method's own arguments of ``gist train``; every one but ``full`` runs in ``m`` processes."""
DEFAULT_METHODS = ("full", "ddp", "local-sgd", "fsdp", "gist-central", "gist-sharded")
"""What ``--methods`` runs unless told (``gist-sharded-carried`` on demand)."""
SETTINGS = ("dataset", "seed", "rounds", "local_steps", "m", "budget_gb", "lr", "lr_ref")
"""What every cell of one report shares (kept in its JSON: a resumed run must pass the same)."""
WHOLE_MODEL = ("full", "ddp", "local-sgd")
"""The methods in which some process holds the whole model and its optimizer state."""


def learning_rate(hidden: int, base: float, ref: int) -> float:
    """``base × min(1, ref / hidden)`` (module docstring)."""
    return base * min(1.0, ref / hidden)


def command(args: argparse.Namespace, cell: dict, log: Path) -> list[str]:
    """The ``gist train`` command of one cell."""
    cmd = [sys.executable, "-m", "gist", "train", "--dataset", args.dataset, "--root", args.root]
    cmd += ["--model", cell["model"], "--layers", "3", "--hidden", str(cell["hidden"])]
    cmd += ["--data-mode", cell["data_mode"], "--lr", f"{cell['lr']:g}", "--seed", str(args.seed)]
    cmd += ["--rounds", str(args.rounds), "--local-steps", str(args.local_steps), "--eval-every", "1"]
    cmd += ["--log", str(log), "--no-progress", *METHODS[cell["method"]]]
    if cell["method"] != "full":
        cmd += ["--subnets", str(args.m), "--procs", str(args.m), "--threads", "1", "--timeout", "900"]
        if cell["link"] != "none":
            cmd += ["--bandwidth", cell["link"]]
    return cmd


def summarise_log(path: Path, local_steps: int) -> dict:
    """What the report reads of a run log."""
    log = json.loads(path.read_text())
    rounds = log["rounds"]
    vals = [r["val"] if r["val"] is not None else float("-inf") for r in rounds]
    best = max(range(len(vals)), key=lambda i: vals[i])
    elapsed = list(itertools.accumulate(r["seconds"] for r in rounds))  # training seconds at each round's end
    later = rounds[1:] or rounds
    quarter = max(1, len(vals) // 4)
    return {
        "best_val": vals[best],
        "test_at_best": rounds[best]["test"],
        "best_round": best,
        "s_to_best": elapsed[best],
        "round_s": sum(r["seconds"] for r in later) / len(later),
        "step_s": sum(r["seconds"] for r in later) / len(later) / local_steps,
        "eval_s": sum(r["eval_seconds"] or 0.0 for r in rounds),
        "mb_per_round": sum(_training_bytes(r, log["ledger"]) for r in later) / len(later) / 1e6,
        "rising": len(vals) > quarter and max(vals[-quarter:]) > max(vals[:-quarter]) + 0.005,
        "curve": [[seconds, val] for seconds, val in zip(elapsed, vals)],
    }


def _training_bytes(record: dict, ledger: list[dict]) -> int:
    """A round's training bytes: the parameters both ways, and carried
    optimizer state (the ledger's ``optim`` kind, which the round's totals leave out)."""
    optim = sum(t["nbytes"] for t in ledger if t["kind"] == "optim" and t["round"] == record["round"])
    return record["bytes_to_workers"] + record["bytes_from_workers"] + optim


def cell_key(cell: dict) -> tuple:
    return (cell["model"], cell["data_mode"], cell["link"], cell["hidden"], cell["method"])


def planned_cells(args: argparse.Namespace) -> Iterator[dict]:
    """Every cell asked for, width after width within each model, data mode and link."""
    for model, mode, link, hidden, method in itertools.product(
        args.models, args.data_modes, args.bandwidth, args.hidden, args.methods
    ):
        lr = learning_rate(hidden, args.lr, args.lr_ref)
        yield {"model": model, "data_mode": mode, "link": link, "hidden": hidden, "method": method, "lr": lr}


def run_cell(args: argparse.Namespace, cell: dict, folder: Path) -> dict:
    """One cell's ``gist train`` under the cap: the cell with its outcome, peak and (when it finished) its numbers."""
    log = folder / f"{'-'.join(map(str, cell_key(cell)))}.json"
    print(f"{cell['model']} {cell['data_mode']} {cell['link']} hidden {cell['hidden']}: {cell['method']} ...",
          file=sys.stderr, flush=True)  # fmt: skip
    result = attempt(command(args, cell, log), args.budget_gb * GB, args.timeout)
    if result["outcome"] != "ok":
        print(result["tail"], file=sys.stderr)
    stats = summarise_log(log, args.local_steps) if result["outcome"] == "ok" else {}
    peak, others = max(result["rank_peaks"]), result["others_cpu"]
    return {**cell, "outcome": result["outcome"], "peak": peak, **stats, "others_cpu": others}


def run_cells(args: argparse.Namespace, done: dict[tuple, dict], save: Callable[[], None]) -> None:
    """Every cell not in ``done``; a method that fails at a width (over the
    cap, timed out) is not tried at the wider ones."""
    stopped: dict[tuple, str] = {}  # (model, mode, link, method) -> why wider widths are not tried
    with tempfile.TemporaryDirectory() as tmp:
        for cell in planned_cells(args):
            key = cell_key(cell)
            lane = (*key[:3], cell["method"])
            if key not in done:
                if lane in stopped:
                    done[key] = {**cell, "outcome": f"not tried ({stopped[lane]})"}
                else:
                    done[key] = run_cell(args, cell, Path(tmp))
                save()
            outcome = done[key]["outcome"]
            if not outcome.startswith(("ok", "not tried")):
                stopped.setdefault(lane, f"{outcome.split(' (')[0]} at {cell['hidden']}")


# ---------------------------------------------------------------------- the report


def _fmt(value: Optional[float], spec: str) -> str:
    return "—" if value is None else format(value, spec)


def cell_row(c: dict) -> str:
    ok = c["outcome"] == "ok"
    cells = [
        str(c["hidden"]),
        f"{c['lr']:.3g}",
        c["method"],
        c["outcome"],
        _fmt(c.get("peak", None) and c["peak"] / GB, ".2f"),
    ]
    if ok:
        cells += [f"{c['round_s']:.1f}", f"{c['step_s']:.2f}", f"{c['mb_per_round']:.0f}", f"{c['best_val']:.3f}"]
        cells += [
            f"{c['test_at_best']:.3f}",
            str(c["best_round"]),
            f"{c['s_to_best']:.0f}",
            "yes" if c["rising"] else "",
        ]
    else:
        cells += ["—"] * 8
    cells.append(_fmt(c.get("others_cpu") and 100 * c["others_cpu"], ".0f"))
    return "| " + " | ".join(cells) + " |"


def summary(cells: Sequence[dict], cap: float) -> list[str]:
    """The answer for one model, data mode and link (lines of Markdown)."""
    ok = [c for c in cells if c["outcome"] == "ok"]
    if not ok:
        return ["No method fit the cap at any width tried."]
    lines = []
    methods = list(dict.fromkeys(c["method"] for c in cells))
    for method in methods:
        mine = [c for c in ok if c["method"] == method]
        unfinished = [c for c in cells if c["method"] == method and c["outcome"].startswith("timed out")]
        if not mine:
            lines.append(f"- `{method}`: fits at no width tried.")
            continue
        widest, best = max(mine, key=lambda c: c["hidden"]), max(mine, key=lambda c: c["best_val"])
        lines.append(
            f"- `{method}`: widest that fits and finished {widest['hidden']} (val {widest['best_val']:.3f} in "
            f"{widest['s_to_best']:.0f} s); most accurate at hidden {best['hidden']}: {best['best_val']:.3f} "
            f"in {best['s_to_best']:.0f} s"
            + "".join(f"; at {c['hidden']} under the cap but {c['outcome']}" for c in unfinished)
        )
    top = max(ok, key=lambda c: c["best_val"])
    lines.append(
        f"- Most accurate under {cap:g} GB per process: `{top['method']}` at hidden {top['hidden']}, "
        f"{top['best_val']:.3f} in {top['s_to_best']:.0f} s."
    )
    if any(c["method"] in WHOLE_MODEL for c in cells):  # the question only where they were tried
        widest_whole = max((c["hidden"] for c in ok if c["method"] in WHOLE_MODEL), default=0)
        lines.append(f"- Widest any method holding the whole model trains: {widest_whole or 'none'}.")
        beyond = [c for c in ok if c["method"] == "gist-sharded" and c["hidden"] > widest_whole]
        if beyond:
            b = max(beyond, key=lambda c: c["best_val"])
            gap = top["best_val"] - b["best_val"]
            lines.append(
                f"- Beyond that width, `gist-sharded` at hidden {b['hidden']} reaches {b['best_val']:.3f}: "
                f"{100 * gap:.1f} points under the best above ({'within' if gap <= 0.01 else 'not within'} 1 point)."
            )
    for h in sorted({c["hidden"] for c in ok}, reverse=True):
        pair = {c["method"]: c for c in ok if c["hidden"] == h and c["method"] in ("fsdp", "gist-sharded")}
        if len(pair) == 2:
            g, f = pair["gist-sharded"], pair["fsdp"]
            target = min(g["best_val"], f["best_val"])
            tg, tf = _time_to(g, target), _time_to(f, target)
            ratio = f" (gist-sharded / fsdp = {tg / tf:.2f})" if tg is not None and tf else ""
            lines.append(
                f"- Widest where `fsdp` and `gist-sharded` both fit: {h}. Training seconds to their common best "
                f"({target:.3f}): gist-sharded {_fmt(tg, '.0f')}, fsdp {_fmt(tf, '.0f')}{ratio}; seconds per "
                f"step {g['step_s']:.2f} vs {f['step_s']:.2f}."
            )
            break
    return lines


def _time_to(cell: dict, target: float) -> Optional[float]:
    """Training seconds until the first round at or above ``target`` (``None``: never), from the cell's curve."""
    return next((seconds for seconds, val in cell["curve"] if val >= target), None)


def report(args: argparse.Namespace, done: dict[tuple, dict], bare: int, commands: Sequence[str]) -> str:
    cores = os.cpu_count() or 1
    notes = [
        f"{args.dataset} (seed {args.seed}), 3-layer models, {args.rounds} rounds × ζ = {args.local_steps} "
        f"optimizer steps per worker, scored on the whole graph after every round; m = {args.m} processes "
        f"(1 thread each) for every method but `full` (one process, 2 threads), all on this {cores}-core "
        f"machine: the {args.m} processes share its cores, so their seconds are about {args.m / cores:g}× those of "
        f"{args.m} machines. Cap: {args.budget_gb:g} GB per process (a process above it is killed: an "
        f"out-of-memory on a machine of that size). A bare `import torch, torch_geometric` process holds "
        f"{bare / GB:.2f} GB. Learning rate {args.lr:g} × min(1, {args.lr_ref} / hidden).",
        "",
        "Columns: peak = the largest process's peak resident memory; s/round and s/step: training seconds "
        "(mean over the rounds after the first), evaluation not included; MB/round: training bytes moved per "
        "round, every worker's, both directions (carried optimizer state included); best val and the test "
        "accuracy at that round; s to best: "
        "training seconds until that round; rising: still rising when the run stopped (not converged).",
        "",
        "Optimizer state: `full`, `ddp` and `fsdp` keep one Adam over the whole run, each local SGD worker keeps "
        "its own; GIST (the published algorithm on replicated data) starts every sub-network's Adam afresh each "
        "round"
        + (
            " (`gist-sharded-carried`: each owner keeps Adam's two moments and a step count per entry of its rows "
            "across rounds, and they travel with the sub-networks)"
            if any(c["method"] == "gist-sharded-carried" for c in done.values())
            else ""
        )
        + ". The policies differ: that is part of what each row compares.",
        "",
        "others %: the share of the machine's cores that processes outside the cell kept busy while it ran "
        "(0: it ran alone; the sampler's own few percent included).",
    ]
    header = ["hidden", "lr", "method", "outcome", "peak GB", "s/round", "s/step", "MB/round", "best val",
              "test", "best round", "s to best", "rising", "others %"]  # fmt: skip
    sections: list[str] = []
    groups: dict[tuple, list[dict]] = {}
    for c in done.values():
        groups.setdefault((c["model"], c["data_mode"], c["link"]), []).append(c)
    for (model, mode, link), cells in groups.items():
        cells.sort(key=lambda c: (c["hidden"], list(METHODS).index(c["method"])))
        sections += [f"## {model}, {mode} data, link {link}", "", *summary(cells, args.budget_gb), ""]
        sections += [*markdown_table(header, [cell_row(c) for c in cells]), ""]
    title = "Under a memory cap: the widest model each method trains, how accurate, how fast"
    return markdown_report(title, notes, sections, commands)


def main(argv: Optional[Iterable[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="data root (../shared/data copied somewhere writable)")
    parser.add_argument("--dataset", default="cora")
    parser.add_argument("--models", nargs="+", default=["sage"], choices=["sage", "gcn"])
    parser.add_argument("--data-modes", nargs="+", default=["replicated"], choices=["replicated", "partitioned"])
    parser.add_argument("--bandwidth", nargs="+", default=["none"], help="links: none (unshaped) or a rate (1gbit)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 1024, 4096, 8192, 16384])
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS))
    parser.add_argument("--m", type=int, default=4)
    parser.add_argument("--budget-gb", type=float, default=2.0, help="memory cap per process")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.01, help="learning rate at widths up to --lr-ref")
    parser.add_argument("--lr-ref", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one cell may take")
    parser.add_argument("--out", default=None, help="the report (Markdown); its cells are kept beside it as .json")
    parser.add_argument("--retabulate", action="store_true", help="rewrite the report from --out's JSON only")
    args = parser.parse_args(argv)

    raw = Path(args.out).with_suffix(".json") if args.out else None
    settings = {name: getattr(args, name) for name in SETTINGS}
    if raw is not None and raw.exists():
        stored = json.loads(raw.read_text())
        differ = [
            f"--{n.replace('_', '-')} {stored['settings'][n]}" for n in SETTINGS if stored["settings"][n] != settings[n]
        ]
        if differ and not args.retabulate:
            parser.error(f"{raw} holds cells made with {', '.join(differ)}: pass those, or another --out")
        vars(args).update(stored["settings"])
    elif args.retabulate:
        parser.error("--retabulate needs --out naming a report whose .json exists")
    else:
        stored = {"settings": settings, "bare": bare_rss(), "cells": []}
    done = {cell_key(c): c for c in stored["cells"]}

    def save() -> None:
        if raw is not None:
            raw.parent.mkdir(parents=True, exist_ok=True)
            stored["cells"] = list(done.values())
            raw.write_text(json.dumps(stored, indent=1))

    if not args.retabulate:
        before = len(done)
        run_cells(args, done, save)
        commands = stored.setdefault("commands", [])
        if len(done) > before and commands[-1:] != [script_command()]:  # it made cells: the report names it (once)
            commands.append(script_command())
            save()
    emit(report(args, done, stored["bare"], stored.get("commands") or [script_command()]), args.out)


if __name__ == "__main__":
    main()
