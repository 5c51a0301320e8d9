r"""Local training on one worker: its optimizer, its RNG stream, its batches, its steps.

The pieces every method's workers are made of: a GIST worker's sub-network
(:class:`gist.methods.gist.worker.Worker`) and a data-parallel replica
(:mod:`gist.methods.data_parallel`) both run :func:`local_steps` over a
:class:`~gist.graph.BatchSource` from :func:`make_batch_sources`, drawing
dropout from their own :class:`RNGStream`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data

from ..config import LocalConfig, RunConfig
from ..data import check_graph
from ..devices import worker_device
from ..errors import ConfigError
from ..graph import (
    AdjacencyFormat,
    BatchSource,
    ClusterBatches,
    FullBatch,
    partition_nodes,
    worker_subgraph,
)


def make_optimizer(params, cfg: LocalConfig) -> torch.optim.Optimizer:
    """A fresh optimizer of ``cfg.optimizer`` over ``params``."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class RNGStream:
    """A worker's own RNG stream, swapped into the global generator around its
    computation, so it draws the same numbers in a shared process as alone.

    On a CUDA ``device`` (where dropout draws from that GPU's generator) it
    holds that generator's state too, seeded from the CPU state's seed."""

    def __init__(self, state: Tensor, device: Optional[torch.device] = None) -> None:
        self.state = state.clone()
        self.device = torch.device(device) if device is not None and torch.device(device).type == "cuda" else None
        self.cuda_state: Optional[Tensor] = None
        if self.device is not None:
            self.cuda_state = cuda_rng_state(self.state, self.device)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        outer = torch.get_rng_state()
        torch.set_rng_state(self.state)
        outer_cuda = None
        if self.device is not None:
            outer_cuda = torch.cuda.get_rng_state(self.device)
            torch.cuda.set_rng_state(self.cuda_state, self.device)
        try:
            yield
        finally:
            self.state = torch.get_rng_state()
            torch.set_rng_state(outer)
            if self.device is not None:
                self.cuda_state = torch.cuda.get_rng_state(self.device)
                torch.cuda.set_rng_state(outer_cuda, self.device)

    def reset(self, state: Tensor) -> None:
        """Start again from the CPU ``state`` (and the CUDA state seeded from it)."""
        self.state = state.clone()
        if self.device is not None:
            self.cuda_state = cuda_rng_state(self.state, self.device)


def cuda_rng_state(cpu_state: Tensor, device: torch.device) -> Tensor:
    """The state of ``device``'s generator seeded from the seed of a CPU
    generator state (so a worker's CUDA stream is a function of its seed)."""
    seed = torch.Generator().set_state(cpu_state).initial_seed()
    return torch.Generator(device=device).manual_seed((seed * 2654435761 + 1) % (2**63)).get_state()


def training_loss(
    model: nn.Module, batch: Data, adj: Tensor, logit_offset: Optional[Tensor] = None
) -> Optional[Tensor]:
    r"""Cross-entropy over the batch's training nodes (``None`` if it has none).

    With ``logit_offset`` (GIST's label-prior correction) the loss is taken
    on :math:`f(x) + \log \pi_i - \log \pi` instead of :math:`f(x)`."""
    mask = batch.train_mask
    if not bool(mask.any()):
        return None
    out = model(batch.x, adj)[mask]
    if logit_offset is not None:
        out = out + logit_offset
    return F.cross_entropy(out, batch.y[mask])


class WarnOnce:
    """Calling it warns ``message`` the first time only (never where ``said``:
    the run has already said it, e.g. :func:`warn_parts_without_training_nodes`)."""

    def __init__(self, message: str, said: bool = False) -> None:
        self.message = message
        self.warned = said

    def __call__(self) -> None:
        if not self.warned:
            warnings.warn(self.message, stacklevel=3)
            self.warned = True


def has_training_nodes(graph: Data) -> bool:
    return bool(graph.train_mask.any())


def warn_parts_without_training_nodes(graphs: dict[int, Data]) -> None:
    """One warning for all the workers whose graph holds no training node
    (their local steps are skipped), instead of one per worker per step."""
    empty = sorted(i for i, g in graphs.items() if not has_training_nodes(g))
    if empty:
        names = ", ".join(map(str, empty[:20])) + (f" and {len(empty) - 20} more" if len(empty) > 20 else "")
        warnings.warn(
            f"{len(empty)} of {len(graphs)} workers hold no training node (workers {names}): they skip "
            "their local steps; fewer workers, or --partitioner random, gives every part some",
            stacklevel=3,
        )


