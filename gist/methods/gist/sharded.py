r"""GIST with a sharded coordinator: no process holds the full model.

``--coordinator sharded`` (:class:`ShardedGIST`) keeps GIST's rounds
(:mod:`~.base`) but not its central model: unit ``j`` of every hidden width
is owned by worker ``j mod m`` (:mod:`~.shards`), every process holds its own
shard, its own copy of the shared tensors and its current sub-network
(:class:`~.shard_store.ShardStore`). Round ``r``:

1. every process draws the width split of ``(seed, r)``;
2. *assemble* (one all-to-all): owner ``o`` sends worker ``w`` its piece of
   sub-network ``w mod s``; worker ``w`` puts the pieces together (its own
   piece never travels);
3. worker ``w`` trains its sub-network as with the central coordinator;
4. *return* (one all-to-all): worker ``w`` sends each owner the owner's rows
   of what it trained; an owner averages the copies of each group (``s < m``)
   and writes them into its shard. The shared tensors are all-gathered and
   averaged, on every worker alike.

The exchanges are :mod:`~.sharded_exchange`'s. Their arithmetic is the
central coordinator's, element for element, so both train the same model
(bit for bit in one process; with ``--wire-dtype`` the pieces travel rounded
as central buffers do); the stats, label-prior and set-up messages are
counted as with the central coordinator. Evaluation: :mod:`~.sharded_eval`.
With carried optimizer state (the partitioned recipe's default), each owner
also keeps Adam's state of its rows in a second store, moved by a second
pair of exchanges of the same shape (ledger kind ``optim``), as the central
coordinator's :class:`~.carried.CarriedState` does.
Checkpoints are one side file per owner beside the main one (two with
carried state) (:meth:`gist.engine.Checkpointer.write_side`); ``--save-model`` puts the full
model together on worker 0 after the last evaluation, as asked.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from ...comm import FROM_WORKER, SETUP_ROUND, TO_WORKER, Collective, InProcessCollective, tensor_nbytes
from ...comm.dist_collective import DistCollective
from ...config import RunConfig
from ...engine import Checkpointer, CheckpointError, Evaluator, RankSetup, RoundWork, build_stock_model
from ...engine.optim import carried_keys
from ...errors import ConfigError
from ...host_memory import release_freed_memory
from ...subnets import FlatLayout, draw_partition
from .base import GIST
from .carried import state_layouts, state_split_spec, trainable_shapes
from .messages import WorkerReport
from .shard_store import ShardStore
from .sharded_eval import ShardedEvaluation
from .sharded_exchange import RoundPieces, SubnetExchange
from .shards import Ownership, init_shards
from .worker import make_workers

Shards = tuple[dict[int, dict[str, Tensor]], dict[str, Tensor]]
"""The local owners' shards and the shared tensors (:func:`~.shards.init_shards`)."""


