"""The ``gist`` command."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .run import RunSettings


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    d = RunSettings()
    p = sub.add_parser(
        "train",
        help="train a GCN/GraphSAGE with GIST and report accuracy and communication",
        description="Train a wide GCN/GraphSAGE with GIST: m sub-networks, ζ local steps per round.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset,
                   help="dataset name (csbm, cora, citeseer, pubmed, coauthor-cs, coauthor-physics, "
                        "amazon-computers, amazon-photo, ogbn-arxiv, ogbn-products)")
    g.add_argument("--root", default=d.root,
                   help="data root (default: $GIST_DATA_ROOT or ./datasets)")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=["gcn", "sage"], default=d.model)
    g.add_argument("--layers", type=_positive_int, default=d.layers, help="message-passing layers L")
    g.add_argument("--hidden", type=_positive_int, default=d.hidden, help="hidden width d")
    g.add_argument("--norm", choices=["none", "batch_norm", "layer_norm"], default=d.norm)
    g.add_argument("--dropout", type=float, default=d.dropout)
    g = p.add_argument_group("GIST")
    g.add_argument("--method", choices=["gist", "ddp", "local-sgd"], default=d.method,
                   help="gist, or a baseline on the same data and byte ledger: ddp (gradients all-reduced "
                        "every step) or local-sgd (parameters averaged every --local-steps steps)")
    g.add_argument("--subnets", "-m", type=_positive_int, default=None,
                   help=f"sub-networks m (default: --procs, the torchrun world size, or {d.subnets})")
    g.add_argument("--local-steps", type=_positive_int, default=d.local_steps, help="local steps ζ per round")
    g.add_argument("--rounds", type=_positive_int, default=d.rounds)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--optimizer", choices=["adam", "sgd"], default=d.optimizer)
    g.add_argument("--data-mode", choices=["replicated", "partitioned"], default=d.data_mode)
    g.add_argument("--partitioner", choices=["metis", "random"], default=d.partitioner,
                   help="node partitioner for --data-mode partitioned")
    g.add_argument("--halo-hops", type=int, default=d.halo_hops,
                   help="partitioned mode: k-hop halo nodes each worker also holds (read-only)")
    g.add_argument("--batching", choices=["full", "cluster"], default=d.batching,
                   help="full-batch steps, or Cluster-GCN mini-batches of METIS parts")
    g.add_argument("--num-clusters", type=_positive_int, default=d.num_clusters)
    g.add_argument("--clusters-per-batch", type=_positive_int, default=d.clusters_per_batch)
    g = p.add_argument_group("run")
    g.add_argument("--eval-every", type=_positive_int, default=d.eval_every, help="evaluate every k rounds")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    g.add_argument("--log", "--log-file", dest="log", default=None, metavar="PATH",
                   help="write the run's JSON log here (spell it --log-file after torchrun, whose own "
                        "options would otherwise claim --log)")
    g.add_argument("--save-model", default=None, metavar="PATH",
                   help="write the final full model's state_dict here (torch.save)")
    g.add_argument("--checkpoint", default=d.checkpoint, metavar="PATH",
                   help="checkpoint file (written with --checkpoint-every, read with --resume)")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="K",
                   help="save the full model, round, history and RNG state every K rounds (0: never)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run saved in --checkpoint (same settings; --rounds may grow)")
    g = p.add_argument_group("distributed")
    g.add_argument("--backend", choices=["local", "dist"], default=d.backend,
                   help="local: all m workers in this process; dist: this process is one rank of a "
                        "torchrun job (one process per worker)")
    g.add_argument("--procs", type=_positive_int, default=None, metavar="M",
                   help="spawn M local processes on torch.distributed (loopback only); implies --backend dist")
    g.add_argument("--dist-backend", choices=["gloo", "nccl"], default=None,
                   help="torch.distributed backend (default: nccl with CUDA, else gloo)")
    g.add_argument("--timeout", type=float, default=d.timeout,
                   help="seconds rank 0 waits for a worker before failing with an error naming it; "
                        "workers wait twice as long for rank 0")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _train(args: argparse.Namespace) -> int:
    from .data import DatasetNotFoundError
    from .nn.slicing import SplitError
    from .run import run_training

    import os

    from .distributed import WorkerFailure
    from .run import LaunchFailure

    if args.subnets is None:
        world = os.environ.get("WORLD_SIZE") if args.backend == "dist" else None
        args.subnets = args.procs or (int(world) if world else RunSettings.subnets)
    if args.procs is not None:
        args.backend = "dist"
    settings = RunSettings(**{k: getattr(args, k) for k in RunSettings.field_names()})
    try:
        if args.procs is not None:
            from .run import launch_local

            log = launch_local(settings, args.procs, progress=not args.no_progress, log_path=args.log)
        else:
            log = run_training(settings, progress=not args.no_progress, log_path=args.log)
    except (DatasetNotFoundError, SplitError, ValueError, WorkerFailure, LaunchFailure) as exc:
        print(f"gist train: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a spawned process failed: its traceback is already on stderr
        if type(exc).__name__ in ("ProcessRaisedException", "ProcessExitedException"):
            lines = [line for line in str(exc).splitlines() if line.strip()]
            head = next((line for line in lines if "terminated" in line), "")
            print(f"gist train: error: {head.strip('- ')}: {lines[-1] if lines else exc}", file=sys.stderr)
            return 1
        raise
    if not log:  # a worker rank of a torchrun job: rank 0 reports
        return 0
    s = log["summary"]
    print(
        f"{settings.method} {settings.dataset} {settings.model} L={settings.layers} d={settings.hidden} "
        f"m={settings.subnets} ζ={settings.local_steps} rounds={s['rounds']} ({settings.data_mode}): "
        f"best val {s['best_val']:.4f} (round {s['best_round']}), test at best val "
        f"{s['test_at_best_val']:.4f}, {s['bytes_per_worker'] / 1e6:.2f} MB per worker "
        f"({s['bytes_total'] / 1e6:.2f} MB total), {s['seconds']:.1f} s"
    )
    if args.log:
        print(f"log written to {args.log}")
    return 0


def _add_sweep_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a sweep config (methods x m x ζ x seeds) and tabulate accuracy versus communication",
        description="Run every run of a TOML sweep config that is not done yet, then write "
                    "table.md, table.csv and plots into the results directory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("config", help="sweep config (TOML), e.g. experiments/cora.toml")
    p.add_argument("--results", default="results", metavar="DIR",
                   help="results go to DIR/<config name>/")
    p.add_argument("--out", default=None, metavar="DIR", help="exact results directory (overrides --results)")
    p.add_argument("--root", default=None, help="data root for every run (overrides the config)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the config's seeds")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads per run")
    p.add_argument("--processes", action="store_true",
                   help="run each run as m real processes on torch.distributed (loopback)")
    p.add_argument("--dry-run", action="store_true", help="list what would run, run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_sweep)

    p = sub.add_parser(
        "table",
        help="re-tabulate a results directory written by `gist sweep`, without re-running",
        description="Read RESULTS_DIR/runs/*.json and write table.md, table.csv and plots.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("results_dir", metavar="RESULTS_DIR")
    p.add_argument("--target-drop", type=float, default=None,
                   help="target = full model's best validation minus this (default: the config's, else 0.01)")
    p.add_argument("--target", type=float, default=None, help="absolute validation target instead")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=_table)


def _sweep(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .sweep import SweepError, command_line, describe, load_config, results_dir_for, run_sweep
    from .tables import tabulate

    try:
        cfg = load_config(args.config)
        overrides = {k: v for k, v in (("root", args.root), ("threads", args.threads)) if v is not None}
        if overrides:
            cfg.settings = replace(cfg.settings, **overrides)
        if args.seeds is not None:
            cfg.seeds = args.seeds
        if args.processes:
            cfg.processes = True
        out = args.out or results_dir_for(cfg, args.results)
        print(describe(cfg))
        if args.dry_run:
            return 0
        counts = run_sweep(cfg, out, progress=not args.no_progress)
        print(f"sweep {cfg.name}: ran {counts['ran']}, skipped {counts['skipped']} already done; logs in {out}")
        text, _ = tabulate(out, command_line(sys.argv[1:] if args.argv is None else args.argv), cfg)
    except (SweepError, FileNotFoundError) as exc:
        print(f"gist sweep: error: {exc}", file=sys.stderr)
        return 2
    print(text)
    print(f"table written to {out}/table.md")
    return 0


def _table(args: argparse.Namespace) -> int:
    from .sweep import SweepError, command_line
    from .tables import tabulate

    try:
        text, _ = tabulate(args.results_dir, command_line(sys.argv[1:] if args.argv is None else args.argv),
                           target_drop=args.target_drop, target=args.target, plots=not args.no_plots)
    except (SweepError, FileNotFoundError) as exc:
        print(f"gist table: error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gist", description="GIST for PyTorch Geometric")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(sub)
    _add_sweep_parsers(sub)
    from .parts import add_partition_parser

    add_partition_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else None
    if args.command == "train":
        return _train(args)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
