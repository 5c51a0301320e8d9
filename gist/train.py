r"""One worker's local steps, and the GIST round loop.

Round ``r`` (GUIDE §2):

1. draw the width split of ``(seed, r)``;
2. slice sub-network ``i`` out of the full model, one flat buffer each;
3. the transport hands buffer ``i`` to worker ``i``, which loads it into its
   narrow model and runs ``ζ`` optimizer steps on its own graph data with a
   fresh optimizer, then returns its buffer;
4. merge: write the slices back, average shared tensors;
5. every ``eval_every`` rounds, evaluate the full-width model.

With ``m = 1`` the only sub-network is the full model (the split of a width
into one group is the identity), and the worker keeps its optimizer between
rounds: GIST with ``m = 1`` is ordinary training, step for step.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data

from .comm import ByteLedger, InProcessTransport, Transport, WorkerReport
from .nn.slicing import SplitSpec, build_split_spec
from .partition import (
    FlatLayout,
    build_subnet,
    draw_partition,
    load_subnet_state,
    merge_states,
    slice_state,
    subnet_layout,
    subnet_state,
)

DATA_MODES = ("replicated", "partitioned")
BATCHING = ("full", "cluster")
OPTIMIZERS = ("adam", "sgd")


@dataclass
class LocalConfig:
    """How a worker trains its sub-network each round."""

    local_steps: int = 10
    lr: float = 0.01
    weight_decay: float = 0.0
    optimizer: str = "adam"

    def validate(self) -> None:
        if self.local_steps < 1:
            raise ValueError(f"local_steps (ζ) must be >= 1, got {self.local_steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")


def make_optimizer(params, cfg: LocalConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


# --------------------------------------------------------------------------
# Where a worker's training batches come from


class BatchSource(Protocol):
    def next_batch(self) -> tuple[Data, Tensor]:
        """The next training graph and its adjacency (see :func:`adjacency`)."""
        ...

    def tensors(self) -> list[Tensor]: ...


def adjacency(data: Data, sparse: bool = True) -> Tensor:
    """What the model's message passing reads: ``edge_index``, or (``sparse``)
    the transposed adjacency as a ``torch.sparse_csr`` tensor, ``adj_t[i, j] = 1``
    for an edge ``j -> i``. Both give the same result; the CSR form runs
    sparse-dense matrix products instead of gather/scatter and is several
    times faster on wide inputs."""
    if not sparse:
        return data.edge_index
    from torch_geometric.utils import to_torch_csr_tensor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sparse CSR support is labelled beta
        return to_torch_csr_tensor(data.edge_index.flip(0), size=(data.num_nodes, data.num_nodes))


class FullBatch:
    """Every step sees the worker's whole graph."""

    def __init__(self, data: Data, sparse: bool = True) -> None:
        self.data = data
        self.adj = adjacency(data, sparse)

    def next_batch(self) -> tuple[Data, Tensor]:
        return self.data, self.adj

    def tensors(self) -> list[Tensor]:
        return graph_tensors(self.data)


class ClusterBatches:
    """Cluster-GCN mini-batches of the worker's graph (see :class:`gist.graph.ClusterBatcher`).

    ``parts`` is a precomputed METIS partition of ``data`` (shared by workers
    that hold the same graph); ``seed`` orders this worker's batches.
    """

    def __init__(self, data: Data, num_parts: int, parts_per_batch: int, seed: int,
                 parts: Optional[Tensor] = None, sparse: bool = True) -> None:
        from .graph import ClusterBatcher

        self.data = data
        self.sparse = sparse
        self.batcher = ClusterBatcher(data, num_parts, parts_per_batch, method="metis", seed=seed,
                                      parts=parts)

    def next_batch(self) -> tuple[Data, Tensor]:
        batch = self.batcher.next_batch()
        return batch, adjacency(batch, self.sparse)

    def tensors(self) -> list[Tensor]:
        return graph_tensors(self.data)


