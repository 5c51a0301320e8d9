"""Graph partitioning, worker subgraphs and Cluster-GCN style mini-batches.

* :func:`to_csr` turns a PyG ``edge_index`` into the symmetric CSR arrays METIS
  expects.
* :func:`partition_nodes` splits the nodes into ``num_parts`` non-empty parts
  with METIS (through :mod:`pymetis`) or a seeded, balanced random assignment.
* :func:`worker_subgraph` builds the graph one worker holds in GIST's
  ``partitioned`` mode: its part's induced subgraph, optionally with a
  read-only halo.
* :class:`ClusterBatcher` yields Cluster-GCN mini-batches (unions of METIS
  parts) for the ``replicated`` mode on large graphs.

All randomness comes from explicitly seeded :class:`torch.Generator` objects
(or METIS' own seed option); the global RNG is never touched.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from ..errors import ConfigError
from ..registry import PARTITIONERS

__all__ = [
    "PARTITIONERS",
    "to_csr",
    "partition_nodes",
    "worker_subgraph",
    "ClusterBatcher",
]

_MASK_KEYS = ("train_mask", "val_mask", "test_mask")


# --------------------------------------------------------------------------- #
# CSR / partitioning
# --------------------------------------------------------------------------- #
def _check_edge_index(edge_index: Tensor, num_nodes: int) -> None:
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ConfigError(
            f"edge_index must be a tensor of shape [2, num_edges], got "
            f"{tuple(edge_index.shape) if isinstance(edge_index, Tensor) else type(edge_index)}"
        )
    if num_nodes < 0:
        raise ConfigError(f"num_nodes must be >= 0, got {num_nodes}")
    if edge_index.numel() > 0:
        lo, hi = int(edge_index.min()), int(edge_index.max())
        if lo < 0 or hi >= num_nodes:
            raise ConfigError(f"edge_index contains node ids outside [0, {num_nodes}): min={lo}, max={hi}")


def to_csr(edge_index: Tensor, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Convert ``edge_index`` to METIS-style CSR arrays ``(xadj, adjncy)``.

    The result is the adjacency of the *undirected* simple graph underlying
    ``edge_index``: every edge is stored in both directions, self loops are
    dropped and duplicates removed. Neighbours of node ``i`` are
    ``adjncy[xadj[i]:xadj[i + 1]]`` in ascending order.

    Args:
        edge_index: ``[2, E]`` long tensor (directed or undirected).
        num_nodes: number of nodes ``N``.

    Returns:
        ``xadj`` (``[N + 1]``) and ``adjncy`` (``[2 * |undirected edges|]``),
        both ``np.int64``.
    """
    _check_edge_index(edge_index, num_nodes)
    ei = edge_index.detach().cpu().numpy().astype(np.int64, copy=False)
    row, col = ei[0], ei[1]
    keep = row != col
    row, col = row[keep], col[keep]
    n = np.int64(num_nodes)
    keys = np.concatenate([row * n + col, col * n + row])
    del row, col, keep
    keys.sort()  # sorted by (row, col); np.sort + mask is much faster than np.unique here
    if keys.size:
        first = np.empty(keys.size, dtype=bool)
        first[0] = True
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
        keys = keys[first]
    src = keys // n if num_nodes > 0 else keys
    adjncy = (keys % n if num_nodes > 0 else keys).astype(np.int64, copy=False)
    xadj = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=num_nodes), out=xadj[1:])
    return xadj, adjncy


def _fix_empty_parts(parts: Tensor, num_parts: int) -> Tensor:
    """Make every part non-empty by moving single nodes out of the largest parts.

    For each empty part, in ascending id order, the node with the highest id in
    the currently largest part (lowest id among ties) moves to it. Needs
    ``num_parts <= num_nodes``, which guarantees the largest part has >= 2 nodes.
    """
    counts = torch.bincount(parts, minlength=num_parts)
    empty = (counts == 0).nonzero().flatten().tolist()
    for p in empty:
        q = int(torch.argmax(counts))  # first maximum -> lowest id among ties
        node = int((parts == q).nonzero().max())
        parts[node] = p
        counts[q] -= 1
        counts[p] += 1
    return parts


