r"""GIST: graph independent subnetwork training.

Round ``r`` (GUIDE §2):

1. draw the width split of ``(seed, r)`` into ``s`` groups (``s = m`` in
   plain GIST; see :class:`~gist.subnets.SubnetSchedule`);
2. slice sub-network ``g`` out of the full model for each group, one flat
   buffer each; worker ``w`` is sent group ``w mod s``;
3. the transport hands worker ``w`` its buffer; it loads it into its narrow
   model and runs ``ζ`` optimizer steps on its own graph data with a fresh
   optimizer (with the label-prior correction, on corrected logits), then
   returns its buffer;
4. merge: the copies of each group are averaged, the groups written back
   into their slices, shared tensors averaged;
5. every ``eval_every`` rounds, evaluate the full-width model: on the whole
   graph at the coordinator (``scorer = "graph"``) and, in ``partitioned``
   mode, also on the workers, each on its own part (the sum of their counts
   is the ``parts`` score). With BatchNorm re-estimation the workers first
   pool the merged model's BatchNorm statistics over their nodes.

The options for partitioned data (:class:`gist.config.GistConfig`): label-
prior correction, ``s < m`` groups shared by ``m/s`` workers, a finishing
phase of model averaging, BatchNorm re-estimation.

On ``torch.distributed`` rank 0 owns the full model, drives the rounds and is
worker 0; rank ``i > 0`` holds only its sub-network and its own graph data
(:func:`gist.comm.dist.serve_worker`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from ..comm import InProcessTransport, Transport
from ..comm.dist import DistTransport, WorkerProtocol, serve_worker
from ..config import RunConfig, gist_options
from ..devices import coordinator_device
from ..engine import (
    DriverSetup,
    Evaluator,
    RankSetup,
    RoundDriver,
    RoundWork,
    accuracy_from_counts,
    make_workers,
)
from ..engine.corrections import batch_norms, pooled_batch_norm_stats, set_batch_norm_stats
from ..engine.setup import coordinator_evaluator
from ..engine.worker import subnet_schedule
from ..nn.slicing import build_split_spec, check_width_split
from ..subnets import FlatLayout, average_states, draw_partition, merge_states, slice_state, subnet_layout


class GIST(RoundDriver):
    """GIST rounds on a full-width ``model`` through a transport.

    Args:
        model: the full-width model (stock PyG GCN/GraphSAGE, or any model the
            splitter understands), trained in place. Build it under
            ``torch.manual_seed(cfg.seed)`` right before this call: worker 0
            continues the global RNG stream (so ``m = 1`` is plain training).
        data: the full graph with ``train_mask``/``val_mask``/``test_mask``
            (evaluation, and the in-process workers' graphs); ``None`` on a
            rank 0 that holds only its own part and scores on the parts.
        cfg: the run config (``subnets``, ``rounds``, ``eval_every``, ``seed``,
            ``local``, ``data``, ``gist``).
        transport: how buffers reach workers; default an
            :class:`~gist.comm.InProcessTransport` with ``m`` workers.
        evaluator: ``f(model, data) -> {"train", "val", "test"}``; default
            accuracy on ``data``. ``None`` with ``data=None``: the score is the
            workers' counts on their own parts summed.
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
        self.device = coordinator_device(cfg)
        model.to(self.device)
        self.options = gist_options(cfg)
        self.spec = build_split_spec(model)
        self.schedule = subnet_schedule(cfg)
        for groups in self.schedule.group_counts():
            self.spec.check_subnets(groups)
        self.layouts = {s: subnet_layout(model, self.spec, s) for s in self.schedule.group_counts()}
        self.num_classes = _num_classes(model) if self.options.label_prior else None
        if transport is None:
            if data is None:
                raise ValueError("GIST in one process needs the full graph (data=)")
            transport = InProcessTransport(make_workers(model, self.spec, data, cfg))
        self.transport = transport
        self._full_layout = subnet_layout(model, self.spec, 1)
        self._score_parts = cfg.evaluates_on_workers
        self._batch_norms = _reestimated_batch_norms(model, cfg)
        self._via_workers = self._score_parts or self._batch_norms > 0
        if evaluator is None and not (cfg.scorer == "parts" and self._score_parts):
            if data is None:
                raise ValueError("GIST needs the full graph to evaluate (or an evaluator, or scorer='parts')")
            evaluator, scored_by = coordinator_evaluator(cfg, data)
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
    def layout(self) -> FlatLayout:
        """The flat layout of the sub-networks of the rounds before any finishing phase."""
        return self.layouts[self.options.groups]

    @property
    def num_params(self) -> int:
        return self.layout.numel

    @classmethod
    def for_config(cls, cfg: RunConfig) -> type[RoundDriver]:
        """:class:`~gist.methods.sharded.ShardedGIST` for ``--coordinator sharded``
        (GIST itself only: a subclass such as ``full`` decides for itself)."""
        if cfg.gist.coordinator == "sharded" and cls is GIST:
            from .sharded import ShardedGIST  # it builds on this module

            return ShardedGIST
        return cls

    @classmethod
    def evaluates_on_workers(cls, cfg: RunConfig) -> bool:
        return cfg.evaluates_on_workers and cfg.scorer == "parts"

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """The stock model's hidden width must split into ``s`` equal groups
        (and ``s`` divide ``m``)."""
        check_width_split("hidden", cfg.model.hidden, gist_options(cfg).groups)

    def start(self) -> None:
        wire = self.cfg.wire_torch_dtype
        self.transport.start(self.round, self.layouts[self.schedule.at(self.round).groups].wire_numel(wire))
        if self.num_classes is not None:
            self.transport.share_label_counts(self.num_classes)

    def train_round(self, round: int) -> RoundWork:
        start = time.perf_counter()
        plan = self.schedule.at(round)
        layout = self.layouts[plan.groups]
        partition = draw_partition(self.spec.widths, plan.groups, self.cfg.seed, round).to(self.device)
        state = self.model.state_dict()
        wire = self.cfg.wire_torch_dtype
        slices = [
            layout.encode(layout.flatten(slice_state(state, self.spec, partition, g)), wire) for g in range(plan.groups)
        ]
        payloads = [slices[plan.group_of(w)] for w in range(self.cfg.subnets)]
        split_done = time.perf_counter()
        reports = self.transport.run_round(round, payloads)
        merge_start = time.perf_counter()
        returned = [layout.unflatten(layout.decode(rep.params.to(self.device))) for rep in reports]
        groups = [average_states([returned[w] for w in plan.members(g)]) for g in range(plan.groups)]
        merge_states(state, self.spec, partition, groups)
        return RoundWork(
            stats={i: rep.stats for i, rep in enumerate(reports)},
            split_seconds=split_done - start,
            merge_seconds=time.perf_counter() - merge_start,
        )

    def evaluate(self, round: int) -> dict[str, float]:
        """The full model's score (see the module docstring); in
        ``partitioned`` mode also ``parts_val`` / ``parts_test``."""
        if not self._via_workers:
            return super().evaluate(round)
        state = self.model.state_dict()
        flat = self._full_layout.flatten({k: v for k, v in state.items() if k in self.spec.tensor_axes})
        wire = self.cfg.wire_torch_dtype
        flat = self._full_layout.encode(flat, wire)
        # the workers here evaluate the model itself unless the wire rounds what the others get
        lent = self.model if wire == self._full_layout.dtype else None
        result = self.transport.evaluate(round, flat, self._batch_norms, self._score_parts, lent)
        for k, total in enumerate(result.moment_totals):
            set_batch_norm_stats(self.model, k, pooled_batch_norm_stats([total]))
        parts = accuracy_from_counts(torch.stack(result.counts).sum(0)) if result.counts else None
        metrics = super().evaluate(round) if self.evaluator is not None else dict(parts or {})
        if parts is not None:
            metrics.update(parts_val=parts["val"], parts_test=parts["test"])
        return metrics

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "gist_options": asdict(self.options)}

    def method_state(self) -> dict[str, Any]:
        """With ``m = 1`` worker 0's RNG stream, optimizer and batch stream
        (with ``m > 1`` workers keep no state between rounds)."""
        worker = self.transport.local_worker
        if self.cfg.subnets == 1 and worker is not None:
            return {"worker0": worker.state_dict()}
        return {}

    def load_model_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if not state:
            raise ValueError(
                "this checkpoint was written by --coordinator sharded: resume it with --coordinator sharded"
            )
        super().load_model_state_dict(state)

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
        in ``partitioned`` mode, part 0 (and the whole graph to score it on,
        unless ``scorer = "parts"``). Other ranks: serve as worker ``rank``
        with only their own graph, then return ``None``."""
        setup.prepare()
        cfg, ctx = setup.cfg, setup.ctx
        own = setup.own_graph()
        if ctx.rank == 0:
            data = None if setup.partitioned else own.data
            if data is None and cfg.scorer == "graph":
                data = setup.load_dataset().data
            model = setup.full_model(own.num_features, own.num_classes)
            spec = build_split_spec(model)
            worker0 = make_workers(model, spec, None, cfg, indices=[0], graphs={0: own.data})[0]
            evaluator, scored_by = setup.evaluator(data)
            return cls(
                model, data, cfg, transport=DistTransport(worker0, ctx), evaluator=evaluator, scored_by=scored_by
            )
        model = setup.model_shape(own.num_features, own.num_classes)
        spec = build_split_spec(model)
        worker = make_workers(model, spec, None, cfg, indices=[ctx.rank], graphs={ctx.rank: own.data})[0]
        num_bn = _reestimated_batch_norms(model, cfg)
        protocol = WorkerProtocol(
            rounds=cfg.rounds,
            label_classes=_num_classes(model) if gist_options(cfg).label_prior else None,
            evaluates_after=cfg.is_eval_round if (cfg.evaluates_on_workers or num_bn) else None,
            batch_norms=num_bn,
            score=cfg.evaluates_on_workers,
        )
        serve_worker(worker, ctx, protocol)
        return None


def _reestimated_batch_norms(model: nn.Module, cfg: RunConfig) -> int:
    """How many BatchNorm layers the workers re-estimate before each evaluation (0: none)."""
    return len(batch_norms(model)) if gist_options(cfg).bn_reestimate and cfg.subnets > 1 else 0


def _num_classes(model: nn.Module) -> int:
    """The model's output width (the label-prior correction's class count)."""
    out = getattr(model, "out_channels", None)
    if not isinstance(out, int):
        raise ValueError("the label-prior correction needs a model with an integer `out_channels` (its classes)")
    return out
