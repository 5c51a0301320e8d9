r"""Which hidden width indexes which dimension of which tensor.

GIST splits every *hidden width* of a model into ``m`` groups. To slice a
sub-network out of a model and merge it back, the splitter needs to know, for
every parameter and buffer, which width indexes each of its dimensions. This
module derives that from the model:

* Stock :class:`torch_geometric.nn.models.GCN` / :class:`GraphSAGE` (any
  :class:`~torch_geometric.nn.models.basic_gnn.BasicGNN` without ``jk``) are
  understood as PyG builds them: the output of conv ``l < L`` is the hidden
  width ``hidden{l}``; the input and output widths are never split.
* GIST layers (:mod:`gist.nn.layers`) and stock modules annotated with
  :func:`set_groups` say which width each side belongs to.
* :func:`register_slicing_rule` teaches the splitter a custom layer.

The result is a :class:`SplitSpec`: ``tensor_axes[name]`` is a tuple with one
entry per dimension of ``state_dict()[name]``; each entry is the name of a
hidden width (split) or ``None`` (never split). Tensors with no split
dimension are *shared*: every worker gets a copy and they are averaged on
merge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Optional

from torch import nn
from torch_geometric.nn import BatchNorm as PygBatchNorm
from torch_geometric.nn import GCNConv, SAGEConv
from torch_geometric.nn import LayerNorm as PygLayerNorm
from torch_geometric.nn.dense.linear import Linear as PygLinear
from torch_geometric.nn.models.basic_gnn import BasicGNN

from ..errors import ConfigError

Axes = tuple[Optional[str], ...]
"""One width name (or ``None``: not split) per tensor dimension."""

GROUP_ATTR = "_gist_groups"


class SplitError(ConfigError):
    """The model cannot be split as asked (unknown layer, bad widths, ...)."""


# --------------------------------------------------------------------------
# Rules


@dataclass(frozen=True)
class SlicingRule:
    """How to slice one kind of layer.

    Args:
        tensor_axes: ``f(module, in_group, out_group) -> {local_name: axes}``
            for *every* parameter and buffer in the module's subtree (names
            relative to the module, as in ``module.state_dict()``).
        resize: ``f(module, in_size, out_size)`` sets the width attributes of a
            narrowed copy (``in_channels`` and friends) so that its forward
            pass and ``repr`` are right. ``None`` when nothing needs setting.
    """

    tensor_axes: Callable[[nn.Module, Optional[str], Optional[str]], dict[str, Axes]]
    resize: Optional[Callable[[nn.Module, int, int], None]] = None


_RULES: dict[type, SlicingRule] = {}


def register_slicing_rule(
    module_type: type,
    tensor_axes: Callable[[nn.Module, Optional[str], Optional[str]], dict[str, Axes]],
    resize: Optional[Callable[[nn.Module, int, int], None]] = None,
) -> None:
    r"""Teach the splitter a layer type (subclasses inherit the rule).

    Example, for a layer computing :math:`\mathbf{x}' = \mathbf{x}\mathbf{W}^\top
    + \mathbf{b}` with ``weight: [out, in]`` and ``bias: [out]``::

        def axes(module, in_group, out_group):
            return {"weight": (out_group, in_group), "bias": (out_group,)}

        def resize(module, in_size, out_size):
            module.in_channels, module.out_channels = in_size, out_size

        gist.nn.register_slicing_rule(MyLayer, axes, resize)

    Instances must then say which widths they connect, with
    :func:`set_groups` (``set_groups(layer, in_group="h1", out_group="h2")``).
    """
    if not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
        raise TypeError(f"module_type must be an nn.Module subclass, got {module_type!r}")
    _RULES[module_type] = SlicingRule(tensor_axes, resize)


def find_rule(module: nn.Module) -> Optional[SlicingRule]:
    """The rule for ``module``'s type or its nearest registered base class."""
    for cls in type(module).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


