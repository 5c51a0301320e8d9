"""What a run builds from its config: the dataset, the model, the evaluator,
and, in a ``torch.distributed`` job, the graph this process holds."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch_geometric.data import Data

from ..comm.dist import DistContext, collective
from ..config import RunConfig
from ..data import NodeDataset, load_dataset
from ..devices import coordinator_device
from ..graph import with_sparse_features
from ..graph.parts import ensure_partitions, load_part, partition_dir, read_meta
from ..nn.models import build_model, first_conv, takes_sparse_features
from .evaluation import Evaluator, accuracy_evaluator, node_evaluator, sampled_view


def load_run_dataset(cfg: RunConfig) -> NodeDataset:
    """The whole dataset of ``cfg`` (its split seeded by ``cfg.seed``)."""
    return load_dataset(cfg.data.dataset, root=cfg.data.root, seed=cfg.seed)


def build_stock_model(cfg: RunConfig, num_features: int, num_classes: int) -> nn.Module:
    """The stock PyG model ``cfg.model`` describes (parameters drawn from the
    global RNG); a GCN takes the normalised graph, computed once per graph
    (:class:`~gist.nn.PrenormalizedGCN`), where the adjacency is sparse.
    ``ValueError`` if ``cfg.data.sparse_features`` is set for a model that
    cannot take sparse features (:func:`~gist.nn.models.takes_sparse_features`)."""
    m = cfg.model
    norm = None if m.norm == "none" else m.norm
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
        raise ValueError(
            f"--sparse-features needs a model whose first layer multiplies the node features by a "
            f"weight (GCNConv: --model gcn); the first layer of --model {m.kind} "
            f"({type(first_conv(model)).__name__}) aggregates the raw features first"
        )
    return model


def full_model(cfg: RunConfig, num_features: int, num_classes: int) -> nn.Module:
    """The full-width model, initialised under ``torch.manual_seed(cfg.seed)``."""
    torch.manual_seed(cfg.seed)
    return build_stock_model(cfg, num_features, num_classes)


def coordinator_evaluator(cfg: RunConfig, data: Data, device: Optional[torch.device] = None) -> tuple[Evaluator, str]:
    """The evaluator of the full model on ``data`` and what it is called in
    the run log: ``ogb.nodeproppred.Evaluator`` for ``ogbn-*`` datasets, else
    accuracy (the same number); with ``cfg.eval_nodes``, on a seeded sample
    of that many nodes per split (:func:`~gist.engine.evaluation.sampled_view`).
    The graph it scores on is moved to ``device`` (default the coordinator's,
    :func:`~gist.devices.coordinator_device`), where the model must live."""
    where = ""
    if cfg.eval_nodes is not None:
        view = sampled_view(data, cfg.eval_nodes, cfg.model.layers, cfg.seed)
        where = (
            f" on {cfg.eval_nodes} sampled nodes per split (seed {cfg.seed}), computed on their "
            f"{cfg.model.layers + 1}-hop neighbourhood ({view.num_nodes} of {data.num_nodes} nodes)"
        )
        data = view
    data = data.to(coordinator_device(cfg) if device is None else device)
    if cfg.data.sparse_features:
        data = with_sparse_features(data)
    ogb = node_evaluator(cfg.data.dataset, data, cfg.data.sparse_adjacency)
    if ogb is not None:
        return _on(ogb, data), f"ogb.nodeproppred.Evaluator({cfg.data.dataset!r}){where}"
    return _on(accuracy_evaluator(data, cfg.data.sparse_adjacency), data), f"correct / total{where}"


def _on(evaluator: Evaluator, graph: Data) -> Evaluator:
    """``evaluator`` scoring on ``graph`` whatever graph the caller passes."""
    return lambda model, _: evaluator(model, graph)


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
    (:meth:`gist.methods.Method.distributed`)."""

    cfg: RunConfig
    ctx: DistContext
    progress: bool = True
    split: Optional[str] = None
    """The dataset's split, once this process has loaded its graph."""

    @property
    def partitioned(self) -> bool:
        return self.cfg.evaluates_on_workers

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
        collective(self.ctx, "set-up (rank 0 writing the part files)", dist.barrier)

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

    def evaluator(self, data: Optional[Data]) -> tuple[Optional[Evaluator], str]:
        if data is None:
            return None, "correct / total"
        return coordinator_evaluator(self.cfg, data)
