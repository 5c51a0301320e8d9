r"""``ddp``: synchronous data parallelism, the gradient averaged before every step.

Every step each worker computes the gradient on its own batch; the gradients
are averaged, ``g = Σ_i (g_i / m)``, with one all-reduce of one flat buffer of
``|θ|`` values (the parameters that require gradients), and every replica
takes the same optimizer step, so all replicas stay identical. One
persistent optimizer per worker (never reset). On
NCCL each rank trains a real
``torch.nn.parallel.DistributedDataParallel``, whose all-reduce scales
each gradient by ``1/m`` into its bucket and sums the buckets; on gloo each
rank all-reduces one flat gradient itself (DDP's reducer over gloo
deadlocked at teardown), and in one process the workers run one after
another and one flat gradient is averaged: the same arithmetic (bit for
bit for ``m`` a power of two). Per worker per round it moves
``ζ·2·(m-1)/m·|θ|`` values.

A batch without training nodes: the worker still runs the forward pass and
contributes a zero gradient (``0·Σ out``) to the average, so every worker
takes part in every all-reduce; the average is still taken over all ``m``
workers.

BatchNorm (``--batch-norm-stats``): ``synced`` (the default) is what a DDP
user gets from ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: every
BatchNorm layer normalises each worker's nodes with the statistics of all
workers' batches together, forward and backward
(:mod:`gist.nn.sync_batch_norm`), so the gradient is that of the mean of the
workers' losses under the global statistics and every replica keeps the same
running statistics. Its sums are three all-reduces per BatchNorm layer and
step (``4C + 1`` values for ``C`` channels), counted as ``bn_sync``. In one
process the ``m`` workers' passes meet at every layer as threads that take
turns in worker order (:class:`gist.comm.lockstep.Lockstep`), as
deterministic as running them one after another (CPU only: on a GPU run one
process per device). ``own``: BatchNorm normalises with each worker's own
batch; running statistics never affect the gradients in training, and worker
0's model keeps the running statistics of its own batches (in the in-process
simulation the workers share one replica, and the buffers are restored after
every other worker's pass). Who wants ``own``: a user reproducing DDP
without the conversion, and the committed tables made before ``synced``
existed.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data

from ..comm import Collective
from ..comm.dist_collective import DistCollective
from ..comm.lockstep import Lockstep
from ..config import RunConfig
from ..errors import ConfigError
from ..nn.sync_batch_norm import SumAcross, convert_sync_batch_norm, synchronised
from .data_parallel import DataParallelMethod
from .ddp_options import DDPConfig


def ddp_loss(model: nn.Module, batch: Data, adj: Tensor) -> tuple[Tensor, bool]:
    """Training loss, or ``0·Σ out`` (a zero gradient for every parameter
    used) when the batch has no training nodes; the flag says which."""
    out = model(batch.x, adj)
    mask = batch.train_mask
    if bool(mask.any()):
        return F.cross_entropy(out[mask], batch.y[mask]), True
    return out.sum() * 0.0, False


def flat_grad(params: list[nn.Parameter]) -> Tensor:
    """The parameters' gradients as one flat buffer (zeros where a parameter has none)."""
    return flat_of(params, [p.grad for p in params])


