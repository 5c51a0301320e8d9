r"""``fsdp``: fully sharded data parallelism, PyTorch's answer to a model that no single process holds.

The arithmetic of ``ddp``: every step each worker computes the gradient on its
own batch, the gradients are averaged, ``g = Σ_i g_i / m``, and every worker
takes the same Adam step. What differs is where the model lives. On
``torch.distributed`` every rank trains the stock model wrapped by
``torch.distributed.fsdp.fully_shard`` per layer (each convolution, each
normalisation with parameters, then the root, on a device mesh of the ``m``
ranks: CPU with gloo, CUDA with NCCL), so it keeps ``1/m`` of every layer's
parameters, gradients and optimizer state. Each step it all-gathers a layer's
parameters for the forward pass and again for the backward pass (the layer is
resharded after its forward), and reduce-scatters the layer's gradient: per
worker per step

.. math::

    2·\frac{m-1}{m}·|\tilde θ| \text{ received} + \frac{m-1}{m}·|\tilde θ| \text{ sent}
    = 3·\frac{m-1}{m}·|\tilde θ|,

where :math:`|\tilde θ|` counts each parameter padded so that ``m`` divides
its first dimension (FSDP's shards are equal). The ledger records exactly
what FSDP hands to its collectives (custom all-gather and reduce-scatter
objects that count each call, :class:`CountingAllGather`), an all-gather as
``to_worker`` and a reduce-scatter as ``from_worker`` (an all-reduce is one of
each, :mod:`gist.comm.collective`). In one process the ``m`` workers run as
``ddp``'s do, one shared replica, and the same traffic is counted from the
shapes (:func:`shard_units`), so a simulated and a distributed run record the
same ledger.

BatchNorm is synchronised (``torch.nn.SyncBatchNorm``, as a user of FSDP
with BatchNorm converts it; counted as ``bn_sync``). Evaluation is an FSDP
forward pass in eval mode on every rank at once: the coordinator's on the
whole graph (it scores it), every other rank's on its own graph (discarded),
so that each layer is gathered one at a time and no rank ever holds the
whole model; its all-gathers, one per layer, are counted as ``eval``. With
``--save-model`` the full model is put together on rank 0 after the last
round (``torch.distributed.checkpoint.state_dict.get_model_state_dict``, a
full state dict offloaded to rank 0's CPU; not counted, as checkpoints are not).

Checkpoints of a ``torch.distributed`` run go through torch's distributed
checkpoint API: every rank writes its shards of ``{"model", "optim"}``
(``torch.distributed.checkpoint.state_dict.get_state_dict``) with
``torch.distributed.checkpoint.save`` into the folder
``<--checkpoint>.fsdp-<m>.round-<r>`` (the newest two kept; renamed into
place once complete), which any FSDP user loads with ``dcp.load`` or turns
into one file with ``torch.distributed.checkpoint.format_utils.dcp_to_torch_save``;
the ``--checkpoint`` file beside it holds the history, the ledger and every
worker's RNG and batch streams, as for ``ddp``. Every rank must see that
folder. A run resumes from it with the same ``m`` on ``torch.distributed``;
in one process a checkpoint is ``ddp``'s (the full model and optimizer).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..comm import Collective
from ..comm.dist_collective import DistCollective
from ..config import NoOptions
from ..engine import Checkpointer, CheckpointError, RankSetup, make_optimizer
from ..engine.checkpoint import SIDE_FILES_KEPT
from ..engine.evaluation import accuracy_evaluator
from ..errors import ConfigError
from .ddp import DDP


@dataclass(frozen=True)
class ShardUnit:
    """One ``fully_shard`` group: a module and the values FSDP moves for it."""

    name: str
    module: nn.Module
    padded_numel: int
    """``Σ_p ⌈d₀(p)/m⌉·m·|p|/d₀(p)``: its parameters padded to ``m`` equal shards, all-gathered as one buffer."""


def shard_units(model: nn.Module, num_workers: int) -> list[ShardUnit]:
    """The groups :class:`FSDP` shards ``model`` into: every module of the
    model's ``ModuleList``\\ s (``convs``, ``norms``) that holds parameters;
    the model itself if no such list holds any. Raises
    :class:`~gist.errors.ConfigError` for a model that has parameters outside them."""
    units = [
        (f"{list_name}.{i}", module)
        for list_name, modules in model.named_children()
        if isinstance(modules, nn.ModuleList)
        for i, module in enumerate(modules)
        if any(True for _ in module.parameters())
    ]
    if not units:
        units = [("", model)]
    covered = {id(p) for _, module in units for p in module.parameters()}
    loose = [n for n, p in model.named_parameters() if id(p) not in covered]
    if loose:
        raise ConfigError(f"fsdp shards the layers of the model's ModuleLists; {loose} lie outside them")
    return [ShardUnit(name, module, _padded_numel(module, num_workers)) for name, module in units]


def _padded_numel(module: nn.Module, m: int) -> int:
    return sum(_padded_numel_of(p, m) for p in module.parameters())


def _padded_numel_of(p: Tensor, m: int) -> int:
    """``p``'s values with its first dimension padded to a multiple of ``m`` (FSDP's ``m`` equal shards)."""
    rows = p.shape[0] if p.dim() > 0 else 1
    return math.ceil(rows / m) * m * (p.numel() // max(rows, 1))


class _Counting:
    """What the counting collectives share: where to record, and the round and ledger kind of now."""

    def __init__(self, collective: Collective, now: Callable[[], tuple[int, str]]) -> None:
        self.collective, self.now = collective, now

    def allocate(self, size: Any, *, dtype: torch.dtype, device: torch.device) -> Tensor:
        return torch.empty(*size, dtype=dtype, device=device)


def _fsdp_comm_bases() -> tuple[type, type]:
    from torch.distributed.fsdp._fully_shard._fsdp_api import AllGather, ReduceScatter

    return AllGather, ReduceScatter


def counting_collectives(collective: Collective, now: Callable[[], tuple[int, str]]) -> tuple[Any, Any]:
    """An all-gather and a reduce-scatter for ``FSDPModule.set_custom_all_gather``
    / ``set_custom_reduce_scatter`` that run ``torch.distributed``'s own and
    record each call in ``collective``'s ledger (round and kind ``now()``)."""
    import torch.distributed as dist

    AllGather, ReduceScatter = _fsdp_comm_bases()

    class CountingAllGather(_Counting, AllGather):
        def __call__(self, output_tensor: Tensor, input_tensor: Tensor, group: Any, async_op: bool = False) -> Any:
            round, kind = self.now()
            self.collective.record_all_gather(round, output_tensor.numel(), output_tensor.element_size(), kind)
            return dist.all_gather_single(output_tensor, input_tensor, group=group, async_op=async_op)

    class CountingReduceScatter(_Counting, ReduceScatter):
        def __call__(
            self, output_tensor: Tensor, input_tensor: Tensor, group: Any, op: Any, async_op: bool = False
        ) -> Any:
            round, kind = self.now()
            self.collective.record_reduce_scatter(round, input_tensor.numel(), input_tensor.element_size(), kind)
            return dist.reduce_scatter_single(output_tensor, input_tensor, op=op, group=group, async_op=async_op)

    return CountingAllGather(collective, now), CountingReduceScatter(collective, now)


