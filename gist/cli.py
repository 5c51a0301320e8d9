"""The ``gist`` command: ``train``, ``sweep``, ``table`` and ``partition``.

``gist train``'s flags are made from the run settings of :mod:`gist.config`
(one flag per setting, its default, choices and help from the field) and the
registries of :mod:`gist.registry`. Building the parser imports neither
torch nor PyG (so ``--help`` answers at once); each command imports what it
runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from .config import MAX_SEED, RunConfig, setting_fields
from .errors import ConfigError, GistError
from .files import private_tempdir
from .registry import DATASETS, METHODS, PARTITIONERS
from .settings import annotation, choices_of, number_problem
from .signals import interrupt_status, interrupt_word, sigterm_as_interrupt

TRAIN_GROUPS = {
    None: "training",
    "data": "data",
    "model": "model",
    "local": "local training (each round, on each worker)",
    "checkpoint": "checkpoints and outputs",
    "dist": "distributed",
}
"""The argument groups of the settings every run has; each method's own settings follow in a group of their own."""
DEFAULT_SUBNETS = RunConfig().subnets


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default, said once: not where its help already says it,
    and not for on/off flags or options without one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False) or action.nargs == 0:
            return text
        return super()._get_help_string(action)


def _number(kind: type, low: Optional[float] = None, high: Optional[float] = None):
    """A flag's parser: a ``kind`` (int or float) that :func:`~gist.settings.number_problem` accepts."""

    def parse(text: str) -> Any:
        value = kind(text)
        if kind is int and low is not None and value < low:
            what = "a positive integer" if low == 1 else f"an integer >= {int(low)}"
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        problem = number_problem(value, low, high)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def _int_at_least(low: int):
    return _number(int, low)


def _add_setting(group: argparse._ArgumentGroup, name: str, field: Any, default: Any, owner: Optional[str]) -> None:
    """The flag of setting ``name``; a method's own setting (``owner``) is left
    out of the parsed arguments unless given, so that giving it to another method is an error."""
    meta = field.metadata
    flag = "--" + name.replace("_", "-")
    kwargs: dict[str, Any] = {"dest": name, "default": default, "help": meta["help"]}
    if name == "method":
        kwargs["choices"] = METHODS.names()
        kwargs["help"] += ": " + ", ".join(METHODS.names())
    elif name == "dataset":
        kwargs["help"] += f" ({', '.join(sorted(DATASETS.names()))})"
    elif choices_of(field) is not None:
        kwargs["choices"] = choices_of(field)
    if isinstance(default, bool):
        kwargs["action"] = "store_true"
    elif annotation(field).startswith("Optional[bool"):
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kind = type(default) if default is not None else (str if annotation(field).startswith("Optional[str") else int)
        if annotation(field).startswith("Optional[float") or kind is float:
            kind = float
        kwargs["type"] = _number(kind, meta.get("minimum"), meta.get("maximum")) if kind in (int, float) else kind
    flags = [flag, "-m"] if name == "subnets" else [flag]
    if name == "subnets":
        kwargs["default"] = None
        kwargs["help"] += f" (default: --procs, the torchrun world size, or {DEFAULT_SUBNETS}; 1 for --method full)"
    if owner is not None:
        if default not in (None, False) and "(default" not in kwargs["help"]:
            kwargs["help"] += f" (default: {default})"
        kwargs["default"] = argparse.SUPPRESS
    group.add_argument(*flags, **kwargs)


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a GCN/GraphSAGE with GIST or a baseline and report accuracy and communication",
        description="Train a wide GCN/GraphSAGE with GIST (m sub-networks, ζ local steps per round) or a baseline "
        "on the same data and byte ledger.",
        formatter_class=HelpFormatter,
    )
    groups = {key: p.add_argument_group(title) for key, title in TRAIN_GROUPS.items()}
    for method in METHODS.names():
        groups.setdefault(method, p.add_argument_group(f"{method}'s own settings (only with --method {method})"))
    for name, group, field in setting_fields():
        if field.metadata["cli"]:
            owner = group if group in METHODS else None
            _add_setting(groups[group], name, field, field.default, owner)
    out = groups["checkpoint"]
    out.add_argument(
        "--log",
        "--log-file",
        dest="log",
        default=None,
        metavar="PATH",
        help="write the run's JSON log here (spell it --log-file after torchrun, whose own "
        "options would otherwise claim --log)",
    )
    out.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    groups["dist"].add_argument(
        "--procs",
        type=_int_at_least(1),
        default=None,
        metavar="M",
        help="spawn M processes on torch.distributed (on this host's loopback, or spread over --hosts virtual "
        "hosts); implies --backend dist",
    )
    p.set_defaults(func=_train)


