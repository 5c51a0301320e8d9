r"""A worker: its data, its RNG stream, its optimizer steps.

:class:`Worker` holds one narrow GIST sub-network and its own graph data;
each round it loads the flat buffer it is sent, runs ``ζ`` optimizer steps
and returns its buffer and a :class:`~gist.comm.WorkerStats` report. The
pieces it is made of (batch sources, RNG streams, the training loss, the
optimizer) serve the data-parallel methods' replicas too.

With ``m = 1`` the only sub-network is the full model and the worker keeps
its optimizer and RNG stream between rounds: GIST with ``m = 1`` is ordinary
training, step for step.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data

from ..comm import WorkerReport, WorkerStats
from ..config import LocalConfig, RunConfig, gist_options
from ..devices import worker_device
from ..graph import (
    SPARSE,
    AdjacencyFormat,
    BatchSource,
    ClusterBatches,
    FullBatch,
    graph_tensors,
    partition_nodes,
    worker_subgraph,
)
from ..nn.slicing import SplitSpec
from ..subnets import FlatLayout, SubnetSchedule, build_subnet, load_subnet_state, subnet_layout, subnet_state
from .corrections import (
    batch_norm_moments,
    label_counts,
    pooled_batch_norm_stats,
    prior_offset,
    set_batch_norm_stats,
)
from .evaluation import correct_counts


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
    """Calling it warns ``message`` the first time only."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.warned = False

    def __call__(self) -> None:
        if not self.warned:
            warnings.warn(self.message, stacklevel=3)
            self.warned = True


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
    its own part's induced subgraph (``partitioned``)."""
    if not cfg.evaluates_on_workers:  # replicated data, or a single worker
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
                    raise ValueError(f"num_clusters ({d.num_clusters}) exceeds worker {i}'s {g.num_nodes} nodes")
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