class FSDP(DDP):
    """Fully sharded data parallelism (see the module docstring)."""

    name = "fsdp"
    color = "tab:cyan"
    Options = NoOptions  # BatchNorm is always synchronised: ddp's --batch-norm-stats is not offered
    role = None
    wrapped_step = "a fully_shard step (its all-gathers and reduce-scatters)"

    @classmethod
    def distributed(cls, setup: RankSetup) -> FSDP:
        setup.check_checkpoint_folder()  # every rank writes its shards there
        return super().distributed(setup)

    def __init__(self, model: nn.Module, *args: Any, **kwargs: Any) -> None:
        self._now = (0, "params")
        self._metrics: dict[str, float] = {}
        self._full_state: Optional[dict[str, Tensor]] = None
        super().__init__(model, *args, **kwargs)
        self.units = shard_units(self.model, self.cfg.subnets)
        self.distributed_shards = isinstance(self.collective, DistCollective)
        """Whether this process trains its shards of a ``fully_shard`` model (else: the in-process simulation)."""
        self._sharded: Optional[nn.Module] = None
        self._evaluated_last_round = False
        # the simulation learns the order in which the units run forward from its first step
        self._forward_order: list[int] = []
        self._order_hooks = [
            unit.module.register_forward_pre_hook(lambda *_, k=k: self._forward_order.append(k))
            for k, unit in enumerate(self.units)
        ]

    @property
    def num_params(self) -> int:
        return self.grad_numel

    # ------------------------------------------------------------------ the sharded module

    def wrap(self) -> Optional[nn.Module]:
        """On ``torch.distributed``: this rank's replica sharded per layer
        (``fully_shard`` on a mesh of all ranks, counting collectives), its
        optimizer rebuilt over the shards. ``None`` in one process (the
        workers run as ``ddp``'s)."""
        if not self.distributed_shards:
            return None
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        (i,) = self.local_workers
        replica = self._replicas[i]
        mesh = init_device_mesh(self.device.type, (self.cfg.subnets,))
        gather, scatter = counting_collectives(self.collective, lambda: self._now)
        for unit in self.units:  # found on this same model when the method was built
            if unit.module is not replica:
                fully_shard(unit.module, mesh=mesh)
        fully_shard(replica, mesh=mesh)
        for module in replica.modules():
            if hasattr(module, "set_custom_all_gather"):
                module.set_custom_all_gather(gather)
                module.set_custom_reduce_scatter(scatter)
        self._optimizers[i] = make_optimizer(replica.parameters(), self.cfg.local)  # over the shards
        self._sharded = replica
        if self.round > 0:  # resuming: every rank reads its shards of the model and of Adam's state
            self._read_shards()
        if not self.is_coordinator:  # it scores nothing: its forward pass takes part in the gathers
            own = self._sources[i].data
            on_own = accuracy_evaluator(own, self.cfg.data.sparse_adjacency)
            self._follow: Callable[[nn.Module, Any], dict[str, float]] = lambda model, _: on_own(model, own)
        return replica

    # ------------------------------------------------------------------ rounds

    def train_round(self, round: int) -> Any:
        self._now = (round, "params")
        return super().train_round(round)

    def prepare_evaluation(self, round: int) -> None:
        """On ``torch.distributed``: the forward pass in eval mode on every rank
        (the coordinator scores its output), then with ``--save-model`` after
        the last round the full model on rank 0. In one process, where the
        model is whole, count the gathers that forward pass makes: one per layer."""
        if self._sharded is None:
            for unit in self.units:
                self.collective.record_all_gather(round, unit.padded_numel, self.dtype.itemsize, "eval")
            self._evaluated_last_round = True
            return
        self._now = (round, "eval")
        score = self.evaluator if self.is_coordinator else self._follow
        assert score is not None
        try:
            metrics = self.collective.watched("scoring the model (its all-gathers)", lambda: score(self._sharded, None))
            if self.is_coordinator:
                self._metrics = metrics
        finally:
            self._now = (round, "params")
        if self.cfg.checkpoint.save_model and round + 1 == self.cfg.rounds:
            self._full_state = self._gather_full_model()

    def evaluate(self, round: int) -> dict[str, float]:
        """The scores :meth:`prepare_evaluation` computed (on ``torch.distributed``)."""
        return dict(self._metrics) if self._sharded is not None else super().evaluate(round)

    def average_gradients(self, round: int, grads: dict[int, Tensor]) -> Tensor:
        """The mean, counted as FSDP moves it for one step: per shard unit two
        all-gathers of its padded parameters and one reduce-scatter of its
        gradient. FSDP remembers the order of every forward pass until a
        backward pass ends, and a scoring pass has none: the first backward
        pass after it prefetches the unit that ran last in it once more
        (one all-gather, then freed unused; measured on torch 2.13)."""
        if self._order_hooks:
            for hook in self._order_hooks:
                hook.remove()
            self._order_hooks = []
            self._forward_order = list(dict.fromkeys(self._forward_order))  # each unit's first call, in order
        mean = self.collective.all_reduce_mean(round, grads, record=False)
        for unit in self.units:
            for _ in range(2):
                self.collective.record_all_gather(round, unit.padded_numel, self.dtype.itemsize)
            self.collective.record_reduce_scatter(round, unit.padded_numel, self.dtype.itemsize)
        if self._evaluated_last_round:
            last = self.units[self._forward_order[-1]]
            self.collective.record_all_gather(round, last.padded_numel, self.dtype.itemsize)
            self._evaluated_last_round = False
        return mean

    def record_wrapped_step(self, round: int) -> None:
        """Nothing: the counting collectives recorded the step as it ran."""

    def _gather_full_model(self) -> dict[str, Tensor]:
        """The full ``state_dict`` on rank 0's CPU (empty elsewhere); every rank takes part."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        assert self._sharded is not None
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return self.collective.watched(
            "putting the full model together", lambda: get_model_state_dict(self._sharded, options=options)
        )

    def model_state_dict(self) -> dict[str, Tensor]:
        """On ``torch.distributed`` the full model put together after the last
        round (``--save-model``); in one process the model itself."""
        if self._sharded is None:
            return super().model_state_dict()
        if self._full_state is None:
            raise RuntimeError(
                "the model is in shards on the ranks: it is put together on rank 0 after the last round "
                "when --save-model is set"
            )
        return dict(self._full_state)

    def trained_states(self) -> list[Any]:
        """This rank's shards (and its buffers) where it trains sharded; the model otherwise."""
        if self._sharded is None:
            return super().trained_states()
        from torch.distributed.tensor import DTensor

        state = self._sharded.state_dict()
        return [{k: v.to_local() if isinstance(v, DTensor) else v for k, v in state.items()}]

    # ------------------------------------------------------------------ checkpoints

    def _shards_folder(self, round: int) -> Path:
        """The distributed checkpoint folder of the checkpoint after ``round`` rounds."""
        return Checkpointer(self.cfg).side_path(f"fsdp-{self.cfg.subnets}", round)

    def model_checkpoint(self) -> dict[str, Tensor]:
        """Nothing on ``torch.distributed``: the shards are in the distributed checkpoint (:meth:`method_state`)."""
        return {} if self.distributed_shards else super().model_checkpoint()

    def load_model_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if self.distributed_shards:
            return  # each rank reads its shards when the run starts
        if not state:
            raise CheckpointError(
                "this checkpoint's model is in the shards of an fsdp run over torch.distributed: resume it "
                "the same way, with the same m"
            )
        super().load_model_state_dict(state)

    def method_state(self) -> dict[str, Any]:
        """On ``torch.distributed``: every rank writes its shards of the model and
        Adam's state (``torch.distributed.checkpoint.save``) into a folder
        renamed into place once all are written, then ``ddp``'s worker streams."""
        if self._sharded is not None:
            self._write_shards()
        state = super().method_state()
        if self.distributed_shards and self.is_coordinator:
            state["fsdp"] = {"shards": self.cfg.subnets, "round": self.round}
        return state

    def load_method_state(self, state: dict[str, Any]) -> None:
        saved = state.get("fsdp")
        if self.distributed_shards and saved is None:
            raise CheckpointError("this checkpoint was written by fsdp in one process: resume it in one process")
        if not self.distributed_shards and saved is not None:
            raise CheckpointError(
                f"this checkpoint holds fsdp shards of {saved['shards']} processes: resume it on "
                f"torch.distributed with {saved['shards']} processes"
            )
        if saved is not None and int(saved["shards"]) != self.cfg.subnets:
            raise CheckpointError(f"this checkpoint holds {saved['shards']} fsdp shards, but m = {self.cfg.subnets}")
        super().load_method_state(state)

    def shared_state(self) -> dict[str, Any]:
        """``ddp``'s optimizer state in one process; nothing on ``torch.distributed`` (it is in the shards)."""
        return {} if self.distributed_shards else super().shared_state()

    def load_worker_state(self, i: int, own: dict[str, Any], shared: dict[str, Any]) -> None:
        if self.distributed_shards:
            super(DDP, self).load_worker_state(i, own, shared)  # the streams; Adam's state comes with the shards
        else:
            super().load_worker_state(i, own, shared)

    def _sharded_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        assert self._sharded is not None
        (i,) = self.local_workers
        model_state, optim_state = get_state_dict(self._sharded, optimizers=self._optimizers[i])
        return {"model": model_state, "optim": optim_state}

    def _write_shards(self) -> None:
        write_distributed_checkpoint(self.collective, self._shards_folder(self.round), self._sharded_state)

    def _read_shards(self) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        folder = self._shards_folder(self.round)
        if not (folder / ".metadata").is_file():
            raise CheckpointError(f"--resume: the checkpoint of round {self.round} has no shards folder {folder}")
        state = self._sharded_state()
        self.collective.watched("reading the checkpoint's shards", lambda: dcp.load(state, checkpoint_id=str(folder)))
        (i,) = self.local_workers
        assert self._sharded is not None
        set_state_dict(
            self._sharded, self._optimizers[i], model_state_dict=state["model"], optim_state_dict=state["optim"]
        )