def make_batch_sources(graphs: dict[int, Data], cfg: "GISTConfig") -> dict[int, BatchSource]:
    """Worker ``i``'s batch stream over ``graphs[i]``: full batch, or Cluster-GCN
    batches whose METIS partition is computed once per distinct graph and
    whose order is seeded by ``seed + i``."""
    sources: dict[int, BatchSource] = {}
    parts_of: dict[int, Tensor] = {}
    full_of: dict[int, FullBatch] = {}
    for i, g in graphs.items():
        if cfg.batching == "cluster":
            parts = parts_of.get(id(g))
            if parts is None:
                from .graph import partition_nodes

                if cfg.num_clusters > g.num_nodes:
                    raise ValueError(f"num_clusters ({cfg.num_clusters}) exceeds worker {i}'s {g.num_nodes} nodes")
                parts = parts_of[id(g)] = partition_nodes(g.edge_index, g.num_nodes, cfg.num_clusters,
                                                          "metis", cfg.seed)
            sources[i] = ClusterBatches(g, cfg.num_clusters, cfg.clusters_per_batch, cfg.seed + i, parts=parts,
                                        sparse=cfg.sparse_adjacency)
        else:  # a full batch is stateless: workers holding the same graph share it
            if id(g) not in full_of:
                full_of[id(g)] = FullBatch(g, cfg.sparse_adjacency)
            sources[i] = full_of[id(g)]
    return sources


class RNGStream:
    """A worker's own RNG stream, swapped into the global generator around its
    computation, so it draws the same numbers in a shared process as alone."""

    def __init__(self, state: Tensor) -> None:
        self.state = state.clone()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        outer = torch.get_rng_state()
        torch.set_rng_state(self.state)
        try:
            yield
        finally:
            self.state = torch.get_rng_state()
            torch.set_rng_state(outer)


def graph_tensors(data: Data) -> list[Tensor]:
    """The tensors a worker holds for its graph (counted as ``data`` bytes)."""
    return [v for _, v in data if isinstance(v, Tensor)]


def training_loss(model: nn.Module, batch: Data, adj: Tensor) -> Optional[Tensor]:
    """Cross-entropy over the batch's training nodes (``None`` if it has none)."""
    mask = batch.train_mask
    if not bool(mask.any()):
        return None
    out = model(batch.x, adj)
    return F.cross_entropy(out[mask], batch.y[mask])


# --------------------------------------------------------------------------
# A worker


class Worker:
    """Holds one narrow sub-network and its own graph data.

    Each round it loads the parameters it is sent, runs ``local_steps``
    optimizer steps, and returns its parameters. Its dropout and sampling
    randomness come from its own RNG state, so it draws the same numbers
    whether it runs in the coordinator's process or in a process of its own.
    """

    def __init__(
        self,
        index: int,
        subnet: nn.Module,
        spec: SplitSpec,
        layout: FlatLayout,
        batches: BatchSource,
        cfg: LocalConfig,
        rng_state: Tensor,
        keep_optimizer: bool = False,
        seed: Optional[int] = None,
        template: Optional[nn.Module] = None,
        sparse: bool = True,
    ) -> None:
        cfg.validate()
        self.index = index
        self.subnet = subnet
        self.spec = spec
        self.layout = layout
        self.batches = batches
        self.cfg = cfg
        self._rng = RNGStream(rng_state)
        self.keep_optimizer = keep_optimizer
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.seed = seed
        self.template = template
        self.sparse = sparse
        self._eval_adj: Optional[Tensor] = None
        self._warned_empty = False
        self._restored = False

    def data_tensors(self) -> list[Tensor]:
        return self.batches.tensors()

    def evaluate(self, flat_model: Tensor) -> Tensor:
        """:func:`correct_counts` of the full-width model (sent as one flat
        buffer in the :func:`subnet_layout` of ``m = 1``) on this worker's own
        nodes. The full-width model exists on the worker only while it
        evaluates."""
        if self.template is None:
            raise RuntimeError("this worker was built without the model template needed to evaluate")
        full = build_subnet(self.template, self.spec, 1)
        load_subnet_state(full, subnet_layout(self.template, self.spec, 1).unflatten(flat_model))
        if self._eval_adj is None:
            self._eval_adj = adjacency(self.batches.data, self.sparse)
        return correct_counts(full, self.batches.data, self._eval_adj)

    def fast_forward(self, start_round: int) -> None:
        """Skip the batches of rounds before ``start_round`` (resuming a run)."""
        if isinstance(self.batches, ClusterBatches) and not self._restored:
            self.batches.batcher.skip(start_round * self.cfg.local_steps)

    def state_dict(self) -> dict[str, Any]:
        """What a worker must keep to resume exactly: with ``m = 1`` its RNG
        stream, optimizer and batch stream carry over between rounds."""
        state: dict[str, Any] = {"rng_state": self.rng_state.clone()}
        if self.keep_optimizer and self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        if isinstance(self.batches, ClusterBatches):
            state["batcher"] = self.batches.batcher.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng_state = state["rng_state"].clone()
        if "optimizer" in state:
            self.optimizer = make_optimizer(self.subnet.parameters(), self.cfg)
            self.optimizer.load_state_dict(state["optimizer"])
        if "batcher" in state and isinstance(self.batches, ClusterBatches):
            self.batches.batcher.load_state_dict(state["batcher"])
        self._restored = True

    @property
    def rng_state(self) -> Tensor:
        return self._rng.state

    @rng_state.setter
    def rng_state(self, state: Tensor) -> None:
        self._rng.state = state.clone()

    def train_round(self, round: int, flat_params: Tensor) -> WorkerReport:
        start = time.perf_counter()
        if not self.keep_optimizer and self.seed is not None:
            # m > 1: a fresh sub-network, optimizer and RNG stream every round,
            # so a resumed run needs no worker state at all
            self.rng_state = worker_rng_state(self.seed, self.index, round)
        load_subnet_state(self.subnet, self.layout.unflatten(flat_params))
        if self.optimizer is None or not self.keep_optimizer:
            self.optimizer = make_optimizer(self.subnet.parameters(), self.cfg)
        self.subnet.train()
        losses: list[float] = []
        with self._rng.active():
            for _ in range(self.cfg.local_steps):
                batch, adj = self.batches.next_batch()
                self.optimizer.zero_grad()
                loss = training_loss(self.subnet, batch, adj)
                if loss is None:
                    if not self._warned_empty:
                        warnings.warn(f"worker {self.index}: a batch without training nodes; step skipped")
                        self._warned_empty = True
                    continue
                loss.backward()
                self.optimizer.step()
                losses.append(float(loss.detach()))
        flat = self.layout.flatten(subnet_state(self.subnet, self.spec))
        mean_loss = sum(losses) / len(losses) if losses else float("nan")
        stats = torch.tensor([mean_loss, float(len(losses)), time.perf_counter() - start], dtype=self.layout.dtype)
        return WorkerReport(flat, stats)


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


