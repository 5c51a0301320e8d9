r"""A GIST worker: one narrow sub-network, its own graph data, its local steps.

:class:`Worker` loads the flat buffer it is sent each round, runs ``ζ``
optimizer steps (:func:`gist.engine.training.local_steps`) and returns its
buffer and a :class:`~gist.comm.WorkerStats` report; its :class:`PartScorer`
evaluates the merged full model on the worker's own part (the partitioned
recipe's BatchNorm re-estimation and ``--scorer parts``).

With ``m = 1`` the only sub-network is the full model and the worker keeps
its optimizer and RNG stream between rounds: GIST with ``m = 1`` is ordinary
training, step for step.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from ...comm import WorkerStats
from ...config import LocalConfig, RunConfig
from ...devices import worker_device
from ...engine.evaluation import correct_counts
from ...engine.optim import CARRIED_OPTIMIZERS, load_state_tensors, state_layout, state_tensors
from ...engine.training import (
    RNGStream,
    WarnOnce,
    has_training_nodes,
    local_steps,
    make_batch_sources,
    make_optimizer,
    mean_or_nan,
    worker_graphs,
    worker_rng_state,
)
from ...graph import SPARSE, AdjacencyFormat, BatchSource, graph_tensors
from ...nn.slicing import SplitSpec
from ...subnets import (
    FlatLayout,
    SubnetSchedule,
    build_subnet,
    load_subnet_state,
    scale_split_inputs,
    subnet_layout,
    subnet_state,
)
from .corrections import batch_norm_moments, label_counts, pooled_batch_norm_stats, prior_offset, set_batch_norm_stats
from .messages import WorkerReport
from .options import gist_options, gist_settings


class PartScorer:
    """The merged full model, held by a worker between :meth:`load` (or
    :meth:`lend`) and :meth:`drop`, evaluated on the worker's own graph ``data``."""

    def __init__(self, template: nn.Module, spec: SplitSpec, data: Data, fmt: AdjacencyFormat, device) -> None:
        self.template, self.spec, self.data, self.fmt, self.device = template, spec, data, fmt, device
        self._model: Optional[nn.Module] = None
        self._adj: Optional[Tensor] = None

    def _hold(self, model: nn.Module) -> None:
        self._model = model
        if self._adj is None:
            self._adj = self.fmt.of(self.data)

    def load(self, flat_model: Tensor) -> None:
        """Hold the full-width model sent as one flat buffer (the layout of ``m = 1``)."""
        full = build_subnet(self.template, self.spec, 1, self.device)
        layout = subnet_layout(self.template, self.spec, 1)
        load_subnet_state(full, layout.unflatten(layout.decode(flat_model)))
        self._hold(full)

    def lend(self, model: nn.Module) -> bool:
        """Hold the coordinator's own full model (no copy) if it lives on this
        worker's device; ``False`` (nothing held) otherwise."""
        if next(model.parameters()).device != self.device:
            return False
        self._hold(model)
        return True

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            raise RuntimeError("no model to evaluate was loaded")
        return self._model

    def batch_norm_moments(self, index: int) -> Tensor:
        """:func:`~.corrections.batch_norm_moments` of the held model over this worker's own nodes."""
        owned = self.data.owned if "owned" in self.data else None
        return batch_norm_moments(self.model, index, self.data, self._adj, owned)

    def set_batch_norm_moments(self, index: int, total: Tensor) -> None:
        """Set the held model's ``index``-th BatchNorm statistics from every
        worker's moments summed (:func:`~.corrections.pooled_batch_norm_stats`)."""
        set_batch_norm_stats(self.model, index, pooled_batch_norm_stats([total]))

    def score(self) -> Tensor:
        """:func:`~gist.engine.evaluation.correct_counts` of the held model on this worker's own nodes."""
        return correct_counts(self.model, self.data, self._adj)

    def drop(self) -> None:
        self._model = None


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
    corrected logits. Its :attr:`scorer` evaluates the merged model on its
    own part. Its buffers travel in ``wire_dtype``
    (:meth:`gist.subnets.FlatLayout.encode`).
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
        carry_optimizer: Optional[str] = None,
        seed: Optional[int] = None,
        fmt: AdjacencyFormat = SPARSE,
        wire_dtype: torch.dtype = torch.float32,
        device: Optional[torch.device] = None,
        width_scaler: bool = False,
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
        self.carry_optimizer = carry_optimizer
        """The ``--optimizer-state`` policy whose state travels with its sub-network
        (:data:`~gist.engine.optim.CARRIED_OPTIMIZERS`, ``m > 1``), else ``None``."""
        self._optim_layouts: dict[int, FlatLayout] = {}
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.seed = seed
        self.fmt = fmt
        self.wire_dtype = wire_dtype
        self.logit_offset: Optional[Tensor] = None
        self.width_scaler = width_scaler
        """Whether its sub-networks train with HeteroFL's scaler (:func:`~gist.subnets.scale_split_inputs`)."""
        self._subnets: dict[int, tuple[nn.Module, FlatLayout]] = {}
        self.scorer = PartScorer(template, spec, batches.data, fmt, self.device)
        self._warn_empty = WarnOnce(
            f"worker {index}: a batch without training nodes; step skipped", said=not has_training_nodes(batches.data)
        )
        self._restored = False
        self.subnet, self.layout = self._subnet(schedule.at(0).groups)

    def _subnet(self, groups: int) -> tuple[nn.Module, FlatLayout]:
        """The sub-network (and its flat layout) of width ``d / groups``."""
        if groups not in self._subnets:
            subnet = build_subnet(self.template, self.spec, groups, self.device)
            if self.width_scaler and groups > 1:
                scale_split_inputs(subnet, self.spec, float(groups))
            self._subnets[groups] = (subnet, subnet_layout(self.template, self.spec, groups))
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
        """Values in the buffer of the full model to evaluate (in its own dtype, whatever the wire)."""
        return subnet_layout(self.template, self.spec, 1).numel

    @property
    def full_dtype(self) -> torch.dtype:
        """The dtype of that buffer: the model's."""
        return subnet_layout(self.template, self.spec, 1).dtype

    # ------------------------------------------------------------ label prior

    def label_counts(self, num_classes: int) -> Tensor:
        """Training-label counts of this worker's graph (``int64 [num_classes]``)."""
        return label_counts(self.batches.data, num_classes)

    def set_label_prior(self, total_counts: Tensor) -> None:
        """Train from now on with the label-prior correction against ``total_counts``."""
        offset = prior_offset(self.label_counts(total_counts.numel()), total_counts.cpu())
        self.logit_offset = offset.to(self.device)

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

    def optim_layout_at(self, round: int) -> FlatLayout:
        """The layout of round ``round``'s carried optimizer state (:func:`~gist.engine.optim.state_layout`)."""
        groups = self.schedule.at(round).groups
        if groups not in self._optim_layouts:
            subnet, layout = self._subnet(groups)
            keys = CARRIED_OPTIMIZERS[self.carry_optimizer].state_keys
            self._optim_layouts[groups] = state_layout(layout, [n for n, _ in subnet.named_parameters()], keys)
        return self._optim_layouts[groups]

    def train_round(self, round: int, flat_params: Tensor, flat_optim: Optional[Tensor] = None) -> WorkerReport:
        """Load the sub-network (and, carrying it, its optimizer state) sent for
        ``round``, run the local steps, report."""
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
        named = dict(self.subnet.named_parameters())
        if self.carry_optimizer:
            if flat_optim is None:
                raise ValueError(f"worker {self.index} carries its optimizer state but was sent none")
            adam = CARRIED_OPTIMIZERS[self.carry_optimizer]
            self.optimizer = adam(named.values(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
            optim_layout = self.optim_layout_at(round)
            load_state_tensors(self.optimizer, named, optim_layout.unflatten(optim_layout.decode(flat_optim)))
            del flat_optim
        elif self.optimizer is None or not self.keep_optimizer:
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
        optim = None
        if self.carry_optimizer:
            optim_layout = self.optim_layout_at(round)
            optim = optim_layout.encode(optim_layout.flatten(state_tensors(self.optimizer, named)), self.wire_dtype)
        if not self.keep_optimizer:  # a fresh one next round: free its state and the gradients before sending
            self.optimizer = None
            self.subnet.zero_grad(set_to_none=True)
        flat = self.layout.encode(self.layout.flatten(subnet_state(self.subnet, self.spec)), self.wire_dtype)
        stats = WorkerStats(mean_or_nan(losses), len(losses), time.perf_counter() - start)
        return WorkerReport(flat, stats, optim)


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
                carry_optimizer=carried_optimizer_state(cfg),
                seed=cfg.seed,
                fmt=fmt,
                wire_dtype=gist_options(cfg).wire_torch_dtype,
                device=device,
                width_scaler=gist_settings(cfg).width_scaler,
            )
        )
    return workers


def carried_optimizer_state(cfg: RunConfig) -> Optional[str]:
    """``cfg``'s ``--optimizer-state`` policy where the state travels with the
    sub-networks (:data:`~gist.engine.optim.CARRIED_OPTIMIZERS`, ``m > 1``), else ``None``."""
    policy = gist_options(cfg).optimizer_state
    return policy if policy in CARRIED_OPTIMIZERS and cfg.subnets > 1 else None


def subnet_schedule(cfg: RunConfig) -> SubnetSchedule:
    """GIST's :class:`~gist.subnets.SubnetSchedule` for ``cfg`` (:func:`~.options.gist_options`)."""
    options = gist_options(cfg)
    full_every = gist_settings(cfg).full_every
    return SubnetSchedule(cfg.subnets, options.groups, cfg.rounds, options.finish_rounds, full_every)