def _barrier(collective: Collective, what: str) -> None:
    collective.all_gather({w: torch.ones(1) for w in collective.local_workers}, what)


def write_distributed_checkpoint(collective: Collective, target: Path, state: Callable[[], dict[str, Any]]) -> None:
    """Every rank saves its part of ``state()`` with ``torch.distributed.checkpoint.save``
    into ``<target>.partial``, which the coordinator renames to ``target`` once
    all are written (a run stopped meanwhile leaves the previous checkpoint
    whole), keeping the newest :data:`~gist.engine.checkpoint.SIDE_FILES_KEPT`
    folders of that name."""
    import torch.distributed.checkpoint as dcp

    partial = target.with_name(target.name + ".partial")
    if collective.is_coordinator:
        shutil.rmtree(partial, ignore_errors=True)
    _barrier(collective, "starting the checkpoint's shards")
    collective.watched("writing the checkpoint's shards", lambda: dcp.save(state(), checkpoint_id=str(partial)))
    _barrier(collective, "writing the checkpoint's shards")
    if collective.is_coordinator:
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        prefix = target.name.rsplit(".round-", 1)[0] + ".round-"
        done = sorted(
            (int(p.name[len(prefix) :]), p) for p in target.parent.glob(prefix + "*") if p.name[len(prefix) :].isdigit()
        )
        for _, old in done[:-SIDE_FILES_KEPT]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier(collective, "putting the checkpoint's shards in place")