def set_groups(module: nn.Module, in_group: Optional[str] = None, out_group: Optional[str] = None) -> nn.Module:
    """Say which hidden width each side of a stock layer belongs to.

    ``None`` means a width that is never split (input features, classes).
    For a normalisation layer both sides are the same width: pass it as
    ``out_group`` (or both). Returns ``module`` so calls can be chained.
    """
    setattr(module, GROUP_ATTR, (in_group, out_group))
    return module


def get_groups(module: nn.Module) -> Optional[tuple[Optional[str], Optional[str]]]:
    """The ``(in_group, out_group)`` a layer was given, or ``None``."""
    return getattr(module, GROUP_ATTR, None)


# --------------------------------------------------------------------------
# Built-in rules for stock modules


def _linear_axes(m: nn.Module, i: Optional[str], o: Optional[str]) -> dict[str, Axes]:
    axes: dict[str, Axes] = {"weight": (o, i)}
    if getattr(m, "bias", None) is not None:
        axes["bias"] = (o,)
    return axes


def _resize_torch_linear(m: nn.Module, i: int, o: int) -> None:
    m.in_features, m.out_features = i, o


def _resize_pyg_linear(m: nn.Module, i: int, o: int) -> None:
    m.in_channels, m.out_channels = i, o


def _gcn_axes(m: nn.Module, i: Optional[str], o: Optional[str]) -> dict[str, Axes]:
    axes: dict[str, Axes] = {"lin.weight": (o, i)}
    if getattr(m.lin, "bias", None) is not None:  # pragma: no cover - PyG uses bias=False
        axes["lin.bias"] = (o,)
    if m.bias is not None:
        axes["bias"] = (o,)
    return axes


def _resize_gcn(m: nn.Module, i: int, o: int) -> None:
    m.in_channels, m.out_channels = i, o
    _resize_pyg_linear(m.lin, i, o)
    # A cached normalised adjacency belongs to the graph the full model last
    # saw, not to the worker's graph.
    m._cached_edge_index = None
    m._cached_adj_t = None


def _sage_axes(m: nn.Module, i: Optional[str], o: Optional[str]) -> dict[str, Axes]:
    if list(m.aggr_module.parameters()) or list(m.aggr_module.buffers()):
        raise SplitError(f"SAGEConv with a learnable aggregation ({m.aggr_module!r}) is not supported")
    axes: dict[str, Axes] = {}
    agg_in = i
    if m.project:
        axes["lin.weight"] = (i, i)
        axes["lin.bias"] = (i,)
    axes.update({f"lin_l.{k}": v for k, v in _linear_axes(m.lin_l, agg_in, o).items()})
    if m.root_weight:
        axes.update({f"lin_r.{k}": v for k, v in _linear_axes(m.lin_r, i, o).items()})
    return axes


def _resize_sage(m: nn.Module, i: int, o: int) -> None:
    m.in_channels, m.out_channels = i, o
    if m.project:
        _resize_pyg_linear(m.lin, i, i)
    _resize_pyg_linear(m.lin_l, i, o)
    if m.root_weight:
        _resize_pyg_linear(m.lin_r, i, o)


def _channel_axes(names: Iterable[str], scalar: Iterable[str] = ()):
    names, scalar = tuple(names), tuple(scalar)

    def axes(m: nn.Module, i: Optional[str], o: Optional[str]) -> dict[str, Axes]:
        group = o if o is not None else i
        state = m.state_dict()
        out: dict[str, Axes] = {n: (group,) for n in names if n in state}
        out.update({n: () for n in scalar if n in state})
        return out

    return axes


def _resize_batchnorm1d(m: nn.Module, i: int, o: int) -> None:
    m.num_features = o


def _resize_pyg_batchnorm(m: nn.Module, i: int, o: int) -> None:
    m.in_channels = o
    m.module.num_features = o


def _resize_torch_layernorm(m: nn.Module, i: int, o: int) -> None:
    m.normalized_shape = (o,)


def _resize_pyg_layernorm(m: nn.Module, i: int, o: int) -> None:
    m.in_channels = o


