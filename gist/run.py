"""One GIST training run from flat settings: dataset, model, round loop, log."""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

import torch

from .nn.models import build_model
from .train import GISTConfig, GISTTrainer, LocalConfig


@dataclass
class RunSettings:
    """Every setting of a run; the CLI flags of ``gist train`` map onto these."""

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
    """
    from .data import load_dataset

    if settings.threads:
        torch.set_num_threads(settings.threads)
    cfg = settings.gist_config()
    cfg.validate()
    started = time.perf_counter()
    dataset = load_dataset(settings.dataset, root=settings.root, seed=settings.seed)
    load_seconds = time.perf_counter() - started
    torch.manual_seed(settings.seed)
    model = build_model(settings.model, dataset.num_features, settings.hidden, dataset.num_classes,
                        settings.layers, dropout=settings.dropout,
                        norm=None if settings.norm == "none" else settings.norm)
    trainer = GISTTrainer(model, dataset.data, cfg)
    trainer.fit(progress=progress)
    summary = trainer.summary()
    summary["load_seconds"] = load_seconds
    log = {
        "config": {**asdict(settings), "dataset_split": dataset.split, "transport": "in-process"},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "threads": torch.get_num_threads()},
        "rounds": [asdict(r) for r in trainer.history],
        "summary": summary,
    }
    if log_path is not None:
        write_json(log, log_path)
    return log


def write_json(obj: Any, path: str | Path) -> None:
    """Write JSON atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1, allow_nan=True)
    os.replace(tmp, path)