class Worker:
    """Holds one narrow sub-network and its own graph data.

    Each round it loads the parameters it is sent, runs ``local_steps``
    optimizer steps, and returns its parameters. Its dropout and sampling
    randomness come from its own RNG state, so it draws the same numbers
    whether it runs in the coordinator's process or in a process of its own.

    ``schedule`` says how wide its sub-network is each round (``d/s`` for
    ``s`` groups; the full width in a finishing phase); a sub-network of each
    width it needs is built once, on first use. With a label-prior
    correction set (:meth:`set_label_prior`) its loss is taken on the
    corrected logits. To evaluate, it holds the full model only between
    :meth:`load_eval_model` and :meth:`drop_eval_model`. Its buffers travel
    in ``wire_dtype`` (:meth:`gist.subnets.FlatLayout.encode`).
    """

    def __init__(
        self,
        index: int,
        template: nn.Module,
        spec: SplitSpec,
        schedule: SubnetSchedule,
        batches: BatchSource,
        cfg: LocalConfig,
        rng_state: Tensor,
        keep_optimizer: bool = False,
        seed: Optional[int] = None,
        fmt: AdjacencyFormat = SPARSE,
        wire_dtype: torch.dtype = torch.float32,
        device: Optional[torch.device] = None,
    ) -> None:
        cfg.check()
        self.device = torch.device(device) if device is not None else batches.data.x.device
        self.index = index
        self.template = template
        self.spec = spec
        self.schedule = schedule
        self.batches = batches
        self.cfg = cfg
        self._rng = RNGStream(rng_state, self.device)
        self.keep_optimizer = keep_optimizer
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.seed = seed
        self.fmt = fmt
        self.wire_dtype = wire_dtype
        self.logit_offset: Optional[Tensor] = None
        self._subnets: dict[int, tuple[nn.Module, FlatLayout]] = {}
        self._eval_model: Optional[nn.Module] = None
        self._eval_adj: Optional[Tensor] = None
        self._warn_empty = WarnOnce(f"worker {index}: a batch without training nodes; step skipped")
        self._restored = False
        self.subnet, self.layout = self._subnet(schedule.at(0).groups)

    def _subnet(self, groups: int) -> tuple[nn.Module, FlatLayout]:
        """The sub-network (and its flat layout) of width ``d / groups``."""
        if groups not in self._subnets:
            self._subnets[groups] = (
                build_subnet(self.template, self.spec, groups, self.device),
                subnet_layout(self.template, self.spec, groups),
            )
        return self._subnets[groups]

    def data_tensors(self) -> list[Tensor]:
        return graph_tensors(self.batches.data)

    def param_numel_at(self, round: int) -> int:
        """Values in round ``round``'s flat buffer on the wire."""
        return self._subnet(self.schedule.at(round).groups)[1].wire_numel(self.wire_dtype)

    @property
    def param_dtype(self) -> torch.dtype:
        """The dtype of its buffers on the wire."""
        return self.wire_dtype

    @property
    def full_numel(self) -> int:
        return subnet_layout(self.template, self.spec, 1).wire_numel(self.wire_dtype)

    # ------------------------------------------------------------ label prior

    def label_counts(self, num_classes: int) -> Tensor:
        """Training-label counts of this worker's graph (``int64 [num_classes]``)."""
        return label_counts(self.batches.data, num_classes)

    def set_label_prior(self, total_counts: Tensor) -> None:
        """Train from now on with the label-prior correction against ``total_counts``."""
        offset = prior_offset(self.label_counts(total_counts.numel()), total_counts.cpu())
        self.logit_offset = offset.to(self.device)

    # ------------------------------------------------------------ evaluation

    def load_eval_model(self, flat_model: Tensor) -> None:
        """Hold the full-width model sent as one flat buffer (the layout of ``m = 1``)."""
        full = build_subnet(self.template, self.spec, 1, self.device)
        layout = subnet_layout(self.template, self.spec, 1)
        load_subnet_state(full, layout.unflatten(layout.decode(flat_model)))
        self._eval_model = full
        if self._eval_adj is None:
            self._eval_adj = self.fmt.of(self.batches.data)

    def lend_eval_model(self, model: nn.Module) -> bool:
        """Hold the coordinator's own full model to evaluate (no copy), if it
        lives on this worker's device; ``False`` (nothing held) otherwise."""
        if next(model.parameters()).device != self.device:
            return False
        self._eval_model = model
        if self._eval_adj is None:
            self._eval_adj = self.fmt.of(self.batches.data)
        return True

    def _held_model(self) -> nn.Module:
        if self._eval_model is None:
            raise RuntimeError(f"worker {self.index}: no model to evaluate was loaded")
        return self._eval_model

    def batch_norm_moments(self, index: int) -> Tensor:
        """:func:`batch_norm_moments` of the held model over this worker's own nodes."""
        data = self.batches.data
        owned = data.owned if "owned" in data else None
        return batch_norm_moments(self._held_model(), index, data, self._eval_adj, owned)

    def set_batch_norm_moments(self, index: int, total: Tensor) -> None:
        """Set the held model's ``index``-th BatchNorm statistics from every
        worker's moments summed (:func:`pooled_batch_norm_stats`)."""
        set_batch_norm_stats(self._held_model(), index, pooled_batch_norm_stats([total]))

    def score(self) -> Tensor:
        """:func:`correct_counts` of the held model on this worker's own nodes."""
        return correct_counts(self._held_model(), self.batches.data, self._eval_adj)

    def drop_eval_model(self) -> None:
        self._eval_model = None

    # ------------------------------------------------------------ state

    def fast_forward(self, start_round: int) -> None:
        """Skip the batches of rounds before ``start_round`` (resuming a run)."""
        if not self._restored:
            self.batches.skip(start_round * self.cfg.local_steps)

    def state_dict(self) -> dict[str, Any]:
        """What a worker must keep to resume exactly: with ``m = 1`` its RNG
        stream, optimizer and batch stream carry over between rounds."""
        state: dict[str, Any] = {"rng_state": self.rng_state.clone()}
        if self._rng.cuda_state is not None:
            state["cuda_rng_state"] = self._rng.cuda_state.clone()
        if self.keep_optimizer and self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        batcher = self.batches.state_dict()
        if batcher:
            state["batcher"] = batcher
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng_state = state["rng_state"].clone()
        if "cuda_rng_state" in state and self._rng.device is not None:
            self._rng.cuda_state = state["cuda_rng_state"].clone()
        if "optimizer" in state:
            self.optimizer = make_optimizer(self.subnet.parameters(), self.cfg)
            self.optimizer.load_state_dict(state["optimizer"])
        if "batcher" in state:
            self.batches.load_state_dict(state["batcher"])
        self._restored = True

    @property
    def rng_state(self) -> Tensor:
        return self._rng.state

    @rng_state.setter
    def rng_state(self, state: Tensor) -> None:
        self._rng.reset(state)

    # ------------------------------------------------------------ training

    def train_round(self, round: int, flat_params: Tensor) -> WorkerReport:
        start = time.perf_counter()
        if not self.keep_optimizer and self.seed is not None:
            # m > 1: a fresh sub-network, optimizer and RNG stream every round,
            # so a resumed run needs no worker state at all
            self.rng_state = worker_rng_state(self.seed, self.index, round)
        subnet, layout = self._subnet(self.schedule.at(round).groups)
        if subnet is not self.subnet:
            self.subnet, self.layout, self.optimizer = subnet, layout, None
        load_subnet_state(self.subnet, self.layout.unflatten(self.layout.decode(flat_params)))
        del flat_params  # the caller holds no other reference: the buffer is freed before the steps
        if self.optimizer is None or not self.keep_optimizer:
            self.optimizer = make_optimizer(self.subnet.parameters(), self.cfg)
        losses = local_steps(
            self.subnet,
            self.optimizer,
            self.batches,
            self.cfg.local_steps,
            self._rng,
            self._warn_empty,
            self.logit_offset,
        )
        if not self.keep_optimizer:  # a fresh one next round: free its state and the gradients before sending
            self.optimizer = None
            self.subnet.zero_grad(set_to_none=True)
        flat = self.layout.encode(self.layout.flatten(subnet_state(self.subnet, self.spec)), self.wire_dtype)
        return WorkerReport(flat, WorkerStats(mean_or_nan(losses), len(losses), time.perf_counter() - start))


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


