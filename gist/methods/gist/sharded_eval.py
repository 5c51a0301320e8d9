r"""Evaluating a model that lives in shards, layer by layer.

On worker 0, on the whole graph: the model's own forward pass with each layer
computed owner by owner (:func:`~.shards.sharded_eval_model`), fetching one
owner's part of a layer at a time, a wide layer a chunk of the owner's units
at a time (:class:`ShardFetcher`; ``eval`` bytes, ``from_worker``, for the
owner; each request :data:`REQUEST_BYTES` ``to_worker``). In ``partitioned``
mode the workers first run the same pass on their own parts, every owner's
part of a layer broadcast to all (``eval`` bytes, ``to_worker``), to
re-estimate BatchNorm (moments pooled as with the central coordinator; each
owner writes its units' statistics) and to score their parts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Optional

import torch
from torch import Tensor, nn

from ...comm import FROM_WORKER, TO_WORKER, ByteLedger, Collective
from ...comm.dist_collective import DistCollective
from ...comm.p2p import recv, send
from ...config import RunConfig
from ...engine import Evaluator, accuracy_from_counts, correct_counts
from .corrections import activation_moments, pooled_batch_norm_stats
from .shard_store import FULL_SHARD, ShardStore
from .shards import sharded_eval_model
from .worker import Worker

REQUEST_BYTES = 24
"""A fetch request: three int64 (the key and the first and last-plus-one row)."""
END_OF_FETCHES = -1
Provide = Callable[[int, int, slice], Tensor]
"""``provide(owner, key, rows)``: :meth:`~.shard_store.ShardStore.provide`."""


class ShardFetcher:
    """Worker 0 asking an owner for one of its buffers: computed here when the owner is local."""

    def fetch(self, owner: int, key: int, rows: slice, like: Tensor, provide: Provide) -> Tensor:
        return provide(owner, key, rows)

    def serve(self, provide: Provide) -> None:
        """On a process without worker 0: answer its fetches until it ends them."""

    def end(self) -> None:
        """On worker 0: release the processes serving its fetches."""


class DistShardFetcher(ShardFetcher):
    """The fetch protocol on ``torch.distributed``: worker 0 sends an owner a
    key and a range of rows (``stop`` -1: all), the owner answers with its
    buffer; a negative key ends the fetches."""

    def __init__(self, collective: DistCollective) -> None:
        self.ctx, self.num_workers = collective.ctx, collective.num_workers

    def fetch(self, owner: int, key: int, rows: slice, like: Tensor, provide: Provide) -> Tensor:
        if owner == self.ctx.rank:
            return provide(owner, key, rows)
        what = "evaluation (fetching a shard)"
        start, stop = rows.start or 0, -1 if rows.stop is None else rows.stop
        send(torch.tensor([key, start, stop], dtype=torch.int64), owner, self.ctx, what)
        return recv(like, owner, self.ctx, what, on_device=True).to(like.device)

    def serve(self, provide: Provide) -> None:
        what = "evaluation (sending a shard)"
        while (request := recv(torch.zeros(3, dtype=torch.int64), 0, self.ctx, what).tolist())[0] >= 0:
            key, start, stop = request
            send(provide(self.ctx.rank, key, slice(start, None if stop < 0 else stop)), 0, self.ctx, what)

    def end(self) -> None:
        done = torch.tensor([END_OF_FETCHES, 0, 0], dtype=torch.int64)
        for rank in range(1, self.num_workers):
            send(done, rank, self.ctx, "evaluation (done)")


class ShardedEvaluation:
    """The evaluation passes of :class:`~.sharded.ShardedGIST` (module docstring).

    Args:
        template: the model's structure (on the ``meta`` device).
        store: this process's shards.
        workers: this process's workers (their own graphs).
        batch_norms: how many BatchNorm layers to re-estimate before scoring (0: none).
        score_parts: whether the workers score the model on their own parts.
    """

    def __init__(
        self,
        template: nn.Module,
        store: ShardStore,
        collective: Collective,
        workers: Mapping[int, Worker],
        cfg: RunConfig,
        batch_norms: int,
        score_parts: bool,
    ) -> None:
        self.template, self.store, self.collective, self.workers, self.cfg = template, store, collective, workers, cfg
        self.ledger: ByteLedger = collective.ledger
        self.batch_norms, self.score_parts = batch_norms, score_parts
        self.fetcher = DistShardFetcher(collective) if isinstance(collective, DistCollective) else ShardFetcher()
        self._bn_layers = batch_norm_layers(template, store)
        self._graph_model: Optional[nn.Module] = None
        self._parts_model: Optional[nn.Module] = None
        self._part_adj: dict[int, Tensor] = {}
        self._round = 0

    # ------------------------------------------------------------------ worker 0, on the whole graph

    def on_graph(self, round: int, evaluator: Evaluator, data: object) -> dict[str, float]:
        """``evaluator``'s score of the model, each layer fetched owner by owner to worker 0."""
        self._round = round
        if self._graph_model is None:
            self._graph_model = sharded_eval_model(self.template, self.store.ownership, self._fetch_layer)
        with torch.no_grad():
            return evaluator(self._graph_model, data)

    def _fetch(self, owner: int, key: int, rows: slice, record: bool) -> dict[str, Tensor]:
        flat = self.fetcher.fetch(owner, key, rows, self.store.like(key, rows), self.store.provide)
        if record and owner != 0:
            self.ledger.record(self._round, owner, TO_WORKER, "eval", REQUEST_BYTES)
            self.ledger.record(self._round, owner, FROM_WORKER, "eval", flat)
        return self.store.split(flat, key, rows)

    def _fetch_layer(self, layer: int, owner: int, rows: slice) -> dict[str, Tensor]:
        return self.store.with_shared(self._fetch(owner, layer, rows, record=True), layer)

    def full_state(self) -> dict[str, Tensor]:
        """The full model put together on worker 0 from every owner's shard (not counted: not training)."""
        parts = [self._fetch(o, FULL_SHARD, slice(None), record=False) for o in range(self.cfg.subnets)]
        return self.store.assemble(parts, list(self.template.state_dict()))

    def serve(self) -> None:
        """On every process but worker 0's, after an evaluated round: answer worker 0's fetches."""
        self.fetcher.serve(self.store.provide)

    def end(self) -> None:
        self.fetcher.end()

    # ------------------------------------------------------------------ every worker, on its own part

    def on_parts(self, round: int) -> Optional[dict[str, float]]:
        """On every process: re-estimate the first :attr:`batch_norms`
        BatchNorm layers over every worker's own nodes (each owner writes its
        units' pooled statistics into its shard, layer after layer), then,
        with :attr:`score_parts`, score the model on each worker's part. The
        summed counts' accuracy (``None`` when the parts are not scored)."""
        if not self.batch_norms and not self.score_parts:
            return None
        if self._parts_model is None:
            self._parts_model = sharded_eval_model(self.template, self.store.ownership, self._share_layer)
        model, m = self._parts_model, self.cfg.subnets
        for w, worker in self.workers.items():
            if w not in self._part_adj:
                self._part_adj[w] = worker.fmt.of(worker.batches.data)
        for k in range(self.batch_norms):
            moments = {w: self._moments(model, w, self._bn_layers[k]) for w in self.workers}
            total = torch.stack(self.collective.all_gather(moments, f"round {round} (BatchNorm statistics)")).sum(0)
            self._record_pass(round)
            for w in range(m):
                self.ledger.record(round, w, FROM_WORKER, "bn_stats", total)  # each worker's moments: same size
                self.ledger.record(round, w, TO_WORKER, "bn_stats", total)
            self._write_batch_norm(self._bn_layers[k], pooled_batch_norm_stats([total]))
        if not self.score_parts:
            return None
        counts = {w: correct_counts(model, self.workers[w].batches.data, self._part_adj[w]) for w in self.workers}
        every = self.collective.all_gather(counts, f"round {round} (scores on the parts)")
        self._record_pass(round)
        for w in range(m):
            self.ledger.record(round, w, FROM_WORKER, "eval", every[w])
        return accuracy_from_counts(torch.stack(every).sum(0))

    def _share_layer(self, layer: int, owner: int, rows: slice) -> dict[str, Tensor]:
        """Rows ``rows`` of owner ``owner``'s part of layer ``layer`` on every process (a broadcast from it)."""
        store = self.store
        flat = store.provide(owner, layer, rows) if owner in store.shards else store.like(layer, rows)
        flat = self.collective.broadcast_from(owner, flat, "evaluation (sharing a shard)")
        return store.with_shared(store.split(flat, layer, rows), layer)

    def _record_pass(self, round: int) -> None:
        """One layer-by-layer pass on every worker: each receives every other owner's part of every layer."""
        numel = sum(t.numel() for t in self.store.shards[self.store.owners[0]].values())
        nbytes = numel * self.store.dtype.itemsize * (self.cfg.subnets - 1)
        for w in range(self.cfg.subnets):
            self.ledger.record(round, w, TO_WORKER, "eval", nbytes)

    @torch.no_grad()
    def _moments(self, model: nn.Module, w: int, layer: int) -> Tensor:
        """The moments of the inputs of layer ``layer`` (a BatchNorm) over worker ``w``'s own nodes."""
        data = self.workers[w].batches.data
        captured: list[Tensor] = []
        wrapped = model.get_submodule(self.store.spec.layers[layer].path)
        handle = wrapped.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
        try:
            model(data.x, self._part_adj[w])
        finally:
            handle.remove()
        return activation_moments(captured[0], data.owned if "owned" in data else None)

    @torch.no_grad()
    def _write_batch_norm(self, layer: int, stats: Tensor) -> None:
        """Each local owner writes its units' share of ``stats`` (means, then variances) into its shard."""
        entry = self.store.spec.layers[layer]
        width = stats.numel() // 2
        for o, shard in self.store.shards.items():
            mean, var = _running_stats(shard, entry.path)
            units = self.store.ownership.units(entry.out_group, o)
            shard[mean].copy_(stats[:width][units])
            shard[var].copy_(stats[width:][units])


def batch_norm_layers(model: nn.Module, store: ShardStore) -> list[int]:
    """For each BatchNorm of ``model`` in definition order, the index of the
    split-spec layer that holds it (a PyG ``BatchNorm`` wraps a torch one)."""
    layers, found = store.spec.layers, []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            holders = [i for i, e in enumerate(layers) if name == e.path or name.startswith(f"{e.path}.")]
            found.append(max(holders, key=lambda i: len(layers[i].path)))
    return found


def _running_stats(shard: Mapping[str, Tensor], path: str) -> tuple[str, str]:
    """The names of a BatchNorm layer's running mean and variance in a shard."""
    mean = [n for n in shard if n.startswith(f"{path}.") and n.endswith("running_mean")]
    var = [n for n in shard if n.startswith(f"{path}.") and n.endswith("running_var")]
    return mean[0], var[0]