def _register_builtin_rules() -> None:
    register_slicing_rule(nn.Linear, _linear_axes, _resize_torch_linear)
    register_slicing_rule(PygLinear, _linear_axes, _resize_pyg_linear)
    register_slicing_rule(GCNConv, _gcn_axes, _resize_gcn)
    register_slicing_rule(SAGEConv, _sage_axes, _resize_sage)
    bn_names = ("weight", "bias", "running_mean", "running_var")
    register_slicing_rule(
        nn.modules.batchnorm._BatchNorm,
        _channel_axes(bn_names, ["num_batches_tracked"]),
        _resize_batchnorm1d,
    )
    register_slicing_rule(
        PygBatchNorm,
        _channel_axes([f"module.{n}" for n in bn_names], ["module.num_batches_tracked"]),
        _resize_pyg_batchnorm,
    )
    register_slicing_rule(nn.LayerNorm, _channel_axes(["weight", "bias"]), _resize_torch_layernorm)
    register_slicing_rule(PygLayerNorm, _channel_axes(["weight", "bias"]), _resize_pyg_layernorm)


_register_builtin_rules()  # at import: a rule registered before the first split adds to them


# --------------------------------------------------------------------------
# The split spec of a whole model


@dataclass
class LayerEntry:
    """A layer the splitter handles as one unit."""

    path: str
    rule: SlicingRule
    in_group: Optional[str]
    out_group: Optional[str]


@dataclass
class SplitSpec:
    """How a model's state splits into sub-networks.

    Attributes:
        tensor_axes: ``state_dict`` key -> one width name or ``None`` per dim.
        widths: hidden width name -> its full size ``d_l``.
        layers: the layers found, with the widths on either side.
    """

    tensor_axes: dict[str, Axes]
    widths: dict[str, int]
    layers: list[LayerEntry] = field(default_factory=list)

    @property
    def shared(self) -> list[str]:
        """Tensors no hidden width indexes: copied to every worker, averaged."""
        return [k for k, ax in self.tensor_axes.items() if all(a is None for a in ax)]

    @property
    def sliced(self) -> list[str]:
        """Tensors that split into disjoint slices."""
        return [k for k, ax in self.tensor_axes.items() if any(a is not None for a in ax)]

    def check_subnets(self, num_subnets: int) -> None:
        """Raise :class:`SplitError` unless every hidden width splits into
        ``num_subnets`` equal, non-empty groups."""
        for name, size in self.widths.items():
            check_width_split(name, size, num_subnets)

    def sub_width(self, name: Optional[str], full: int, num_subnets: int) -> int:
        return full if name is None else self.widths[name] // num_subnets


def check_width_split(name: str, size: int, num_subnets: int) -> None:
    """Raise :class:`SplitError` unless hidden width ``name`` of ``size`` units
    splits into ``num_subnets`` equal, non-empty groups."""
    if not isinstance(num_subnets, int) or num_subnets < 1:
        raise SplitError(f"the number of sub-networks must be a positive integer, got {num_subnets!r}")
    if num_subnets > size:
        raise SplitError(
            f"cannot split hidden width '{name}' ({size} units) into {num_subnets} "
            f"sub-networks: m is larger than the width"
        )
    if size % num_subnets != 0:
        raise SplitError(
            f"hidden width '{name}' has {size} units, which is not divisible by "
            f"m={num_subnets}; choose a width that is a multiple of m"
        )


