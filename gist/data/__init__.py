"""Node-classification graphs behind one call, offline-safe.

``load_dataset(name, root=None, seed=0, **kwargs)`` returns a :class:`NodeDataset`
whose ``data`` always has ``x`` (float32 ``[N, F]``), ``edge_index`` (long
``[2, E]``, both directions), ``y`` (long, 1-D ``[N]``) and boolean
``train_mask`` / ``val_mask`` / ``test_mask``. The names, where each loader
lives and what is known of it without importing it (its ``metric``,
``family`` and a ``description``) are :data:`gist.registry.DATASETS`.

Modules, each importing only those listed after it:

* :mod:`gist.data.synthetic` -- ``csbm`` and ``csbm-clustered``, the contextual
  SBM (:func:`make_csbm`); no files, seeded random 60/20/20 split.
* :mod:`gist.data.planetoid` -- ``cora``, ``citeseer``, ``pubmed`` (public split).
* :mod:`gist.data.npz` -- ``coauthor-cs``, ``coauthor-physics``,
  ``amazon-computers``, ``amazon-photo`` (seeded random 60/20/20 split,
  :func:`random_split`).
* :mod:`gist.data.ogb` -- ``ogbn-arxiv`` (made undirected), ``ogbn-products``
  (official OGB split, scored by ``ogb.nodeproppred.Evaluator``).
* :mod:`gist.data.dataset` -- :class:`NodeDataset`, :func:`load_dataset`,
  :func:`register_dataset`, :func:`random_split`.
* :mod:`gist.data.offline` -- the data root (``$GIST_DATA_ROOT`` or
  ``./datasets``; its layout matches a copy of the shared data folder), the
  download guards (``$GIST_OFFLINE``), locks, and the errors for missing
  (:class:`DatasetNotFoundError`) and damaged (:class:`DatasetCorruptError`)
  files.
"""

from __future__ import annotations

from ..registry import DATASETS
from .dataset import NodeDataset, available_datasets, check_graph, load_dataset, random_split, register_dataset
from .offline import (
    DEFAULT_ROOT_ENV,
    OFFLINE_ENV,
    DatasetCorruptError,
    DatasetNotFoundError,
    default_root,
)
from .synthetic import CLUSTERED_CSBM, make_csbm

__all__ = [
    "CLUSTERED_CSBM",
    "DATASETS",
    "DEFAULT_ROOT_ENV",
    "OFFLINE_ENV",
    "DatasetCorruptError",
    "check_graph",
    "DatasetNotFoundError",
    "NodeDataset",
    "available_datasets",
    "default_root",
    "load_dataset",
    "make_csbm",
    "random_split",
    "register_dataset",
]
