r"""A full model held in shards: every hidden unit has one owner, and no process holds the whole model.

With ``m`` owners, unit ``j`` of every hidden width is owned by owner
``j mod m`` (:math:`O_o = \{o, o + m, o + 2m, \dots\}`). A sliced tensor's
*owning dimension* is its first split dimension; owner ``o`` holds the
tensor at its own units along that dimension and whole along every other
(``W[O_o, :]`` for a weight whose rows are hidden units). Shared tensors (no
split dimension) are replicated: every owner keeps a copy.

In a round, sub-network ``g`` (group :math:`P_g` of every width, see
:func:`gist.subnets.draw_partition`) is assembled from one *piece* per
owner: for each sliced tensor, the rows :math:`P_g \cap O_o` of the owning
dimension, every other split dimension cut to :math:`P_g`. The pieces of a
sub-network are disjoint and cover it, so assembling it is exact, and
writing a trained piece back touches only its owner's rows. Who owns a unit
is fixed and the split is a pure function of ``(seed, round)``: every
process knows every piece's size and place, so no index ever travels.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode
from torch_geometric.nn import BatchNorm as PygBatchNorm
from torch_geometric.nn import GCNConv, SAGEConv
from torch_geometric.nn.dense.linear import Linear as PygLinear

from ...nn.slicing import Axes, SplitError, SplitSpec, build_split_spec
from ...subnets import WidthPartition, select_block, side_size, write_block


def owned_units(size: int, num_owners: int, owner: int) -> Tensor:
    """The units of a width of ``size`` that ``owner`` holds: ``owner, owner + m, ...``."""
    return torch.arange(owner, size, num_owners)


def owning_dim(axes: Axes) -> Optional[int]:
    """A tensor's first split dimension (``None`` for a shared tensor)."""
    return next((d for d, a in enumerate(axes) if a is not None), None)


@dataclass(frozen=True)
class PiecePlan:
    """Where owner ``owner``'s piece of sub-network ``group`` sits, per width:
    ``positions`` in the sub-network (indices into :math:`P_g`), ``local``
    in the owner's shard (indices into :math:`O_o`), and ``group_units``
    (:math:`P_g` itself, for the other split dimensions)."""

    owner: int
    group: int
    positions: dict[str, Tensor]
    local: dict[str, Tensor]
    group_units: dict[str, Tensor]


