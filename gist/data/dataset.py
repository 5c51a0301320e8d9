"""What a loader returns, and loading one by name.

:class:`NodeDataset` is one node-classification graph with its split and
metric. :func:`load_dataset` finds the loader of a name in
:data:`gist.registry.DATASETS`, runs it and checks what it returned;
:func:`register_dataset` adds a loader (a plug-in, or a test's). Loaders build
their result with :func:`make_dataset` and, where no split ships with the
files, use :func:`random_split`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor
from torch_geometric.data import Data

from ..errors import ConfigError
from ..registry import DATASETS
from .offline import default_root

__all__ = [
    "NodeDataset",
    "available_datasets",
    "load_dataset",
    "make_dataset",
    "random_split",
    "register_dataset",
    "split_name",
]


@dataclass
class NodeDataset:
    """One node-classification graph plus its split and metric.

    ``data``: ``x`` float32 ``[N, F]``, ``edge_index`` long ``[2, E]`` (both
    directions), ``y`` long ``[N]``, ``train_mask``/``val_mask``/``test_mask``
    bool ``[N]``. ``split`` describes the split; ``metric`` is ``"accuracy"`` or
    ``"ogb:<name>"`` (use the OGB evaluator of that name), as the registry
    declares it (``DATASETS.info(name)["metric"]``).
    """

    name: str
    data: Data
    num_features: int
    num_classes: int
    split: str
    metric: str = "accuracy"

    @property
    def num_nodes(self) -> int:
        return int(self.data.num_nodes)


# --------------------------------------------------------------------------- by name


def available_datasets() -> list[str]:
    """Sorted registry names accepted by :func:`load_dataset` (:data:`gist.registry.DATASETS`)."""
    return sorted(DATASETS.names())


def register_dataset(
    name: str,
    loader: Callable[..., NodeDataset],
    *,
    metric: str = "accuracy",
    family: str = "plug-in",
    description: str = "",
    **info: Any,
) -> None:
    """Register (or replace) ``loader(root: Path, seed: int, **kwargs) -> NodeDataset``.

    Names are case-insensitive and ``_`` is treated as ``-``. ``metric``,
    ``family``, ``description`` and any further ``info`` become the registry's
    facts about it (:meth:`gist.registry.Registry.info`); ``metric`` must be
    the one the loader's datasets carry. ``gist train --dataset`` lists it.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"dataset name must be a non-empty string, got {name!r}")
    if not callable(loader):
        raise ConfigError(f"loader for {name!r} must be callable, got {loader!r}")
    DATASETS.register(name, loader, metric=metric, family=family, description=description, **info)