def flat_of(params: list[nn.Parameter], grads: Any) -> Tensor:
    """``grads`` (one per parameter, ``None`` for zero) as one flat buffer."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for p, g in zip(params, grads)])


class DDP(DataParallelMethod):
    """Synchronous data parallelism (see the module docstring)."""

    name = "ddp"
    color = "tab:blue"
    Options = DDPConfig
    shares_replicas = True
    empty_batch = "contributes a zero gradient"
    wrapped_step = "a DistributedDataParallel step (its all-reduces)"
    """What a step of the wrapped module is called where a worker hangs in it."""
    _wrapped: Optional[nn.Module] = None

    def __init__(self, model: nn.Module, data: Optional[Data], cfg: RunConfig, *args: Any, **kwargs: Any) -> None:
        options = cfg.options if isinstance(cfg.options, DDPConfig) else DDPConfig()
        # one worker has nothing to synchronise (and stays step for step a plain training loop)
        synced = options.batch_norm_stats == "synced" and cfg.subnets > 1
        self.syncs_batch_norm = synced and convert_sync_batch_norm(model) > 0
        super().__init__(model, data, cfg, *args, **kwargs)
        if self.syncs_batch_norm and len(self.local_workers) > 1 and self.device.type != "cpu":
            own = ", or pass --batch-norm-stats own" if self.Options is DDPConfig else ""
            raise ConfigError(
                "synchronised BatchNorm of several workers in one process runs on the CPU: run one process "
                f"per GPU (--procs or torchrun){own}"
            )

    @property
    def num_params(self) -> int:
        return self.grad_numel

    role = "bytes"

    def start(self) -> None:
        super().start()
        self._wrapped = self.wrap()

    def wrap(self) -> Optional[nn.Module]:
        """The module this process's one worker trains through, where torch's
        own wrapper runs the collectives (``DistributedDataParallel`` on NCCL:
        :func:`wrap_for_nccl`); ``None`` where the method runs them itself."""
        return wrap_for_nccl(self.model, self.collective)

    def average_gradients(self, round: int, grads: dict[int, Tensor]) -> Tensor:
        """``Σ_i g_i / m`` of the local workers' flat gradients, counted as one all-reduce."""
        return self.collective.all_reduce_mean(round, grads)

    def record_wrapped_step(self, round: int) -> None:
        """Count one step of the wrapped module's collectives (one all-reduce of ``|θ|``)."""
        self.collective.record_all_reduce(round, self.grad_numel, self.dtype.itemsize)

    def train_workers(self, round: int) -> tuple[dict[int, list[float]], dict[int, float], float]:
        if self._wrapped is not None:
            return self._train_wrapped(round, self._wrapped)
        local = self.local_workers
        losses: dict[int, list[float]] = {i: [] for i in local}
        seconds = {i: 0.0 for i in local}
        merge_seconds = 0.0
        for rep in self.distinct_replicas():
            rep.train()
        for _ in range(self.cfg.local.local_steps):
            steps = self._synced_steps(round, seconds) if self.syncs_batch_norm else self._own_steps(seconds)
            grads = {}
            for i, (loss, real, grad) in steps.items():
                if real:
                    losses[i].append(float(loss))
                else:
                    self._warn_empty[i]()
                grads[i] = grad
            t = time.perf_counter()
            mean = self.average_gradients(round, grads)
            for rep in self.distinct_replicas():
                offset = 0
                for p in (p for p in rep.parameters() if p.requires_grad):
                    p.grad = mean[offset : offset + p.numel()].view_as(p).clone()
                    offset += p.numel()
            merge_seconds += time.perf_counter() - t
            t = time.perf_counter()
            for opt in {id(o): o for o in self._optimizers.values()}.values():
                opt.step()  # every replica takes the same step
            step_seconds = time.perf_counter() - t
            for i in local:
                seconds[i] += step_seconds
        return losses, seconds, merge_seconds

    def _own_steps(self, seconds: dict[int, float]) -> dict[int, tuple[Tensor, bool, Tensor]]:
        """Each local worker's loss, whether it had training nodes, and its
        flat gradient, one after another, each BatchNorm on its own batch."""
        local, out = self.local_workers, {}
        for i in local:
            t = time.perf_counter()
            rep, opt = self._replicas[i], self._optimizers[i]
            # a replica shared by several workers keeps the first one's BatchNorm statistics
            keep = [b.clone() for b in rep.buffers()] if i != local[0] and rep is self._replicas[local[0]] else None
            with self._rngs[i].active():
                batch, adj = self._sources[i].next_batch()
                opt.zero_grad()
                loss, real = ddp_loss(rep, batch, adj)
                loss.backward()
            if keep is not None:
                with torch.no_grad():
                    for b, saved in zip(rep.buffers(), keep):
                        b.copy_(saved)
            out[i] = (loss.detach(), real, flat_grad([p for p in rep.parameters() if p.requires_grad]))
            seconds[i] += time.perf_counter() - t
        return out

    def _sum_across_ranks(self, round: int, i: int) -> SumAcross:
        """Synchronised BatchNorm's sum for this process's one worker ``i``: an all-reduce, counted as ``bn_sync``."""
        return lambda values: self.collective.all_reduce_sum(round, {i: values}, "bn_sync")

    def _synced_steps(self, round: int, seconds: dict[int, float]) -> dict[int, tuple[Tensor, bool, Tensor]]:
        """:meth:`_own_steps` with synchronised BatchNorm: the local workers'
        passes meet at every BatchNorm layer (in one process, in lockstep)."""
        local = self.local_workers

        def step(i: int, sum_across: SumAcross) -> tuple[Tensor, bool, Tensor]:
            rep = self._replicas[i]
            params = [p for p in rep.parameters() if p.requires_grad]
            batch, adj = self._sources[i].next_batch()
            # a replica several workers share takes their common running statistics once
            with synchronised(sum_across, update_running_stats=i == local[0] or rep is not self._replicas[local[0]]):
                loss, real = ddp_loss(rep, batch, adj)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            return loss.detach(), real, flat_of(params, grads)

        if len(local) == 1:
            (i,) = local
            t = time.perf_counter()
            with self._rngs[i].active():
                out = {i: step(i, self._sum_across_ranks(round, i))}
            seconds[i] += time.perf_counter() - t
            return out

        started: dict[int, float] = {}

        def switch_in(i: int) -> None:
            torch.set_rng_state(self._rngs[i].state)
            started[i] = time.perf_counter()

        def switch_out(i: int) -> None:
            seconds[i] += time.perf_counter() - started[i]
            self._rngs[i].state = torch.get_rng_state()

        lockstep: Lockstep[Tensor] = Lockstep(
            lambda given: self.collective.all_reduce_sum(round, given, "bn_sync"), switch_in, switch_out
        )
        outer = torch.get_rng_state()
        try:
            results = lockstep.run([functools.partial(step, i, functools.partial(lockstep.combine, i)) for i in local])
        finally:
            torch.set_rng_state(outer)
        return dict(zip(local, results))

    def _train_wrapped(self, round: int, wrapped: nn.Module) -> tuple[dict[int, list[float]], dict[int, float], float]:
        """``ζ`` steps of this process's one worker through its wrapped module
        (:meth:`wrap`): the collectives overlap the backward pass, so their
        time is in the worker's seconds."""
        (i,) = self.local_workers
        opt, losses = self._optimizers[i], []
        start = time.perf_counter()
        wrapped.train()

        def step() -> tuple[Tensor, bool]:
            # forward and backward both take part in collectives (the backward
            # pass's all-reduces; the forward pass of the second step, which
            # agrees on the gradient buckets), so both are watched
            batch, adj = self._sources[i].next_batch()
            opt.zero_grad()
            with contextlib.ExitStack() as stack:
                if self.syncs_batch_norm:
                    stack.enter_context(synchronised(self._sum_across_ranks(round, i)))
                loss, real = ddp_loss(wrapped, batch, adj)
            loss.backward()
            return loss, real

        for _ in range(self.cfg.local.local_steps):
            with self._rngs[i].active():
                loss, real = self.collective.watched(self.wrapped_step, step)
            self.record_wrapped_step(round)
            if real:
                losses.append(float(loss.detach()))
            else:
                self._warn_empty[i]()
            opt.step()
        return {i: losses}, {i: time.perf_counter() - start}, 0.0

    def shared_state(self) -> dict[str, Any]:
        """The optimizer state (the same on every worker)."""
        return {"optimizer": self._optimizers[self.local_workers[0]].state_dict()}

    def load_worker_state(self, i: int, own: dict[str, Any], shared: dict[str, Any]) -> None:
        super().load_worker_state(i, own, shared)
        self._optimizers[i].load_state_dict(shared["optimizer"])


