"""Per-part graph files for GIST's ``partitioned`` data mode.

A dataset is split once (``gist partition`` or :func:`ensure_partitions`) into
``num_parts`` files under ``<root>/partitions/<name>-<partitioner>-p<P>-s<seed>-h<halo>/``::

    part_0.pt ... part_<P-1>.pt   plain dicts of tensors (torch.load(weights_only=True))
    meta.json                     written last; its presence means "complete"

Part ``i`` is exactly :func:`gist.graph.worker_subgraph` ``(data, parts, i, halo_hops)``
for ``parts = partition_nodes(edge_index, N, P, partitioner, seed)``, restricted to
``x, edge_index, y, train_mask, val_mask, test_mask, n_id, owned``. Worker ``i``
calls :func:`load_part` ``(dir, i)``, which opens ``part_<i>.pt`` (and
``meta.json``) only, so the full graph never exists in a worker process.

``meta.json`` also describes each part (:func:`part_statistics`): its owned
nodes, the edges inside it and those it cuts, its boundary nodes, the
connected components of its induced subgraph (counted with networkx up to
:data:`NX_LIMIT` nodes or edges) and the label mix of its training nodes.
``gist partition`` prints them. Meta files written before these fields
existed still read; their parts simply lack them.

Every file is written to a temporary name and moved into place with
:func:`os.replace`; ``meta.json`` (with the sha256 of every part) comes last, so
an interrupted run never looks complete and a damaged part is detected on load.
:func:`ensure_partitions` serialises writers with an ``fcntl.flock`` on
``<dir>.lock``, removed when released (a local-filesystem lock: on network filesystems run
``gist partition`` once before starting the workers).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Data
from tqdm.auto import tqdm

from .. import data as datasets
from ..data import NodeDataset, default_root
from ..errors import ConfigError, MissingFileError
from ..files import atomic_write, exclusive_lock, fsync_dir
from .partition import PARTITIONERS, partition_nodes, worker_subgraph

__all__ = [
    "FORMAT_VERSION",
    "PART_KEYS",
    "PartInfo",
    "PartitionError",
    "NX_GRAPH_LIMIT",
    "NX_LIMIT",
    "part_statistics",
    "describe_parts",
    "partition_dir",
    "write_partitions",
    "ensure_partitions",
    "prepare_partitions",
    "read_meta",
    "load_part",
]

#: Version of the on-disk layout; bumped on incompatible changes.
FORMAT_VERSION = 1
#: Tensors stored in every part file, in this order.
PART_KEYS = ("x", "edge_index", "y", "train_mask", "val_mask", "test_mask", "n_id", "owned")
META_NAME = "meta.json"
#: Largest part (owned nodes, or edges inside it) whose connected components
#: :func:`part_statistics` counts with networkx (about 1 s per 200k edges);
#: larger parts get ``None``.
NX_LIMIT = 200_000
#: Largest graph (edges) in which :func:`part_statistics` counts components at all.
NX_GRAPH_LIMIT = 2_000_000
#: Classes named in a part's ``train_label_top`` (its most common training labels).
TOP_LABELS = 3
_EDGE_CHUNK = 1 << 24  # edges per step of the cut counts (bounds temporary memory)
_FORMAT_TAG = "gist-partitions"
_DIR_RE = re.compile(r"^(?P<dataset>.+)-(?P<partitioner>metis|random)-p(?P<parts>\d+)-s(?P<seed>-?\d+)-h(?P<halo>\d+)$")


class PartitionError(ConfigError):
    """A partition directory or part file is incomplete, corrupt or inconsistent."""


@dataclass
class PartInfo:
    """What ``meta.json`` says about a partitioned dataset.

    ``num_nodes`` is the full graph's node count. ``metric`` is the dataset's
    metric (``"accuracy"`` or ``"ogb:<name>"``); ``parts`` holds one summary
    dict per part (``num_nodes``, ``num_owned``, ``num_edges``, ``num_train``,
    ``file``, ``sha256``, ``bytes``; and, from files written since they
    exist, the fields of :func:`part_statistics`).
    """

    num_nodes: int
    num_features: int
    num_classes: int
    num_parts: int
    split: str
    dataset: str
    partitioner: str
    seed: int
    halo_hops: int
    metric: str = "accuracy"
    parts: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- paths / checks


def _norm_name(name: str) -> str:
    """Registry-style name (``gist.data`` normalisation): lower case, ``_`` -> ``-``."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    key = name.strip().lower().replace("_", "-")
    if "/" in key or "\\" in key or key in (".", "..") or "\0" in key:
        raise ValueError(f"dataset name {name!r} cannot be used as a folder name")
    return key