def _train_config(args: argparse.Namespace) -> RunConfig:
    """The run's config from the parsed flags: every run's settings, then the
    method's own; a setting of another method is a :class:`~gist.errors.ConfigError` naming it."""
    from .methods import default_subnets

    if args.hosts > 1 and args.procs is None:
        raise ConfigError(f"--hosts {args.hosts} spreads the processes that --procs M starts: give --procs")
    if args.procs is not None:
        args.backend = "dist"
    if args.subnets is None:
        world = os.environ.get("WORLD_SIZE") if args.backend == "dist" else None
        args.subnets = default_subnets(args.method, args.procs or (int(world) if world else DEFAULT_SUBNETS))
    given = {name: getattr(args, name) for name, _, f in setting_fields() if f.metadata["cli"] and hasattr(args, name)}
    return RunConfig.from_flat(**given)


def _train(args: argparse.Namespace) -> int:
    from .multihost import launch
    from .run import SHAPED_ENV, RunFailed, run_training

    progress = not args.no_progress
    cfg: Optional[RunConfig] = None
    try:
        cfg = _train_config(args)
        if args.procs is not None:
            log = launch(cfg, args.procs, progress=progress, log_path=args.log)
        else:
            log = run_training(cfg, progress=progress, log_path=args.log)
    except KeyboardInterrupt as exc:
        if SHAPED_ENV not in os.environ and cfg is not None:  # (in a shaped namespace, the launcher outside says it)
            print(f"gist train: {_interrupted(exc, cfg, args.log)}", file=sys.stderr)
        return interrupt_status()
    except GistError as exc:
        kept = f"; the log of the rounds before it is in {args.log}" if isinstance(exc, RunFailed) and args.log else ""
        print(f"gist train: error: {exc}{kept}", file=sys.stderr)
        return exc.exit_status
    if not log:  # a worker rank of a torchrun job: rank 0 reports
        return 0
    s, m = log["summary"], cfg.model
    if s.get("resumed_from") == cfg.rounds:
        print(
            f"gist train: nothing left to train: {cfg.checkpoint.path} already holds all {cfg.rounds} rounds "
            f"(pass a larger --rounds to continue); its summary follows",
            file=sys.stderr,
        )
    print(
        f"{cfg.method} {cfg.data.dataset} {m.kind} L={m.layers} d={m.hidden} m={cfg.subnets} "
        f"ζ={cfg.local.local_steps} rounds={s['rounds']} ({cfg.data.mode}): best val {s['best_val']:.4f} "
        f"(round {s['best_round']}), test at best val {s['test_at_best_val']:.4f}, "
        f"{s['bytes_per_worker'] / 1e6:.2f} MB per worker ({s['bytes_total'] / 1e6:.2f} MB total), "
        f"{s['seconds']:.1f} s"
    )
    if args.log:
        print(f"log written to {args.log}")
    return 0


def _interrupted(exc: KeyboardInterrupt, cfg: RunConfig, log_path: Optional[str]) -> str:
    """One line for Ctrl-C: where the run stopped, what was kept, how to go on."""
    round, log = getattr(exc, "round", None), getattr(exc, "log", None)  # a gist.run.RunInterrupted
    said = [f"{interrupt_word()} in round {round}" if round is not None else interrupt_word()]
    if log_path and log is not None:
        said.append(f"the rounds before it are in {log_path}")
    checkpoint = cfg.checkpoint.path
    if cfg.checkpoint.every and checkpoint and Path(checkpoint).is_file():
        said.append(f"to continue from the last checkpoint ({checkpoint}), run the same command with --resume")
    else:
        said.append("no checkpoint was written (--checkpoint-every K makes a run resumable)")
    return "; ".join(said)