def partition_nodes(
    edge_index: Tensor,
    num_nodes: int,
    num_parts: int,
    method: str = "metis",
    seed: int = 0,
) -> Tensor:
    """Assign every node to one of ``num_parts`` non-empty parts.

    Args:
        edge_index: ``[2, E]`` long tensor; treated as undirected for METIS.
        num_nodes: number of nodes ``N``.
        num_parts: number of parts ``k`` (``1 <= k <= N``).
        method: ``"metis"`` (edge-cut minimising, via ``pymetis.part_graph``
            with METIS' ``seed`` option set to ``seed``; deterministic for a
            given seed and graph) or ``"random"`` (uniformly random balanced
            assignment: part sizes differ by at most one, drawn from a
            ``torch.Generator`` seeded with ``seed``).
        seed: seed for METIS or the random generator.

    Returns:
        ``[N]`` long tensor with part ids in ``[0, k)``.

    METIS may leave a part empty on tiny or disconnected graphs; such parts are
    filled deterministically by moving one node (the highest-id node of the
    currently largest part) into each of them, so every part is non-empty.

    The last :data:`PARTITION_CACHE_SIZE` partitions are kept, keyed by a
    digest of ``edge_index`` and the arguments: the runs of a sweep, or the
    set-up and the workers of one run, partition a graph once.
    """
    if isinstance(num_parts, bool) or not isinstance(num_parts, (int, np.integer)):
        raise ConfigError(f"num_parts must be an int, got {num_parts!r}")
    num_parts, num_nodes = int(num_parts), int(num_nodes)
    if method not in PARTITIONERS:
        raise ConfigError(f"unknown partition method {method!r}; expected one of {', '.join(PARTITIONERS)}")
    if num_parts < 1:
        raise ConfigError(f"num_parts must be >= 1, got {num_parts}")
    if num_parts > num_nodes:
        raise ConfigError(
            f"num_parts ({num_parts}) must not exceed num_nodes ({num_nodes}): every part must hold at least one node"
        )
    _check_edge_index(edge_index, num_nodes)
    if num_parts == 1:
        return torch.zeros(num_nodes, dtype=torch.long)
    key = (_fingerprint(edge_index), num_nodes, num_parts, method, int(seed))
    if key not in _PARTITIONS:
        _PARTITIONS[key] = _partition(edge_index, num_nodes, num_parts, method, int(seed))
        while len(_PARTITIONS) > PARTITION_CACHE_SIZE:
            _PARTITIONS.pop(next(iter(_PARTITIONS)))
    return _PARTITIONS[key].clone()


PARTITION_CACHE_SIZE = 8
"""How many partitions :func:`partition_nodes` keeps (a partition is a pure
function of the graph, the part count, the method and the seed: the runs of a
sweep on one graph compute each one once)."""
_PARTITIONS: dict[tuple[Any, ...], Tensor] = {}


