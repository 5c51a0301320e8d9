"""What a worker trains on each step: its whole graph, or Cluster-GCN mini-batches of it."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import to_torch_csr_tensor

from ..errors import ConfigError
from ..nn.models import takes_normalized_adjacency
from .partition import ClusterBatcher


def adjacency(data: Data, sparse: bool = True, normalized: bool = False) -> Tensor:
    r"""What the model's message passing reads: ``edge_index``, or (``sparse``)
    the transposed adjacency as a ``torch.sparse_csr`` tensor, ``adj_t[i, j] = 1``
    for an edge ``j -> i``. Both give the same result; the CSR form runs
    sparse-dense matrix products instead of gather/scatter and is several
    times faster on wide inputs.

    ``normalized``: GCN's :math:`\hat A = D^{-1/2}(A + I)D^{-1/2}` as that CSR
    tensor (PyG's own ``gcn_norm``, as ``GCNConv`` computes it), for a
    :class:`~gist.nn.PrenormalizedGCN`."""
    if normalized and not sparse:
        raise ConfigError("the normalised adjacency is a sparse CSR matrix: it needs sparse_adjacency")
    if not sparse:
        return data.edge_index
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sparse CSR support is labelled beta
        adj = to_torch_csr_tensor(data.edge_index.flip(0), size=(data.num_nodes, data.num_nodes))
        if normalized:
            adj, _ = gcn_norm(adj, None, data.num_nodes, False, True, "source_to_target", data.x.dtype)
    return adj


def with_sparse_features(data: Data) -> Data:
    r"""``data`` (a shallow copy: the other tensors are shared) whose node
    features ``x`` are a ``torch.sparse_csr`` matrix. A model whose first
    layer computes :math:`XW` (``GCNConv``) then runs a sparse-dense product,
    :math:`O(\mathrm{nnz}(X)\,d)` instead of :math:`O(N F d)`: several times
    faster for bag-of-words features (Coauthor CS: 0.9% non-zero)."""
    out = copy.copy(data)
    if out.x.layout != torch.sparse_csr:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # sparse CSR support is labelled beta
            out.x = out.x.to_sparse_csr()
    return out


@dataclass(frozen=True)
class AdjacencyFormat:
    """Which :func:`adjacency` a model reads (see there)."""

    sparse: bool = True
    normalized: bool = False

    @classmethod
    def for_model(cls, model: nn.Module, sparse: bool = True) -> AdjacencyFormat:
        """The format ``model`` expects: normalised for a :class:`~gist.nn.PrenormalizedGCN`."""
        return cls(sparse, takes_normalized_adjacency(model))

    def of(self, data: Data) -> Tensor:
        """:func:`adjacency` of ``data`` in this format."""
        return adjacency(data, self.sparse, self.normalized)


SPARSE = AdjacencyFormat()
"""The default format: the raw graph as a sparse CSR matrix."""


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
    """Every step sees the worker's whole graph (stateless); its adjacency,
    in ``fmt``, is built once, and so are its features as a sparse matrix
    (``sparse_features``, :func:`with_sparse_features`)."""

    def __init__(self, data: Data, fmt: AdjacencyFormat = SPARSE, sparse_features: bool = False) -> None:
        self.data = with_sparse_features(data) if sparse_features else data
        self.adj = fmt.of(data)

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
    that hold the same graph); ``seed`` orders this worker's batches; with
    ``sparse_features`` each batch's features are a sparse matrix
    (:func:`with_sparse_features`).
    """

    def __init__(
        self,
        data: Data,
        num_parts: int,
        parts_per_batch: int,
        seed: int,
        parts: Optional[Tensor] = None,
        fmt: AdjacencyFormat = SPARSE,
        sparse_features: bool = False,
    ) -> None:
        self.data = data
        self.fmt = fmt
        self.sparse_features = sparse_features
        self.batcher = ClusterBatcher(data, num_parts, parts_per_batch, method="metis", seed=seed, parts=parts)

    def next_batch(self) -> tuple[Data, Tensor]:
        batch = self.batcher.next_batch()
        return with_sparse_features(batch) if self.sparse_features else batch, self.fmt.of(batch)

    def skip(self, steps: int) -> None:
        self.batcher.skip(steps)

    def state_dict(self) -> dict[str, Any]:
        return self.batcher.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batcher.load_state_dict(state)
