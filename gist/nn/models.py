"""Stock PyG models as the harness builds them."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch_geometric.nn import GCNConv, MessagePassing
from torch_geometric.nn.models import GCN

from ..errors import ConfigError
from ..registry import MODELS, NORMS


class PrenormalizedGCN(GCN):
    r"""PyG's :class:`~torch_geometric.nn.models.GCN` whose convolutions take
    the graph already normalised, :math:`\hat A = D^{-1/2}(A + I)D^{-1/2}`
    (``GCNConv(normalize=False)``), so that :math:`\hat A` is computed once
    per graph (:func:`gist.graph.adjacency` with ``normalized=True``) rather
    than by every layer at every step. The same parameters, ``state_dict``
    and outputs as ``GCN`` given the raw graph; what ``gist`` builds for
    ``--model gcn`` with the (default) sparse adjacency."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, normalize=False, **kwargs)

    def forward(self, x: Tensor, edge_index: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """``GCN.forward`` on the normalised adjacency; an ``edge_index`` (which
        would train an unnormalised GCN) is an error."""
        if not edge_index.is_sparse and edge_index.layout == torch.strided and edge_index.dtype == torch.long:
            raise ConfigError(
                "PrenormalizedGCN takes the GCN-normalised sparse adjacency "
                "(gist.graph.adjacency(data, normalized=True)), not an edge_index"
            )
        return super().forward(x, edge_index, *args, **kwargs)


def takes_normalized_adjacency(model: nn.Module) -> bool:
    """Whether ``model`` expects the GCN-normalised adjacency (a :class:`PrenormalizedGCN`)."""
    return isinstance(model, PrenormalizedGCN)


def first_conv(model: nn.Module) -> Optional[MessagePassing]:
    """The model's first message-passing layer in definition order (the
    first applied in PyG's ``BasicGNN``); ``None`` if it has none."""
    return next((m for m in model.modules() if isinstance(m, MessagePassing)), None)


def takes_sparse_features(model: nn.Module) -> bool:
    r"""Whether ``model`` can take its node features as a sparse matrix
    (:func:`gist.graph.with_sparse_features`): its first layer is a
    ``GCNConv``, which multiplies them by its weight, :math:`XW`, before
    anything else. (``SAGEConv`` aggregates the raw features first.)"""
    return isinstance(first_conv(model), GCNConv)


def build_model(
    kind: str,
    in_channels: int,
    hidden_channels: int,
    out_channels: int,
    num_layers: int,
    dropout: float = 0.5,
    norm: Optional[str] = None,
    prenormalized: bool = False,
) -> nn.Module:
    """A stock :class:`~torch_geometric.nn.models.GCN` or
    :class:`~torch_geometric.nn.models.GraphSAGE`, exactly as PyG builds it.

    Args:
        kind: ``"gcn"`` or ``"sage"``.
        norm: ``None``/``"none"``, ``"batch_norm"`` or ``"layer_norm"``.
        prenormalized: for ``"gcn"``, a :class:`PrenormalizedGCN` (fed the
            normalised graph, computed once); ignored for other kinds.
    """
    if kind not in MODELS:
        raise ConfigError(f"unknown model {kind!r}; choose one of {sorted(MODELS.names())}")
    if norm is not None and norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; choose one of {sorted(NORMS)}")
    if num_layers < 2:
        raise ConfigError(f"GIST needs at least 2 layers (one hidden width), got num_layers={num_layers}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    model_class = PrenormalizedGCN if prenormalized and kind == "gcn" else MODELS[kind]
    return model_class(
        in_channels,
        hidden_channels,
        num_layers,
        out_channels=out_channels,
        dropout=dropout,
        norm=NORMS.get(norm) if norm is not None else None,
    )
