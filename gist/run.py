"""One GIST training run from flat settings: dataset, model, round loop, log."""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Optional

import torch

from .nn.models import build_model
from .train import GISTConfig, GISTTrainer, LocalConfig


METHODS = ("gist", "ddp", "local-sgd")


@dataclass
class RunSettings:
    """Every setting of a run; the CLI flags of ``gist train`` map onto these."""

    method: str = "gist"
    """``gist``, or a baseline on the same data and ledger: ``ddp`` (full model
    per worker, gradients all-reduced every step) or ``local-sgd`` (full model
    per worker, parameters averaged every ``local_steps`` steps)."""
    dataset: str = "csbm"
    root: Optional[str] = None
    model: str = "gcn"
    layers: int = 3
    hidden: int = 256
    norm: str = "none"
    dropout: float = 0.5
    subnets: int = 2
    local_steps: int = 10
    rounds: int = 30
    lr: float = 0.01
    weight_decay: float = 0.0
    optimizer: str = "adam"
    data_mode: str = "replicated"
    partitioner: str = "metis"
    halo_hops: int = 0
    batching: str = "full"
    num_clusters: int = 32
    clusters_per_batch: int = 4
    eval_every: int = 1
    seed: int = 0
    threads: Optional[int] = None
    backend: str = "local"
    """``local``: all workers in this process; ``dist``: one process per worker
    on ``torch.distributed`` (this process is one rank of a torchrun job)."""
    dist_backend: Optional[str] = None
    """``gloo`` or ``nccl``; default NCCL where CUDA is available, else gloo."""
    timeout: float = 60.0
    """Seconds rank 0 waits for a worker before failing with an error naming
    it; workers wait twice as long for rank 0 (``dist`` only)."""
    save_model: Optional[str] = None
    """Write the final full model's ``state_dict`` here (loadable with ``weights_only=True``)."""
    checkpoint: str = "gist-checkpoint.pt"
    """Where checkpoints are written and resumed from."""
    checkpoint_every: int = 0
    """Save a checkpoint every this many rounds (0: never)."""
    resume: bool = False
    """Continue the run saved in ``checkpoint``."""

    def gist_config(self) -> GISTConfig:
        return GISTConfig(
            num_subnets=self.subnets,
            rounds=self.rounds,
            local=LocalConfig(self.local_steps, self.lr, self.weight_decay, self.optimizer),
            data_mode=self.data_mode,
            partitioner=self.partitioner,
            halo_hops=self.halo_hops,
            batching=self.batching,
            num_clusters=self.num_clusters,
            clusters_per_batch=self.clusters_per_batch,
            eval_every=self.eval_every,
            seed=self.seed,
        )

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def run_training(settings: RunSettings, progress: bool = True, log_path: Optional[str | Path] = None) -> dict[str, Any]:
    """Load the dataset, build the model under ``seed``, run GIST, return the log.

    The log has ``config`` (every setting), ``rounds`` (one record per round)
    and ``summary``; it is also written as JSON to ``log_path`` if given.
    With ``backend="dist"`` this process is one rank: rank 0 runs the round
    loop and returns the log; other ranks serve as workers and return ``{}``.
    """
    if settings.backend not in ("local", "dist"):
        raise ValueError(f"backend must be 'local' or 'dist', got {settings.backend!r}")
    if settings.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {settings.method!r}")
    if settings.method != "gist" and (settings.checkpoint_every or settings.resume):
        raise ValueError("checkpoints and --resume are implemented for --method gist only")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    cfg = settings.gist_config()
    cfg.validate()
    if settings.backend == "dist":
        return _run_rank(settings, cfg, progress, log_path)
    started = time.perf_counter()
    dataset = _load(settings)
    load_seconds = time.perf_counter() - started
    model = _full_model(settings, dataset.num_features, dataset.num_classes)
    evaluator = _evaluator(settings, cfg, dataset.data)
    if settings.method == "gist":
        trainer = GISTTrainer(model, dataset.data, cfg, evaluator=evaluator)
    else:
        from .baselines import BaselineTrainer

        trainer = BaselineTrainer(settings.method, model, dataset.data, cfg, evaluator=evaluator)
    _fit(settings, trainer, progress)
    return _finish(settings, dataset.split, trainer, load_seconds, "in-process", log_path)


