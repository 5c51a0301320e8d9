r"""GIST with a sharded coordinator: no process holds the full model.

``--coordinator sharded`` (:class:`ShardedGIST`) keeps GIST's rounds
(:mod:`gist.methods.gist`) but not its central model: unit ``j`` of every
hidden width is owned by worker ``j mod m`` (:mod:`gist.shards`), every
process holds its own shard, its own copy of the shared tensors and its
current sub-network. Round ``r``:

1. every process draws the width split of ``(seed, r)``;
2. *assemble* (one all-to-all): owner ``o`` sends worker ``w`` its piece of
   sub-network ``w mod s``; worker ``w`` puts the pieces together (its own
   piece never travels);
3. worker ``w`` trains its sub-network as in central GIST;
4. *return* (one all-to-all): worker ``w`` sends each owner the owner's rows
   of what it trained; an owner averages the copies of each group (``s < m``)
   and writes them into its shard. The shared tensors are all-gathered and
   averaged, on every worker alike.

The arithmetic is the central coordinator's, element for element, so both
train the same model (bit for bit in one process; with ``--wire-dtype`` the
pieces travel rounded as central buffers do). Ledger (``params``, in the
wire dtype): the pieces a worker receives from other owners
(``to_worker``), the pieces it returns to other owners and its shared
tensors to the ``m - 1`` others (``from_worker``); the stats, label-prior
and set-up messages as central.

Evaluation happens on worker 0 on the whole graph, layer by layer
(:func:`gist.shards.sharded_eval_model`): it fetches one owner's part of a
layer at a time (``eval`` bytes, ``from_worker``, for the owner; each request
8 bytes ``to_worker``). In ``partitioned`` mode the workers first run the
same pass on their own parts, every owner's part of a layer broadcast to all
(``eval`` bytes, ``to_worker``), to re-estimate BatchNorm (moments pooled as
with the central coordinator; each owner writes its units' statistics) and
to score their parts. Checkpoints are one file per owner beside the main
one; ``--save-model`` puts the full model together on worker 0 after the last
evaluation, as asked.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from ..comm import FROM_WORKER, SETUP_ROUND, TO_WORKER, Collective, InProcessCollective, tensor_nbytes
from ..comm.dist import DistCollective
from ..config import RunConfig, gist_options
from ..devices import coordinator_device
from ..engine import DriverSetup, Evaluator, RankSetup, RoundDriver, RoundWork, build_stock_model, make_workers
from ..engine.corrections import activation_moments, pooled_batch_norm_stats
from ..engine.evaluation import accuracy_from_counts, correct_counts
from ..engine.setup import coordinator_evaluator
from ..engine.worker import subnet_schedule
from ..files import atomic_write
from ..nn.slicing import SplitSpec, build_split_spec
from ..shards import Ownership, init_shards, sharded_eval_model
from ..subnets import FlatLayout, average_states, draw_partition, subnet_layout
from .gist import GIST, _num_classes, _reestimated_batch_norms

FULL_SHARD = 1 << 30
"""The fetch key of an owner's whole shard (``--save-model``); layer ``k`` is
key ``k``, and a negative key ends the fetches."""
CENTRAL_CHECKPOINT = "this checkpoint was written by --coordinator central: resume it with --coordinator central"
REQUEST_BYTES = 8
"""A fetch request: one int64."""


class ShardedGIST(GIST):
    """GIST whose full model lives in shards, one per worker (module docstring).

    Args:
        model: the full-width model, initialised (build it under
            ``torch.manual_seed(cfg.seed)`` right before this call, as for
            :class:`GIST`). Its values are taken into the shards and it is
            moved to the ``meta`` device: :meth:`model_state_dict` gives the
            trained model back.
        data: the graph scored on (worker 0); in one process also the workers'
            graphs. ``None`` on a process that does not evaluate.
        cfg: the run config, with ``gist.coordinator = "sharded"``.
        collective: default an :class:`~gist.comm.InProcessCollective` of ``m`` workers.
        graph: the training graph of this process's one worker (a rank that loaded only its own part).
        shards: instead of ``model``'s values, the local owners' shards and
            the shared tensors (:func:`gist.shards.init_shards`); ``model``
            is then its structure on the ``meta`` device.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Optional[Data],
        cfg: RunConfig,
        collective: Optional[Collective] = None,
        evaluator: Optional[Evaluator] = None,
        scored_by: str = "correct / total",
        graph: Optional[Data] = None,
        shards: Optional[tuple[dict[int, dict[str, Tensor]], dict[str, Tensor]]] = None,
    ) -> None:
        cfg.check()
        self.collective = collective if collective is not None else InProcessCollective(cfg.subnets)
        local = self.collective.local_workers
        self.spec = build_split_spec(model)
        graphs = {local[0]: graph} if graph is not None else None
        if graphs is None and data is None:
            raise ValueError("the workers need their training graph (graph=) or the full graph (data=)")
        # right after the model was built: worker 0 continues the global RNG stream
        workers = make_workers(model, self.spec, data if graphs is None else None, cfg, indices=local, graphs=graphs)
        self.workers = {w.index: w for w in workers}
        self.device = coordinator_device(cfg)
        self.options = gist_options(cfg)
        self.schedule = subnet_schedule(cfg)
        for groups in self.schedule.group_counts():
            self.spec.check_subnets(groups)
        self.layouts = {s: subnet_layout(model, self.spec, s) for s in self.schedule.group_counts()}
        self.ownership = Ownership(self.spec, cfg.subnets)
        if shards is None:
            state = model.state_dict()
            with torch.no_grad():
                owned = {o: self.ownership.shard(state, o) for o in local}
                shards = (owned, {n: state[n] for n in self.ownership.shared})
            del state
            model.to("meta")
        if sorted(shards[0]) != list(local):
            raise ValueError(f"shards of owners {sorted(shards[0])} given to workers {list(local)}")
        self.shards = {o: _to(shard, self.device) for o, shard in shards[0].items()}
        self.shared = {n: t.detach().to(self.device, copy=True) for n, t in shards[1].items()}
        self._shared_layout = FlatLayout(
            tuple(self.shared),
            tuple(t.shape for t in self.shared.values()),
            tuple(t.dtype for t in self.shared.values()),
            self.layout.dtype,
        )
        self.num_classes = _num_classes(model) if self.options.label_prior else None
        if (
            self.collective.is_coordinator
            and evaluator is None
            and not (cfg.scorer == "parts" and cfg.evaluates_on_workers)
        ):
            if data is None:
                raise ValueError("worker 0 needs the full graph (data=) to evaluate")
            evaluator, scored_by = coordinator_evaluator(cfg, data)
        self._eval_model: Optional[nn.Module] = None
        self._parts_model: Optional[nn.Module] = None
        self._part_adj: dict[int, Tensor] = {}
        self._batch_norms = _reestimated_batch_norms(model, cfg)
        self._score_parts = cfg.evaluates_on_workers
        self._bn_layers = _batch_norm_layers(model, self.spec)
        self._eval_round = 0
        self._full_state: Optional[dict[str, Tensor]] = None
        setup = DriverSetup(
            ledger=self.collective.ledger,
            num_workers=self.collective.num_workers,
            is_coordinator=self.collective.is_coordinator,
            sequential=self.collective.sequential,
        )
        RoundDriver.__init__(self, model, data, cfg, setup, evaluator, scored_by)

    @property
    def label(self) -> str:
        return "GIST (sharded)"

    @property
    def local_workers(self) -> tuple[int, ...]:
        return self.collective.local_workers

    # ------------------------------------------------------------------ set-up

    def start(self) -> None:
        """The handshake (worker 0 says the round to start from), the label
        counts for the prior correction, and on resume each owner's shard file."""
        numel = self.layouts[self.schedule.at(self.round).groups].wire_numel(self.cfg.wire_torch_dtype)
        data_bytes = {w: tensor_nbytes(self.workers[w].data_tensors()) for w in self.local_workers}
        self.round = self.collective.handshake(self.round, numel, data_bytes)
        for worker in self.workers.values():
            worker.fast_forward(self.round)
        if self.round > 0:
            for owner in self.local_workers:
                self._load_shard(owner, self.round)
        if self.num_classes is not None:
            self._share_label_counts(self.num_classes)

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
        m, local, own = self.cfg.subnets, self.local_workers, self.ownership
        plan = self.schedule.at(round)
        layout = self.layouts[plan.groups]
        shapes = dict(zip(layout.names, layout.shapes))
        partition = draw_partition(self.spec.widths, plan.groups, self.cfg.seed, round)
        pieces = {(o, g): own.plan(partition, g, o) for o in range(m) for g in range(plan.groups)}
        numel = {key: own.piece_numel(p, shapes) for key, p in pieces.items()}
        wire = self.cfg.wire_torch_dtype
        size = wire.itemsize

        # assemble: owner o -> worker w, its piece of group w mod s (in the wire dtype)
        taken = {
            (o, g): own.take_from_shard(self.shards[o], pieces[o, g]).to(wire)
            for o in local
            for g in range(plan.groups)
        }
        sends = {o: {w: taken[o, plan.group_of(w)] for w in range(m)} for o in local}
        recv = {w: {o: numel[o, plan.group_of(w)] for o in range(m)} for w in local}
        exchange = time.perf_counter()
        got = self.collective.all_to_all(sends, recv, f"round {round} (assembling the sub-networks)")
        waited = time.perf_counter() - exchange
        for w in range(m):
            g = plan.group_of(w)
            self.ledger.record(round, w, TO_WORKER, "params", sum(numel[o, g] for o in range(m) if o != w) * size)
        payloads = {}
        for w in local:
            g = plan.group_of(w)
            # put together in place in the sub-network's flat buffer
            flat = torch.empty(layout.numel, dtype=layout.dtype, device=self.device)
            sub = layout.views(flat)
            for o, piece in got[w].items():
                own.place_in_subnet(sub, own.unflatten(piece, pieces[o, g], shapes), pieces[o, g])
            with torch.no_grad():
                for n, value in self.shared.items():
                    sub[n].copy_(value)
            payloads[w] = layout.encode(flat, wire)  # as central's payload: shared values rounded too
            del sub, flat
        del taken, sends, got
        split_done = time.perf_counter()

        # each payload handed over, not kept: the worker frees it once loaded
        reports = {w: self.workers[w].train_round(round, payloads.pop(w)) for w in local}

        # return: worker w -> owner o, the owner's rows of what w trained
        merge_start = time.perf_counter()
        returned = {w: layout.unflatten(layout.decode(reports[w].params.to(self.device))) for w in local}
        sends = {
            w: {o: own.take_from_subnet(returned[w], pieces[o, plan.group_of(w)]).to(wire) for o in range(m)}
            for w in local
        }
        recv = {o: {w: numel[o, plan.group_of(w)] for w in range(m)} for o in local}
        exchange = time.perf_counter()
        got = self.collective.all_to_all(sends, recv, f"round {round} (returning the sub-networks)")
        waited_back = time.perf_counter() - exchange
        shared_bytes = self._shared_layout.wire_numel(wire) * size * (m - 1)
        for w in range(m):
            g = plan.group_of(w)
            back = sum(numel[o, g] for o in range(m) if o != w) * size
            self.ledger.record(round, w, FROM_WORKER, "params", back + shared_bytes)
        for o in local:
            for g in range(plan.groups):
                copies = [own.unflatten(got[o][w].to(layout.dtype), pieces[o, g], shapes) for w in plan.members(g)]
                own.write_to_shard(self.shards[o], average_states(copies), pieces[o, g])
        shared = self._shared_layout
        mine = {w: shared.encode(shared.flatten({n: returned[w][n] for n in self.shared}), wire) for w in local}
        exchange = time.perf_counter()
        gathered_shared = self.collective.all_gather(mine, f"round {round} (shared)")
        waited_back += time.perf_counter() - exchange
        every = [shared.unflatten(shared.decode(f)) for f in gathered_shared]
        by_group = [average_states([every[w] for w in plan.members(g)]) for g in range(plan.groups)]
        with torch.no_grad():
            for n, value in average_states(by_group).items():
                self.shared[n].copy_(value)
        stats = {w: reports[w].stats for w in local}
        merge_seconds = time.perf_counter() - merge_start

        gathered = self.collective.gather_stats(round, stats, wire)
        if not self.is_coordinator and self.cfg.is_eval_round(round):  # the last round is one
            self._evaluate_on_workers(round)
            self.collective.serve_fetches(self._provide)
        # split and merge: this process's own work, without the exchanges (waiting on the others, transfers)
        return RoundWork(
            stats=gathered, split_seconds=split_done - start - waited, merge_seconds=merge_seconds - waited_back
        )

    def trained_states(self) -> list[Mapping[str, Tensor]]:
        return [*self.shards.values(), self.shared]

    # ------------------------------------------------------------------ fetching shards

    def _names(self, key: int) -> list[str]:
        if key == FULL_SHARD:
            return self.ownership.sliced
        return self.ownership.layer_names(self.spec.layers[key].path)

    def _provide(self, owner: int, key: int) -> Tensor:
        """Owner ``owner``'s shard of the tensors of fetch key ``key``, as one flat buffer."""
        shard = self.shards[owner]
        parts = [shard[n].reshape(-1) for n in self._names(key)]
        return torch.cat(parts) if parts else torch.empty(0, dtype=self.layout.dtype, device=self.device)

    def _like(self, key: int) -> Tensor:
        """An empty buffer of the size of one owner's shard of key ``key``'s tensors (all owners' are equal)."""
        shard = self.shards[self.local_workers[0]]
        numel = sum(shard[n].numel() for n in self._names(key))
        return torch.empty(numel, dtype=self.layout.dtype, device=self.device)

    def _split(self, flat: Tensor, key: int) -> dict[str, Tensor]:
        """A :meth:`_provide` buffer as ``{name: view}``."""
        shard = self.shards[self.local_workers[0]]
        out, offset = {}, 0
        for n in self._names(key):
            out[n] = flat[offset : offset + shard[n].numel()].view(shard[n].shape)
            offset += shard[n].numel()
        return out

    def _with_shared(self, part: dict[str, Tensor], layer: int) -> dict[str, Tensor]:
        """An owner's part of layer ``layer`` and the layer's shared tensors: what the layer computes with."""
        path = self.spec.layers[layer].path
        prefix = f"{path}." if path else ""
        part.update({n: t for n, t in self.shared.items() if n.startswith(prefix)})
        return part

    def _fetch(self, owner: int, key: int, record: bool) -> dict[str, Tensor]:
        """Owner ``owner``'s shard of key ``key``'s tensors, on worker 0."""
        flat = self.collective.fetch(owner, key, self._like(key), self._provide)
        if record and owner != 0:
            self.ledger.record(self._eval_round, owner, TO_WORKER, "eval", REQUEST_BYTES)
            self.ledger.record(self._eval_round, owner, FROM_WORKER, "eval", flat)
        return self._split(flat, key)

    def _fetch_layer(self, layer: int, owner: int) -> dict[str, Tensor]:
        return self._with_shared(self._fetch(owner, layer, record=True), layer)

    def _gather_full_state(self) -> dict[str, Tensor]:
        parts = [self._fetch(o, FULL_SHARD, record=False) for o in range(self.cfg.subnets)]
        state = self.ownership.assemble(parts)
        state.update(self.shared)
        template = self.model.state_dict()
        return {n: state[n].detach().to("cpu", copy=True) for n in template}

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, round: int) -> dict[str, float]:
        """The full model's score, computed layer by layer from the owners'
        shards (:func:`gist.shards.sharded_eval_model`): first, where asked,
        on the workers (BatchNorm re-estimation over their nodes, then their
        counts on their own parts: ``parts_val`` / ``parts_test``), then on
        worker 0 on the whole graph. After the last round, with
        ``--save-model``, worker 0 also puts the full model together."""
        self._eval_round = round
        try:
            parts = self._evaluate_on_workers(round)
            metrics: dict[str, float] = dict(parts or {})
            if self.evaluator is not None:
                if self._eval_model is None:
                    self._eval_model = sharded_eval_model(self.model, self.ownership, self._fetch_layer)
                with torch.no_grad():
                    metrics = self.evaluator(self._eval_model, self.data)
            if parts is not None:
                metrics.update(parts_val=parts["val"], parts_test=parts["test"])
            if self.cfg.checkpoint.save_model and round + 1 == self.cfg.rounds:
                self._full_state = self._gather_full_state()
            return metrics
        finally:
            self.collective.end_fetches()

    def _evaluate_on_workers(self, round: int) -> Optional[dict[str, float]]:
        """On every process: re-estimate the first :attr:`_batch_norms`
        BatchNorm layers over every worker's own nodes (each owner writes its
        units' pooled statistics into its shard, layer after layer), then,
        in ``partitioned`` mode, score the model on each worker's part. Every
        pass is the layer-by-layer forward pass with each owner's part of a
        layer broadcast to every worker (``eval`` bytes); the moments and
        counts travel as with the central coordinator. The summed counts'
        accuracy on worker 0 (``None`` when the parts are not scored)."""
        if not self._batch_norms and not self._score_parts:
            return None
        model = self._parts_model
        if model is None:
            model = self._parts_model = sharded_eval_model(self.model, self.ownership, self._share_layer)
        m, local = self.cfg.subnets, self.local_workers
        for w in local:
            if w not in self._part_adj:
                worker = self.workers[w]
                self._part_adj[w] = worker.fmt.of(worker.batches.data)
        for k in range(self._batch_norms):
            moments = {w: self._moments(model, w, self._bn_layers[k]) for w in local}
            total = torch.stack(self.collective.all_gather(moments, f"round {round} (BatchNorm statistics)")).sum(0)
            self._record_pass(round)
            for w in range(m):
                self.ledger.record(round, w, FROM_WORKER, "bn_stats", total)  # each worker's moments: same size
                self.ledger.record(round, w, TO_WORKER, "bn_stats", total)
            stats = pooled_batch_norm_stats([total])
            path = self.spec.layers[self._bn_layers[k]].path
            width = stats.numel() // 2
            with torch.no_grad():
                for o in local:
                    shard = self.shards[o]
                    mean, var = _running_stats(shard, path)
                    units = self.ownership.units(self.spec.layers[self._bn_layers[k]].out_group, o)
                    shard[mean].copy_(stats[:width][units])
                    shard[var].copy_(stats[width:][units])
        if not self._score_parts:
            return None
        counts = {w: self._score(model, w) for w in local}
        every = self.collective.all_gather(counts, f"round {round} (scores on the parts)")
        self._record_pass(round)
        for w in range(m):
            self.ledger.record(round, w, FROM_WORKER, "eval", every[w])
        return accuracy_from_counts(torch.stack(every).sum(0))

    def _record_pass(self, round: int) -> None:
        """One layer-by-layer pass on every worker: each receives every other owner's part of every layer."""
        numel = sum(t.numel() for t in self.shards[self.local_workers[0]].values())
        nbytes = numel * self.layout.dtype.itemsize * (self.cfg.subnets - 1)
        for w in range(self.cfg.subnets):
            self.ledger.record(round, w, TO_WORKER, "eval", nbytes)

    @torch.no_grad()
    def _moments(self, model: nn.Module, w: int, layer: int) -> Tensor:
        """The moments of the inputs of layer ``layer`` (a BatchNorm) over worker ``w``'s own nodes."""
        data = self.workers[w].batches.data
        captured: list[Tensor] = []
        wrapped = model.get_submodule(self.spec.layers[layer].path)
        handle = wrapped.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
        try:
            model(data.x, self._part_adj[w])
        finally:
            handle.remove()
        return activation_moments(captured[0], data.owned if "owned" in data else None)

    @torch.no_grad()
    def _score(self, model: nn.Module, w: int) -> Tensor:
        return correct_counts(model, self.workers[w].batches.data, self._part_adj[w])

    def _share_layer(self, layer: int, owner: int) -> dict[str, Tensor]:
        """Owner ``owner``'s part of layer ``layer`` on every process (a broadcast from it)."""
        flat = self.collective.broadcast_from(owner, layer, self._like(layer), self._provide)
        return self._with_shared(self._split(flat, layer), layer)

    # ------------------------------------------------------------------ the model, checkpoints

    def model_state_dict(self) -> dict[str, Tensor]:
        """The full model put together from every shard (on the coordinator:
        in one process from its shards; in a job, the copy fetched after the
        last round when ``--save-model`` asked for it)."""
        if len(self.shards) == self.cfg.subnets:
            state = self.ownership.assemble([self.shards[o] for o in range(self.cfg.subnets)])
            state.update(self.shared)
            return {n: state[n].detach().to("cpu", copy=True) for n in self.model.state_dict()}
        if self._full_state is None:
            raise RuntimeError(
                "the full model is in shards on the workers: it is put together on worker 0 after the last round "
                "when --save-model is set"
            )
        return self._full_state

    def model_checkpoint(self) -> dict[str, Tensor]:
        return {}  # each owner writes its shard file (method_state)

    def shard_path(self, owner: int, round: int) -> Path:
        """The checkpoint file of ``owner``'s shard after ``round`` rounds (beside ``--checkpoint``)."""
        path = Path(self.cfg.checkpoint.path)
        return path.with_name(f"{path.name}.shard-{owner}-of-{self.cfg.subnets}.round-{round}")

    def method_state(self) -> dict[str, Any]:
        """Every process writes its owners' shard files (keeping the previous
        checkpoint's until this one is complete), then waits for the others;
        the coordinator's state says which round the files hold."""
        for owner in self.local_workers:
            target = self.shard_path(owner, self.round)
            target.parent.mkdir(parents=True, exist_ok=True)
            payload = {
                "round": self.round,
                "owner": owner,
                "owners": self.cfg.subnets,
                "shard": {n: t.detach().cpu() for n, t in self.shards[owner].items()},
                "shared": {n: t.detach().cpu() for n, t in self.shared.items()},
            }
            with atomic_write(target) as tmp:
                torch.save(payload, tmp)
            self._prune_shards(owner)
        done = {w: torch.ones(1) for w in self.local_workers}
        self.collective.all_gather(done, "writing the checkpoint's shards")
        state: dict[str, Any] = {"sharded": {"owners": self.cfg.subnets, "round": self.round}}
        if self.cfg.subnets == 1 and 0 in self.workers:  # m = 1: worker 0 keeps its optimizer and streams
            state["worker0"] = self.workers[0].state_dict()
        return state

    def _prune_shards(self, owner: int) -> None:
        """Delete this owner's shard files but the newest two (the main file
        may still name the previous one until it is replaced)."""
        path = Path(self.cfg.checkpoint.path)
        pattern = re.compile(re.escape(f"{path.name}.shard-{owner}-of-{self.cfg.subnets}.round-") + r"(\d+)$")
        found = sorted(
            (int(match.group(1)), p)
            for p in path.parent.glob(f"{path.name}.shard-{owner}-of-*")
            if (match := pattern.match(p.name))
        )
        for _, old in found[:-2]:
            old.unlink(missing_ok=True)

    def load_method_state(self, state: dict[str, Any]) -> None:
        info = state.get("sharded")
        if info is None:
            raise ValueError(CENTRAL_CHECKPOINT)
        if int(info["owners"]) != self.cfg.subnets:
            raise ValueError(f"this checkpoint holds {info['owners']} shards, but m = {self.cfg.subnets}")
        if "worker0" in state:
            self.workers[0].load_state_dict(state["worker0"])

    def load_model_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if state:
            raise ValueError(CENTRAL_CHECKPOINT)

    def _load_shard(self, owner: int, round: int) -> None:
        path = self.shard_path(owner, round)
        if not path.is_file():
            raise ValueError(f"--resume: the checkpoint of round {round} has no shard file {path}")
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if int(saved["round"]) != round or int(saved["owners"]) != self.cfg.subnets:
            raise ValueError(f"--resume: {path} holds round {saved['round']} of {saved['owners']} shards")
        with torch.no_grad():
            for n, t in self.shards[owner].items():
                t.copy_(saved["shard"][n])
            for n, t in self.shared.items():
                t.copy_(saved["shared"][n])

    def close(self) -> None:
        self.collective.close()

    # ------------------------------------------------------------------ processes

    @classmethod
    def distributed(cls, setup: RankSetup) -> ShardedGIST:
        """Every rank is a worker and an owner; rank 0 also evaluates (it
        loads the whole graph). Each rank initialises only its own shard of
        the model the run's seed gives (:func:`gist.shards.init_shards`):
        no rank ever holds the whole of it."""
        setup.prepare()
        cfg, ctx = setup.cfg, setup.ctx
        own = setup.own_graph()
        data = own.data if not setup.partitioned else None
        if ctx.rank == 0 and data is None and cfg.scorer == "graph":
            data = setup.load_dataset().data
        torch.manual_seed(cfg.seed)
        model, shards, shared = init_shards(
            lambda: build_stock_model(cfg, own.num_features, own.num_classes), cfg.subnets, [ctx.rank]
        )
        evaluator, scored_by = setup.evaluator(data) if ctx.rank == 0 else (None, "correct / total")
        return cls(
            model,
            data,
            cfg,
            collective=DistCollective(ctx),
            evaluator=evaluator,
            scored_by=scored_by,
            graph=own.data,
            shards=(shards, shared),
        )


def _batch_norm_layers(model: nn.Module, spec: SplitSpec) -> list[int]:
    """For each BatchNorm of ``model`` in definition order, the index of the
    split-spec layer that holds it (a PyG ``BatchNorm`` wraps a torch one)."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            holders = [i for i, e in enumerate(spec.layers) if name == e.path or name.startswith(f"{e.path}.")]
            found.append(max(holders, key=lambda i: len(spec.layers[i].path)))
    return found


def _running_stats(shard: Mapping[str, Tensor], path: str) -> tuple[str, str]:
    """The names of a BatchNorm layer's running mean and variance in a shard."""
    mean = [n for n in shard if n.startswith(f"{path}.") and n.endswith("running_mean")]
    var = [n for n in shard if n.startswith(f"{path}.") and n.endswith("running_var")]
    return mean[0], var[0]


def _to(tensors: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {n: t.to(device) for n, t in tensors.items()}
