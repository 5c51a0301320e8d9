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
    g.add_argument("--subnets", "-m", type=_positive_int, default=d.subnets, help="sub-networks m")
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
    g.add_argument("--log", default=None, metavar="PATH", help="write the run's JSON log here")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _train(args: argparse.Namespace) -> int:
    from .data import DatasetNotFoundError
    from .nn.slicing import SplitError
    from .run import run_training

    settings = RunSettings(**{k: getattr(args, k) for k in RunSettings.field_names()})
    try:
        log = run_training(settings, progress=not args.no_progress, log_path=args.log)
    except (DatasetNotFoundError, SplitError, ValueError) as exc:
        print(f"gist train: error: {exc}", file=sys.stderr)
        return 2
    s = log["summary"]
    print(
        f"{settings.dataset} {settings.model} L={settings.layers} d={settings.hidden} "
        f"m={settings.subnets} ζ={settings.local_steps} rounds={s['rounds']} ({settings.data_mode}): "
        f"best val {s['best_val']:.4f} (round {s['best_round']}), test at best val "
        f"{s['test_at_best_val']:.4f}, {s['bytes_per_worker'] / 1e6:.2f} MB per worker "
        f"({s['bytes_total'] / 1e6:.2f} MB total), {s['seconds']:.1f} s"
    )
    if args.log:
        print(f"log written to {args.log}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gist", description="GIST for PyTorch Geometric")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return _train(args)
    raise AssertionError(args.command)  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