class Ownership:
    """Which owner holds which part of a model split by ``spec`` among ``num_owners``."""

    def __init__(self, spec: SplitSpec, num_owners: int) -> None:
        spec.check_subnets(num_owners)
        self.spec = spec
        self.num_owners = num_owners
        self.sliced = spec.sliced
        self.shared = spec.shared
        self._dims = {name: owning_dim(spec.tensor_axes[name]) for name in self.sliced}

    def units(self, width: str, owner: int) -> Tensor:
        return owned_units(self.spec.widths[width], self.num_owners, owner)

    def _owning(self, name: str) -> tuple[int, str]:
        dim = self._dims[name]
        assert dim is not None
        width = self.spec.tensor_axes[name][dim]
        assert width is not None
        return dim, width

    def rows(self, name: str, shard_tensor: Tensor, rows: slice) -> Tensor:
        """Positions ``rows`` of an owner's shard of ``name`` along the dimension it owns (a view)."""
        dim = self._owning(name)[0]
        return shard_tensor[(slice(None),) * dim + (rows,)]

    # ---------------------------------------------------------------- shards

    def shard(self, state: Mapping[str, Tensor], owner: int) -> dict[str, Tensor]:
        """Owner ``owner``'s part of every sliced tensor of ``state`` (new tensors)."""
        out = {}
        for name in self.sliced:
            dim, width = self._owning(name)
            tensor = state[name].detach()
            if not tensor.is_floating_point():
                raise SplitError(f"'{name}' is split but not floating-point ({tensor.dtype})")
            out[name] = tensor.index_select(dim, self.units(width, owner).to(tensor.device))
        return out

    def assemble(
        self, shards: Sequence[Mapping[str, Tensor]], names: Optional[Sequence[str]] = None
    ) -> dict[str, Tensor]:
        """The full sliced tensors ``names`` (default all) put together from every owner's shard."""
        if len(shards) != self.num_owners:
            raise ValueError(f"expected {self.num_owners} shards, got {len(shards)}")
        out = {}
        for name in names if names is not None else self.sliced:
            dim, width = self._owning(name)
            first = shards[0][name]
            shape = list(first.shape)
            shape[dim] = self.spec.widths[width]
            full = torch.empty(shape, dtype=first.dtype, device=first.device)
            for owner, shard in enumerate(shards):
                full.index_copy_(dim, self.units(width, owner).to(full.device), shard[name].to(full.device))
            out[name] = full
        return out

    # ---------------------------------------------------------------- pieces

    def plan(self, partition: WidthPartition, group: int, owner: int) -> PiecePlan:
        """Where owner ``owner``'s piece of sub-network ``group`` of ``partition`` sits."""
        positions, local, units = {}, {}, {}
        for width in self.spec.widths:
            members = partition.groups[width][group].cpu()
            mine = members % self.num_owners == owner
            positions[width] = mine.nonzero().view(-1)
            local[width] = members[mine] // self.num_owners
            units[width] = members
        return PiecePlan(owner, group, positions, local, units)

    def _piece_dims(self, name: str, plan: PiecePlan, in_shard: bool) -> list[tuple[int, Tensor]]:
        """The ``(dim, index)`` pairs that pick the piece out of a shard
        (``in_shard``) or out of the sub-network's tensor."""
        axes = self.spec.tensor_axes[name]
        owning, width = self._owning(name)
        dims = [(owning, plan.local[width] if in_shard else plan.positions[width])]
        if in_shard:
            dims += [(d, plan.group_units[a]) for d, a in enumerate(axes) if a is not None and d != owning]
        return dims

    def piece_shapes(self, plan: PiecePlan, subnet_shapes: Mapping[str, torch.Size]) -> list[torch.Size]:
        """The shape of each sliced tensor's piece, in :attr:`sliced` order."""
        shapes = []
        for name in self.sliced:
            dim, width = self._owning(name)
            shape = list(subnet_shapes[name])
            shape[dim] = len(plan.positions[width])
            shapes.append(torch.Size(shape))
        return shapes

    def piece_numel(self, plan: PiecePlan, subnet_shapes: Mapping[str, torch.Size]) -> int:
        return sum(s.numel() for s in self.piece_shapes(plan, subnet_shapes))

    def take_from_shard(self, shard: Mapping[str, Tensor], plan: PiecePlan) -> Tensor:
        """The owner's piece, as one flat buffer (sliced tensors in :attr:`sliced` order)."""
        parts = [
            select_block(shard[n], _on(self._piece_dims(n, plan, True), shard[n])).reshape(-1) for n in self.sliced
        ]
        return _cat(parts, shard)

    def take_from_subnet(self, subnet: Mapping[str, Tensor], plan: PiecePlan) -> Tensor:
        """The part of a (trained) sub-network that belongs to ``plan.owner``, as one flat buffer."""
        parts = [
            select_block(subnet[n], _on(self._piece_dims(n, plan, False), subnet[n])).reshape(-1) for n in self.sliced
        ]
        return _cat(parts, subnet)

    def unflatten(self, flat: Tensor, plan: PiecePlan, subnet_shapes: Mapping[str, torch.Size]) -> dict[str, Tensor]:
        """A flat piece as ``{name: tensor}`` (views of ``flat``)."""
        out, offset = {}, 0
        for name, shape in zip(self.sliced, self.piece_shapes(plan, subnet_shapes)):
            out[name] = flat[offset : offset + shape.numel()].view(shape)
            offset += shape.numel()
        if offset != flat.numel():
            raise ValueError(f"a piece of {flat.numel()} values, expected {offset}")
        return out

    def place_in_subnet(self, subnet: Mapping[str, Tensor], piece: Mapping[str, Tensor], plan: PiecePlan) -> None:
        """Write a piece into the sub-network's tensors, in place."""
        for name in self.sliced:
            write_block(subnet[name], piece[name], _on(self._piece_dims(name, plan, False), subnet[name]))

    def write_to_shard(self, shard: Mapping[str, Tensor], piece: Mapping[str, Tensor], plan: PiecePlan) -> None:
        """Write a (merged) piece back into the owner's shard, in place."""
        with torch.no_grad():
            for name in self.sliced:
                write_block(shard[name], piece[name], _on(self._piece_dims(name, plan, True), shard[name]))

    # ---------------------------------------------------------------- layers

    def layer_names(self, path: str) -> list[str]:
        """The sliced tensors of the layer at ``path``."""
        prefix = f"{path}." if path else ""
        return [n for n in self.sliced if n.startswith(prefix)]

    def owned_by_output(self, path: str, out_group: Optional[str]) -> bool:
        """Whether every sliced tensor of the layer at ``path`` is owned along
        its output width ``out_group`` (so owner ``o``'s shard computes the
        layer's output units :math:`O_o` on its own)."""
        names = self.layer_names(path)
        return out_group is not None and bool(names) and all(self._owning(n)[1] == out_group for n in names)


