"""GIST-aware PyG layers and the slicing rules for stock PyG modules."""

from .layers import GISTBatchNorm, GISTGCNConv, GISTLayerNorm, GISTLinear, GISTSAGEConv
from .models import build_model
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
    "SplitError",
    "SplitSpec",
    "build_model",
    "build_split_spec",
    "get_groups",
    "register_slicing_rule",
    "set_groups",
]
