"""GIST for PyTorch Geometric: graph independent subnetwork training.

Split the hidden widths of a wide GCN / GraphSAGE into ``m`` groups, train
each narrow sub-network on a worker for ``ζ`` local steps, merge, repeat.
"""
from .comm import ByteLedger, InProcessTransport, Transport
from .partition import (
    FlatLayout,
    WidthPartition,
    build_subnet,
    draw_partition,
    merge_states,
    slice_state,
    subnet_layout,
)
from .train import GISTConfig, GISTTrainer, LocalConfig, Worker, evaluate

__version__ = "0.1.0"

__all__ = [
    "ByteLedger",
    "FlatLayout",
    "GISTConfig",
    "GISTTrainer",
    "InProcessTransport",
    "LocalConfig",
    "Transport",
    "WidthPartition",
    "Worker",
    "build_subnet",
    "draw_partition",
    "evaluate",
    "merge_states",
    "slice_state",
    "subnet_layout",
]