def _fingerprint(edge_index: Tensor) -> str:
    """A digest of the edge list (``partition_nodes``' cache key)."""
    return hashlib.blake2b(edge_index.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()


def _partition(edge_index: Tensor, num_nodes: int, num_parts: int, method: str, seed: int) -> Tensor:
    """:func:`partition_nodes` without its cache."""
    if method == "random":
        gen = torch.Generator().manual_seed(int(seed))
        perm = torch.randperm(num_nodes, generator=gen)
        parts = torch.empty(num_nodes, dtype=torch.long)
        parts[perm] = torch.arange(num_nodes) % num_parts
        return parts

    import pymetis  # local import: only the METIS path needs it

    xadj, adjncy = to_csr(edge_index, num_nodes)
    idx_dtype = pymetis.zero_copy_dtype()
    adjacency = pymetis.CSRAdjacency(
        adj_starts=xadj.astype(idx_dtype, copy=False),
        adjacent=adjncy.astype(idx_dtype, copy=False),
    )
    result = pymetis.part_graph(num_parts, adjacency, options=pymetis.Options(seed=int(seed)))
    parts = torch.from_numpy(np.asarray(result.vertex_part, dtype=np.int64).copy())
    return _fix_empty_parts(parts, num_parts)


# --------------------------------------------------------------------------- #
# Subgraph construction
# --------------------------------------------------------------------------- #
def _build_subgraph(
    data: Data,
    node_idx: Tensor,
    edge_idx: Tensor,
    edge_index: Tensor,
    owned: Tensor,
) -> Data:
    """Assemble a new :class:`Data` from selected node and edge ids.

    Node-level tensors are gathered with ``node_idx``, edge-level tensors with
    ``edge_idx`` (gathers copy, so nothing aliases ``data``); masks in
    ``_MASK_KEYS`` (and any other bool node-level ``*_mask``) are AND-ed with
    ``owned``. ``n_id`` maps back to the original ids (composed with an
    existing ``data.n_id`` if present).
    """
    num_nodes = node_idx.numel()
    out = Data()
    for key, value in data.items():
        if key in ("edge_index", "owned", "num_nodes"):
            continue
        if isinstance(value, Tensor):
            if data.is_node_attr(key):
                dim = data.__cat_dim__(key, value)
                v = value.index_select(dim, node_idx.to(value.device))
                if key in _MASK_KEYS or (key.endswith("_mask") and v.dtype == torch.bool):
                    shape = [1] * v.dim()
                    shape[dim] = num_nodes
                    v = v & owned.to(v.device).view(shape)
                out[key] = v
            elif data.is_edge_attr(key):
                dim = data.__cat_dim__(key, value)
                out[key] = value.index_select(dim, edge_idx.to(value.device))
            else:
                out[key] = value.clone()
        else:
            out[key] = copy.copy(value)
    prev = data.get("n_id") if "n_id" in data else None
    out.n_id = prev.index_select(0, node_idx.to(prev.device)) if isinstance(prev, Tensor) else node_idx.clone()
    out.owned = owned
    out.edge_index = edge_index
    out.num_nodes = num_nodes
    return out


def worker_subgraph(data: Data, parts: Tensor, part: int, halo_hops: int = 0) -> Data:
    """The graph worker ``part`` holds in GIST's ``partitioned`` mode.

    Nodes are the part's own nodes (ascending original id) followed by, if
    ``halo_hops > 0``, its read-only halo: every node from which a message
    reaches an owned node within ``halo_hops`` hops, i.e. the sources of
    edges ``j -> i`` (PyG ``source_to_target`` flow, as
    ``torch_geometric.utils.k_hop_subgraph``), again in ascending id. On an
    undirected graph these are simply the k-hop neighbours. Edges are all
    edges of ``data`` with both ends among the kept nodes (halo-halo edges
    included), in their original order, relabelled to local ids.

    Returns a new :class:`Data` holding copies (never views) of every
    node-level tensor (``x``, ``y``, ...) sliced to the kept nodes, every
    edge-level tensor sliced to the kept edges, ``train_mask``/``val_mask``/
    ``test_mask`` (and any other bool node-level ``*_mask``) restricted to
    owned nodes (halo nodes are ``False``),
    ``n_id`` (original node ids, long) and ``owned`` (bool; all ``True`` when
    ``halo_hops == 0``).
    """
    if data.edge_index is None:
        raise ConfigError("data has no edge_index")
    num_nodes = int(data.num_nodes)
    edge_index = data.edge_index
    device = edge_index.device
    parts = torch.as_tensor(parts, device=device)
    if parts.dim() != 1 or parts.numel() != num_nodes:
        raise ConfigError(f"parts must have shape [{num_nodes}], got {tuple(parts.shape)}")
    if isinstance(halo_hops, bool) or not isinstance(halo_hops, (int, np.integer)) or halo_hops < 0:
        raise ConfigError(f"halo_hops must be an int >= 0, got {halo_hops!r}")
    part = int(part)
    own_mask = parts == part
    if part < 0 or not bool(own_mask.any()):
        raise ConfigError(f"part {part} has no nodes (part ids present: 0..{int(parts.max())})")

    keep = own_mask.clone()
    row, col = edge_index[0], edge_index[1]
    for _ in range(int(halo_hops)):
        reach = keep.clone()
        reach[row[keep[col]]] = True  # sources of edges into the current set
        if torch.equal(reach, keep):
            break
        keep = reach

    owned_ids = own_mask.nonzero().flatten()
    halo_ids = (keep & ~own_mask).nonzero().flatten()
    node_idx = torch.cat([owned_ids, halo_ids])
    owned = torch.zeros(node_idx.numel(), dtype=torch.bool, device=device)
    owned[: owned_ids.numel()] = True

    edge_idx = (keep[row] & keep[col]).nonzero().flatten()
    mapping = torch.full((num_nodes,), -1, dtype=torch.long, device=device)
    mapping[node_idx] = torch.arange(node_idx.numel(), device=device)
    sub_ei = mapping[edge_index.index_select(1, edge_idx)]
    return _build_subgraph(data, node_idx, edge_idx, sub_ei, owned)


# --------------------------------------------------------------------------- #
# Cluster-GCN mini-batches
# --------------------------------------------------------------------------- #
def _gather_ranges(ptr: Tensor, sel: Tensor, values: Tensor) -> Tensor:
    """Concatenate ``values[ptr[s]:ptr[s + 1]]`` for every ``s`` in ``sel`` (vectorised)."""
    starts = ptr[sel]
    sizes = ptr[sel + 1] - starts
    total = int(sizes.sum())
    if total == 0:
        return values.new_empty(0)
    out_starts = torch.cumsum(sizes, 0) - sizes
    idx = torch.repeat_interleave(starts - out_starts, sizes) + torch.arange(total, device=ptr.device)
    return values[idx]


class ClusterBatcher:
    """Cluster-GCN style mini-batches.

    The graph is partitioned once into ``num_parts`` parts (METIS or random,
    see :func:`partition_nodes`); each batch is the subgraph induced by the
    union of ``parts_per_batch`` parts drawn without replacement; an epoch
    visits every part once, in an order shuffled by the batcher's own
    ``torch.Generator`` seeded by ``seed`` (never the global RNG). Batches keep
    only edges inside the union (as Cluster-GCN). The last batch of an epoch
    holds ``num_parts % parts_per_batch`` parts when that is non-zero.

    Batches are :class:`Data` objects like :func:`worker_subgraph` returns:
    sliced copies of node/edge tensors, ``edge_index`` relabelled, ``n_id``
    (original ids; nodes grouped part by part in draw order, ascending id
    within a part) and ``owned`` (all ``True``).

    Per-part node lists and per-part edge lists (edges grouped by their
    source's part) are precomputed, so building a batch costs
    ``O(batch nodes + edges leaving the batch's parts + num_parts)`` in
    vectorised tensor ops.

    Args:
        data: the full graph.
        num_parts: number of clusters (``1 <= num_parts <= num_nodes``).
        parts_per_batch: clusters per batch (``1 <= parts_per_batch <= num_parts``).
        method: ``"metis"`` or ``"random"``.
        seed: seeds both the partition and the epoch shuffling.
        parts: a precomputed ``[N]`` partition into ``num_parts`` parts (then
            ``method`` is not used); lets several workers share one METIS run.
    """

    def __init__(
        self,
        data: Data,
        num_parts: int,
        parts_per_batch: int,
        method: str = "metis",
        seed: int = 0,
        parts: Optional[Tensor] = None,
    ) -> None:
        if data.edge_index is None:
            raise ConfigError("data has no edge_index")
        for name, v in (("num_parts", num_parts), ("parts_per_batch", parts_per_batch)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {v!r}")
        if parts_per_batch > num_parts:
            raise ConfigError(f"parts_per_batch ({parts_per_batch}) must not exceed num_parts ({num_parts})")
        self.data = data
        self.num_parts = int(num_parts)
        self.parts_per_batch = int(parts_per_batch)
        self.method = method
        self.seed = int(seed)
        num_nodes = int(data.num_nodes)
        edge_index = data.edge_index
        device = edge_index.device

        #: ``[N]`` part id of every node.
        if parts is None:
            parts = partition_nodes(edge_index, num_nodes, self.num_parts, method, self.seed)
        elif parts.shape != (num_nodes,) or int(parts.min()) < 0 or int(parts.max()) >= self.num_parts:
            raise ConfigError(f"parts must be a [num_nodes] tensor of ids in [0, {self.num_parts})")
        self.parts = parts.to(device=device, dtype=torch.long)

        # Nodes grouped by part (ascending id within a part) and each node's rank in its part.
        node_order = torch.sort(self.parts, stable=True).indices
        counts = torch.bincount(self.parts, minlength=self.num_parts)
        self._node_ptr = torch.zeros(self.num_parts + 1, dtype=torch.long, device=device)
        torch.cumsum(counts, 0, out=self._node_ptr[1:])
        self._node_order = node_order
        self._rank = torch.empty(num_nodes, dtype=torch.long, device=device)
        self._rank[node_order] = torch.arange(num_nodes, device=device) - self._node_ptr[self.parts[node_order]]

        # Edge ids grouped by the part of their source node (original order within a part).
        src_part = self.parts[edge_index[0]]
        self._edge_order = torch.sort(src_part, stable=True).indices
        self._edge_ptr = torch.zeros(self.num_parts + 1, dtype=torch.long, device=device)
        torch.cumsum(torch.bincount(src_part, minlength=self.num_parts), 0, out=self._edge_ptr[1:])
        del src_part

        self._generator = torch.Generator().manual_seed(self.seed)
        self._order: Tensor | None = None  # current epoch's part order
        self._pos = 0  # next batch index within the epoch
        self.epoch = -1  # index of the current epoch (-1 before the first)

    def __len__(self) -> int:
        """Batches per epoch: ``ceil(num_parts / parts_per_batch)``."""
        return math.ceil(self.num_parts / self.parts_per_batch)

    def part_nodes(self, part: int) -> Tensor:
        """Original ids of the nodes in ``part`` (ascending)."""
        return self._node_order[self._node_ptr[part] : self._node_ptr[part + 1]]

    def _start_epoch(self) -> None:
        self._order = torch.randperm(self.num_parts, generator=self._generator)
        self._pos = 0
        self.epoch += 1

    def __iter__(self) -> Iterator[Data]:
        """One epoch of batches.

        Starts a new epoch (a partially consumed :meth:`next_batch` epoch is
        abandoned) and shares state with :meth:`next_batch`, so
        :meth:`state_dict` taken mid-iteration resumes correctly.
        """
        if not (self._order is not None and self._pos == 0):
            self._start_epoch()
        for _ in range(len(self)):
            yield self.next_batch()

    def next_batch(self) -> Data:
        """The next batch of an endless stream; a new shuffled epoch starts when one ends."""
        if self._order is None or self._pos >= len(self):
            self._start_epoch()
        assert self._order is not None
        start = self._pos * self.parts_per_batch
        sel = self._order[start : start + self.parts_per_batch]
        self._pos += 1
        return self.batch_from_parts(sel)

    def skip(self, num_batches: int) -> None:
        """Advance the stream by ``num_batches`` without building them (resume)."""
        for _ in range(num_batches):
            if self._order is None or self._pos >= len(self):
                self._start_epoch()
            self._pos += 1

    def batch_from_parts(self, sel: Tensor) -> Data:
        """Subgraph induced by the union of the (distinct) parts in ``sel``, in that order."""
        device = self._node_ptr.device
        sel = torch.as_tensor(sel, dtype=torch.long, device=device).flatten()
        selected = torch.zeros(self.num_parts, dtype=torch.bool, device=device)
        selected[sel] = True
        if int(selected.sum()) != sel.numel():
            raise ConfigError("parts in a batch must be distinct")
        sizes = self._node_ptr[sel + 1] - self._node_ptr[sel]
        offset = torch.zeros(self.num_parts, dtype=torch.long, device=device)
        offset[sel] = torch.cumsum(sizes, 0) - sizes

        node_idx = _gather_ranges(self._node_ptr, sel, self._node_order)
        eid = _gather_ranges(self._edge_ptr, sel, self._edge_order)
        ei = self.data.edge_index.index_select(1, eid)
        keep = selected[self.parts[ei[1]]]
        eid, ei = eid[keep], ei[:, keep]
        local = offset[self.parts[ei]] + self._rank[ei]
        owned = torch.ones(node_idx.numel(), dtype=torch.bool, device=device)
        return _build_subgraph(self.data, node_idx, eid, local, owned)

    def state_dict(self) -> dict[str, Any]:
        """Generator state and position, enough to resume the exact batch stream."""
        return {
            "generator": self._generator.get_state(),
            "order": None if self._order is None else self._order.clone(),
            "pos": self._pos,
            "epoch": self.epoch,
            "num_parts": self.num_parts,
            "parts_per_batch": self.parts_per_batch,
            "method": self.method,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (from a batcher with the same configuration)."""
        for key in ("num_parts", "parts_per_batch", "method", "seed"):
            if key in state and state[key] != getattr(self, key):
                raise ConfigError(
                    f"state_dict {key}={state[key]!r} does not match this batcher's {getattr(self, key)!r}"
                )
        self._generator.set_state(state["generator"].clone())
        order = state["order"]
        self._order = None if order is None else order.clone()
        self._pos = int(state["pos"])
        self.epoch = int(state.get("epoch", -1))
