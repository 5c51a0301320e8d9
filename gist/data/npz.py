"""The Coauthor and Amazon co-purchase graphs (shchur/gnn-benchmark ``.npz`` files).

Files: PyG's ``Coauthor(root/"coauthor", name)`` and ``Amazon(root/"amazon",
name)`` layouts, one raw ``.npz`` file each under
``root/<coauthor|amazon>/<Name>/raw/``. No split ships with them: a seeded
random 60/20/20 per-node split (:func:`~gist.data.random_split` ``(N, seed)``)
is used, so the same seed gives the same split.
"""

from __future__ import annotations

from pathlib import Path

from .dataset import NodeDataset, make_dataset, random_split, split_name
from .offline import DatasetFiles, fetch

__all__ = [
    "load_amazon_computers",
    "load_amazon_photo",
    "load_coauthor_cs",
    "load_coauthor_physics",
    "load_npz",
]


def load_coauthor_cs(root: Path, seed: int) -> NodeDataset:
    """``coauthor-cs``: 18,333 authors, 15 fields of study."""
    return load_npz(root, seed, "coauthor-cs", "coauthor", "CS", "ms_academic_cs.npz")


def load_coauthor_physics(root: Path, seed: int) -> NodeDataset:
    """``coauthor-physics``: 34,493 authors, 5 fields of study."""
    return load_npz(root, seed, "coauthor-physics", "coauthor", "Physics", "ms_academic_phy.npz")


def load_amazon_computers(root: Path, seed: int) -> NodeDataset:
    """``amazon-computers``: 13,752 products, 10 categories."""
    return load_npz(root, seed, "amazon-computers", "amazon", "Computers", "amazon_electronics_computers.npz")


def load_amazon_photo(root: Path, seed: int) -> NodeDataset:
    """``amazon-photo``: 7,650 products, 8 categories."""
    return load_npz(root, seed, "amazon-photo", "amazon", "Photo", "amazon_electronics_photo.npz")


def load_npz(root: Path, seed: int, key: str, family: str, pyg_name: str, raw_name: str) -> NodeDataset:
    """PyG's ``Coauthor`` (``family="coauthor"``) or ``Amazon`` (``"amazon"``)
    dataset ``pyg_name`` as the dataset ``key``, split by ``seed``."""
    from torch_geometric.datasets import Amazon, Coauthor

    cls = {"coauthor": Coauthor, "amazon": Amazon}[family]
    base = root / family
    folder = base / pyg_name
    raw = [folder / "raw" / raw_name]
    files = DatasetFiles(key, folder, raw, raw, folder / "processed" / "data.pt", [], cls.url)
    ds = fetch(files, lambda: cls(str(base), pyg_name))
    d = ds[0]
    return make_dataset(key, d.x, d.edge_index, d.y, random_split(int(d.num_nodes), seed), split_name(seed))