def _on(dims: list[tuple[int, Tensor]], like: Tensor) -> list[tuple[int, Tensor]]:
    return [(d, i.to(like.device)) for d, i in dims]


def _cat(parts: list[Tensor], like: Mapping[str, Tensor]) -> Tensor:
    if parts:
        return torch.cat(parts)
    first = next(iter(like.values()))
    return torch.empty(0, dtype=first.dtype, device=first.device)


# --------------------------------------------------------------------------
# Evaluating a sharded model layer by layer

LayerFetch = Callable[[int, int, slice], dict[str, Tensor]]
"""``fetch(layer, owner, rows)``: owner ``owner``'s part of layer ``layer``
(positions ``rows`` of its shard of each of the layer's sliced tensors, along
the dimension it owns, and the layer's shared tensors), keyed as in the
model's ``state_dict``."""

FETCH_VALUES = 1 << 24
"""Values of a layer fetched at a time by :func:`sharded_eval_model` (64 MB
in float32): an owner's part of a wide layer comes in chunks of its units."""

_SEPARABLE: tuple[type, ...] = (nn.Linear, PygLinear, GCNConv, SAGEConv, nn.modules.batchnorm._BatchNorm, PygBatchNorm)


def computes_units_apart(module: nn.Module) -> bool:
    """Whether each output unit of ``module`` depends only on that unit's
    parameters (a linear map, a GCN or GraphSAGE convolution without output
    normalisation, BatchNorm in eval mode), so the layer can be computed in
    chunks of output units."""
    if isinstance(module, SAGEConv) and module.normalize:
        return False
    return isinstance(module, _SEPARABLE)