# --------------------------------------------------------------------------
# Evaluation


SPLITS = ("train", "val", "test")


@torch.no_grad()
def correct_counts(model: nn.Module, data: Data, adj: Optional[Tensor] = None) -> Tensor:
    """``int64 [correct_train, n_train, correct_val, n_val, correct_test, n_test]``
    of the model's predictions on the graph's masks (``adj``: the graph's
    :func:`adjacency`, default ``data.edge_index``)."""
    was_training = model.training
    model.eval()
    pred = model(data.x, data.edge_index if adj is None else adj).argmax(dim=-1)
    model.train(was_training)
    counts = []
    for split in SPLITS:
        mask = data[f"{split}_mask"]
        counts += [int((pred[mask] == data.y[mask]).sum()), int(mask.sum())]
    return torch.tensor(counts, dtype=torch.int64)


def accuracy_from_counts(counts: Tensor) -> dict[str, float]:
    """Accuracies from (summed) :func:`correct_counts`; NaN for an empty split."""
    out = {}
    for i, split in enumerate(SPLITS):
        correct, total = int(counts[2 * i]), int(counts[2 * i + 1])
        out[split] = correct / total if total else float("nan")
    return out


def evaluate(model: nn.Module, data: Data, adj: Optional[Tensor] = None) -> dict[str, float]:
    """Accuracy of the full-width model on the train/val/test masks."""
    return accuracy_from_counts(correct_counts(model, data, adj))


# --------------------------------------------------------------------------
# The round loop