def local_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: BatchSource,
    steps: int,
    rng: RNGStream,
    on_empty_batch: WarnOnce,
    logit_offset: Optional[Tensor] = None,
) -> list[float]:
    """``steps`` optimizer steps of ``model`` on ``batches``, drawing dropout
    from ``rng``; a batch without training nodes is skipped (and
    ``on_empty_batch`` called). Returns the losses of the steps taken
    (:func:`training_loss`, with ``logit_offset`` if given)."""
    model.train()
    losses: list[float] = []
    with rng.active():
        for _ in range(steps):
            batch, adj = batches.next_batch()
            optimizer.zero_grad()
            loss = training_loss(model, batch, adj, logit_offset)
            if loss is None:
                on_empty_batch()
                continue
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    return losses


def mean_or_nan(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def worker_graphs(data: Data, cfg: RunConfig) -> list[Data]:
    """The graph each worker trains on: the whole graph (``replicated``) or
    its own part's induced subgraph (``partitioned``); ``data`` is checked
    first (:func:`~gist.data.check_graph`)."""
    check_graph(data)
    if not cfg.workers_hold_parts:  # replicated data, or a single worker
        return [data] * cfg.subnets
    d = cfg.data
    parts = partition_nodes(data.edge_index, data.num_nodes, cfg.subnets, d.partitioner, cfg.seed)
    return [worker_subgraph(data, parts, i, d.halo_hops) for i in range(cfg.subnets)]


def make_batch_sources(
    graphs: dict[int, Data],
    cfg: RunConfig,
    device: Optional[torch.device] = None,
    fmt: Optional[AdjacencyFormat] = None,
) -> dict[int, BatchSource]:
    """Worker ``i``'s batch stream over ``graphs[i]`` moved to ``device``
    (default :func:`worker_device`; one copy per distinct graph), its
    adjacency in ``fmt`` (default: the config's, not normalised), its
    features sparse with ``cfg.data.sparse_features``: full batch,
    or Cluster-GCN batches whose METIS partition is computed once per
    distinct graph and whose order is seeded by ``seed + i``."""
    for i, graph in {id(g): (i, g) for i, g in graphs.items()}.values():
        check_graph(graph, what=f"worker {i}'s graph")
    warn_parts_without_training_nodes(graphs)
    sources: dict[int, BatchSource] = {}
    parts_of: dict[int, Tensor] = {}
    full_of: dict[int, FullBatch] = {}
    on_device: dict[int, Data] = {}
    d = cfg.data
    device = worker_device(cfg) if device is None else device
    fmt = AdjacencyFormat(d.sparse_adjacency) if fmt is None else fmt
    for i, source_graph in graphs.items():
        if id(source_graph) not in on_device:
            on_device[id(source_graph)] = source_graph.to(device)
        g = on_device[id(source_graph)]
        if d.batching == "cluster":
            parts = parts_of.get(id(g))
            if parts is None:
                if d.num_clusters > g.num_nodes:
                    raise ConfigError(f"num_clusters ({d.num_clusters}) exceeds worker {i}'s {g.num_nodes} nodes")
                parts = partition_nodes(source_graph.edge_index.cpu(), g.num_nodes, d.num_clusters, "metis", cfg.seed)
                parts = parts_of[id(g)] = parts.to(device)
            sources[i] = ClusterBatches(
                g,
                d.num_clusters,
                d.clusters_per_batch,
                cfg.seed + i,
                parts=parts,
                fmt=fmt,
                sparse_features=d.sparse_features,
            )
        else:  # a full batch is stateless: workers holding the same graph share it
            if id(g) not in full_of:
                full_of[id(g)] = FullBatch(g, fmt, sparse_features=d.sparse_features)
            sources[i] = full_of[id(g)]
    return sources


def worker_rng_state(seed: int, index: int, round: Optional[int] = None) -> Tensor:
    """RNG state of worker ``index`` (for round ``round``, when given).

    With ``m > 1`` every worker draws its dropout from a stream that is a pure
    function of ``(seed, worker, round)``. With ``m = 1`` worker 0 instead
    continues the coordinator's stream, so that ``m = 1`` is ordinary training.
    """
    key = int(seed) * 7919 + 104729 * int(index)
    if round is not None:
        key = key * 1_000_003 + int(round) + 1
    return torch.Generator().manual_seed(key % (2**63)).get_state()