# Settings that must match between a checkpoint and the run that resumes it.
RESUME_MUST_MATCH = ("dataset", "model", "layers", "hidden", "norm", "dropout", "subnets", "local_steps",
                     "lr", "weight_decay", "optimizer", "data_mode", "partitioner", "halo_hops", "batching",
                     "num_clusters", "clusters_per_batch", "eval_every", "seed")


def _scored_by_ogb(settings: RunSettings, cfg) -> bool:
    """Whether OGB's ``Evaluator`` scores this run: ``ogbn-*`` datasets, except
    partitioned GIST, whose workers sum correct/total counts (the same accuracy)."""
    return settings.dataset.startswith("ogbn-") and not (settings.method == "gist" and cfg.evaluates_on_workers)


def _evaluator(settings: RunSettings, cfg, data):
    """OGB's ``Evaluator`` where :func:`_scored_by_ogb` (else ``None``: the
    trainers' accuracy, or counts summed over the workers)."""
    from .metrics import node_evaluator, ogb_metric

    ogb_metric(settings.dataset)  # fail early for a dataset not scored by accuracy
    if not _scored_by_ogb(settings, cfg):
        return None
    return node_evaluator(settings.dataset, data, cfg.sparse_adjacency)


def _fit(settings: RunSettings, trainer: GISTTrainer, progress: bool) -> None:
    """Resume if asked, run the remaining rounds, checkpoint every K rounds."""
    if settings.resume:
        path = Path(settings.checkpoint)
        if not path.is_file():
            raise ValueError(f"--resume: no checkpoint at {path}")
        state = torch.load(path, weights_only=True)
        saved = state.get("settings", {})
        wrong = [f"{k}: checkpoint {saved.get(k)!r}, now {getattr(settings, k)!r}"
                 for k in RESUME_MUST_MATCH if saved.get(k) != getattr(settings, k)]
        if wrong:
            raise ValueError("--resume with different settings than the checkpoint: " + "; ".join(wrong))
        trainer.load_state_dict(state)

    def save(record) -> None:
        if settings.checkpoint_every and ((record.round + 1) % settings.checkpoint_every == 0
                                          or record.round + 1 == trainer.cfg.rounds):
            save_checkpoint(trainer, settings)

    trainer.fit(progress=progress, callback=save)


def save_checkpoint(trainer: GISTTrainer, settings: RunSettings) -> Path:
    """Write ``trainer.state_dict()`` and the settings atomically to ``settings.checkpoint``."""
    path = Path(settings.checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = trainer.state_dict()
    state["settings"] = asdict(settings)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def _load(settings: RunSettings):
    from .data import load_dataset

    return load_dataset(settings.dataset, root=settings.root, seed=settings.seed)


def _build(settings: RunSettings, num_features: int, num_classes: int) -> torch.nn.Module:
    return build_model(settings.model, num_features, settings.hidden, num_classes, settings.layers,
                       dropout=settings.dropout, norm=None if settings.norm == "none" else settings.norm)


def _full_model(settings: RunSettings, num_features: int, num_classes: int) -> torch.nn.Module:
    """The full-width model, initialised under ``torch.manual_seed(seed)``."""
    torch.manual_seed(settings.seed)
    return _build(settings, num_features, num_classes)


def _finish(settings, split: str, trainer, load_seconds, transport, log_path) -> dict[str, Any]:
    summary = trainer.summary()
    summary["load_seconds"] = load_seconds
    log = {
        "config": {**asdict(settings), "dataset_split": split, "transport": transport},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "threads": torch.get_num_threads()},
        "metric": {"name": "acc",
                    "scored_by": (f"ogb.nodeproppred.Evaluator({settings.dataset!r})"
                                  if _scored_by_ogb(settings, trainer.cfg) else "correct / total")},
        "rounds": [asdict(r) for r in trainer.history],
        "summary": summary,
        "ledger": trainer.ledger.records(),
    }
    if log_path is not None:
        write_json(log, log_path)
    if settings.save_model:
        Path(settings.save_model).parent.mkdir(parents=True, exist_ok=True)
        torch.save(trainer.model.state_dict(), settings.save_model)
    return log