@dataclass
class GISTConfig:
    """Settings of the round loop (model and data are given separately)."""

    num_subnets: int = 2
    rounds: int = 50
    local: LocalConfig = field(default_factory=LocalConfig)
    data_mode: str = "replicated"
    partitioner: str = "metis"
    halo_hops: int = 0
    batching: str = "full"
    num_clusters: int = 32
    clusters_per_batch: int = 4
    eval_every: int = 1
    seed: int = 0
    sparse_adjacency: bool = True
    """Message passing over a CSR adjacency (same result as ``edge_index``, faster)."""

    @property
    def evaluates_on_workers(self) -> bool:
        """In ``partitioned`` mode the workers evaluate the full model on their
        own nodes and the counts are summed: no graph data moves. Exact when
        ``halo_hops`` covers the model's depth; otherwise edges between parts
        are missing from the evaluation, as they are from training."""
        return self.data_mode == "partitioned" and self.num_subnets > 1

    def is_eval_round(self, round: int) -> bool:
        return (round + 1) % self.eval_every == 0 or round + 1 == self.rounds

    def validate(self) -> None:
        self.local.validate()
        if self.num_subnets < 1:
            raise ValueError(f"num_subnets (m) must be >= 1, got {self.num_subnets}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")
        if self.data_mode not in DATA_MODES:
            raise ValueError(f"data_mode must be one of {DATA_MODES}, got {self.data_mode!r}")
        if self.partitioner not in ("metis", "random"):
            raise ValueError(f"partitioner must be 'metis' or 'random', got {self.partitioner!r}")
        if self.batching not in BATCHING:
            raise ValueError(f"batching must be one of {BATCHING}, got {self.batching!r}")
        if self.halo_hops < 0:
            raise ValueError(f"halo_hops must be >= 0, got {self.halo_hops}")
        if self.batching == "cluster" and not 1 <= self.clusters_per_batch <= self.num_clusters:
            raise ValueError("clusters_per_batch must be between 1 and num_clusters")


@dataclass
class RoundRecord:
    """One round: time split, parameter bytes each way (all workers), the
    workers' mean loss, and metrics where evaluated."""

    round: int
    local_steps: int
    seconds: float
    split_seconds: float
    merge_seconds: float
    worker_seconds: float
    bytes_to_workers: int
    bytes_from_workers: int
    stats_bytes: int
    loss: float
    train: Optional[float] = None
    val: Optional[float] = None
    test: Optional[float] = None
    eval_seconds: Optional[float] = None
    eval_bytes: int = 0
    parallel_seconds: Optional[float] = None
    """The round's time with its workers in parallel (evaluation excluded):
    the wall time with real processes; in the in-process simulation, which
    runs workers one after another, the wall time less every worker's time
    plus the slowest worker's."""


def parallel_round_seconds(seconds: float, worker_seconds: Sequence[float], sequential: bool) -> float:
    """:attr:`RoundRecord.parallel_seconds` of a round that took ``seconds``
    with workers taking ``worker_seconds`` (one after another if ``sequential``)."""
    if not sequential:
        return seconds
    return seconds - sum(worker_seconds) + max(worker_seconds)


def worker_graphs(data: Data, cfg: GISTConfig) -> list[Data]:
    """The graph each worker trains on: the whole graph (``replicated``) or
    its own part's induced subgraph (``partitioned``)."""
    if cfg.data_mode == "replicated" or cfg.num_subnets == 1:
        return [data] * cfg.num_subnets
    from .graph import partition_nodes, worker_subgraph

    parts = partition_nodes(data.edge_index, data.num_nodes, cfg.num_subnets, cfg.partitioner, cfg.seed)
    return [worker_subgraph(data, parts, i, cfg.halo_hops) for i in range(cfg.num_subnets)]


def make_workers(model: nn.Module, spec: SplitSpec, data: Optional[Data], cfg: GISTConfig,
                 indices: Optional[Sequence[int]] = None,
                 graphs: Optional[dict[int, Data]] = None) -> list[Worker]:
    """Build workers ``indices`` (default: all) for ``model``.

    ``graphs`` gives worker graphs directly (a process that loaded only its
    own part); otherwise they are cut from ``data`` with :func:`worker_graphs`.
    Worker 0 takes the current global RNG state; call this right after
    building the model under ``torch.manual_seed(seed)``. ``model`` may live
    on the ``meta`` device.
    """
    layout = subnet_layout(model, spec, cfg.num_subnets)
    if graphs is None:
        if data is None:
            raise ValueError("make_workers needs the full graph or the workers' graphs")
        graphs = dict(enumerate(worker_graphs(data, cfg)))
    first_state = torch.get_rng_state()
    chosen = list(indices) if indices is not None else list(range(cfg.num_subnets))
    sources = make_batch_sources({i: graphs[i] for i in chosen}, cfg)
    workers = []
    for i in chosen:
        source = sources[i]
        rng = first_state if i == 0 else worker_rng_state(cfg.seed, i)
        workers.append(Worker(i, build_subnet(model, spec, cfg.num_subnets), spec, layout, source,
                              cfg.local, rng, keep_optimizer=cfg.num_subnets == 1, seed=cfg.seed,
                              template=model, sparse=cfg.sparse_adjacency))
    return workers