def _check_params(num_parts: Any, partitioner: Any, seed: Any, halo_hops: Any) -> None:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not is_int(num_parts) or num_parts < 1:
        raise ValueError(f"num_parts must be an int >= 1, got {num_parts!r}")
    if partitioner not in PARTITIONERS:
        raise ValueError(f"unknown partitioner {partitioner!r}; expected one of {', '.join(PARTITIONERS)}")
    if not is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if not is_int(halo_hops) or halo_hops < 0:
        raise ValueError(f"halo_hops must be an int >= 0, got {halo_hops!r}")


def _root_path(root: Path | str | None) -> Path:
    if root is None:
        root = default_root()
    return Path(root).expanduser().absolute()


def partition_dir(
    root: Path | str | None,
    dataset: str,
    num_parts: int,
    partitioner: str = "metis",
    seed: int = 0,
    halo_hops: int = 0,
) -> Path:
    """``<root>/partitions/<dataset>-<partitioner>-p<num_parts>-s<seed>-h<halo_hops>``.

    ``root=None`` means :func:`gist.data.default_root`; the dataset name is
    normalised as the registry does (``Cora`` and ``cora`` share a folder).
    """
    _check_params(num_parts, partitioner, seed, halo_hops)
    name = f"{_norm_name(dataset)}-{partitioner}-p{num_parts}-s{seed}-h{halo_hops}"
    return _root_path(root) / "partitions" / name


def _lock_path(part_dir: Path) -> Path:
    return part_dir.with_name(part_dir.name + ".lock")


def _part_name(index: int) -> str:
    return f"part_{index}.pt"


def _create_command(part_dir: Path, force: bool = False) -> str:
    """The ``gist partition`` command that (re)creates ``part_dir``."""
    m = _DIR_RE.match(part_dir.name)
    extra = " --force" if force else ""
    if m is None or part_dir.parent.name != "partitions":
        return f"gist partition --dataset NAME --parts N --root ROOT{extra}"
    return (
        f"gist partition --dataset {m['dataset']} --root {part_dir.parent.parent} "
        f"--parts {m['parts']} --partitioner {m['partitioner']} --seed {m['seed']} "
        f"--halo-hops {m['halo']}{extra}"
    )


# --------------------------------------------------------------------------- file helpers


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _compact(t: Tensor) -> Tensor:
    """A contiguous CPU tensor that owns exactly its storage (torch.save writes whole storages)."""
    t = t.detach().cpu().contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size() or t.storage_offset() != 0:
        t = t.clone()
    return t


def _locked(part_dir: Path) -> contextlib.AbstractContextManager[None]:
    """Exclusive lock on ``<part_dir>.lock`` (blocks until free; removed when released)."""
    lock = _lock_path(part_dir)
    lock.parent.mkdir(parents=True, exist_ok=True)
    return exclusive_lock(lock)


# --------------------------------------------------------------------------- statistics