def make_workers(
    model: nn.Module,
    spec: SplitSpec,
    data: Optional[Data],
    cfg: RunConfig,
    indices: Optional[Sequence[int]] = None,
    graphs: Optional[dict[int, Data]] = None,
) -> list[Worker]:
    """Build workers ``indices`` (default: all) for ``model``.

    ``graphs`` gives worker graphs directly (a process that loaded only its
    own part); otherwise they are cut from ``data`` with :func:`worker_graphs`.
    Worker 0 takes the current global RNG state; call this right after
    building the model under ``torch.manual_seed(seed)``. ``model`` may live
    on the ``meta`` device.
    """
    schedule = subnet_schedule(cfg)
    if graphs is None:
        if data is None:
            raise ValueError("make_workers needs the full graph or the workers' graphs")
        graphs = dict(enumerate(worker_graphs(data, cfg)))
    first_state = torch.get_rng_state()
    chosen = list(indices) if indices is not None else list(range(cfg.subnets))
    device = worker_device(cfg)
    fmt = AdjacencyFormat.for_model(model, cfg.data.sparse_adjacency)
    sources = make_batch_sources({i: graphs[i] for i in chosen}, cfg, device, fmt)
    workers = []
    for i in chosen:
        source = sources[i]
        rng = first_state if i == 0 else worker_rng_state(cfg.seed, i)
        workers.append(
            Worker(
                i,
                model,
                spec,
                schedule,
                source,
                cfg.local,
                rng,
                keep_optimizer=cfg.subnets == 1,
                seed=cfg.seed,
                fmt=fmt,
                wire_dtype=cfg.wire_torch_dtype,
                device=device,
            )
        )
    return workers


def subnet_schedule(cfg: RunConfig) -> SubnetSchedule:
    """GIST's :class:`~gist.subnets.SubnetSchedule` for ``cfg`` (:func:`gist.config.gist_options`)."""
    options = gist_options(cfg)
    return SubnetSchedule(cfg.subnets, options.groups, cfg.rounds, options.finish_rounds)