def _basic_gnn_layers(
    model: nn.Module, path: str, in_group, out_group
) -> list[tuple[str, nn.Module, Optional[str], Optional[str]]]:
    if getattr(model, "jk_mode", None) is not None:
        raise SplitError(
            f"{type(model).__name__} at '{path or '<root>'}' uses jumping knowledge "
            f"(jk={model.jk_mode!r}), which GIST cannot split; build it with jk=None"
        )
    prefix = f"{path}." if path else ""
    num = len(model.convs)
    groups = [in_group] + [f"{prefix}hidden{k}" for k in range(1, num)] + [out_group]
    found = []
    for k, conv in enumerate(model.convs):
        found.append((f"{prefix}convs.{k}", conv, groups[k], groups[k + 1]))
    for k, norm in enumerate(model.norms):
        found.append((f"{prefix}norms.{k}", norm, groups[k + 1], groups[k + 1]))
    for name, child in model.named_children():
        if name not in ("convs", "norms"):
            found.append((f"{prefix}{name}", child, None, None))
    return found


def _has_state(module: nn.Module, recurse: bool = True) -> bool:
    return any(True for _ in module.parameters(recurse=recurse)) or any(True for _ in module.buffers(recurse=recurse))


def build_split_spec(model: nn.Module) -> SplitSpec:
    """Find every layer of ``model`` and which widths index its tensors.

    Raises :class:`SplitError` for a layer with parameters the splitter does
    not know, for widths that disagree between layers, and for a model with no
    hidden width to split.
    """
    entries: list[LayerEntry] = []
    pending: list[tuple[str, nn.Module, Optional[str], Optional[str], bool]] = [("", model, None, None, False)]
    while pending:
        path, module, in_g, out_g, placed = pending.pop(0)
        groups = get_groups(module)
        if groups is not None:
            in_g, out_g, placed = groups[0], groups[1], True
        if isinstance(module, BasicGNN):
            for item in _basic_gnn_layers(module, path, in_g, out_g):
                pending.append((*item, True))
            continue
        if not _has_state(module):
            continue
        rule = find_rule(module)
        if rule is not None and placed:
            entries.append(LayerEntry(path, rule, in_g, out_g))
            continue
        if rule is not None:
            raise SplitError(
                f"layer '{path or '<root>'}' ({type(module).__name__}) does not say which hidden "
                f"widths it connects: use a GIST layer from gist.nn or call "
                f"gist.nn.set_groups(layer, in_group=..., out_group=...)"
            )
        if _has_state(module, recurse=False):
            raise SplitError(
                f"the splitter does not know layer '{path or '<root>'}' of type "
                f"{type(module).__name__}; register one with gist.nn.register_slicing_rule"
            )
        for name, child in module.named_children():
            pending.append((f"{path}.{name}" if path else name, child, None, None, False))

    state = model.state_dict(keep_vars=True)
    tensor_axes: dict[str, Axes] = {}
    widths: dict[str, int] = {}
    for entry in entries:
        module = model.get_submodule(entry.path) if entry.path else model
        local = entry.rule.tensor_axes(module, entry.in_group, entry.out_group)
        own = set(module.state_dict().keys())
        missing = own - set(local)
        if missing:
            raise SplitError(
                f"the slicing rule for {type(module).__name__} at '{entry.path}' does not cover {sorted(missing)}"
            )
        for local_name, axes in local.items():
            key = f"{entry.path}.{local_name}" if entry.path else local_name
            tensor = state[key]
            if tensor.dim() != len(axes):
                raise SplitError(f"rule gives {len(axes)} axes for '{key}' of shape {tuple(tensor.shape)}")
            for dim, axis in enumerate(axes):
                if axis is None:
                    continue
                size = tensor.shape[dim]
                if widths.setdefault(axis, size) != size:
                    raise SplitError(
                        f"hidden width '{axis}' is {widths[axis]} units in one layer but {size} in '{key}'"
                    )
            tensor_axes[key] = tuple(axes)
    uncovered = set(state) - set(tensor_axes)
    if uncovered:  # pragma: no cover - guarded by the walk above
        raise SplitError(f"no slicing rule covers {sorted(uncovered)}")
    if not widths:
        raise SplitError(
            "the model has no hidden width to split (a single layer, or no layer says which widths it connects)"
        )
    # keep state_dict order for deterministic flat buffers
    ordered = {k: tensor_axes[k] for k in state}
    return SplitSpec(ordered, widths, entries)
