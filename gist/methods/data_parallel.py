r"""What the data-parallel baselines (``ddp``, ``local-sgd``) share.

Both keep the **full model** on every one of ``m`` workers and train it on
the worker's own data, exactly where a GIST worker would train its
sub-network (``replicated``: the whole graph, full batch or its own
Cluster-GCN stream; ``partitioned``: its own part). A *round* is ``ζ``
optimizer steps per worker, recorded like GIST's rounds.

Communication goes through a :class:`~gist.comm.Collective`: an
:class:`~gist.comm.InProcessCollective` runs all ``m`` workers in this
process, one after another; a :class:`~gist.comm.dist_collective.DistCollective` makes
this process worker ``rank`` of a ``torch.distributed`` job, every rank
running the same driver (worker 0 evaluates and keeps the log). The method
code is the same for both: it loops over the collective's local workers. For
the same seed and thread count both give the same model and ledger:
bit-identical for ``m = 2``; for ``m > 2`` gloo's all-reduce sums in its own
order, which moves results by float rounding — except that Adam turns
rounding noise into full-size steps for a parameter whose true gradient is
zero (a conv bias right before BatchNorm), where the two can drift apart by
~1e-4. With ``m = 1`` both are plain training, step for step.

Set-up (round ``-1``): the handshake (``control``: ``[start_round, N]`` out,
the worker's graph bytes back; ``data``: those graph bytes) and the
broadcast of worker 0's model (parameters and floating-point buffers) to
every other worker, as ``params``. Each round: the method's all-reduces
(see :mod:`gist.comm.collective` for how they are counted) and every
worker's :class:`~gist.comm.WorkerStats`, gathered to worker 0 (``stats``).

Checkpoints gather every worker's RNG stream, batch stream and optimizer
state to worker 0 (not training traffic, not in the ledger); a resumed run
scatters them back, so it ends with the model an uninterrupted run has.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from ..comm import SETUP_ROUND, Collective, InProcessCollective, WorkerStats, tensor_nbytes
from ..comm.dist_collective import DistCollective
from ..config import RunConfig
from ..devices import worker_device
from ..engine import (
    Evaluator,
    RankSetup,
    RNGStream,
    RoundDriver,
    RoundWork,
    build_stock_model,
    make_batch_sources,
    make_optimizer,
    worker_graphs,
    worker_rng_state,
)
from ..engine.training import WarnOnce, has_training_nodes, mean_or_nan
from ..errors import ConfigError
from ..graph import AdjacencyFormat, graph_tensors


def float_state_names(model: nn.Module) -> list[str]:
    """The ``state_dict`` entries that are averaged and broadcast: parameters
    and floating-point buffers, in ``state_dict`` order."""
    return [k for k, v in model.state_dict().items() if v.is_floating_point()]


def flatten_state(model: nn.Module, names: list[str]) -> Tensor:
    """One flat buffer (a new tensor) of the ``names`` entries of ``model.state_dict()``."""
    state = model.state_dict()
    return torch.cat([state[k].detach().reshape(-1) for k in names])


@torch.no_grad()
def load_flat_state(model: nn.Module, names: list[str], flat: Tensor) -> None:
    """Write a :func:`flatten_state` buffer back into ``model`` in place."""
    state = model.state_dict()
    offset = 0
    for k in names:
        t = state[k]
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    if offset != flat.numel():
        raise ValueError(f"flat state has {flat.numel()} values, the model {offset}")


class DataParallelMethod(RoundDriver):
    """The full ``model`` on each of ``m`` workers (see the module docstring).

    Build ``model`` under ``torch.manual_seed(cfg.seed)`` right before
    constructing the method: worker 0 continues the global RNG stream from
    here (so ``m = 1`` is plain training); worker ``i > 0`` draws its dropout
    from :func:`~gist.engine.worker_rng_state` ``(seed, i)``.

    Args:
        model: the full model; trained in place (worker 0's replica where
            worker 0 is local, this process's replica otherwise).
        data: the full graph (evaluation on worker 0; the local workers'
            graphs via :func:`~gist.engine.worker_graphs` when ``graph`` is
            not given). ``None`` where this process does not hold it.
        cfg: the run config (``subnets`` = workers).
        collective: default an :class:`~gist.comm.InProcessCollective` of
            ``m`` workers.
        graph: the training graph of this process's one worker (a rank that
            loaded only its own part).
        evaluator: ``f(model, data) -> {"train", "val", "test"}``; default
            accuracy on ``data``.
    """

    shares_replicas: bool = False
    """Whether the local workers of one process train one shared replica
    (their replicas are identical after every step)."""

    def __init__(
        self,
        model: nn.Module,
        data: Optional[Data],
        cfg: RunConfig,
        collective: Optional[Collective] = None,
        graph: Optional[Data] = None,
        evaluator: Optional[Evaluator] = None,
        scored_by: str = "correct / total",
    ) -> None:
        first_rng = torch.get_rng_state()
        cfg.check()
        self.device = worker_device(cfg)
        model.to(self.device)
        collective = collective if collective is not None else InProcessCollective(cfg.subnets)
        self.collective = collective
        local = collective.local_workers
        if graph is not None:
            if len(local) != 1:
                raise ConfigError("graph= is the training graph of a process holding one worker")
            graphs = {local[0]: graph}
        else:
            if data is None:
                raise ConfigError(f"workers {local} need their training graph (graph=) or the full graph (data=)")
            all_graphs = worker_graphs(data, cfg)
            graphs = {i: all_graphs[i] for i in local}
        fmt = AdjacencyFormat.for_model(model, cfg.data.sparse_adjacency)
        self._sources = make_batch_sources(graphs, cfg, self.device, fmt)
        self._rngs = {i: RNGStream(first_rng if i == 0 else worker_rng_state(cfg.seed, i), self.device) for i in local}
        self._warn_empty = {
            i: WarnOnce(
                f"worker {i}: a batch without training nodes; {self.empty_batch}",
                said=not has_training_nodes(graphs[i]),
            )
            for i in local
        }

        self._state_names = float_state_names(model)
        state = model.state_dict()
        dtypes = {state[k].dtype for k in self._state_names}
        if len(dtypes) != 1:
            raise ConfigError(f"the model's floating-point state mixes dtypes {sorted(map(str, dtypes))}")
        self.dtype = dtypes.pop()
        self.state_numel = sum(state[k].numel() for k in self._state_names)
        self.grad_numel = sum(p.numel() for p in model.parameters() if p.requires_grad)

        # one replica per local worker (or one shared by all of them), each
        # with its own persistent optimizer
        first = local[0]
        self._replicas = {first: model}
        for i in local[1:]:
            self._replicas[i] = model if self.shares_replicas else copy.deepcopy(model)
        optimizers: dict[int, torch.optim.Optimizer] = {}
        self._optimizers = {}
        for i, rep in self._replicas.items():
            if id(rep) not in optimizers:
                optimizers[id(rep)] = make_optimizer(rep.parameters(), cfg.local)
            self._optimizers[i] = optimizers[id(rep)]
        self._resume: Optional[dict[str, Any]] = None

        super().__init__(model, data, cfg, collective, evaluator, scored_by, device=self.device)

    empty_batch = "step skipped"
    """What a worker does with a batch without training nodes (for the warning)."""

    @property
    def local_workers(self) -> tuple[int, ...]:
        return self.collective.local_workers

    def distinct_replicas(self) -> list[nn.Module]:
        seen: dict[int, nn.Module] = {}
        for rep in self._replicas.values():
            seen.setdefault(id(rep), rep)
        return list(seen.values())

    # ------------------------------------------------------------------ set-up

    def start(self) -> None:
        """Handshake, worker 0's model to every worker, and on resume every
        worker's own state from the checkpoint."""
        data_bytes = {i: tensor_nbytes(graph_tensors(self._sources[i].data)) for i in self.local_workers}
        self.round = self.collective.handshake(self.round, self.num_params, data_bytes)
        flat = self.collective.broadcast(SETUP_ROUND, flatten_state(self.model, self._state_names))
        for rep in self.distinct_replicas():
            load_flat_state(rep, self._state_names, flat)
        if self.round > 0:  # resuming: worker 0 holds every worker's state
            saved = self._resume
            send = {i: (saved["workers"][i], saved["shared"]) for i in range(self.cfg.subnets)} if saved else None
            for i, (own, shared) in self.collective.scatter_objects(send).items():
                self.load_worker_state(i, own, shared)
            self._resume = None

    # ------------------------------------------------------------------ rounds

    @abstractmethod
    def train_workers(self, round: int) -> tuple[dict[int, list[float]], dict[int, float], float]:
        """``ζ`` steps on every local worker: each one's losses and seconds,
        and the seconds spent combining (all-reduces)."""

    def train_round(self, round: int) -> RoundWork:
        self.collective.round_starts(round)
        losses, seconds, merge_seconds = self.train_workers(round)
        stats = {i: WorkerStats(mean_or_nan(losses[i]), len(losses[i]), seconds[i]) for i in self.local_workers}
        return RoundWork(self.collective.gather_stats(round, stats, self.dtype), merge_seconds=merge_seconds)

    # ------------------------------------------------------------------ checkpoints

    def worker_state(self, i: int) -> dict[str, Any]:
        """Worker ``i``'s RNG stream (CPU, and CUDA on a GPU) and batch stream (subclasses add more)."""
        rng = self._rngs[i]
        state = {"rng_state": rng.state.clone(), "batcher": self._sources[i].state_dict()}
        if rng.cuda_state is not None:
            state["cuda_rng_state"] = rng.cuda_state.clone()
        return state

    def shared_state(self) -> dict[str, Any]:
        """State every worker restores the same (worker 0's)."""
        return {}

    def load_worker_state(self, i: int, own: dict[str, Any], shared: dict[str, Any]) -> None:
        self._rngs[i].state = own["rng_state"].clone()
        if "cuda_rng_state" in own and self._rngs[i].cuda_state is not None:
            self._rngs[i].cuda_state = own["cuda_rng_state"].clone()
        self._sources[i].load_state_dict(own["batcher"])

    def method_state(self) -> dict[str, Any]:
        gathered = self.collective.gather_objects({i: self.worker_state(i) for i in self.local_workers})
        if not self.is_coordinator:
            return {}
        return {"workers": [gathered[i] for i in range(self.cfg.subnets)], "shared": self.shared_state()}

    def load_method_state(self, state: dict[str, Any]) -> None:
        self._resume = state

    # ------------------------------------------------------------------ processes

    @classmethod
    def distributed(cls, setup: RankSetup) -> DataParallelMethod:
        """Every rank is one worker; rank 0 also holds the full graph (it evaluates)."""
        setup.prepare()
        cfg, ctx = setup.cfg, setup.ctx
        collective = DistCollective(ctx)
        if ctx.rank == 0:
            dataset = setup.load_dataset()
            graph = setup.own_graph().data if setup.partitioned else dataset.data
            model = setup.full_model(dataset.num_features, dataset.num_classes)
            return cls(model, dataset.data, cfg, collective=collective, graph=graph)
        own = setup.own_graph()
        torch.manual_seed(cfg.seed + ctx.rank)  # any initialisation: worker 0's model is broadcast
        model = build_stock_model(cfg, own.num_features, own.num_classes)
        return cls(model, None, cfg, collective=collective, graph=own.data)

    def close(self) -> None:
        self.collective.close()
