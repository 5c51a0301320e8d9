"""GIST-aware PyG layers and the slicing rules for stock PyG modules."""

from .layers import GISTBatchNorm, GISTGCNConv, GISTLayerNorm, GISTLinear, GISTSAGEConv
from .models import PrenormalizedGCN, build_model, takes_normalized_adjacency
from .slicing import (
    SplitError,
    SplitSpec,
    build_split_spec,
    get_groups,
    register_slicing_rule,
    set_groups,
)

__all__ = [
    "GISTBatchNorm",
    "GISTGCNConv",
    "GISTLayerNorm",
    "GISTLinear",
    "GISTSAGEConv",
    "PrenormalizedGCN",
    "SplitError",
    "SplitSpec",
    "build_model",
    "build_split_spec",
    "get_groups",
    "register_slicing_rule",
    "set_groups",
    "takes_normalized_adjacency",
]