class ShardedGIST(GIST):
    """GIST whose full model lives in shards, one per worker (module docstring).

    Args:
        model: the full-width model, initialised (build it under
            ``torch.manual_seed(cfg.seed)`` right before this call, as for
            :class:`~.central.CentralGIST`). Its values are taken into the
            shards and it is moved to the ``meta`` device:
            :meth:`model_state_dict` gives the trained model back.
        data: the graph scored on (worker 0); in one process also the workers'
            graphs. ``None`` on a process that does not evaluate.
        cfg: the run config, with ``options.coordinator = "sharded"``.
        collective: default an :class:`~gist.comm.InProcessCollective` of ``m`` workers.
        graph: the training graph of this process's one worker (a rank that loaded only its own part).
        shards: instead of ``model``'s values, the local owners' shards and
            the shared tensors (:func:`~.shards.init_shards`); ``model``
            is then its structure on the ``meta`` device.
    """

    coordinator = "sharded"
    label = "GIST (sharded)"

    def __init__(
        self,
        model: nn.Module,
        data: Optional[Data],
        cfg: RunConfig,
        collective: Optional[Collective] = None,
        evaluator: Optional[Evaluator] = None,
        scored_by: str = "correct / total",
        graph: Optional[Data] = None,
        shards: Optional[Shards] = None,
    ) -> None:
        self._setup(model, cfg)
        self.collective = collective if collective is not None else InProcessCollective(cfg.subnets)
        local = self.collective.local_workers
        graphs = {local[0]: graph} if graph is not None else None
        if graphs is None and data is None:
            raise ConfigError("the workers need their training graph (graph=) or the full graph (data=)")
        # right after the model was built: worker 0 continues the global RNG stream
        workers = make_workers(model, self.spec, data if graphs is None else None, cfg, indices=local, graphs=graphs)
        self.workers = {w.index: w for w in workers}
        self.ownership = Ownership(self.spec, cfg.subnets)
        if shards is None:
            shards = self._take_shards(model, local)
        if sorted(shards[0]) != list(local):
            raise ConfigError(f"shards of owners {sorted(shards[0])} given to workers {list(local)}")
        self.store = ShardStore(self.ownership, self.spec, shards[0], shards[1], self.device, self.layout.dtype)
        self.exchange = SubnetExchange(self.store, self.collective, self.wire, self.layout.dtype)
        self.optim: Optional[tuple[ShardStore, SubnetExchange, dict[int, FlatLayout]]] = None
        if self.carries_optimizer:
            self.optim = self._carried_state(model, local)
        self.evaluation = ShardedEvaluation(
            model, self.store, self.collective, self.workers, cfg, self.batch_norms_reestimated, self.scores_parts
        )
        self._full_state: Optional[dict[str, Tensor]] = None
        super().__init__(model, data, cfg, self.collective, evaluator, scored_by, device=self.device)

    def _take_shards(self, model: nn.Module, owners: tuple[int, ...]) -> Shards:
        """The local owners' rows of ``model``'s values; ``model`` is left on the ``meta`` device."""
        state = model.state_dict()
        with torch.no_grad():
            out = ({o: self.ownership.shard(state, o) for o in owners}, {n: state[n] for n in self.ownership.shared})
        del state
        model.to("meta")
        return out

    def _carried_state(
        self, model: nn.Module, owners: tuple[int, ...]
    ) -> tuple[ShardStore, SubnetExchange, dict[int, FlatLayout]]:
        """The local owners' shards of Adam's state (zeros: a fresh start), the
        exchange that moves it with the sub-networks, and its layouts per group count."""
        params, keys = trainable_shapes(model), carried_keys(self.carried_policy)
        spec = state_split_spec(self.spec, list(params), keys)
        ownership = Ownership(spec, self.ownership.num_owners)
        full = {f"{n}.{key}": torch.empty(shape, device="meta") for n, shape in params.items() for key in keys}
        shards = {o: ownership.shard(full, o) for o in owners}
        zeros = {o: {n: torch.zeros(t.shape, dtype=torch.float32) for n, t in s.items()} for o, s in shards.items()}
        shared = {n: torch.zeros(full[n].shape, dtype=torch.float32) for n in ownership.shared}
        store = ShardStore(ownership, spec, zeros, shared, self.device, torch.float32, file_prefix="optim-shard")
        layouts = state_layouts(self.layouts, list(params), keys)
        exchange = SubnetExchange(store, self.collective, self.wire, self.layout.dtype, kind="optim")
        return store, exchange, layouts

    @property
    def local_workers(self) -> tuple[int, ...]:
        return self.collective.local_workers

    # ------------------------------------------------------------------ set-up

    def start(self) -> None:
        """The handshake (worker 0 says the round to start from), the label
        counts for the prior correction, and on resume each owner's shard file."""
        numel = self.layouts[self.schedule.at(self.round).groups].wire_numel(self.wire)
        data_bytes = {w: tensor_nbytes(self.workers[w].data_tensors()) for w in self.local_workers}
        self.round = self.collective.handshake(self.round, numel, data_bytes)
        for worker in self.workers.values():
            worker.fast_forward(self.round)
        if self.round > 0:
            self.store.read_checkpoint(Checkpointer(self.cfg), self.round)
            if self.optim is not None:
                self.optim[0].read_checkpoint(Checkpointer(self.cfg), self.round)
        if self.label_classes is not None:
            self._share_label_counts(self.label_classes)

    def _share_label_counts(self, num_classes: int) -> None:
        counts = {w: self.workers[w].label_counts(num_classes) for w in self.local_workers}
        total = torch.stack(self.collective.all_gather(counts, "set-up (label counts)")).sum(0)
        for w in range(self.cfg.subnets):
            self.ledger.record(SETUP_ROUND, w, FROM_WORKER, "prior", total)  # each worker's counts: same size
            self.ledger.record(SETUP_ROUND, w, TO_WORKER, "prior", total)
        for worker in self.workers.values():
            worker.set_label_prior(total.clone())

    # ------------------------------------------------------------------ rounds

    def train_round(self, round: int) -> RoundWork:
        self.collective.round_starts(round)
        start = time.perf_counter()
        plan = self.schedule.at(round)
        partition = draw_partition(self.spec.widths, plan.groups, self.cfg.seed, round, self.settings.assignment)
        pieces = RoundPieces(self.ownership, partition, plan, self.layouts[plan.groups])
        payloads, waited = self.exchange.assemble(round, pieces)
        optim: dict[int, Optional[Tensor]] = dict.fromkeys(self.local_workers)
        if self.optim is not None:
            store, exchange, layouts = self.optim
            optim_pieces = RoundPieces(store.ownership, partition, plan, layouts[plan.groups])
            states, waited_optim = exchange.assemble(round, optim_pieces)
            optim.update(states)
            waited += waited_optim
        split_done = time.perf_counter()
        # each payload handed over, not kept: the worker frees it once loaded
        reports = {w: self.workers[w].train_round(round, payloads.pop(w), optim.pop(w)) for w in self.local_workers}
        merge_start = time.perf_counter()
        waited_back = self.exchange.give_back(round, pieces, reports)
        if self.optim is not None:
            states_back = {w: WorkerReport(rep.optim, rep.stats) for w, rep in reports.items()}
            waited_back += exchange.give_back(round, optim_pieces, states_back)
        merge_seconds = time.perf_counter() - merge_start
        gathered = self.collective.gather_stats(round, {w: reports[w].stats for w in self.local_workers}, self.wire)
        if not self.is_coordinator and self.cfg.is_eval_round(round):  # the last round is one
            self.evaluation.on_parts(round)
            self.evaluation.serve()
        # split and merge: this process's own work, without the exchanges (waiting on the others, transfers)
        return RoundWork(
            stats=gathered, split_seconds=split_done - start - waited, merge_seconds=merge_seconds - waited_back
        )

    def trained_states(self) -> list[Mapping[str, Tensor]]:
        return [*self.store.shards.values(), self.store.shared]

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, round: int) -> dict[str, float]:
        """The full model's score, computed layer by layer from the owners'
        shards (:mod:`~.sharded_eval`): first, where asked, on the workers
        (BatchNorm re-estimation over their nodes, then their counts on their
        own parts: ``parts_val`` / ``parts_test``), then on worker 0 on the
        whole graph. After the last round, with ``--save-model``, worker 0 also
        puts the full model together."""
        try:
            parts = self.evaluation.on_parts(round)
            metrics: dict[str, float] = dict(parts or {})
            if self.evaluator is not None:
                metrics = self.evaluation.on_graph(round, self.evaluator, self.data)
            if parts is not None:
                metrics.update(parts_val=parts["val"], parts_test=parts["test"])
            if self.cfg.checkpoint.save_model and round + 1 == self.cfg.rounds:
                self._full_state = self.evaluation.full_state()
            return metrics
        finally:
            self.evaluation.end()

    # ------------------------------------------------------------------ the model, checkpoints

    def model_state_dict(self) -> dict[str, Tensor]:
        """The full model put together from every shard (in one process from
        its shards; in a job, the copy fetched after the last round when
        ``--save-model`` asked for it)."""
        if len(self.store.shards) == self.cfg.subnets:
            parts = [self.store.shards[o] for o in range(self.cfg.subnets)]
            return self.store.assemble(parts, list(self.model.state_dict()))
        if self._full_state is None:
            raise RuntimeError(
                "the full model is in shards on the workers: it is put together on worker 0 after the last round "
                "when --save-model is set"
            )
        return self._full_state

    def model_checkpoint(self) -> dict[str, Tensor]:
        return {}  # each owner writes its shard file (method_state)

    def method_state(self) -> dict[str, Any]:
        """Every process writes its owners' shard files (keeping the previous
        checkpoint's until this one is complete), then waits for the others;
        the coordinator's state says which round the files hold."""
        self.store.write_checkpoint(Checkpointer(self.cfg), self.round)
        if self.optim is not None:
            self.optim[0].write_checkpoint(Checkpointer(self.cfg), self.round)
        self.collective.all_gather({w: torch.ones(1) for w in self.local_workers}, "writing the checkpoint's shards")
        state = {**super().method_state(), "sharded": {"owners": self.cfg.subnets, "round": self.round}}
        if self.cfg.subnets == 1 and 0 in self.workers:  # m = 1: worker 0 keeps its optimizer and streams
            state["worker0"] = self.workers[0].state_dict()
        return state

    def load_method_state(self, state: dict[str, Any]) -> None:
        owners = int(state["sharded"]["owners"])
        if owners != self.cfg.subnets:
            raise CheckpointError(f"this checkpoint holds {owners} shards, but m = {self.cfg.subnets}")
        if "worker0" in state:
            self.workers[0].load_state_dict(state["worker0"])

    def load_model_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Nothing: each owner reads its own shard file when the run starts."""

    def close(self) -> None:
        self.collective.close()

    # ------------------------------------------------------------------ processes

    @classmethod
    def distributed(cls, setup: RankSetup) -> ShardedGIST:
        """Every rank is a worker and an owner; rank 0 also evaluates (it
        loads the whole graph). Each rank initialises only its own shard of
        the model the run's seed gives (:func:`~.shards.init_shards`):
        no rank ever holds the whole of it. A rank returns the memory it
        frees to the system at once (:func:`gist.host_memory.release_freed_memory`)."""
        setup.prepare()
        setup.check_checkpoint_folder()  # every owner writes its shard there
        cfg, ctx = setup.cfg, setup.ctx
        release_freed_memory()  # before the shards and the graph are allocated
        own = setup.own_graph()
        data = own.data if not setup.partitioned else None
        if ctx.rank == 0 and data is None and cls.scores_on_graph(cfg):
            data = setup.load_dataset().data
        torch.manual_seed(cfg.seed)
        model, shards, shared = init_shards(
            lambda: build_stock_model(cfg, own.num_features, own.num_classes), cfg.subnets, [ctx.rank]
        )
        collective = DistCollective(ctx)
        return cls(model, data, cfg, collective=collective, graph=own.data, shards=(shards, shared))
