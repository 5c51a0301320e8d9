"""Node partitions, per-part files and the batch streams workers train on.

* :mod:`gist.graph.partition`: METIS (pymetis) and random node partitions,
  a worker's induced subgraph (with an optional halo), Cluster-GCN batches.
* :mod:`gist.graph.parts`: per-part files for ``partitioned`` runs
  (``gist partition``), so that worker ``i`` loads part ``i`` alone.
* :mod:`gist.graph.batches`: what a worker's message passing reads, and its
  full-batch or Cluster-GCN batch stream.
"""

from .batches import (
    SPARSE,
    AdjacencyFormat,
    BatchSource,
    ClusterBatches,
    FullBatch,
    adjacency,
    graph_tensors,
    with_sparse_features,
)
from .partition import PARTITIONERS, ClusterBatcher, partition_nodes, to_csr, worker_subgraph

__all__ = [
    "PARTITIONERS",
    "SPARSE",
    "AdjacencyFormat",
    "BatchSource",
    "ClusterBatcher",
    "ClusterBatches",
    "FullBatch",
    "adjacency",
    "graph_tensors",
    "partition_nodes",
    "to_csr",
    "with_sparse_features",
    "worker_subgraph",
]