def part_statistics(
    data: Data,
    parts: Tensor,
    num_parts: int,
    num_classes: int,
    nx_limit: int | None = None,
    nx_graph_limit: int | None = None,
) -> list[dict[str, Any]]:
    """What each part of the node partition ``parts`` holds, one dict per part.

    Edges are counted as ``edge_index`` stores them (each undirected edge in
    both directions, as ``num_edges`` is), so over all parts
    ``edges_inside + edges_cut`` sums to every edge, and ``edges_cut`` to the
    edges between parts:

    * ``edges_inside``: edges with both ends owned by the part;
    * ``edges_cut``: edges from the part's owned nodes to another part's;
    * ``num_boundary``: owned nodes with a neighbour in another part;
    * ``components``: connected components of the subgraph induced by the
      owned nodes (networkx), ``None`` for a part with more than ``nx_limit``
      (default :data:`NX_LIMIT`) owned nodes or edges inside, or in a graph
      of more than ``nx_graph_limit`` (:data:`NX_GRAPH_LIMIT`) edges (too
      slow to be worth it);
    * ``train_label_counts``: training nodes per class (``num_classes`` long);
    * ``train_label_top``: the :data:`TOP_LABELS` most common training labels
      as ``[label, share]`` pairs;
    * ``train_label_tv``: total-variation distance of the part's
      training-label distribution from the whole graph's (0 = the same mix,
      1 = disjoint labels; ``None`` without training nodes).
    """
    n = int(data.num_nodes)
    parts = parts.to(torch.long)
    edge_index = data.edge_index
    inside = torch.zeros(num_parts, dtype=torch.long)
    cut = torch.zeros(num_parts, dtype=torch.long)
    boundary = torch.zeros(n, dtype=torch.bool)
    for start in range(0, edge_index.size(1), _EDGE_CHUNK):
        src, dst = edge_index[0, start : start + _EDGE_CHUNK], edge_index[1, start : start + _EDGE_CHUNK]
        ps, pd = parts[src], parts[dst]
        crossing = ps != pd
        inside += torch.bincount(ps[~crossing], minlength=num_parts)
        cut += torch.bincount(ps[crossing], minlength=num_parts)
        boundary[src[crossing]] = True
        boundary[dst[crossing]] = True
    owned = torch.bincount(parts, minlength=num_parts)
    num_boundary = torch.bincount(parts[boundary], minlength=num_parts)

    train = data.train_mask & (data.y >= 0) & (data.y < num_classes)
    label_counts = torch.zeros(num_parts, num_classes, dtype=torch.long)
    label_counts.view(-1).index_add_(
        0, parts[train] * num_classes + data.y[train], torch.ones(int(train.sum()), dtype=torch.long)
    )
    whole = label_counts.sum(0).double()
    whole = whole / whole.sum().clamp_min(1)

    nx_limit = NX_LIMIT if nx_limit is None else nx_limit
    nx_graph_limit = NX_GRAPH_LIMIT if nx_graph_limit is None else nx_graph_limit
    small = [i for i in range(num_parts) if max(int(owned[i]), int(inside[i])) <= nx_limit]
    if edge_index.size(1) > nx_graph_limit:
        small = []
    components = _components(edge_index, parts, small)
    stats = []
    for i in range(num_parts):
        counts = label_counts[i]
        total = int(counts.sum())
        share = counts.double() / max(total, 1)
        top = torch.argsort(counts, descending=True, stable=True)[: min(TOP_LABELS, num_classes)]
        stats.append(
            {
                "num_owned": int(owned[i]),
                "edges_inside": int(inside[i]),
                "edges_cut": int(cut[i]),
                "num_boundary": int(num_boundary[i]),
                "components": components.get(i),
                "train_label_counts": counts.tolist(),
                "train_label_top": [[int(k), round(float(share[k]), 4)] for k in top if int(counts[k]) > 0],
                "train_label_tv": round(float((share - whole).abs().sum() / 2), 4) if total else None,
            }
        )
    return stats


def _components(edge_index: Tensor, parts: Tensor, which: list[int]) -> dict[int, int]:
    """Connected components of the subgraph each part in ``which`` induces (networkx)."""
    if not which:
        return {}
    import networkx as nx

    chosen = torch.zeros(int(parts.max()) + 1, dtype=torch.bool)
    chosen[which] = True
    ps = parts[edge_index[0]]
    keep = (ps == parts[edge_index[1]]) & chosen[ps]
    edges, edge_part = edge_index[:, keep], ps[keep]
    node_order = torch.argsort(parts, stable=True)
    nodes_of = torch.split(node_order, torch.bincount(parts, minlength=chosen.numel()).tolist())
    edge_order = torch.argsort(edge_part, stable=True)
    edges_of = torch.split(edges[:, edge_order], torch.bincount(edge_part, minlength=chosen.numel()).tolist(), dim=1)
    out = {}
    for i in which:
        graph = nx.Graph()
        graph.add_nodes_from(nodes_of[i].tolist())
        graph.add_edges_from(edges_of[i].t().tolist())
        out[i] = nx.number_connected_components(graph)
    return out


