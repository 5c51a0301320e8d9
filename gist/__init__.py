"""GIST for PyTorch Geometric: graph independent subnetwork training.

Split the hidden widths of a wide GCN / GraphSAGE into ``m`` groups, train
each narrow sub-network on a worker for ``ζ`` local steps, merge, repeat.
"""

import os

# OpenMP threads that spin while they wait make torch 2-3x slower when
# another process shares the cores; waiting passively costs about 6% on an
# idle machine (benchmarks/threads.py, results/threads.md). Only effective
# when gist is imported before torch, as the `gist` command is; set
# OMP_WAIT_POLICY=ACTIVE for dedicated cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "gist.comm": ["ByteLedger", "Collective", "InProcessCollective", "InProcessTransport", "Transport"],
    "gist.config": ["CheckpointConfig", "DataConfig", "DistConfig", "LocalConfig", "ModelConfig", "RunConfig"],
    "gist.engine": ["RoundDriver", "RoundRecord", "RoundWork", "Worker", "evaluate"],
    "gist.methods": ["DDP", "GIST", "METHODS", "FullModel", "LocalSGD", "ShardedGIST", "get_method", "register_method"],
    "gist.shards": ["Ownership", "init_shards"],
    "gist.subnets": [
        "FlatLayout",
        "WidthPartition",
        "build_subnet",
        "draw_partition",
        "merge_states",
        "slice_state",
        "subnet_layout",
    ],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    """Import the public names on first use, so that ``import gist`` (and
    ``gist --help``) does not load torch."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'gist' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


if TYPE_CHECKING:
    from .comm import ByteLedger, Collective, InProcessCollective, InProcessTransport, Transport
    from .config import CheckpointConfig, DataConfig, DistConfig, LocalConfig, ModelConfig, RunConfig
    from .engine import RoundDriver, RoundRecord, RoundWork, Worker, evaluate
    from .methods import DDP, GIST, METHODS, FullModel, LocalSGD, ShardedGIST, get_method, register_method
    from .shards import Ownership, init_shards
    from .subnets import (
        FlatLayout,
        WidthPartition,
        build_subnet,
        draw_partition,
        merge_states,
        slice_state,
        subnet_layout,
    )

__version__ = "0.1.0"

__all__ = [
    "DDP",
    "GIST",
    "METHODS",
    "ByteLedger",
    "CheckpointConfig",
    "Collective",
    "DataConfig",
    "DistConfig",
    "FlatLayout",
    "FullModel",
    "InProcessCollective",
    "InProcessTransport",
    "LocalConfig",
    "LocalSGD",
    "ModelConfig",
    "Ownership",
    "RoundDriver",
    "RoundRecord",
    "RoundWork",
    "RunConfig",
    "ShardedGIST",
    "Transport",
    "WidthPartition",
    "Worker",
    "build_subnet",
    "draw_partition",
    "evaluate",
    "get_method",
    "init_shards",
    "merge_states",
    "register_method",
    "slice_state",
    "subnet_layout",
]