def _local(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {name[len(prefix) :]: t for name, t in tensors.items()}


class _ByOwner(nn.Module):
    r"""A layer computed one owner at a time: :math:`y_{:, O_o} = f_{O_o}(x)`
    with the owner's rows of its parameters, fetched when needed and dropped
    after use, ``chunk`` of the owner's units at a time
    (:math:`O_o = \bigcup_c C_c`, :math:`y_{:, C_c} = f_{C_c}(x)`). A
    channel-wise layer (a norm: the same width in and out) is given the
    units' inputs :math:`x_{:, C_c}`."""

    def __init__(
        self,
        narrow: nn.Module,
        index: int,
        prefix: str,
        units: Sequence[Tensor],
        fetch: LayerFetch,
        channelwise: bool,
        chunk: int,
    ) -> None:
        super().__init__()
        self._narrow = [narrow]  # a plain list: not a registered submodule (it lives on the meta device)
        self._index, self._prefix, self._units, self._fetch = index, prefix, list(units), fetch
        self._channelwise, self._chunk = channelwise, chunk
        self._width = sum(len(u) for u in units)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        out: Optional[Tensor] = None
        for owner, owned in enumerate(self._units):
            for start in range(0, len(owned), self._chunk):
                rows = slice(start, start + self._chunk)
                tensors = _local(self._fetch(self._index, owner, rows), self._prefix)
                units = owned[rows].to(x.device)
                inputs = x.index_select(-1, units) if self._channelwise else x
                y = functional_call(self._narrow[0], tensors, (inputs, *args), kwargs)
                if out is None:
                    out = y.new_empty(*y.shape[:-1], self._width)
                out.index_copy_(-1, units, y)
                del y, tensors, inputs
        assert out is not None
        return out


class _Whole(nn.Module):
    """A layer computed whole, its tensors put together from every owner's part when needed."""

    def __init__(self, module: nn.Module, index: int, prefix: str, ownership: Ownership, fetch: LayerFetch) -> None:
        super().__init__()
        self._module = [module]
        self._index, self._prefix, self._ownership, self._fetch = index, prefix, ownership, fetch

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        parts = [self._fetch(self._index, o, slice(None)) for o in range(self._ownership.num_owners)]
        tensors = dict(parts[0])
        sliced = [n for n in tensors if n in self._ownership.sliced]
        tensors.update(self._ownership.assemble(parts, sliced))
        return functional_call(self._module[0], _local(tensors, self._prefix), args, kwargs)


def sharded_eval_model(
    template: nn.Module, ownership: Ownership, fetch: LayerFetch, fetch_values: int = FETCH_VALUES
) -> nn.Module:
    """``template``'s forward pass with every layer computed from shards
    (``template`` may live on the ``meta`` device: nothing of it is used but
    its structure). A layer whose sliced tensors are all owned along its
    output width, and that computes its units apart
    (:func:`computes_units_apart`), runs owner by owner, each owner's output
    units from its own shard, in chunks of units of at most about
    ``fetch_values`` parameter values, so that no more than one chunk of it
    is held at a time; any other layer (the classifier, a LayerNorm) is put
    together whole. ``fetch(layer, owner, rows)`` supplies the tensors,
    ``layer`` indexing ``ownership.spec.layers``. Activations are full width."""
    model = copy.deepcopy(template).eval()
    spec, m = ownership.spec, ownership.num_owners
    for index, entry in enumerate(spec.layers):
        module = model.get_submodule(entry.path) if entry.path else model
        prefix = f"{entry.path}." if entry.path else ""
        wrapped: nn.Module
        if ownership.owned_by_output(entry.path, entry.out_group) and computes_units_apart(module):
            assert entry.out_group is not None
            channelwise = entry.in_group == entry.out_group
            narrow = copy.deepcopy(module)
            if entry.rule.resize is not None:
                out_size = spec.widths[entry.out_group] // m
                in_size = out_size if channelwise else side_size(module, spec, entry.in_group, 1, "in")
                entry.rule.resize(narrow, in_size, out_size)
            units = [ownership.units(entry.out_group, o) for o in range(m)]
            per_unit = sum(t.numel() for t in narrow.state_dict().values()) // max(1, len(units[0]))
            chunk = max(1, fetch_values // max(1, per_unit))
            wrapped = _ByOwner(narrow, index, prefix, units, fetch, channelwise, chunk)
        else:
            wrapped = _Whole(module, index, prefix, ownership, fetch)
        parent_path, _, child = entry.path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, child, wrapped)
    return model


# --------------------------------------------------------------------------
# Initialising a model straight into shards

_ALIASES = frozenset({"__get__", "detach"})
"""Calls that return another view of a tensor (``p.data``, ``p.detach()``)."""
_COPIES = frozenset({"__deepcopy__", "clone"})
"""Calls that return a copy of a tensor's values."""
_INITS = frozenset({"fill_", "zero_", "uniform_", "normal_"})
_CHUNK_VALUES = 1 << 22
"""Values drawn at a time while replaying an initialisation; a tensor no
larger is replayed whole (so that copies of it can be followed)."""


class _InitRecorder(TorchFunctionMode):
    """Records, in order, what sets the values of ``meta`` tensors while a
    model is built: in-place initialisations (``p.data.uniform_(a, b)``,
    ``p.zero_()``) and copies (a module deep-copied after its reset)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, Tensor, Any, dict]] = []
        self._source: dict[int, Tensor] = {}
        self._alive: list[Tensor] = []  # every tensor seen is kept alive, so that ids stay unique

    def source(self, tensor: Tensor) -> Tensor:
        return self._source.get(id(tensor), tensor)

    def wrapped(self, parameter: Tensor, data: Tensor) -> None:
        """``parameter`` wraps ``data`` (``nn.Parameter(data)``: a call the mode does not see)."""
        self._alive += [parameter, data]
        self._source[id(parameter)] = self.source(data)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if args and isinstance(args[0], Tensor) and args[0].is_meta:
            name = getattr(func, "__name__", "")
            self._alive.append(args[0])
            if name in _ALIASES and isinstance(out, Tensor):
                self._alive.append(out)
                self._source[id(out)] = self.source(args[0])
            elif name in _COPIES and isinstance(out, Tensor):
                self._alive.append(out)
                self.ops.append(("copy", out, self.source(args[0]), {}))
            elif name.endswith("_") and not name.startswith("_"):
                self.ops.append((name, self.source(args[0]), tuple(args[1:]), dict(kwargs)))
        return out


def init_shards(
    build: Callable[[], nn.Module], num_owners: int, owners: Sequence[int]
) -> tuple[nn.Module, dict[int, dict[str, Tensor]], dict[str, Tensor]]:
    """Build a model with ``build()`` straight into the shards of ``owners``
    (of ``num_owners``), without ever holding the whole of it.

    ``build`` runs on the ``meta`` device while what sets its values is
    recorded; the initialisations are then replayed in order on the CPU
    from the global RNG stream, a large tensor a few million values at a
    time, keeping only the owners' parts (``uniform_`` drawn in chunks of
    rows is drawn value for value as in one go; ``normal_`` is drawn one
    tensor at a time). The shards equal those of the model ``build()``
    makes on the CPU, and the global RNG ends where that construction leaves
    it. A large tensor may only be set by ``uniform_``, ``normal_``,
    ``fill_`` or ``zero_`` (:class:`~gist.nn.SplitError` otherwise).
    Initialisers that do nothing on the ``meta`` device (torch's
    ``orthogonal_``) are not seen: the harness uses this for its stock
    GCN/GraphSAGE only, whose shards it reproduces exactly (tested).

    Returns the model (on ``meta``: its structure), each owner's shard and the shared tensors.
    """
    recorder = _InitRecorder()
    new_parameter = nn.Parameter.__new__
    original = nn.Parameter.__dict__["__new__"]

    def parameter(cls, data=None, requires_grad=True):
        made = new_parameter(cls, data, requires_grad)
        if isinstance(data, Tensor) and data.is_meta:
            recorder.wrapped(made, data)
        return made

    nn.Parameter.__new__ = staticmethod(parameter)  # type: ignore[method-assign]
    try:
        with torch.device("meta"), recorder:
            model = build()
    finally:
        nn.Parameter.__new__ = original  # type: ignore[method-assign]
    own = Ownership(build_split_spec(model), num_owners)
    final = {n: recorder.source(t) for n, t in model.state_dict(keep_vars=True).items()}
    names = {id(t): n for n, t in final.items()}
    shards = {
        o: {n: torch.empty(_shard_shape(own, n, final[n].shape), dtype=final[n].dtype) for n in own.sliced}
        for o in owners
    }
    shared = {n: torch.empty(final[n].shape, dtype=final[n].dtype) for n in own.shared}
    whole: dict[int, Tensor] = {}  # the values of small tensors, followed through copies
    done: set[str] = set()
    for op, target, args, kwargs in recorder.ops:
        name = names.get(id(target))
        if op == "copy":
            if id(args) not in whole:
                raise SplitError(f"initialising in shards cannot follow a copy of a large tensor into {name}")
            whole[id(target)] = whole[id(args)].clone()
            continue
        if op not in _INITS:
            raise SplitError(
                f"initialising in shards cannot replay {op} on {name or 'a temporary tensor'}; "
                "use --coordinator central, or initialise with uniform_/normal_/fill_/zero_"
            )
        if target.numel() <= _CHUNK_VALUES:
            whole[id(target)] = getattr(torch.empty(target.shape, dtype=target.dtype), op)(*args, **kwargs)
            continue
        rows = target.shape[0]
        step = rows if op == "normal_" else max(1, _CHUNK_VALUES // (target.numel() // rows))
        for start in range(0, rows, step):
            chunk = torch.empty((min(step, rows - start), *target.shape[1:]), dtype=target.dtype)
            getattr(chunk, op)(*args, **kwargs)
            if name is not None:
                _keep(own, name, chunk, start, shards, shared)
        if name is not None:
            done.add(name)
    for name, tensor in final.items():
        if id(tensor) in whole:
            _keep(own, name, whole[id(tensor)], 0, shards, shared)
            done.add(name)
    missing = sorted(set(final) - done)
    if missing:
        raise SplitError(f"initialising in shards: the model's construction never set {missing}")
    return model, shards, shared


def _shard_shape(own: Ownership, name: str, shape: torch.Size) -> torch.Size:
    dim, width = own._owning(name)
    out = list(shape)
    out[dim] = own.spec.widths[width] // own.num_owners
    return torch.Size(out)


def _keep(
    own: Ownership,
    name: str,
    chunk: Tensor,
    start: int,
    shards: Mapping[int, dict[str, Tensor]],
    shared: dict[str, Tensor],
) -> None:
    """Write rows ``start ...`` of tensor ``name`` (``chunk``) into the parts kept of it."""
    if name in shared:
        if chunk.dim() == 0:
            shared[name].copy_(chunk)
        else:
            shared[name][start : start + len(chunk)] = chunk
        return
    dim, width = own._owning(name)
    for owner, shard in shards.items():
        units = own.units(width, owner)
        if dim == 0:
            mine = units[(units >= start) & (units < start + len(chunk))]
            shard[name][mine // own.num_owners] = chunk[mine - start]
        else:
            shard[name][start : start + len(chunk)] = chunk.index_select(dim, units)