class GISTTrainer:
    """Runs GIST rounds on a full-width ``model`` through a transport.

    Args:
        model: the full-width model (stock PyG GCN/GraphSAGE, or any model the
            splitter understands). It is trained in place.
        data: the full graph, with ``train_mask``/``val_mask``/``test_mask``;
            used for evaluation, and by in-process workers.
        cfg: round-loop settings.
        transport: how buffers reach workers; default: an
            :class:`~gist.comm.InProcessTransport` with ``m`` workers.
        evaluator: ``f(model, data) -> {"train", "val", "test"}``; default
            accuracy (:func:`evaluate`).
    """

    def __init__(self, model: nn.Module, data: Data, cfg: GISTConfig,
                 transport: Optional[Transport] = None,
                 evaluator: Optional[Callable[[nn.Module, Data], dict[str, float]]] = None) -> None:
        cfg.validate()
        self.model = model
        self.data = data
        self.cfg = cfg
        self.spec = build_split_spec(model)
        self.spec.check_subnets(cfg.num_subnets)
        self.layout = subnet_layout(model, self.spec, cfg.num_subnets)
        self.transport = transport if transport is not None else InProcessTransport(
            make_workers(model, self.spec, data, cfg))
        if self.transport.num_subnets != cfg.num_subnets:
            raise ValueError(f"transport has {self.transport.num_subnets} workers, config asks m={cfg.num_subnets}")
        if evaluator is None and cfg.evaluates_on_workers:
            full_layout = subnet_layout(model, self.spec, 1)

            def evaluator(model: nn.Module, graph: Optional[Data]) -> dict[str, float]:
                flat = full_layout.flatten({k: v for k, v in model.state_dict().items()
                                            if k in self.spec.tensor_axes})
                counts = self.transport.evaluate(self.round, flat)
                return accuracy_from_counts(torch.stack(counts).sum(0))
        elif evaluator is None:
            if data is None:
                raise ValueError("GISTTrainer needs the full graph to evaluate (or an evaluator)")
            eval_adj = adjacency(data, cfg.sparse_adjacency)
            evaluator = lambda model, graph: evaluate(model, graph, eval_adj)  # noqa: E731
        self.evaluator = evaluator
        self.history: list[RoundRecord] = []
        self._started = False
        self.round = 0

    @property
    def ledger(self) -> ByteLedger:
        return self.transport.ledger

    def run_round(self) -> RoundRecord:
        r = self.round
        if not self._started:
            self.transport.start(r, self.layout.numel)
            self._started = True
        start = time.perf_counter()
        partition = draw_partition(self.spec.widths, self.cfg.num_subnets, self.cfg.seed, r)
        state = self.model.state_dict()
        payloads = [self.layout.flatten(slice_state(state, self.spec, partition, i))
                    for i in range(self.cfg.num_subnets)]
        split_done = time.perf_counter()
        reports = self.transport.run_round(r, payloads)
        merge_start = time.perf_counter()
        merge_states(state, self.spec, partition, [self.layout.unflatten(rep.params) for rep in reports])
        end = time.perf_counter()
        losses = [float(rep.stats[0]) for rep in reports if not math.isnan(float(rep.stats[0]))]
        worker_seconds = [float(rep.stats[2]) for rep in reports]
        record = RoundRecord(
            round=r,
            local_steps=self.cfg.local.local_steps,
            seconds=end - start,
            split_seconds=split_done - start,
            merge_seconds=end - merge_start,
            worker_seconds=max(worker_seconds),
            parallel_seconds=parallel_round_seconds(end - start, worker_seconds, self.transport.sequential),
            bytes_to_workers=self.ledger.total(round=r, direction="to_worker", kind="params"),
            bytes_from_workers=self.ledger.total(round=r, direction="from_worker", kind="params"),
            stats_bytes=self.ledger.total(round=r, kind="stats"),
            loss=sum(losses) / len(losses) if losses else float("nan"),
        )
        if self.cfg.is_eval_round(r):
            eval_start = time.perf_counter()
            metrics = self.evaluator(self.model, self.data)
            record.train, record.val, record.test = metrics["train"], metrics["val"], metrics["test"]
            record.eval_seconds = time.perf_counter() - eval_start
            record.eval_bytes = self.ledger.total(round=r, kind="eval")
        self.history.append(record)
        self.round += 1
        return record

    def fit(self, progress: bool = True, callback: Optional[Callable[[RoundRecord], Any]] = None) -> list[RoundRecord]:
        """Run the remaining rounds, with a progress bar over rounds."""
        return fit_rounds(self, "GIST rounds", progress, callback)

    CHECKPOINT_FORMAT = 2

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly: the full model, the
        next round, the history, the ledger, the coordinator's RNG state and,
        with ``m = 1``, worker 0's RNG stream, optimizer and batch stream (with
        ``m > 1`` workers keep no state between rounds). Plain tensors,
        numbers and strings only: loadable with ``torch.load(weights_only=True)``."""
        state: dict[str, Any] = {
            "format": self.CHECKPOINT_FORMAT,
            "round": self.round,
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "history": [asdict(r) for r in self.history],
            "ledger": self.ledger.records(),
            "rng_state": torch.get_rng_state(),
        }
        worker = self.transport.local_worker
        if self.cfg.num_subnets == 1 and worker is not None:
            state["worker0"] = worker.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (call before :meth:`fit`)."""
        if state.get("format") != self.CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')!r} is not {self.CHECKPOINT_FORMAT}")
        if self._started:
            raise RuntimeError("load a checkpoint before the first round")
        self.model.load_state_dict(state["model"])
        self.round = int(state["round"])
        self.history = [RoundRecord(**r) for r in state["history"]]
        self.ledger.load_records(state["ledger"])
        torch.set_rng_state(state["rng_state"])
        if "worker0" in state:
            worker = self.transport.local_worker
            if worker is None:
                raise ValueError("this checkpoint holds worker 0's state but worker 0 is not local")
            worker.load_state_dict(state["worker0"])

    def summary(self) -> dict[str, Any]:
        """``best_val``, ``test_at_best_val`` and byte and time totals."""
        return {**history_summary(self.history, self.ledger, self.cfg.num_subnets),
                "eval_bytes_total": self.ledger.total(kind="eval"),
                "subnet_params": self.layout.numel}