def load_dataset(name: str, root: str | Path | None = None, seed: int = 0, **kwargs: Any) -> NodeDataset:
    """Load a registered dataset.

    ``root`` defaults to :func:`~gist.data.default_root` and is made absolute;
    ``seed`` drives random splits (and the synthetic graph for ``csbm``);
    ``kwargs`` go to the loader. Raises :class:`~gist.errors.ConfigError` for
    unknown names (listing the available ones) and
    :class:`~gist.data.DatasetNotFoundError` when files are missing and cannot
    be fetched.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; available datasets: {', '.join(available_datasets())}")
    root_path = (Path(root).expanduser() if root is not None else default_root()).absolute()
    ds = DATASETS[name](root_path, seed, **kwargs)
    if not isinstance(ds, NodeDataset):
        raise TypeError(f"loader for {name!r} returned {type(ds).__name__}, not NodeDataset")
    _check(ds)
    declared = DATASETS.info(name).get("metric")
    if declared is not None and ds.metric != declared:
        raise ConfigError(
            f"loader for {name!r} returned a dataset scored by {ds.metric!r}, but the registry "
            f"declares {declared!r}; register it with metric={ds.metric!r}"
        )
    return ds


def _check(ds: NodeDataset) -> None:
    try:
        check_graph(ds.data, ds.num_classes)
    except ConfigError as exc:
        raise ConfigError(f"dataset {ds.name!r} is malformed: {exc}") from exc


def check_graph(data: Data, num_classes: Optional[int] = None, what: str = "the graph") -> None:
    """:class:`~gist.errors.ConfigError`, one problem at a time, unless
    ``data`` is a node-classification graph every method can train on: ``x``
    of shape ``[N, F]``; ``edge_index`` ``[2, E]`` of integer node ids in
    ``[0, N)``; ``y`` a 1-D integer tensor of ``N`` class indices in
    ``[0, num_classes)``; ``train_mask`` (and ``val_mask`` / ``test_mask``
    where present) boolean of ``N`` entries. Stock PyG would read a negative
    id out of bounds, and an integer 0/1 mask as a list of node indices."""
    n = data.num_nodes
    x, edge_index, y = data.x, data.edge_index, data.y
    if x is None or x.dim() != 2 or x.size(0) != n:
        raise ConfigError(f"{what}: x must be a [N, F] tensor of node features (N = {n}), got {_shape(x)}")
    if edge_index is None or edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ConfigError(f"{what}: edge_index must be a [2, E] tensor, got {_shape(edge_index)}")
    if edge_index.is_floating_point() or edge_index.dtype == torch.bool:
        raise ConfigError(f"{what}: edge_index must hold integer node ids, got {edge_index.dtype}")
    if edge_index.numel():
        lo, hi = int(edge_index.min()), int(edge_index.max())
        if lo < 0 or hi >= n:
            raise ConfigError(
                f"{what}: edge_index holds node ids outside [0, {n}) (min {lo}, max {hi}); ids must index the rows of x"
            )
    if y is None or y.dim() != 1 or y.size(0) != n or y.is_floating_point() or y.dtype == torch.bool:
        raise ConfigError(
            f"{what}: y must be a 1-D integer tensor of N = {n} class indices, got {_shape(y)}"
            + (" (flatten it: y.view(-1))" if y is not None and y.dim() == 2 and y.size(-1) == 1 else "")
        )
    if n:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            limit = f"[0, {num_classes})" if num_classes is not None else "[0, C)"
            raise ConfigError(f"{what}: y holds class {lo if lo < 0 else hi}, outside {limit}")
    for name in ("train_mask", "val_mask", "test_mask"):
        mask = getattr(data, name, None)
        if mask is None and name != "train_mask":
            continue
        if mask is None or mask.dtype != torch.bool or tuple(mask.shape) != (n,):
            hint = " (an integer 0/1 mask would be read as node indices: pass mask.bool())" if mask is not None else ""
            raise ConfigError(f"{what}: {name} must be a boolean tensor of N = {n} entries, got {_shape(mask)}{hint}")


def _shape(t: Optional[Tensor]) -> str:
    return "none" if t is None else f"{t.dtype} of shape {tuple(t.shape)}".replace("torch.", "")


# --------------------------------------------------------------------------- building one


def make_dataset(
    name: str,
    x: Tensor,
    edge_index: Tensor,
    y: Tensor,
    masks,
    split: str,
    metric: str = "accuracy",
    num_classes: int | None = None,
) -> NodeDataset:
    """A :class:`NodeDataset` in the canonical dtypes (float ``x``, long ``y``
    flattened, bool masks); ``num_classes`` defaults to ``max(y) + 1``."""
    y = y.reshape(-1).long()
    train, val, test = (m.reshape(-1).bool() for m in masks)
    data = Data(x=x.float(), edge_index=edge_index.long(), y=y, train_mask=train, val_mask=val, test_mask=test)
    data.num_nodes = y.numel()
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.numel() else 0
    return NodeDataset(
        name=name, data=data, num_features=int(x.size(1)), num_classes=int(num_classes), split=split, metric=metric
    )


def random_split(num_nodes: int, seed: int, train: float = 0.6, val: float = 0.2) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded random per-node split into disjoint, covering bool masks.

    ``round(train*N)`` training nodes, ``round(val*N)`` validation nodes, the
    rest test; the permutation comes from ``torch.Generator().manual_seed(seed)``.
    """
    if not isinstance(num_nodes, numbers.Integral) or isinstance(num_nodes, bool) or num_nodes < 1:
        raise ConfigError(f"num_nodes must be a positive int, got {num_nodes!r}")
    if not (0.0 < train <= 1.0) or not (0.0 <= val <= 1.0) or train + val > 1.0 + 1e-9:
        raise ConfigError(f"need 0 < train, 0 <= val, train + val <= 1; got {train}, {val}")
    num_nodes = int(num_nodes)
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(num_nodes, generator=gen)
    n_train = int(round(train * num_nodes))
    n_val = min(int(round(val * num_nodes)), num_nodes - n_train)
    masks = []
    for idx in (perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]):
        m = torch.zeros(num_nodes, dtype=torch.bool)
        m[idx] = True
        masks.append(m)
    return masks[0], masks[1], masks[2]


def split_name(seed: int) -> str:
    """How a :func:`random_split` with the default fractions is described."""
    return f"seeded random 60/20/20 (seed={seed})"
