"""Stock PyG models as the harness builds them."""

from __future__ import annotations

from typing import Optional

from torch import nn
from torch_geometric.nn.models import GCN, GraphSAGE

from ..registry import MODELS, NORMS

MODELS.register("gcn", GCN)
MODELS.register("sage", GraphSAGE)


def build_model(
    kind: str,
    in_channels: int,
    hidden_channels: int,
    out_channels: int,
    num_layers: int,
    dropout: float = 0.5,
    norm: Optional[str] = None,
) -> nn.Module:
    """A stock :class:`~torch_geometric.nn.models.GCN` or
    :class:`~torch_geometric.nn.models.GraphSAGE`, exactly as PyG builds it.

    Args:
        kind: ``"gcn"`` or ``"sage"``.
        norm: ``None``/``"none"``, ``"batch_norm"`` or ``"layer_norm"``.
    """
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}; choose one of {sorted(MODELS.names())}")
    if norm is not None and norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {sorted(NORMS)}")
    if num_layers < 2:
        raise ValueError(f"GIST needs at least 2 layers (one hidden width), got num_layers={num_layers}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return MODELS[kind](
        in_channels,
        hidden_channels,
        num_layers,
        out_channels=out_channels,
        dropout=dropout,
        norm=NORMS.get(norm) if norm is not None else None,
    )