def wrap_for_nccl(module: nn.Module, collective: Collective) -> Optional[nn.Module]:
    """On NCCL (a :class:`~gist.comm.dist_collective.DistCollective` whose
    backend is ``nccl``), ``module`` wrapped in ``torch.nn.parallel.DistributedDataParallel``
    (``device_ids`` on the rank's GPU); ``None`` on gloo, where the method
    all-reduces one flat gradient per step itself (:meth:`all_reduce_mean`):
    DDP's reducer over gloo deadlocked at teardown here (its destructor
    holds the GIL while a gloo thread finishing a work waits for it).

    With DDP, every backward pass averages the gradients,
    bucket by bucket, with DDP's own all-reduce, which scales each
    gradient by ``1/m`` as it copies it into its bucket and then sums the
    buckets: :meth:`all_reduce_mean`'s arithmetic (exactly so for ``m`` a
    power of two; otherwise ``x·(1/m)`` and ``x/m`` may differ in the
    last bit). The caller counts the bytes (one all-reduce of ``|θ|``
    values per step). Buffers are not broadcast (each worker's BatchNorm
    keeps its own running statistics), and the wrapper does not copy the
    model at construction: the method broadcasts worker 0's model itself
    (counted). No Python communication hook: its callbacks run on gloo's
    thread and deadlock with the process group's teardown."""
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(collective, DistCollective) or collective.ctx.backend != "nccl":
        return None
    ctx = collective.ctx
    device_ids = [ctx.device] if ctx.device.type == "cuda" else None
    # torch >= 2.13 names "no buffer broadcast before each forward" forward_sync_buffers
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in _ddp_parameters() else "broadcast_buffers"
    return DistributedDataParallel(module, device_ids=device_ids, init_sync=False, **{no_sync: False})


@functools.cache
def _ddp_parameters() -> set[str]:
    """The keyword arguments ``DistributedDataParallel`` takes in this torch."""
    from torch.nn.parallel import DistributedDataParallel

    return set(inspect.signature(DistributedDataParallel.__init__).parameters)