# --------------------------------------------------------------------------- writing


def write_partitions(
    dataset: NodeDataset,
    out_dir: Path | str,
    num_parts: int,
    partitioner: str = "metis",
    seed: int = 0,
    halo_hops: int = 0,
    progress: bool = True,
) -> Path:
    """Partition ``dataset`` and write one file per part plus ``meta.json`` into ``out_dir``.

    Nodes are split by :func:`gist.graph.partition_nodes` ``(edge_index, N,
    num_parts, partitioner, seed)``; part ``i`` is
    :func:`gist.graph.worker_subgraph` ``(data, parts, i, halo_hops)`` saved as
    ``part_<i>.pt`` holding a plain dict of the tensors in :data:`PART_KEYS`.
    Any previous content (``meta.json`` first, then part and stray temporary
    files) is removed before writing; each file is written to a temporary name
    and moved into place, and ``meta.json`` is written last. Not locked: use
    :func:`ensure_partitions` when several processes may write.
    """

    _check_params(num_parts, partitioner, seed, halo_hops)
    data = dataset.data
    num_nodes = int(data.num_nodes)
    if num_parts > num_nodes:
        raise ValueError(f"num_parts ({num_parts}) must not exceed the number of nodes ({num_nodes})")
    out = Path(out_dir).expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)

    # Invalidate first: from here until the new meta.json lands, the folder is "incomplete".
    meta_path = out / META_NAME
    meta_path.unlink(missing_ok=True)
    fsync_dir(out)
    for stale in list(out.glob("part_*.pt")) + list(out.glob(".*.tmp-*")):
        stale.unlink(missing_ok=True)

    parts = partition_nodes(data.edge_index, num_nodes, num_parts, partitioner, seed)
    stats = part_statistics(data, parts, num_parts, int(dataset.num_classes))
    summaries: list[dict[str, Any]] = []
    bar = tqdm(range(num_parts), desc=f"partition {dataset.name}", unit="part", disable=not progress, leave=False)
    for i in bar:
        sub = worker_subgraph(data, parts, i, halo_hops)
        payload = {k: _compact(sub[k]) for k in PART_KEYS}
        del sub
        path = out / _part_name(i)
        with atomic_write(path, durable=True) as tmp:
            torch.save(payload, tmp)
            digest = _sha256_file(tmp)
        summaries.append(
            {
                "index": i,
                "file": path.name,
                "num_nodes": int(payload["n_id"].numel()),
                "num_owned": int(payload["owned"].sum()),
                "num_edges": int(payload["edge_index"].size(1)),
                "num_train": int(payload["train_mask"].sum()),
                "num_val": int(payload["val_mask"].sum()),
                "num_test": int(payload["test_mask"].sum()),
                "bytes": path.stat().st_size,
                "sha256": digest,
                **stats[i],
            }
        )
        del payload
    bar.close()

    meta = {
        "format": _FORMAT_TAG,
        "format_version": FORMAT_VERSION,
        "dataset": dataset.name,
        "num_nodes": num_nodes,
        "num_edges": int(data.edge_index.size(1)),
        "num_features": int(dataset.num_features),
        "num_classes": int(dataset.num_classes),
        "metric": dataset.metric,
        "split": dataset.split,
        "num_parts": num_parts,
        "partitioner": partitioner,
        "seed": seed,
        "halo_hops": halo_hops,
        "keys": list(PART_KEYS),
        "nx_limit": NX_LIMIT,
        "nx_graph_limit": NX_GRAPH_LIMIT,
        "parts": summaries,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch_version": torch.__version__,
    }
    with atomic_write(meta_path, durable=True) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def prepare_partitions(
    root: Path | str | None,
    dataset_name: str,
    num_parts: int,
    partitioner: str,
    seed: int,
    halo_hops: int,
    progress: bool,
    force: bool = False,
) -> tuple[Path, bool]:
    """Write the partitions unless complete ones exist (``force``: rewrite anyway);
    return their directory and whether this call wrote them."""
    d = partition_dir(root, dataset_name, num_parts, partitioner, seed, halo_hops)
    if not force and (d / META_NAME).is_file():
        _check_matches(read_meta(d), d, num_parts, partitioner, seed, halo_hops)
        return d, False
    with _locked(d):
        if not force and (d / META_NAME).is_file():  # another process finished meanwhile
            _check_matches(read_meta(d), d, num_parts, partitioner, seed, halo_hops)
            return d, False
        ds = datasets.load_dataset(dataset_name, root=_root_path(root), seed=seed)
        write_partitions(ds, d, num_parts, partitioner, seed, halo_hops, progress)
        return d, True


