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
from typing import Any

_EXPORTS = {
    "gist.comm": ["ByteLedger", "Collective", "InProcessCollective"],
    "gist.config": ["CheckpointConfig", "DataConfig", "DistConfig", "LocalConfig", "ModelConfig", "RunConfig"],
    "gist.engine": ["RoundDriver", "RoundRecord", "RoundWork", "evaluate"],
    "gist.errors": ["ConfigError", "GistError"],
    "gist.methods": ["METHODS", "get_method", "register_method"],
    "gist.methods.gist": [
        "CentralGIST",
        "GistConfig",
        "InProcessTransport",
        "Ownership",
        "ShardedGIST",
        "Transport",
        "Worker",
        "init_shards",
    ],
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


def _method_classes() -> dict[str, str]:
    """The shipped methods' classes (``GIST``, ``DDP``, ...) and where they live, from the method registry."""
    from .registry import METHODS

    paths = (METHODS.path(name) for name in METHODS.names())
    return {path.rpartition(":")[2]: path for path in paths if path}


def __getattr__(name: str) -> Any:
    """Import the public names on first use, so that ``import gist`` (and
    ``gist --help``) does not load torch."""
    module = _WHERE.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif name in _method_classes():
        from .registry import import_path

        value = import_path(_method_classes()[name])
    else:
        raise AttributeError(f"module 'gist' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE, *_method_classes()])


__version__ = "0.1.0"

__all__ = sorted([*_WHERE, *_method_classes()])