def fit_rounds(trainer: Any, desc: str, progress: bool = True,
               callback: Optional[Callable[[RoundRecord], Any]] = None) -> list[RoundRecord]:
    """Run ``trainer.run_round()`` until ``trainer.cfg.rounds``, with a progress
    bar showing the loss, the latest and best validation accuracy and the
    parameter megabytes moved so far (``trainer.ledger``)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=trainer.cfg.rounds, initial=trainer.round, desc=desc, unit="round",
               disable=not progress, dynamic_ncols=True, leave=None)
    best_val = float("-inf")
    try:
        while trainer.round < trainer.cfg.rounds:
            record = trainer.run_round()
            postfix = {"loss": f"{record.loss:.3f}", "MB": f"{trainer.ledger.total(kind='params') / 1e6:.1f}"}
            if record.val is not None:
                best_val = max(best_val, record.val)
                postfix["val"] = f"{record.val:.4f}"
                postfix["best"] = f"{best_val:.4f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            if callback is not None:
                callback(record)
    finally:
        bar.close()
    return trainer.history


def history_summary(history: Sequence[RoundRecord], ledger: ByteLedger, num_workers: int) -> dict[str, Any]:
    """The summary keys every method shares: best validation and test there,
    final metrics, parameter bytes (total and per worker), other byte kinds,
    seconds, and ``parallel_seconds``: the rounds' time with each round's
    workers in parallel (:attr:`RoundRecord.parallel_seconds`), evaluation included."""
    evaluated = [r for r in history if r.val is not None]
    best = max(evaluated, key=lambda r: r.val) if evaluated else None
    params_bytes = ledger.total(kind="params")
    seconds = sum(r.seconds + (r.eval_seconds or 0.0) for r in history)
    parallel = sum((r.seconds if r.parallel_seconds is None else r.parallel_seconds) + (r.eval_seconds or 0.0)
                   for r in history)
    return {
        "best_val": best.val if best else None,
        "test_at_best_val": best.test if best else None,
        "best_round": best.round if best else None,
        "final_val": evaluated[-1].val if evaluated else None,
        "final_test": evaluated[-1].test if evaluated else None,
        "bytes_total": params_bytes,
        "bytes_per_worker": params_bytes / num_workers,
        "data_bytes_total": ledger.total(kind="data"),
        "stats_bytes_total": ledger.total(kind="stats"),
        "rounds": len(history),
        "seconds": seconds,
        "parallel_seconds": parallel,
    }
