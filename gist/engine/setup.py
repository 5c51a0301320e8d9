"""What a run builds from its config: the dataset, the model and, in a
``torch.distributed`` job, the graph this process holds."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch_geometric.data import Data

from .. import data as datasets
from ..comm.group import DistContext, run_collective
from ..config import RunConfig
from ..data import NodeDataset
from ..errors import ConfigError
from ..graph.parts import ensure_partitions, load_part, partition_dir, read_meta
from ..nn.models import build_model, first_conv, takes_sparse_features


def load_run_dataset(cfg: RunConfig) -> NodeDataset:
    """The whole dataset of ``cfg`` (its split seeded by ``cfg.seed``)."""
    return datasets.load_dataset(cfg.data.dataset, root=cfg.data.root, seed=cfg.seed)


def build_stock_model(cfg: RunConfig, num_features: int, num_classes: int) -> nn.Module:
    """The stock PyG model ``cfg.model`` describes (parameters drawn from the
    global RNG); a GCN takes the normalised graph, computed once per graph
    (:class:`~gist.nn.PrenormalizedGCN`), where the adjacency is sparse.
    ``ValueError`` if ``cfg.data.sparse_features`` is set for a model that
    cannot take sparse features (:func:`~gist.nn.models.takes_sparse_features`)."""
    m = cfg.model
    norm = None if cfg.norm == "none" else cfg.norm
    model = build_model(
        m.kind,
        num_features,
        m.hidden,
        num_classes,
        m.layers,
        dropout=m.dropout,
        norm=norm,
        prenormalized=cfg.data.sparse_adjacency,
    )
    if cfg.data.sparse_features and not takes_sparse_features(model):
        raise ConfigError(
            f"--sparse-features needs a model whose first layer multiplies the node features by a "
            f"weight (GCNConv: --model gcn); the first layer of --model {m.kind} "
            f"({type(first_conv(model)).__name__}) aggregates the raw features first"
        )
    return model


def full_model(cfg: RunConfig, num_features: int, num_classes: int) -> nn.Module:
    """The full-width model, initialised under ``torch.manual_seed(cfg.seed)``."""
    torch.manual_seed(cfg.seed)
    return build_stock_model(cfg, num_features, num_classes)


@dataclass
class OwnGraph:
    """The graph one process trains on, and what it knows of the dataset."""

    data: Data
    num_features: int
    num_classes: int
    split: str


@dataclass
class RankSetup:
    """One process of a ``torch.distributed`` job: its context and what it may load.

    Methods build their part of the job from it
    (:meth:`gist.engine.RoundDriver.distributed`)."""

    cfg: RunConfig
    ctx: DistContext
    progress: bool = True
    split: Optional[str] = None
    """The dataset's split, once this process has loaded its graph."""

    @property
    def partitioned(self) -> bool:
        return self.cfg.workers_hold_parts

    def prepare(self) -> None:
        """Check the world size; in ``partitioned`` mode rank 0 writes the
        per-part files once (a no-op when ``gist partition`` made them) while
        the other ranks wait."""
        self.cfg.check_processes(self.ctx.world_size)
        if self.cfg.dist.threads is None:
            local = int(os.environ.get("LOCAL_WORLD_SIZE", self.ctx.world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
        if not self.partitioned:
            return
        if self.ctx.rank == 0:
            d = self.cfg.data
            ensure_partitions(
                d.root, d.dataset, self.cfg.subnets, d.partitioner, self.cfg.seed, d.halo_hops, progress=self.progress
            )
        run_collective(self.ctx, "set-up (rank 0 writing the part files)", dist.barrier)

    def check_checkpoint_folder(self) -> None:
        """For a method whose every rank writes its own piece of each checkpoint
        beside ``--checkpoint`` (a sharded model): where the run checkpoints or
        resumes, :meth:`check_shared_folder` of the checkpoint's folder."""
        if self.cfg.checkpoint.every or self.cfg.checkpoint.resume:
            self.check_shared_folder(Path(self.cfg.checkpoint.path).absolute().parent, "--checkpoint")

    def check_shared_folder(self, folder: Path, flag: str) -> None:
        """:class:`~gist.errors.ConfigError`, on every rank, unless every rank
        sees the file rank 0 writes into ``folder`` (given as ``flag``): a
        folder on a file system that every host shares."""
        ctx = self.ctx
        token = [uuid.uuid4().hex if ctx.rank == 0 else None]
        run_collective(ctx, f"set-up (checking {flag})", lambda: dist.broadcast_object_list(token, src=0))
        probe = folder / f".gist-shared-{token[0]}"
        if ctx.rank == 0:
            folder.mkdir(parents=True, exist_ok=True)
            probe.write_text(token[0])
        run_collective(ctx, f"set-up (checking {flag})", dist.barrier)
        try:
            sees = probe.read_text() == token[0]
        except OSError:
            sees = False
        seen: list[Optional[bool]] = [None] * ctx.world_size
        run_collective(ctx, f"set-up (checking {flag})", lambda: dist.all_gather_object(seen, sees))
        if ctx.rank == 0:
            probe.unlink(missing_ok=True)
        blind = [rank for rank, ok in enumerate(seen) if not ok]
        if blind:
            ranks = ", ".join(map(str, blind))
            raise ConfigError(
                f"{flag} {folder}: rank{'s' if len(blind) > 1 else ''} {ranks} cannot see the file rank 0 wrote "
                f"there, so the hosts do not share that folder; every rank of --method {self.cfg.method} "
                f"writes its own piece of each checkpoint beside {flag}: point it at a folder every host "
                f"sees (a shared file system)"
            )

    def load_dataset(self) -> NodeDataset:
        dataset = load_run_dataset(self.cfg)
        self.split = dataset.split
        return dataset

    def own_graph(self) -> OwnGraph:
        """The graph this rank trains on, loaded where it lives: the whole
        dataset (``replicated``), or only its own part file (``partitioned``)."""
        if not self.partitioned:
            ds = self.load_dataset()
            return OwnGraph(ds.data, ds.num_features, ds.num_classes, ds.split)
        d = self.cfg.data
        part_dir = partition_dir(d.root, d.dataset, self.cfg.subnets, d.partitioner, self.cfg.seed, d.halo_hops)
        info = read_meta(part_dir)
        self.split = info.split
        return OwnGraph(load_part(part_dir, self.ctx.rank), info.num_features, info.num_classes, info.split)

    def full_model(self, num_features: int, num_classes: int) -> nn.Module:
        return full_model(self.cfg, num_features, num_classes)

    def model_shape(self, num_features: int, num_classes: int) -> nn.Module:
        """The full model's structure on the ``meta`` device (no memory)."""
        with torch.device("meta"):
            return build_stock_model(self.cfg, num_features, num_classes)
