"""GIST: graph independent subnetwork training, as a package.

* :mod:`~gist.methods.gist.options`: GIST's settings (:class:`GistConfig`, no
  torch) and the partitioned-data recipe they resolve to (:func:`gist_options`).
* :mod:`~gist.methods.gist.base`: :class:`GIST`, the method: what both
  coordinators share, and the choice between them.
* :mod:`~gist.methods.gist.central` (:class:`CentralGIST`) and
  :mod:`~gist.methods.gist.sharded` (:class:`ShardedGIST`): the coordinators,
  siblings over the base.
* :mod:`~gist.methods.gist.worker`: a worker's sub-network, local steps and
  evaluation on its own part; :mod:`~gist.methods.gist.corrections`: the
  label prior and BatchNorm re-estimation.
* :mod:`~gist.methods.gist.messages`, :mod:`~gist.methods.gist.transport`,
  :mod:`~gist.methods.gist.processes`: what the central coordinator sends,
  in one process and on ``torch.distributed``.
* :mod:`~gist.methods.gist.shards`, :mod:`~gist.methods.gist.shard_store`,
  :mod:`~gist.methods.gist.sharded_exchange`, :mod:`~gist.methods.gist.sharded_eval`:
  ownership of units, the shards a process holds, the round's exchanges, and
  evaluating a model that lives in shards.

Importing this package loads no torch: its names import on first use, so the
CLI reads :class:`GistConfig` without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "GIST": "base",
    "CentralGIST": "central",
    "ShardedGIST": "sharded",
    "GistConfig": "options",
    "GistOptions": "options",
    "gist_options": "options",
    "Worker": "worker",
    "Ownership": "shards",
    "init_shards": "shards",
    "Transport": "transport",
    "InProcessTransport": "transport",
}

__all__ = [
    "GIST",
    "CentralGIST",
    "GistConfig",
    "GistOptions",
    "InProcessTransport",
    "Ownership",
    "ShardedGIST",
    "Transport",
    "Worker",
    "gist_options",
    "init_shards",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .base import GIST
    from .central import CentralGIST
    from .options import GistConfig, GistOptions, gist_options
    from .sharded import ShardedGIST
    from .shards import Ownership, init_shards
    from .transport import InProcessTransport, Transport
    from .worker import Worker
