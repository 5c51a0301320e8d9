r"""GIST with a central coordinator: rank 0 holds the full model, splits it and merges it.

Each round the coordinator slices sub-network ``g`` out of the full model
for each group (one flat buffer each, in the wire dtype), the transport hands
worker ``w`` the buffer of group ``w mod s`` and brings back what it trained
(:class:`~.transport.InProcessTransport` in one process,
:class:`~.processes.DistTransport` on ``torch.distributed``, where rank
``i > 0`` holds only its sub-network and its own graph:
:func:`~.processes.serve_worker`), and the coordinator writes the averaged
copies back into their slices (:mod:`gist.subnets`).
"""

from __future__ import annotations

import time
from typing import Any, Optional

import torch
from torch import nn
from torch_geometric.data import Data

from ...config import RunConfig
from ...engine import Evaluator, RankSetup, RoundWork, accuracy_from_counts
from ...engine.optim import carried_keys
from ...errors import ConfigError
from ...nn.slicing import build_split_spec
from ...subnets import average_states, draw_partition, merge_states, slice_state, subnet_layout
from .base import GIST, label_classes, reestimated_batch_norms
from .carried import CarriedState
from .corrections import pooled_batch_norm_stats, set_batch_norm_stats
from .processes import DistTransport, WorkerProtocol, serve_worker
from .transport import InProcessTransport, Transport
from .worker import make_workers


