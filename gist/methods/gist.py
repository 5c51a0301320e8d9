r"""GIST: graph independent subnetwork training.

Round ``r`` (GUIDE §2):

1. draw the width split of ``(seed, r)``;
2. slice sub-network ``i`` out of the full model, one flat buffer each;
3. the transport hands buffer ``i`` to worker ``i``, which loads it into its
   narrow model and runs ``ζ`` optimizer steps on its own graph data with a
   fresh optimizer, then returns its buffer;
4. merge: write the slices back, average shared tensors;
5. every ``eval_every`` rounds, evaluate the full-width model (in
   ``partitioned`` mode on the workers, each on its own nodes).

On ``torch.distributed`` rank 0 owns the full model, drives the rounds and is
worker 0; rank ``i > 0`` holds only its sub-network and its own graph data
(:func:`gist.comm.dist.serve_worker`).
"""

from __future__ import annotations

import time
from typing import Any, Optional

import torch
from torch import nn
from torch_geometric.data import Data

from ..comm import InProcessTransport, Transport
from ..comm.dist import DistTransport, serve_worker
from ..config import RunConfig
from ..engine import (
    DriverSetup,
    Evaluator,
    RankSetup,
    RoundDriver,
    RoundWork,
    accuracy_evaluator,
    accuracy_from_counts,
    make_workers,
)
from ..nn.slicing import build_split_spec, check_width_split
from ..subnets import draw_partition, merge_states, slice_state, subnet_layout


class GIST(RoundDriver):
    """GIST rounds on a full-width ``model`` through a transport.

    Args:
        model: the full-width model (stock PyG GCN/GraphSAGE, or any model the
            splitter understands), trained in place. Build it under
            ``torch.manual_seed(cfg.seed)`` right before this call: worker 0
            continues the global RNG stream (so ``m = 1`` is plain training).
        data: the full graph with ``train_mask``/``val_mask``/``test_mask``
            (evaluation, and the in-process workers' graphs); ``None`` on a
            rank 0 that holds only its own part.
        cfg: the run config (``subnets``, ``rounds``, ``eval_every``, ``seed``,
            ``local``, ``data``).
        transport: how buffers reach workers; default an
            :class:`~gist.comm.InProcessTransport` with ``m`` workers.
        evaluator: ``f(model, data) -> {"train", "val", "test"}``; default
            accuracy on ``data``, or, in ``partitioned`` mode, correct/total
            counts from the workers summed.
    """

    name = "gist"
    color = "tab:green"

    def __init__(
        self,
        model: nn.Module,
        data: Optional[Data],
        cfg: RunConfig,
        transport: Optional[Transport] = None,
        evaluator: Optional[Evaluator] = None,
        scored_by: str = "correct / total",
    ) -> None:
        cfg.check()
        self.spec = build_split_spec(model)
        self.spec.check_subnets(cfg.subnets)
        self.layout = subnet_layout(model, self.spec, cfg.subnets)
        if transport is None:
            if data is None:
                raise ValueError("GIST in one process needs the full graph (data=)")
            transport = InProcessTransport(make_workers(model, self.spec, data, cfg))
        self.transport = transport
        self._full_layout = subnet_layout(model, self.spec, 1)
        self._on_workers = evaluator is None and self.evaluates_on_workers(cfg)
        if evaluator is None and not self._on_workers:
            if data is None:
                raise ValueError("GIST needs the full graph to evaluate (or an evaluator)")
            evaluator = accuracy_evaluator(data, cfg.data.sparse_adjacency)
        setup = DriverSetup(
            ledger=transport.ledger,
            num_workers=transport.num_subnets,
            is_coordinator=True,
            sequential=transport.sequential,
        )
        super().__init__(model, data, cfg, setup, evaluator, scored_by)

    @property
    def label(self) -> str:
        return "GIST"

    @property
    def num_params(self) -> int:
        return self.layout.numel

    @classmethod
    def evaluates_on_workers(cls, cfg: RunConfig) -> bool:
        return cfg.evaluates_on_workers

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """The stock model's hidden width must split into ``m`` equal groups."""
        check_width_split("hidden", cfg.model.hidden, cfg.subnets)

    def start(self) -> None:
        self.transport.start(self.round, self.layout.numel)

    def train_round(self, round: int) -> RoundWork:
        start = time.perf_counter()
        partition = draw_partition(self.spec.widths, self.cfg.subnets, self.cfg.seed, round)
        state = self.model.state_dict()
        payloads = [self.layout.flatten(slice_state(state, self.spec, partition, i)) for i in range(self.cfg.subnets)]
        split_done = time.perf_counter()
        reports = self.transport.run_round(round, payloads)
        merge_start = time.perf_counter()
        merge_states(state, self.spec, partition, [self.layout.unflatten(rep.params) for rep in reports])
        return RoundWork(
            stats={i: rep.stats for i, rep in enumerate(reports)},
            split_seconds=split_done - start,
            merge_seconds=time.perf_counter() - merge_start,
        )

    def evaluate(self, round: int) -> dict[str, float]:
        if not self._on_workers:
            return super().evaluate(round)
        state = self.model.state_dict()
        flat = self._full_layout.flatten({k: v for k, v in state.items() if k in self.spec.tensor_axes})
        counts = self.transport.evaluate(round, flat)
        return accuracy_from_counts(torch.stack(counts).sum(0))

    def method_state(self) -> dict[str, Any]:
        """With ``m = 1`` worker 0's RNG stream, optimizer and batch stream
        (with ``m > 1`` workers keep no state between rounds)."""
        worker = self.transport.local_worker
        if self.cfg.subnets == 1 and worker is not None:
            return {"worker0": worker.state_dict()}
        return {}

    def load_method_state(self, state: dict[str, Any]) -> None:
        if "worker0" in state:
            worker = self.transport.local_worker
            if worker is None:
                raise ValueError("this checkpoint holds worker 0's state but worker 0 is not local")
            worker.load_state_dict(state["worker0"])

    def close(self) -> None:
        self.transport.close()

    @classmethod
    def distributed(cls, setup: RankSetup) -> Optional[GIST]:
        """Rank 0: the coordinator (and worker 0), holding the full graph or,
        in ``partitioned`` mode, only part 0. Other ranks: serve as worker
        ``rank`` with only their own graph, then return ``None``."""
        setup.prepare()
        cfg, ctx = setup.cfg, setup.ctx
        own = setup.own_graph()
        if ctx.rank == 0:
            data = None if setup.partitioned else own.data
            model = setup.full_model(own.num_features, own.num_classes)
            spec = build_split_spec(model)
            spec.check_subnets(cfg.subnets)
            worker0 = make_workers(model, spec, data, cfg, indices=[0], graphs={0: own.data})[0]
            evaluator, scored_by = setup.evaluator(data)
            return cls(
                model, data, cfg, transport=DistTransport(worker0, ctx), evaluator=evaluator, scored_by=scored_by
            )
        model = setup.model_shape(own.num_features, own.num_classes)
        spec = build_split_spec(model)
        worker = make_workers(model, spec, None, cfg, indices=[ctx.rank], graphs={ctx.rank: own.data})[0]
        serve_worker(worker, ctx, cfg.rounds, cfg.is_eval_round if cfg.evaluates_on_workers else None)
        return None