def _add_sweep_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a sweep config (methods x m x ζ x seeds) and tabulate accuracy versus communication",
        description="Run every run of a TOML sweep config that is not done yet, then write "
        "table.md, table.csv and plots into the results directory.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("config", help="sweep config (TOML), e.g. experiments/cora.toml")
    p.add_argument("--results", default="results", metavar="DIR", help="results go to DIR/<config name>/")
    p.add_argument("--out", default=None, metavar="DIR", help="exact results directory (overrides --results)")
    p.add_argument("--root", default=None, help="data root for every run (overrides the config)")
    p.add_argument(
        "--seeds", type=_number(int, 0, MAX_SEED), nargs="+", default=None, help="override the config's seeds"
    )
    p.add_argument("--threads", type=_int_at_least(1), default=None, help="torch CPU threads per run")
    p.add_argument(
        "--bandwidth",
        default=None,
        help="with --processes: run each run's processes in a network namespace whose loopback is shaped to "
        "this rate (e.g. 100mbit, 1gbit; needs root and iproute2); overrides the config",
    )
    p.add_argument(
        "--processes", action="store_true", help="run each run as m real processes on torch.distributed (loopback)"
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="run again the runs whose logs record a failure (divergence)"
    )
    p.add_argument("--dry-run", action="store_true", help="list what would run, run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_sweep)

    p = sub.add_parser(
        "table",
        help="re-tabulate a results directory written by `gist sweep`, without re-running",
        description="Read RESULTS_DIR/runs/*.json and write table.md, table.csv and plots.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("results_dir", metavar="RESULTS_DIR")
    p.add_argument(
        "--target-drop",
        type=float,
        default=None,
        help="target = full model's best validation minus this (default: the config's, else 0.01)",
    )
    p.add_argument("--target", type=float, default=None, help="absolute validation target instead")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=_table)


def _argv(args: argparse.Namespace) -> list[str]:
    return sys.argv[1:] if args.argv is None else args.argv


def _sweep(args: argparse.Namespace) -> int:
    from .harness.sweep import (
        RUNS_DIR,
        command_line,
        describe,
        load_config,
        pending,
        plan,
        results_dir_for,
        run_sweep,
        sweep_lock,
    )
    from .harness.tables import tabulate

    try:
        cfg = load_config(args.config)
        pairs = (("root", args.root), ("threads", args.threads), ("bandwidth", args.bandwidth))
        overrides = {k: v for k, v in pairs if v is not None}
        if overrides:
            cfg.settings = cfg.settings.replace(**overrides)
        if args.seeds is not None:
            cfg.seeds = args.seeds
        if args.processes:
            cfg.processes = True
        out = args.out or results_dir_for(cfg, args.results)
        print(describe(cfg))
        if args.dry_run:
            planned = plan(cfg)
            _, todo = pending(planned, Path(out) / RUNS_DIR, args.retry_failed)
            print(f"sweep {cfg.name}: {len(planned) - len(todo)} of {len(planned)} runs done in {Path(out) / RUNS_DIR}")
            print(f"would run {len(todo)}:" if todo else "nothing to run")
            for run in todo:
                print(f"  {run.run_id}")
            return 0
        with sweep_lock(Path(out)):  # one sweep at a time in a results folder
            try:
                counts = run_sweep(cfg, out, progress=not args.no_progress, retry_failed=args.retry_failed)
            except KeyboardInterrupt:
                print(
                    f"gist sweep: {interrupt_word()}; the finished runs are kept in {Path(out) / 'runs'}; "
                    "run the same command again to run the rest",
                    file=sys.stderr,
                )
                return interrupt_status()
            failed = f" ({counts['failed']} failed)" if counts["failed"] else ""
            done = f"skipped {counts['skipped']} already done"
            print(f"sweep {cfg.name}: ran {counts['ran']}{failed}, {done}; logs in {out}")
            text, _ = tabulate(
                out, command_line(_argv(args)), cfg, say=lambda line: print(f"gist sweep: {line}", file=sys.stderr)
            )
    except GistError as exc:
        print(f"gist sweep: error: {exc}", file=sys.stderr)
        return 2
    print(text)
    print(f"table written to {out}/table.md")
    return 0


def _table(args: argparse.Namespace) -> int:
    from .harness.sweep import command_line
    from .harness.tables import tabulate

    try:
        text, _ = tabulate(
            args.results_dir,
            command_line(_argv(args)),
            target_drop=args.target_drop,
            target=args.target,
            plots=not args.no_plots,
            say=lambda line: print(f"gist table: {line}", file=sys.stderr),
        )
    except GistError as exc:
        print(f"gist table: error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


def _add_partition_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "partition",
        help="split a dataset once into per-part files for --data-mode partitioned",
        description="Split a dataset into P parts (METIS or random) and write one file per part "
        "under <root>/partitions/, so that worker i of a partitioned run reads part i "
        "alone. Existing complete partitions are reused unless --force. Prints, per part, its "
        "nodes, the edges inside it and those it cuts, its boundary nodes, the connected "
        "components of its subgraph and the label mix of its training nodes.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--dataset", default="csbm", help="dataset name (as for gist train)")
    p.add_argument("--root", default=None, help="data root (default: $GIST_DATA_ROOT or ./datasets)")
    p.add_argument(
        "--parts", type=_int_at_least(1), required=True, help="number of parts (= workers m of the partitioned run)"
    )
    p.add_argument("--partitioner", choices=list(PARTITIONERS), default="metis")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the partitioner")
    p.add_argument(
        "--halo-hops", type=_int_at_least(0), default=0, help="k-hop read-only halo nodes stored with each part"
    )
    p.add_argument("--force", action="store_true", help="rewrite even if complete files exist")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_partition)


def _partition(args: argparse.Namespace) -> int:
    """Write (or reuse) the parts and print a per-part summary."""
    from .graph.parts import describe_parts, prepare_partitions, read_meta

    try:
        d, wrote = prepare_partitions(
            args.root,
            args.dataset,
            args.parts,
            args.partitioner,
            args.seed,
            args.halo_hops,
            progress=not args.no_progress,
            force=args.force,
        )
        info = read_meta(d)
    except GistError as exc:
        print(f"gist partition: error: {exc}", file=sys.stderr)
        return 2
    state = "wrote" if wrote else "reused existing"
    print(
        f"{state} {info.num_parts} parts of {info.dataset} ({info.num_nodes} nodes, "
        f"{info.partitioner}, seed {info.seed}, halo {info.halo_hops}) in {d}"
    )
    for line in describe_parts(info):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gist", description="GIST for PyTorch Geometric")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(sub)
    _add_sweep_parsers(sub)
    _add_partition_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else None
    with private_tempdir(), sigterm_as_interrupt():
        return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