class CentralGIST(GIST):
    """GIST rounds on a full-width ``model`` through a transport (module docstring).

    Args:
        model: the full-width model (stock PyG GCN/GraphSAGE, or any model the
            splitter understands), trained in place. Build it under
            ``torch.manual_seed(cfg.seed)`` right before this call: worker 0
            continues the global RNG stream (so ``m = 1`` is plain training).
        data: the full graph with ``train_mask``/``val_mask``/``test_mask``
            (evaluation, and the in-process workers' graphs); ``None`` on a
            rank 0 that holds only its own part and scores on the parts.
        cfg: the run config.
        transport: how buffers reach workers; default an
            :class:`~.transport.InProcessTransport` with ``m`` workers.
        evaluator: ``f(model, data) -> {"train", "val", "test"}``; default the
            run's (:func:`~gist.engine.evaluation.graph_evaluator`); none with
            ``scorer = "parts"``: the score is the workers' counts on their own
            parts summed.
    """

    coordinator = "central"

    def __init__(
        self,
        model: nn.Module,
        data: Optional[Data],
        cfg: RunConfig,
        transport: Optional[Transport] = None,
        evaluator: Optional[Evaluator] = None,
        scored_by: str = "correct / total",
    ) -> None:
        self._setup(model, cfg)
        model.to(self.device)
        if transport is None:
            if data is None:
                raise ConfigError("GIST in one process needs the full graph (data=)")
            transport = InProcessTransport(make_workers(model, self.spec, data, cfg))
        self.transport = transport
        self._full_layout = subnet_layout(model, self.spec, 1)
        self._via_workers = self.scores_parts or self.batch_norms_reestimated > 0
        self.carried = (
            CarriedState(model, self.spec, self.layouts, self.device, carried_keys(self.carried_policy))
            if self.carried_policy is not None
            else None
        )
        super().__init__(model, data, cfg, transport, evaluator, scored_by, device=self.device)

    def start(self) -> None:
        self.transport.start(self.round, self.layouts[self.schedule.at(self.round).groups].wire_numel(self.wire))
        if self.label_classes is not None:
            self.transport.share_label_counts(self.label_classes)

    def train_round(self, round: int) -> RoundWork:
        start = time.perf_counter()
        plan = self.schedule.at(round)
        layout = self.layouts[plan.groups]
        partition = draw_partition(self.spec.widths, plan.groups, self.cfg.seed, round, self.settings.assignment).to(
            self.device
        )
        state = self.model.state_dict()
        slices = [
            layout.encode(layout.flatten(slice_state(state, self.spec, partition, g)), self.wire)
            for g in range(plan.groups)
        ]
        payloads = [slices[plan.group_of(w)] for w in range(self.cfg.subnets)]
        optim = None
        if self.carried is not None:
            states = self.carried.slices(partition, plan.groups, self.wire)
            optim = [states[plan.group_of(w)] for w in range(self.cfg.subnets)]
        split_done = time.perf_counter()
        reports = (
            self.transport.run_round(round, payloads)
            if optim is None
            else self.transport.run_round(round, payloads, optim)
        )
        merge_start = time.perf_counter()
        returned = [layout.unflatten(layout.decode(rep.params.to(self.device))) for rep in reports]
        groups = [average_states([returned[w] for w in plan.members(g)]) for g in range(plan.groups)]
        merge_states(state, self.spec, partition, groups)
        if self.carried is not None:
            self.carried.merge(partition, plan, [rep.optim for rep in reports])
        return RoundWork(
            stats={i: rep.stats for i, rep in enumerate(reports)},
            split_seconds=split_done - start,
            merge_seconds=time.perf_counter() - merge_start,
        )

    def evaluate(self, round: int) -> dict[str, float]:
        """The full model's score (see :mod:`~.base`); in ``partitioned``
        mode also ``parts_val`` / ``parts_test``."""
        if not self._via_workers:
            return super().evaluate(round)
        state = self.model.state_dict()
        # the model to score travels in its own dtype whatever the wire (as with the sharded coordinator):
        # the statistics and scores are the model's, not a rounded copy's; workers here use the model itself
        flat = self._full_layout.flatten({k: v for k, v in state.items() if k in self.spec.tensor_axes})
        result = self.transport.evaluate(round, flat, self.batch_norms_reestimated, self.scores_parts, self.model)
        for k, total in enumerate(result.moment_totals):
            set_batch_norm_stats(self.model, k, pooled_batch_norm_stats([total]))
        parts = accuracy_from_counts(torch.stack(result.counts).sum(0)) if result.counts else None
        metrics = super().evaluate(round) if self.evaluator is not None else dict(parts or {})
        if parts is not None:
            metrics.update(parts_val=parts["val"], parts_test=parts["test"])
        return metrics

    def method_state(self) -> dict[str, Any]:
        """With ``m = 1`` worker 0's RNG stream, optimizer and batch stream
        (with ``m > 1`` workers keep no state between rounds)."""
        state = super().method_state()
        worker = self.transport.local_worker
        if self.cfg.subnets == 1 and worker is not None:
            state["worker0"] = worker.state_dict()
        if self.carried is not None:
            state["optimizer_state"] = self.carried.state_dict()
        return state

    def load_method_state(self, state: dict[str, Any]) -> None:
        if self.carried is not None:
            self.carried.load_state_dict(state["optimizer_state"])
        if "worker0" in state:
            worker = self.transport.local_worker
            if worker is None:
                raise ConfigError("this checkpoint holds worker 0's state but worker 0 is not local")
            worker.load_state_dict(state["worker0"])

    def close(self) -> None:
        self.transport.close()

    @classmethod
    def distributed(cls, setup: RankSetup) -> Optional[CentralGIST]:
        """Rank 0: the coordinator (and worker 0), holding the full graph or,
        in ``partitioned`` mode, part 0 (and the whole graph to score it on,
        unless ``scorer = "parts"``). Other ranks: serve as worker ``rank``
        with only their own graph, then return ``None``."""
        setup.prepare()
        cfg, ctx = setup.cfg, setup.ctx
        own = setup.own_graph()
        if ctx.rank == 0:
            data = None if setup.partitioned else own.data
            if data is None and cls.scores_on_graph(cfg):
                data = setup.load_dataset().data
            model = setup.full_model(own.num_features, own.num_classes)
            spec = build_split_spec(model)
            worker0 = make_workers(model, spec, None, cfg, indices=[0], graphs={0: own.data})[0]
            return cls(model, data, cfg, transport=DistTransport(worker0, ctx))
        model = setup.model_shape(own.num_features, own.num_classes)
        spec = build_split_spec(model)
        worker = make_workers(model, spec, None, cfg, indices=[ctx.rank], graphs={ctx.rank: own.data})[0]
        num_bn = reestimated_batch_norms(model, cfg)
        protocol = WorkerProtocol(
            rounds=cfg.rounds,
            label_classes=label_classes(model, cfg),
            evaluates_after=cfg.is_eval_round if (cfg.workers_hold_parts or num_bn) else None,
            batch_norms=num_bn,
            score=cfg.workers_hold_parts,
            carries_optimizer=cls.carried_optimizer_state(cfg) is not None,
        )
        serve_worker(worker, ctx, protocol)
        return None
