r"""The baselines GIST is compared with, on the same round loop and ledger.

Both keep the **full model** on every one of ``m`` workers (``m`` is
``cfg.num_subnets``) and train it on the worker's own data, exactly where a
GIST worker would train its sub-network (``replicated``: the whole graph,
full batch or its own Cluster-GCN stream; ``partitioned``: its own part from
:func:`gist.train.worker_graphs` or a part file). A *round* is ``ζ =
cfg.local.local_steps`` optimizer steps per worker, and every round produces a
:class:`gist.train.RoundRecord`, so their logs read like GIST's.

``ddp``
    Synchronous data parallelism: every step each worker computes the
    gradient on its own batch; the gradients are averaged,
    ``g = Σ_i (g_i / m)``, before every optimizer step. One persistent
    optimizer per worker (never reset); all replicas stay identical.
    On ``torch.distributed`` this is
    :class:`torch.nn.parallel.DistributedDataParallel` with a communication
    hook that records each gradient bucket in the ledger and all-reduces it.
    The bucket cap is set above the model size, so there is exactly one
    bucket — one flat buffer — per step.

``local-sgd``
    Model averaging: each worker runs ``ζ`` steps with its own persistent
    optimizer, then the parameters and floating-point buffers (BatchNorm
    running statistics) are averaged with one all-reduce of one flat buffer,
    ``θ = Σ_i (θ_i / m)``. Integer buffers (``num_batches_tracked``) are the
    same on every worker and are not sent. Optimizer state is never averaged.

Each exists as an in-process simulation (``ctx=None``: ``m`` workers one after
another in this process, averaging done by hand) and on ``torch.distributed``
(one rank per worker; rank 0 evaluates and logs). For the same seed and
thread count both give the same model and the same ledger: bit-identical
for ``m = 2``; for ``m > 2`` gloo's all-reduce sums in its own order, which
moves results by float rounding — except that Adam turns rounding noise
into full-size steps for a parameter whose true gradient is zero (a conv
bias right before BatchNorm), where the two forms can drift apart by ~1e-4.
With ``m = 1`` both are plain training, step for step. Rank 0 needs the
full graph (it evaluates); the other ranks' :attr:`history` holds their own
loss and no metrics. DDP is built with ``init_sync=False``: the initial
model goes out in this module's own broadcast (below).

Ledger conventions (all ``kind="params"`` unless said otherwise):

- An all-reduce of a buffer of ``N`` values of ``s`` bytes among ``m``
  workers is counted as a ring all-reduce: every worker sends and receives
  ``(m-1)/m·N`` values (reduce-scatter plus all-gather), recorded per
  worker as ``from_worker = to_worker = ((m-1)·N // m)·s`` bytes (see
  :func:`ring_allreduce_bytes`). When ``m`` divides ``(m-1)·N`` this is
  exactly ``2·(m-1)/m·N·s`` bytes per worker; otherwise each direction is
  rounded down to whole values.
- ``ddp``: one such entry pair per worker per optimizer step, ``N = |θ|``
  (the parameters that require gradients). Per worker per round:
  ``ζ·2·(m-1)/m·|θ|·4`` bytes in float32.
- ``local-sgd``: one entry pair per worker per round, ``N`` = parameters
  plus floating-point buffers.
- Set-up (round ``-1``): the handshake of :func:`gist.comm.record_handshake`
  (``control``: ``[start_round, N]`` out, the worker's graph bytes back;
  ``data``: those graph bytes), and the initial model broadcast from rank 0:
  one flat buffer of parameters plus floating-point buffers, recorded
  ``to_worker`` for every worker ``i ≥ 1`` (rank 0 owns the initial model),
  as ``params`` — it is parameter traffic, so it is in ``bytes_total``.
  It is not in any :class:`RoundRecord`.
- ``stats``: each worker's ``[mean loss, steps, seconds]`` report, gathered
  to rank 0 once per round (``from_worker``, 3 values in the model dtype).
- By symmetry every worker's all-reduce entries are equal, so each rank
  records them for all workers; the set-up graph sizes are all-gathered, so
  the ledger is complete on every rank and identical to the simulation's.
  Not counted: DDP's one-time broadcast of its rebuilt bucket order (a few
  integers per parameter tensor, at its second step).

Batches without training nodes: in ``ddp`` the worker still runs the forward
pass and contributes a zero gradient (``0·Σ out``) to the average, so every
rank takes part in every all-reduce and every replica steps; the average is
still taken over all ``m`` workers. In ``local-sgd`` the worker skips that
step (as a GIST worker does).

BatchNorm in ``ddp``: buffers are not synchronised during training
(``forward_sync_buffers=False``); in training mode BatchNorm normalises with
batch statistics, so running statistics never affect the gradients, and rank
0's model keeps the running statistics of its own batches — what DDP's
default buffer broadcast would leave on rank 0 too, without hidden traffic.
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data

from .comm import (
    FROM_WORKER,
    SETUP_ROUND,
    TO_WORKER,
    ByteLedger,
    handshake_header,
    record_handshake,
    tensor_nbytes,
)
from .train import (
    GISTConfig,
    RNGStream,
    RoundRecord,
    adjacency,
    evaluate,
    fit_rounds,
    history_summary,
    make_batch_sources,
    make_optimizer,
    parallel_round_seconds,
    training_loss,
    worker_graphs,
    worker_rng_state,
)

if TYPE_CHECKING:  # pragma: no cover
    from .distributed import DistContext

METHODS = ("ddp", "local-sgd")
STATS_VALUES = 3


def ring_allreduce_bytes(numel: int, element_size: int, num_workers: int) -> int:
    """Bytes one worker sends (and, equally, receives) in a ring all-reduce of
    ``numel`` values of ``element_size`` bytes among ``num_workers`` workers:
    ``((m-1)·numel // m)·element_size``. Both directions together give
    ``2·(m-1)/m·numel·element_size`` when ``m`` divides ``(m-1)·numel``."""
    m = int(num_workers)
    return ((m - 1) * int(numel) // m) * int(element_size)


def float_state_names(model: nn.Module) -> list[str]:
    """The ``state_dict`` entries that are averaged and broadcast: parameters
    and floating-point buffers, in ``state_dict`` order."""
    return [k for k, v in model.state_dict().items() if v.is_floating_point()]


def flatten_state(model: nn.Module, names: list[str]) -> Tensor:
    """One flat buffer of the ``names`` entries of ``model.state_dict()``."""
    state = model.state_dict()
    return torch.cat([state[k].detach().reshape(-1) for k in names])


@torch.no_grad()
def load_flat_state(model: nn.Module, names: list[str], flat: Tensor) -> None:
    """Write a :func:`flatten_state` buffer back into ``model`` in place."""
    state = model.state_dict()
    offset = 0
    for k in names:
        t = state[k]
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    if offset != flat.numel():
        raise ValueError(f"flat state has {flat.numel()} values, the model {offset}")


def _ddp_loss(model: nn.Module, batch: Data, adj: Tensor) -> tuple[Tensor, bool]:
    """Training loss, or ``0·Σ out`` (a zero gradient for every parameter
    used) when the batch has no training nodes; the flag says which."""
    out = model(batch.x, adj)
    mask = batch.train_mask
    if bool(mask.any()):
        return F.cross_entropy(out[mask], batch.y[mask]), True
    return out.sum() * 0.0, False


class BaselineTrainer:
    """``ddp`` or ``local-sgd`` training of the full ``model`` on ``m`` workers.

    Mirrors :class:`gist.train.GISTTrainer`: :attr:`model`, :attr:`history`,
    :attr:`ledger`, :attr:`round`, :meth:`run_round`, :meth:`fit`,
    :meth:`summary`. Build ``model`` under ``torch.manual_seed(cfg.seed)``
    right before constructing the trainer: worker 0 continues the global RNG
    stream from here (so ``m = 1`` is plain training); worker ``i > 0`` draws
    its dropout from :func:`gist.train.worker_rng_state` ``(seed, i)``.

    Args:
        method: ``"ddp"`` or ``"local-sgd"``.
        model: the full model; trained in place (it is rank 0's replica).
        data: the full graph (evaluation; in-process also the workers'
            graphs via :func:`gist.train.worker_graphs`). ``None`` on ranks
            ``> 0``.
        cfg: the round-loop settings GIST uses (``num_subnets`` = workers).
        ctx: ``None``: all ``m`` workers in this process. Given: this process
            is worker ``ctx.rank`` of a ``torch.distributed`` job with
            ``ctx.world_size == m``; rank 0 evaluates and keeps the log.
        graph: this rank's training graph (``ctx`` given); default
            ``worker_graphs(data, cfg)[ctx.rank]``.
        evaluator: ``f(model, data) -> {"train", "val", "test"}``; default
            accuracy (:func:`gist.train.evaluate`).
    """

    def __init__(self, method: str, model: nn.Module, data: Optional[Data], cfg: GISTConfig,
                 ctx: Optional["DistContext"] = None, graph: Optional[Data] = None,
                 evaluator: Optional[Callable[[nn.Module, Data], dict[str, float]]] = None) -> None:
        first_rng = torch.get_rng_state()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        cfg.validate()
        self.method = method
        self.model = model
        self.data = data
        self.cfg = cfg
        self.ctx = ctx
        self.m = m = cfg.num_subnets
        self.ledger = ByteLedger()
        self.history: list[RoundRecord] = []
        self.round = 0
        self._started = False

        self._state_names = float_state_names(model)
        dtypes = {model.state_dict()[k].dtype for k in self._state_names}
        if len(dtypes) != 1:
            raise ValueError(f"the model's floating-point state mixes dtypes {sorted(map(str, dtypes))}")
        self.dtype = dtypes.pop()
        self.state_numel = sum(model.state_dict()[k].numel() for k in self._state_names)
        self.grad_numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.numel = self.grad_numel if method == "ddp" else self.state_numel
        """``|θ|``: values in the buffer all-reduced per step (ddp) or per round (local-sgd)."""

        if ctx is None:
            if graph is not None:
                raise ValueError("graph is for a distributed rank (ctx given); in-process workers use worker_graphs")
            if data is None:
                raise ValueError("the in-process baselines need the full graph")
            self.rank = 0
            self.indices = list(range(m))
            graphs = dict(enumerate(worker_graphs(data, cfg)))
        else:
            if ctx.world_size != m:
                raise ValueError(f"the job has {ctx.world_size} processes but m={m}: one process per worker")
            if ctx.backend != "gloo":
                raise NotImplementedError(f"the distributed baselines run on CPU tensors over gloo, "
                                          f"not {ctx.backend!r}")
            self.rank = ctx.rank
            self.indices = [ctx.rank]
            if graph is None:
                if data is None:
                    raise ValueError(f"rank {ctx.rank} needs its training graph (graph=) or the full graph")
                graph = worker_graphs(data, cfg)[ctx.rank]
            graphs = {ctx.rank: graph}
        if self.rank == 0 and data is None:
            raise ValueError("rank 0 needs the full graph (data=) to evaluate")
        self._sources = make_batch_sources(graphs, cfg)
        self._rngs = {i: RNGStream(first_rng if i == 0 else worker_rng_state(cfg.seed, i)) for i in self.indices}
        self._warned_empty: set[int] = set()

        # Replicas and optimizers. In-process ddp keeps one replica (all stay
        # identical); workers i > 0 run on it with rank 0's buffers saved and
        # restored, so rank 0's BatchNorm statistics see only rank 0's batches.
        if method == "local-sgd" and ctx is None:
            self._replicas = {i: model if i == 0 else copy.deepcopy(model) for i in self.indices}
        else:
            self._replicas = {self.indices[0]: model}
        self._optimizers = {i: make_optimizer(rep.parameters(), cfg.local) for i, rep in self._replicas.items()}
        self._ddp: Optional[nn.Module] = None

        if self.rank == 0:
            if evaluator is None:
                eval_adj = adjacency(data, cfg.sparse_adjacency)
                evaluator = lambda model, graph: evaluate(model, graph, eval_adj)  # noqa: E731
            self.evaluator = evaluator

    # ------------------------------------------------------------------ ledger

    def _record(self, round: int, worker: int, direction: str, kind: str, payload: Tensor | int) -> int:
        nbytes = self.ledger.record(round, worker, direction, kind, payload)
        if kind == "params":
            if round >= 0:
                key = "to" if direction == TO_WORKER else "from"
                self._round_bytes[key] += nbytes
        elif kind == "stats" and round >= 0:
            self._round_bytes["stats"] += nbytes
        return nbytes

    def _record_allreduce(self, round: int, numel: int, element_size: int) -> None:
        """Ring all-reduce of one buffer: the same entry pair for every worker."""
        nbytes = ring_allreduce_bytes(numel, element_size, self.m)
        for w in range(self.m):
            self._record(round, w, TO_WORKER, "params", nbytes)
            self._record(round, w, FROM_WORKER, "params", nbytes)

    # ------------------------------------------------------------------ set-up

    def _start(self) -> None:
        """Handshake, initial broadcast of rank 0's model, DDP wrapper."""
        import torch.distributed as dist

        header = handshake_header(self.round, self.numel)
        element = torch.empty((), dtype=self.dtype).element_size()
        replies = {i: torch.tensor([tensor_nbytes(self._sources[i].tensors())], dtype=torch.int64)
                   for i in self.indices}
        if self.ctx is None:
            for i, rep in self._replicas.items():  # deep copies of rank 0's model already
                if i > 0:
                    load_flat_state(rep, self._state_names, flatten_state(self.model, self._state_names))
        else:
            dist.broadcast(header, src=0)
            if int(header[1]) != self.numel:
                raise RuntimeError(f"rank {self.rank}: rank 0's {self.method} buffer has {int(header[1])} values, "
                                   f"this rank's {self.numel}: the ranks were started with different settings")
            gathered = [torch.zeros(1, dtype=torch.int64) for _ in range(self.m)]
            dist.all_gather(gathered, replies[self.rank])
            replies = dict(enumerate(gathered))
            flat = flatten_state(self.model, self._state_names).contiguous()
            dist.broadcast(flat, src=0)
            if self.rank != 0:
                load_flat_state(self.model, self._state_names, flat)
        for w in range(self.m):
            record_handshake(self.ledger, w, header, replies[w])
        for w in range(1, self.m):
            self._record(SETUP_ROUND, w, TO_WORKER, "params", self.state_numel * element)
        if self.ctx is not None and self.method == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            cap_mb = max(25, math.ceil(self.grad_numel * element / 2**20) + 1)  # one bucket per step
            self._ddp = DistributedDataParallel(self.model, init_sync=False, forward_sync_buffers=False,
                                                bucket_cap_mb=cap_mb)
            self._ddp.register_comm_hook(self, _recording_allreduce_hook)
        self._started = True

    # ------------------------------------------------------------------ rounds

    def run_round(self) -> RoundRecord:
        """``ζ`` steps per worker (with per-step gradient averaging for
        ``ddp``, one parameter average at the end for ``local-sgd``), then
        evaluation on rank 0 every ``eval_every`` rounds."""
        r = self.round
        self._round_bytes = {"to": 0, "from": 0, "stats": 0}
        if not self._started:
            self._start()
            self._round_bytes = {"to": 0, "from": 0, "stats": 0}
        start = time.perf_counter()
        if self.method == "ddp":
            losses, seconds, merge_seconds = self._ddp_round(r)
        else:
            losses, seconds, merge_seconds = self._local_sgd_round(r)
        stats = {i: torch.tensor([sum(losses[i]) / len(losses[i]) if losses[i] else float("nan"),
                                  float(len(losses[i])), seconds[i]], dtype=self.dtype) for i in self.indices}
        if self.ctx is not None:
            import torch.distributed as dist

            gather = [torch.zeros(STATS_VALUES, dtype=self.dtype) for _ in range(self.m)] if self.rank == 0 else None
            dist.gather(stats[self.rank], gather, dst=0)
            if self.rank == 0:
                stats = dict(enumerate(gather))
        for w in range(self.m):
            self._record(r, w, FROM_WORKER, "stats", STATS_VALUES * torch.empty((), dtype=self.dtype).element_size())
        end = time.perf_counter()
        mean_losses = [float(s[0]) for s in stats.values() if not math.isnan(float(s[0]))]
        worker_seconds = [float(s[2]) for s in stats.values()]
        record = RoundRecord(
            round=r,
            local_steps=self.cfg.local.local_steps,
            seconds=end - start,
            split_seconds=0.0,
            merge_seconds=merge_seconds,
            worker_seconds=max(worker_seconds),
            parallel_seconds=parallel_round_seconds(end - start, worker_seconds, self.ctx is None),
            bytes_to_workers=self._round_bytes["to"],
            bytes_from_workers=self._round_bytes["from"],
            stats_bytes=self._round_bytes["stats"],
            loss=sum(mean_losses) / len(mean_losses) if mean_losses else float("nan"),
        )
        if self.rank == 0 and ((r + 1) % self.cfg.eval_every == 0 or r + 1 == self.cfg.rounds):
            eval_start = time.perf_counter()
            metrics = self.evaluator(self.model, self.data)
            record.train, record.val, record.test = metrics["train"], metrics["val"], metrics["test"]
            record.eval_seconds = time.perf_counter() - eval_start
        self.history.append(record)
        self.round += 1
        return record

    def _ddp_round(self, r: int) -> tuple[dict[int, list[float]], dict[int, float], float]:
        losses: dict[int, list[float]] = {i: [] for i in self.indices}
        seconds = {i: 0.0 for i in self.indices}
        merge_seconds = 0.0
        opt = self._optimizers[self.indices[0]]
        self.model.train()
        if self.ctx is not None:
            self._hook_round = r
            for _ in range(self.cfg.local.local_steps):
                t = time.perf_counter()
                with self._rngs[self.rank].active():
                    batch, adj = self._sources[self.rank].next_batch()
                    opt.zero_grad()
                    loss, real = _ddp_loss(self._ddp, batch, adj)
                    loss.backward()  # the comm hook records and averages the gradient
                opt.step()
                if real:
                    losses[self.rank].append(float(loss.detach()))
                else:
                    self._warn_empty(self.rank, "contributes a zero gradient")
                seconds[self.rank] += time.perf_counter() - t
            return losses, seconds, merge_seconds
        params = [p for p in self.model.parameters() if p.requires_grad]
        buffers = [b for b in self.model.buffers()]
        element = torch.empty((), dtype=self.dtype).element_size()
        for _ in range(self.cfg.local.local_steps):
            avg: Optional[Tensor] = None
            for i in self.indices:
                t = time.perf_counter()
                saved = [b.clone() for b in buffers] if i > 0 else None
                with self._rngs[i].active():
                    batch, adj = self._sources[i].next_batch()
                    opt.zero_grad()
                    loss, real = _ddp_loss(self.model, batch, adj)
                    loss.backward()
                if saved is not None:
                    with torch.no_grad():
                        for b, s in zip(buffers, saved):
                            b.copy_(s)
                if real:
                    losses[i].append(float(loss.detach()))
                else:
                    self._warn_empty(i, "contributes a zero gradient")
                m0 = time.perf_counter()
                # what the comm hook does: divide the bucket by m, then sum over workers
                flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                                  for p in params]).div_(self.m)
                avg = flat if avg is None else avg.add_(flat)
                merge_seconds += time.perf_counter() - m0
                seconds[i] += m0 - t
            m0 = time.perf_counter()
            offset = 0
            for p in params:
                p.grad = avg[offset:offset + p.numel()].view_as(p).clone()
                offset += p.numel()
            self._record_allreduce(r, avg.numel(), element)
            merge_seconds += time.perf_counter() - m0
            t = time.perf_counter()
            opt.step()  # every replica takes this same step
            for i in self.indices:
                seconds[i] += time.perf_counter() - t
        return losses, seconds, merge_seconds

    def _local_sgd_round(self, r: int) -> tuple[dict[int, list[float]], dict[int, float], float]:
        losses: dict[int, list[float]] = {i: [] for i in self.indices}
        seconds = {i: 0.0 for i in self.indices}
        for i in self.indices:
            t = time.perf_counter()
            rep, opt = self._replicas[i], self._optimizers[i]
            rep.train()
            with self._rngs[i].active():
                for _ in range(self.cfg.local.local_steps):
                    batch, adj = self._sources[i].next_batch()
                    opt.zero_grad()
                    loss = training_loss(rep, batch, adj)
                    if loss is None:
                        self._warn_empty(i, "step skipped")
                        continue
                    loss.backward()
                    opt.step()
                    losses[i].append(float(loss.detach()))
            seconds[i] = time.perf_counter() - t
        m0 = time.perf_counter()
        if self.ctx is not None:
            import torch.distributed as dist

            flat = flatten_state(self.model, self._state_names).div_(self.m)
            dist.all_reduce(flat)
            load_flat_state(self.model, self._state_names, flat)
        else:
            avg: Optional[Tensor] = None
            for i in self.indices:
                flat = flatten_state(self._replicas[i], self._state_names).div_(self.m)
                avg = flat if avg is None else avg.add_(flat)
            for rep in self._replicas.values():
                load_flat_state(rep, self._state_names, avg)
        self._record_allreduce(r, self.state_numel, torch.empty((), dtype=self.dtype).element_size())
        return losses, seconds, time.perf_counter() - m0

    def _warn_empty(self, worker: int, what: str) -> None:
        if worker not in self._warned_empty:
            warnings.warn(f"worker {worker}: a batch without training nodes; {what}")
            self._warned_empty.add(worker)

    # ------------------------------------------------------------------ driver

    def fit(self, progress: bool = True, callback: Optional[Callable[[RoundRecord], Any]] = None) -> list[RoundRecord]:
        """Run the remaining rounds, with a progress bar over rounds."""
        return fit_rounds(self, f"{self.method} rounds", progress, callback)

    def summary(self) -> dict[str, Any]:
        """The keys of :meth:`gist.train.GISTTrainer.summary` (``subnet_params``
        is ``|θ|``, the values of the all-reduced buffer) plus ``method``.
        ``bytes_total`` includes the set-up broadcast of the model."""
        return {"method": self.method,
                **history_summary(self.history, self.ledger, self.m),
                "eval_bytes_total": 0,  # rank 0 evaluates on the full graph it holds
                "subnet_params": self.numel}

    def close(self) -> None:
        """Drop the DDP wrapper (the process group is the caller's)."""
        self._ddp = None


def _recording_allreduce_hook(trainer: BaselineTrainer, bucket):  # DDP rejects a string annotation
    """DDP communication hook: record the bucket (a ``dist.GradBucket``) as a
    ring all-reduce for every worker, then average it (divide by ``m``,
    all-reduce the sum); returns a ``torch.futures.Future[Tensor]``."""
    import torch.distributed as dist

    buf = bucket.buffer()
    trainer._record_allreduce(trainer._hook_round, buf.numel(), buf.element_size())
    buf.div_(trainer.m)
    fut = dist.all_reduce(buf, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


# ---------------------------------------------------------------------- runs
