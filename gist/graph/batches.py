"""What a worker trains on each step: its whole graph, or Cluster-GCN mini-batches of it."""

from __future__ import annotations

import warnings
from typing import Any, Optional, Protocol

from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import to_torch_csr_tensor

from .partition import ClusterBatcher


def adjacency(data: Data, sparse: bool = True) -> Tensor:
    """What the model's message passing reads: ``edge_index``, or (``sparse``)
    the transposed adjacency as a ``torch.sparse_csr`` tensor, ``adj_t[i, j] = 1``
    for an edge ``j -> i``. Both give the same result; the CSR form runs
    sparse-dense matrix products instead of gather/scatter and is several
    times faster on wide inputs."""
    if not sparse:
        return data.edge_index
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sparse CSR support is labelled beta
        return to_torch_csr_tensor(data.edge_index.flip(0), size=(data.num_nodes, data.num_nodes))


def graph_tensors(data: Data) -> list[Tensor]:
    """The tensors a worker holds for its graph (counted as ``data`` bytes)."""
    return [v for _, v in data if isinstance(v, Tensor)]


class BatchSource(Protocol):
    """A worker's stream of training batches over its graph ``data``."""

    data: Data

    def next_batch(self) -> tuple[Data, Tensor]:
        """The next training graph and its :func:`adjacency`."""
        ...

    def skip(self, steps: int) -> None:
        """Skip ``steps`` batches (resuming a run)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class FullBatch:
    """Every step sees the worker's whole graph (stateless)."""

    def __init__(self, data: Data, sparse: bool = True) -> None:
        self.data = data
        self.adj = adjacency(data, sparse)

    def next_batch(self) -> tuple[Data, Tensor]:
        return self.data, self.adj

    def skip(self, steps: int) -> None:
        """Nothing to skip: every step sees the same graph."""

    def state_dict(self) -> dict[str, Any]:
        return {}  # stateless

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore (see :meth:`state_dict`)."""


class ClusterBatches:
    """Cluster-GCN mini-batches of the worker's graph (see :class:`~gist.graph.ClusterBatcher`).

    ``parts`` is a precomputed METIS partition of ``data`` (shared by workers
    that hold the same graph); ``seed`` orders this worker's batches.
    """

    def __init__(
        self,
        data: Data,
        num_parts: int,
        parts_per_batch: int,
        seed: int,
        parts: Optional[Tensor] = None,
        sparse: bool = True,
    ) -> None:
        self.data = data
        self.sparse = sparse
        self.batcher = ClusterBatcher(data, num_parts, parts_per_batch, method="metis", seed=seed, parts=parts)

    def next_batch(self) -> tuple[Data, Tensor]:
        batch = self.batcher.next_batch()
        return batch, adjacency(batch, self.sparse)

    def skip(self, steps: int) -> None:
        self.batcher.skip(steps)

    def state_dict(self) -> dict[str, Any]:
        return self.batcher.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batcher.load_state_dict(state)