def _check_matches(info: PartInfo, d: Path, num_parts: int, partitioner: str, seed: int, halo_hops: int) -> None:
    got = (info.num_parts, info.partitioner, info.seed, info.halo_hops)
    want = (num_parts, partitioner, seed, halo_hops)
    if got != want:
        raise PartitionError(
            f"{d / META_NAME} describes (parts, partitioner, seed, halo_hops)={got}, expected "
            f"{want}; rewrite it with: {_create_command(d, force=True)}"
        )


def ensure_partitions(
    root: Path | str | None,
    dataset_name: str,
    num_parts: int,
    partitioner: str = "metis",
    seed: int = 0,
    halo_hops: int = 0,
    progress: bool = True,
) -> Path:
    """Return :func:`partition_dir`, writing the partitions first if ``meta.json`` is missing.

    Writing loads the full dataset (``gist.data.load_dataset(dataset_name,
    root=root, seed=seed)``) in *this* process, so in a distributed run let one
    rank (or ``gist partition``) do it. Concurrent callers are serialised by an
    exclusive ``flock`` on ``<dir>.lock``: one writes, the others wait and then
    reuse its files.
    """
    return prepare_partitions(root, dataset_name, num_parts, partitioner, seed, halo_hops, progress)[0]


# --------------------------------------------------------------------------- reading


def _meta_dict(part_dir: Path) -> dict[str, Any]:
    path = part_dir / META_NAME
    if not path.is_file():
        if not part_dir.is_dir():
            state = "does not exist"
        elif any(part_dir.glob("part_*.pt")) or any(part_dir.glob(".*.tmp-*")):
            state = f"is incomplete (no {META_NAME}: an interrupted write?)"
        else:
            state = f"has no {META_NAME}"
        raise MissingFileError(
            f"partition folder {part_dir} {state}; expected {path}. "
            f"Create it with: {_create_command(part_dir, force=part_dir.is_dir())}"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PartitionError(
            f"cannot read {path} ({exc}); rewrite it with: {_create_command(part_dir, force=True)}"
        ) from exc
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT_TAG:
        raise PartitionError(
            f"{path} is not a gist partition meta file; rewrite it with: {_create_command(part_dir, force=True)}"
        )
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path} has partition format version {version!r}, this gist reads version "
            f"{FORMAT_VERSION}; rewrite it with: {_create_command(part_dir, force=True)}"
        )
    return meta