def _run_rank(settings: RunSettings, cfg, progress: bool, log_path) -> dict[str, Any]:
    from .distributed import DistTransport, init_distributed, serve_worker
    from .nn.slicing import build_split_spec
    from .train import make_workers

    ctx = init_distributed(settings.dist_backend, settings.timeout)
    if ctx.world_size != cfg.num_subnets:
        raise ValueError(f"the job has {ctx.world_size} processes but m={cfg.num_subnets}: "
                         f"GIST and its baselines run one process per worker")
    if not settings.threads:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    started = time.perf_counter()
    partitioned = cfg.data_mode == "partitioned" and cfg.num_subnets > 1
    if ctx.rank == 0 and partitioned:
        # Write the per-part files once (a no-op when `gist partition` made them).
        from .parts import ensure_partitions

        ensure_partitions(settings.root, settings.dataset, cfg.num_subnets, cfg.partitioner, cfg.seed,
                          cfg.halo_hops, progress=progress)
    if partitioned:
        import torch.distributed as dist

        dist.barrier()
    if settings.method != "gist":
        return _run_baseline_rank(settings, cfg, ctx, progress, log_path, started, partitioned)
    if ctx.rank == 0:
        if partitioned:
            # Rank 0 holds only part 0 too: the workers evaluate on their parts.
            graph0, num_features, num_classes, split = _worker_graph(settings, cfg, 0)
            data, graphs = None, {0: graph0}
        else:
            dataset = _load(settings)
            data, graphs = dataset.data, None
            num_features, num_classes, split = dataset.num_features, dataset.num_classes, dataset.split
        load_seconds = time.perf_counter() - started
        model = _full_model(settings, num_features, num_classes)
        spec = build_split_spec(model)
        spec.check_subnets(cfg.num_subnets)
        worker0 = make_workers(model, spec, data, cfg, indices=[0], graphs=graphs)[0]
        transport = DistTransport(worker0, ctx)
        try:
            trainer = GISTTrainer(model, data, cfg, transport=transport,
                                  evaluator=_evaluator(settings, cfg, data))
            _fit(settings, trainer, progress)
        except Exception as exc:
            _note_rank0_error(exc)
            raise
        finally:
            transport.close()
        return _finish(settings, split, trainer, load_seconds, f"torch.distributed ({ctx.backend})", log_path)
    graph, num_features, num_classes, _ = _worker_graph(settings, cfg, ctx.rank)
    with torch.device("meta"):
        model = _build(settings, num_features, num_classes)
    spec = build_split_spec(model)
    worker = make_workers(model, spec, None, cfg, indices=[ctx.rank], graphs={ctx.rank: graph})[0]
    serve_worker(worker, ctx, cfg)
    return {}


