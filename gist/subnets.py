r"""Seeded width partitions, slicing sub-networks out and merging them back.

For round ``r`` every hidden width :math:`d_l` is permuted at random and cut
into ``m`` equal groups :math:`P_l^1 \dots P_l^m` (each sorted ascending). The
permutation is a pure function of ``(seed, r)``: every process computes the
same split locally, so no index ever travels.

Sub-network ``i`` is, for every tensor, the sub-tensor indexed by group ``i``
of each split dimension (e.g. ``W[P_l^i][:, P_{l-1}^i]``). Merging writes the
slices back (they are disjoint, so this is exact) and averages the shared
tensors. Blocks that cross groups are left untouched.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn
from torch_geometric.nn.models.basic_gnn import BasicGNN

from .errors import ConfigError
from .nn.slicing import Axes, SplitSpec

_ROUND_STRIDE = 1_000_003


@dataclass(frozen=True)
class WidthPartition:
    """The random split of every hidden width for one round.

    ``groups[width][i]`` holds the (sorted) unit indices of sub-network ``i``.
    """

    groups: dict[str, tuple[Tensor, ...]]
    num_subnets: int
    seed: int
    round: int

    def indices(self, width: Optional[str], subnet: int) -> Optional[Tensor]:
        return None if width is None else self.groups[width][subnet]

    def to(self, device: torch.device) -> WidthPartition:
        """The same partition with its indices on ``device`` (where the sliced model lives)."""
        if all(g.device == torch.device(device) for groups in self.groups.values() for g in groups):
            return self
        moved = {name: tuple(g.to(device) for g in groups) for name, groups in self.groups.items()}
        return WidthPartition(moved, self.num_subnets, self.seed, self.round)


def rolling_step(size: int, num_subnets: int) -> int:
    """How far the rolling windows of a width of ``size`` units move per round: ``max(1, ⌊d / 2s⌋)``."""
    return max(1, size // (2 * num_subnets))


def draw_partition(
    widths: Mapping[str, int], num_subnets: int, seed: int, round: int, assignment: str = "random"
) -> WidthPartition:
    """Split each hidden width into ``num_subnets`` equal groups.

    ``random``: a random split, drawn afresh every round (published GIST). A
    pure function of ``(seed, round)``: it uses its own generator and never
    touches the global RNG. Widths are drawn in sorted-name order.

    ``rolling``: group ``g`` of a width of ``d`` units is the contiguous
    window ``{(o_r + g·d/s + j) mod d : 0 ≤ j < d/s}`` with offset
    ``o_r = r·δ mod d`` and ``δ`` = :func:`rolling_step`: the windows move by
    a quarter of their length (``s = 2``) every round, so every unit visits
    every group, and the parts that train it, in turn (FedRolex's rolling
    sub-models); units at ring distance under ``d/s`` share a group some of
    the time, units further apart never.
    """
    if num_subnets < 1:
        raise ConfigError(f"num_subnets must be >= 1, got {num_subnets}")
    if assignment not in ("random", "rolling"):
        raise ConfigError(f"assignment must be random or rolling, got {assignment!r}")
    gen = torch.Generator().manual_seed(int(seed) * _ROUND_STRIDE + int(round))
    groups: dict[str, tuple[Tensor, ...]] = {}
    for name in sorted(widths):
        size = widths[name]
        if size % num_subnets != 0 or num_subnets > size:
            raise ConfigError(f"hidden width '{name}' ({size}) does not split into {num_subnets} equal groups")
        if assignment == "rolling":
            offset = int(round) * rolling_step(size, num_subnets) % size
            order = (torch.arange(size) + offset) % size
        else:
            order = torch.randperm(size, generator=gen)
        groups[name] = tuple(g.sort().values for g in order.view(num_subnets, -1))
    return WidthPartition(groups, num_subnets, seed, round)


@dataclass(frozen=True)
class RoundPlan:
    """Who trains which sub-network in one round: the widths are split into
    ``groups`` (``s``) groups, and worker ``w`` trains group ``w mod s``.
    With ``s = m`` this is plain GIST; with ``s < m`` the ``m/s`` workers
    holding a group average their copies when they are merged."""

    num_workers: int
    groups: int

    def group_of(self, worker: int) -> int:
        return worker % self.groups

    def members(self, group: int) -> list[int]:
        return list(range(group, self.num_workers, self.groups))


@dataclass(frozen=True)
class SubnetSchedule:
    """The :class:`RoundPlan` of every round: ``groups`` groups, except the
    rounds that train the full model on every worker (``s = 1``: model
    averaging): the last ``finish_rounds`` rounds of ``rounds``, and with
    ``full_every = K > 0`` every ``K``-th round (rounds ``K−1, 2K−1, …``)."""

    num_workers: int
    groups: int
    rounds: int
    finish_rounds: int = 0
    full_every: int = 0

    def __post_init__(self) -> None:
        if self.groups < 1 or self.num_workers % self.groups != 0:
            raise ConfigError(f"the number of groups ({self.groups}) must divide m ({self.num_workers})")
        if self.full_every < 0:
            raise ConfigError(f"full_every must be >= 0, got {self.full_every}")

    def is_full(self, round: int) -> bool:
        """Whether round ``round`` trains the full model on every worker."""
        finishing = self.finish_rounds > 0 and round >= self.rounds - self.finish_rounds
        return finishing or (self.full_every > 0 and (round + 1) % self.full_every == 0)

    def at(self, round: int) -> RoundPlan:
        return RoundPlan(self.num_workers, 1 if self.is_full(round) else self.groups)

    def group_counts(self) -> list[int]:
        """Every group count some round uses."""
        some_full = self.finish_rounds > 0 or 0 < self.full_every <= self.rounds
        return sorted({self.groups, 1} if some_full else {self.groups})


def average_states(states: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """The mean of several copies of the same tensors (accumulated in one
    float64 buffer per tensor, copy after copy, on the first copy's device;
    integer tensors: the rounded-down mean). One copy is returned as it is."""
    if len(states) == 1:
        return dict(states[0])
    out = {}
    for name, first in states[0].items():
        total = first.to(torch.float64, copy=True)
        for s in states[1:]:
            total += s[name].to(total.device)
        if first.is_floating_point():
            out[name] = total.div_(len(states)).to(first.dtype)
        else:
            out[name] = total.div_(len(states), rounding_mode="floor").to(first.dtype)
    return out


def _block_index(tensor: Tensor, split_dims: Sequence[tuple[int, Tensor]]) -> Optional[tuple[Tensor, ...]]:
    """Broadcast indices that pick a block of a matrix split along both of
    its dimensions in one gather or scatter (``None`` for other shapes)."""
    if tensor.dim() != 2 or len(split_dims) != 2:
        return None
    (_, rows), (_, cols) = split_dims
    return rows.view(-1, 1), cols.view(1, -1)


def _split_dims(axes: Axes, partition: WidthPartition, subnet: int) -> list[tuple[int, Tensor]]:
    return [(d, partition.indices(a, subnet)) for d, a in enumerate(axes) if a is not None]


def select_block(tensor: Tensor, split_dims: Sequence[tuple[int, Tensor]]) -> Tensor:
    """A new tensor holding ``tensor`` indexed by ``idx`` along each ``(dim, idx)``
    of ``split_dims`` (one copy of the block: no full-height intermediate
    for a matrix)."""
    if not split_dims:
        return tensor.clone()
    block = _block_index(tensor, split_dims)
    if block is not None:
        return tensor[block]
    out = tensor
    for dim, idx in split_dims:
        out = out.index_select(dim, idx)
    return out


def write_block(target: Tensor, value: Tensor, split_dims: Sequence[tuple[int, Tensor]]) -> None:
    """``target[idx_0][:, idx_1]... = value`` for each ``(dim, idx)`` of ``split_dims``, in place."""
    if not split_dims:
        target.copy_(value)
        return
    block = _block_index(target, split_dims)
    value = value.to(target.device, target.dtype)
    if block is not None:
        target.index_put_(block, value)
        return
    (dim, idx), rest = split_dims[0], split_dims[1:]
    if not rest:
        target.index_copy_(dim, idx, value)
        return
    inner = target.index_select(dim, idx)
    write_block(inner, value, [(d, i) for d, i in rest])
    target.index_copy_(dim, idx, inner)


def slice_state(
    state: Mapping[str, Tensor], spec: SplitSpec, partition: WidthPartition, subnet: int
) -> dict[str, Tensor]:
    """The tensors of sub-network ``subnet`` (new tensors; ``state`` untouched)."""
    return {
        name: select_block(state[name].detach(), _split_dims(axes, partition, subnet))
        for name, axes in spec.tensor_axes.items()
    }


def merge_states(
    state: Mapping[str, Tensor],
    spec: SplitSpec,
    partition: WidthPartition,
    subnet_states: Sequence[Mapping[str, Tensor]],
) -> None:
    """Write every sub-network back into ``state`` in place.

    Sliced tensors are written into their disjoint slices (exact); shared
    tensors become the mean over sub-networks (integer tensors, such as
    BatchNorm's ``num_batches_tracked``, the rounded-down mean).
    """
    if len(subnet_states) != partition.num_subnets:
        raise ValueError(f"expected {partition.num_subnets} sub-networks, got {len(subnet_states)}")
    with torch.no_grad():
        for name, axes in spec.tensor_axes.items():
            target = state[name]
            if all(a is None for a in axes):
                target.copy_(average_states([{name: s[name]} for s in subnet_states])[name].to(target.dtype))
            else:
                for i, sub in enumerate(subnet_states):
                    write_block(target, sub[name], _split_dims(axes, partition, i))


# --------------------------------------------------------------------------
# Flat buffers: one message per worker per direction


@dataclass(frozen=True)
class FlatLayout:
    """Where each tensor of a sub-network lives in its one flat buffer."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    dtypes: tuple[torch.dtype, ...]
    dtype: torch.dtype = torch.float32

    @property
    def numel(self) -> int:
        return sum(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def flatten(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """Concatenate the tensors (cast to ``dtype``) into one 1-D buffer.

        Integer tensors (``num_batches_tracked``) travel as floats: exact up
        to :math:`2^{24}` in float32.
        """
        parts = []
        for name, shape in zip(self.names, self.shapes):
            t = tensors[name]
            if t.shape != shape:
                raise ValueError(f"'{name}' has shape {tuple(t.shape)}, layout expects {tuple(shape)}")
            parts.append(t.detach().reshape(-1).to(self.dtype))
        return torch.cat(parts) if parts else torch.empty(0, dtype=self.dtype)

    # ------------------------------------------------------------ on the wire

    @functools.cached_property
    def _integer_mask(self) -> Tensor:
        """Which positions of the flat buffer hold integer tensors (built once per layout)."""
        return torch.cat(
            [
                torch.full((int(torch.Size(s).numel()),), not d.is_floating_point, dtype=torch.bool)
                for s, d in zip(self.shapes, self.dtypes)
            ]
            or [torch.zeros(0, dtype=torch.bool)]
        )

    def wire_numel(self, wire: torch.dtype) -> int:
        """Values of ``wire`` dtype that :meth:`encode` sends: one per floating
        value, and each integer's 8 bytes bit for bit."""
        if wire == self.dtype:
            return self.numel
        ints = int(self._integer_mask.sum())
        return self.numel - ints + ints * 8 // wire.itemsize

    def encode(self, flat: Tensor, wire: torch.dtype) -> Tensor:
        """``flat`` as it travels in ``wire`` dtype: the floating values cast
        (rounded to nearest), then the integer values (``num_batches_tracked``)
        as their int64 bits, so that they stay exact. The identity when
        ``wire`` is the layout's dtype."""
        if wire == self.dtype:
            return flat
        mask = self._integer_mask.to(flat.device)
        ints = flat[mask].round().to(torch.int64)
        return torch.cat([flat[~mask].to(wire), ints.view(wire) if ints.numel() else ints.to(wire)])

    def decode(self, buf: Tensor) -> Tensor:
        """The flat buffer (in the layout's dtype) that :meth:`encode` made ``buf`` from."""
        if buf.dtype == self.dtype:
            return buf
        if buf.numel() != self.wire_numel(buf.dtype):
            expected = self.wire_numel(buf.dtype)
            raise ValueError(f"a {buf.dtype} buffer of {buf.numel()} values, layout expects {expected}")
        mask = self._integer_mask.to(buf.device)
        floats = int((~mask).sum())
        flat = torch.empty(self.numel, dtype=self.dtype, device=buf.device)
        flat[~mask] = buf[:floats].to(self.dtype)
        flat[mask] = buf[floats:].clone().view(torch.int64).to(self.dtype)
        return flat

    def views(self, flat: Tensor) -> dict[str, Tensor]:
        """Each tensor's place in ``flat``, as a view in the layout's dtype
        (writing into a view writes into the buffer)."""
        if flat.dim() != 1 or flat.numel() != self.numel:
            raise ValueError(f"flat buffer has {flat.numel()} values, layout expects {self.numel}")
        out: dict[str, Tensor] = {}
        offset = 0
        for name, shape in zip(self.names, self.shapes):
            n = int(torch.Size(shape).numel())
            out[name] = flat[offset : offset + n].view(shape)
            offset += n
        return out

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """The tensors of ``flat`` in their own dtypes (views where that is the layout's dtype)."""
        views = self.views(flat)
        return {
            name: views[name].round().to(dtype) if not dtype.is_floating_point else views[name].to(dtype)
            for name, dtype in zip(self.names, self.dtypes)
        }


def subnet_layout(
    model: nn.Module, spec: SplitSpec, num_subnets: int, dtype: Optional[torch.dtype] = None
) -> FlatLayout:
    """The flat-buffer layout shared by all ``num_subnets`` sub-networks."""
    spec.check_subnets(num_subnets)
    state = model.state_dict()
    shapes, dtypes = [], []
    for name, axes in spec.tensor_axes.items():
        t = state[name]
        shape = [spec.widths[a] // num_subnets if a is not None else s for s, a in zip(t.shape, axes)]
        shapes.append(torch.Size(shape))
        dtypes.append(t.dtype)
    if dtype is None:
        floats = [d for d in dtypes if d.is_floating_point]
        dtype = floats[0] if floats else torch.float32
    return FlatLayout(tuple(spec.tensor_axes), tuple(shapes), tuple(dtypes), dtype)


def scale_split_inputs(subnet: nn.Module, spec: SplitSpec, factor: float) -> list[torch.utils.hooks.RemovableHandle]:
    r"""HeteroFL's scaler on a sub-network: every layer that sums over a split
    width (a convolution or linear layer whose input width is split and differs
    from its output's; not a normalisation) gets its input multiplied by
    ``factor`` (``s``, full width over the sub-network's), so that

    .. math::
        \mathbf{h}' = \mathbf{W}_{P_{out}, P_{in}} (s\,\mathbf{h}_{P_{in}})

    has the scale of the merged model's sum over all ``d`` inputs. Applied by
    forward pre-hooks; returns their handles."""
    handles = []

    def scale(module: nn.Module, args: tuple) -> tuple:
        x, rest = args[0], args[1:]
        x = tuple(v * factor for v in x) if isinstance(x, tuple) else x * factor
        return (x, *rest)

    for entry in spec.layers:
        if entry.in_group is not None and entry.in_group != entry.out_group:
            module = subnet.get_submodule(entry.path) if entry.path else subnet
            handles.append(module.register_forward_pre_hook(scale))
    return handles


def build_subnet(
    model: nn.Module, spec: SplitSpec, num_subnets: int, device: Optional[torch.device] = None
) -> nn.Module:
    """A narrow copy of ``model``: same depth, every hidden width ``d/m``.

    Only the narrow tensors are allocated, on ``device`` (default: the
    model's, or the CPU for a model on the ``meta`` device); their values
    are zeros until a state is loaded with :func:`load_subnet_state`.
    """
    layout = subnet_layout(model, spec, num_subnets)
    memo: dict[int, object] = {}
    named = dict(model.named_parameters(remove_duplicate=False))
    named.update(dict(model.named_buffers(remove_duplicate=False)))
    for name, shape, dtype in zip(layout.names, layout.shapes, layout.dtypes):
        src = named[name]
        where = device if device is not None else src.device if src.device.type != "meta" else torch.device("cpu")
        fresh = torch.zeros(shape, dtype=dtype, device=where)
        if isinstance(src, nn.Parameter):
            fresh = nn.Parameter(fresh, requires_grad=src.requires_grad)
        memo[id(src)] = fresh
    subnet = copy.deepcopy(model, memo)
    for entry in spec.layers:
        module = subnet.get_submodule(entry.path) if entry.path else subnet
        if entry.rule.resize is None:
            continue
        full = model.get_submodule(entry.path) if entry.path else model
        in_size = side_size(full, spec, entry.in_group, num_subnets, "in")
        out_size = side_size(full, spec, entry.out_group, num_subnets, "out")
        entry.rule.resize(module, in_size, out_size)
    _resize_basic_gnns(subnet, spec, num_subnets)
    return subnet


def side_size(module: nn.Module, spec: SplitSpec, group: Optional[str], m: int, side: str) -> int:
    """The width of ``module``'s ``side`` (``"in"``/``"out"``) in a sub-network of ``1/m`` of every hidden width."""
    if group is not None:
        return spec.widths[group] // m
    for attr in (f"{side}_channels", f"{side}_features", "num_features", "in_channels"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    shape = getattr(module, "normalized_shape", None)
    if shape:
        return int(shape[-1])
    return -1


def _resize_basic_gnns(subnet: nn.Module, spec: SplitSpec, m: int) -> None:
    for path, module in subnet.named_modules():
        if isinstance(module, BasicGNN):
            prefix = f"{path}." if path else ""
            name = f"{prefix}hidden1"
            if name in spec.widths:
                module.hidden_channels = spec.widths[name] // m
                if not getattr(module, "_is_conv_to_out", False):
                    module.out_channels = module.convs[-1].out_channels


def load_subnet_state(subnet: nn.Module, tensors: Mapping[str, Tensor]) -> None:
    """Copy ``tensors`` into ``subnet`` in place (parameter objects are kept,
    so an optimizer that holds them stays valid)."""
    named = dict(subnet.named_parameters(remove_duplicate=False))
    named.update(dict(subnet.named_buffers(remove_duplicate=False)))
    with torch.no_grad():
        for name, value in tensors.items():
            named[name].copy_(value)


def subnet_state(subnet: nn.Module, spec: SplitSpec) -> dict[str, Tensor]:
    """The sub-network's tensors, keyed as in the spec."""
    state = subnet.state_dict()
    return {name: state[name] for name in spec.tensor_axes}