def read_meta(part_dir: Path | str) -> PartInfo:
    """Read ``<part_dir>/meta.json``.

    Raises ``FileNotFoundError`` (naming the expected path and the ``gist
    partition`` command that creates it) when the folder is missing or
    incomplete, ``ValueError`` on a format-version mismatch and
    :class:`PartitionError` on an unreadable or malformed file.
    """
    d = Path(part_dir).expanduser().absolute()
    meta = _meta_dict(d)
    try:
        parts = meta["parts"]
        info = PartInfo(
            num_nodes=int(meta["num_nodes"]),
            num_features=int(meta["num_features"]),
            num_classes=int(meta["num_classes"]),
            num_parts=int(meta["num_parts"]),
            split=str(meta["split"]),
            dataset=str(meta["dataset"]),
            partitioner=str(meta["partitioner"]),
            seed=int(meta["seed"]),
            halo_hops=int(meta["halo_hops"]),
            metric=str(meta.get("metric", "accuracy")),
            parts=[dict(p) for p in parts],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PartitionError(
            f"{d / META_NAME} is malformed ({exc!r}); rewrite it with: {_create_command(d, force=True)}"
        ) from exc
    if len(info.parts) != info.num_parts:
        raise PartitionError(
            f"{d / META_NAME} lists {len(info.parts)} parts but num_parts="
            f"{info.num_parts}; rewrite it with: {_create_command(d, force=True)}"
        )
    return info


def load_part(part_dir: Path | str, index: int, verify: bool = True) -> Data:
    """Load part ``index`` alone as a :class:`~torch_geometric.data.Data`.

    Opens only ``meta.json`` and ``part_<index>.pt`` (``torch.load(...,
    weights_only=True)``). With ``verify`` the file's sha256 is checked against
    ``meta.json`` first. Returns ``Data(x, edge_index, y, train_mask, val_mask,
    test_mask, n_id, owned)`` with ``num_nodes`` set: owned nodes first
    (ascending original id), then halo nodes; ``n_id`` maps to original ids.

    Raises ``ValueError`` for an index out of range and :class:`PartitionError`
    (a ``ValueError``) for a missing, damaged or inconsistent part file; both
    name the file and the ``gist partition`` command that rewrites it.
    """
    d = Path(part_dir).expanduser().absolute()
    info = read_meta(d)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < info.num_parts:
        raise ValueError(f"part index {index!r} out of range: {d} holds parts 0..{info.num_parts - 1}")
    entry = info.parts[index]
    path = d / _part_name(index)
    fix = f"re-run `{_create_command(d, force=True)}`"
    if not path.is_file():
        raise PartitionError(f"part file {path} is missing; {fix}")
    if verify:
        digest = _sha256_file(path)
        if digest != entry.get("sha256"):
            raise PartitionError(
                f"part file {path} is corrupt (sha256 {digest} does not match {META_NAME}'s "
                f"{entry.get('sha256')}); {fix}"
            )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated / not a torch file / unsafe content
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PartitionError(f"part file {path} cannot be loaded ({type(exc).__name__}: {first}); {fix}") from exc
    if (
        not isinstance(payload, dict)
        or set(payload) != set(PART_KEYS)
        or not all(isinstance(v, Tensor) for v in payload.values())
    ):
        raise PartitionError(f"part file {path} does not hold the expected tensors {', '.join(PART_KEYS)}; {fix}")
    n = int(payload["n_id"].numel())
    if n != entry.get("num_nodes", n) or payload["x"].size(0) != n or payload["y"].size(0) != n:
        raise PartitionError(f"part file {path} is inconsistent with {META_NAME}; {fix}")
    data = Data(**{k: payload[k] for k in PART_KEYS})
    data.num_nodes = n
    return data


def describe_parts(info: PartInfo) -> list[str]:
    """``gist partition``'s summary of ``info``: one line per part, then the
    edges between parts (edges counted as ``edge_index`` stores them, both
    directions). Parts written before :func:`part_statistics` existed get the
    old line and a note that ``--force`` adds the rest."""
    lines, skipped = [], False
    for part in info.parts:
        line = f"  part {part['index']}: {part['num_nodes']} nodes ({part['num_owned']} owned"
        if "edges_cut" not in part:
            lines.append(f"{line}), {part['num_edges']} edges, {part['num_train']} train nodes")
            continue
        components = part["components"]
        skipped |= components is None
        counted = "—" if components is None else components
        tv = part["train_label_tv"]
        labels = ", ".join(f"{label}: {share:.0%}" for label, share in part["train_label_top"])
        lines.append(
            f"{line}, {part['num_boundary']} on the boundary), {part['edges_inside']} edges inside, "
            f"{part['edges_cut']} cut, {counted} component{'' if components == 1 else 's'}; "
            f"{part['num_train']} train nodes"
            + ("" if tv is None else f" (labels {labels}; TV {tv:.3f} from all train nodes)")
        )
    if not info.parts:
        return lines
    if all("edges_cut" in p for p in info.parts):
        cut = sum(p["edges_cut"] for p in info.parts)
        total = cut + sum(p["edges_inside"] for p in info.parts)
        lines.append(f"edges between parts: {cut} of {total} ({cut / max(total, 1):.1%})")
    else:
        lines.append("(written by an older gist: --force rewrites them with cut edges, boundary nodes and components)")
    if skipped:
        lines.append(
            f"—: components not counted (networkx is skipped above {NX_LIMIT:,} owned nodes or edges "
            f"inside one part, or {NX_GRAPH_LIMIT:,} edges in the graph)"
        )
    return lines