def _run_baseline_rank(settings: RunSettings, cfg, ctx, progress: bool, log_path, started: float,
                       partitioned: bool) -> dict[str, Any]:
    """One rank of a ``ddp`` / ``local-sgd`` job; rank 0 evaluates on the full graph."""
    import torch.distributed as dist

    from .baselines import BaselineTrainer

    try:
        if ctx.rank == 0:
            dataset = _load(settings)
            graph = _worker_graph(settings, cfg, 0)[0] if partitioned else dataset.data
            load_seconds = time.perf_counter() - started
            model = _full_model(settings, dataset.num_features, dataset.num_classes)
            trainer = BaselineTrainer(settings.method, model, dataset.data, cfg, ctx=ctx, graph=graph,
                                      evaluator=_evaluator(settings, cfg, dataset.data))
            try:
                trainer.fit(progress=progress)
            except Exception as exc:
                _note_rank0_error(exc)
                raise
            return _finish(settings, dataset.split, trainer, load_seconds, f"torch.distributed ({ctx.backend})",
                           log_path)
        graph, num_features, num_classes, _ = _worker_graph(settings, cfg, ctx.rank)
        torch.manual_seed(settings.seed + ctx.rank)  # any initialisation: rank 0's model is broadcast
        model = _build(settings, num_features, num_classes)
        BaselineTrainer(settings.method, model, None, cfg, ctx=ctx, graph=graph).fit(progress=False)
        return {}
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _part_dir(settings: RunSettings, cfg) -> Path:
    from .parts import partition_dir

    return partition_dir(settings.root, settings.dataset, cfg.num_subnets, cfg.partitioner, cfg.seed,
                         cfg.halo_hops)


def _worker_graph(settings: RunSettings, cfg, rank: int):
    """The graph rank ``rank`` trains on, loaded where it lives: the whole
    dataset (``replicated``), or only its own part file (``partitioned``)."""
    if cfg.data_mode == "replicated" or cfg.num_subnets == 1:
        dataset = _load(settings)
        return dataset.data, dataset.num_features, dataset.num_classes, dataset.split
    from .parts import load_part, read_meta

    part_dir = _part_dir(settings, cfg)
    info = read_meta(part_dir)
    return load_part(part_dir, rank), info.num_features, info.num_classes, info.split


def launch_local(settings: RunSettings, procs: int, progress: bool = True,
                 log_path: Optional[str | Path] = None) -> dict[str, Any]:
    """Run ``settings`` as ``procs`` local processes on ``torch.distributed``
    (loopback only) and return rank 0's log.

    If any process fails, the others are stopped and the error is raised.
    """
    import tempfile

    import torch.multiprocessing as mp

    from .distributed import free_port

    if procs < 1:
        raise ValueError(f"procs must be >= 1, got {procs}")
    settings = replace(settings, backend="dist")
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(log_path) if log_path is not None else Path(tmp) / "log.json"
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(procs),
               "LOCAL_WORLD_SIZE": str(procs)}
        rank0_error = Path(tmp) / RANK0_ERROR
        env[RANK0_ERROR_ENV] = str(rank0_error)
        try:
            mp.start_processes(_spawned_rank, args=(settings, env, progress, str(target)),
                               nprocs=procs, start_method="spawn", join=True)
        except mp.ProcessRaisedException as exc:
            # When rank 0 gives up on a worker, the other workers then lose rank 0
            # and raise too; whichever the launcher sees first, rank 0's error
            # names the root cause.
            if exc.error_index != 0 and rank0_error.is_file():
                raise LaunchFailure(rank0_error.read_text()) from exc
            raise
        return json.loads(target.read_text())


RANK0_ERROR = "rank0-error.txt"


class LaunchFailure(RuntimeError):
    """A process of :func:`launch_local` failed; the message is rank 0's error."""


RANK0_ERROR_ENV = "GIST_RANK0_ERROR_FILE"


def _note_rank0_error(exc: BaseException) -> None:
    """Under :func:`launch_local`, leave rank 0's error where the launcher
    finds it; called before rank 0 closes its process group, so before the
    other ranks can notice that it is gone."""
    path = os.environ.get(RANK0_ERROR_ENV)
    if path:
        Path(path).write_text(str(exc) if type(exc).__name__ == "WorkerFailure"
                              else f"rank 0: {type(exc).__name__}: {exc}")


def _spawned_rank(rank: int, settings: RunSettings, env: dict[str, str], progress: bool, log_path: str) -> None:
    os.environ.update(env)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank)})
    run_training(settings, progress=progress and rank == 0, log_path=log_path if rank == 0 else None)


def write_json(obj: Any, path: str | Path) -> None:
    """Write JSON atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1, allow_nan=True)
    os.replace(tmp, path)
