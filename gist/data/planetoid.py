"""The Planetoid citation graphs (Cora, CiteSeer, PubMed) with their public split.

Files: PyG's ``Planetoid(root/"planetoid", name)`` layout, the eight raw
``ind.<name>.*`` files of kimiyoung/planetoid under
``root/planetoid/<Name>/raw/``. A raw file that does not read is named in the
:class:`~gist.data.DatasetCorruptError` (each is read as PyG does).
"""

from __future__ import annotations

from pathlib import Path

from .dataset import NodeDataset, make_dataset
from .offline import DatasetFiles, fetch

__all__ = ["load_citeseer", "load_cora", "load_planetoid", "load_pubmed"]

_RAW_SUFFIXES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


def load_cora(root: Path, seed: int) -> NodeDataset:
    """``cora``: 2,708 papers, 7 classes, public 140/500/1000 split (``seed`` unused)."""
    return load_planetoid(root, "cora", "Cora")


def load_citeseer(root: Path, seed: int) -> NodeDataset:
    """``citeseer``: 3,327 papers, 6 classes, public 120/500/1000 split (``seed`` unused)."""
    return load_planetoid(root, "citeseer", "CiteSeer")


def load_pubmed(root: Path, seed: int) -> NodeDataset:
    """``pubmed``: 19,717 papers, 3 classes, public 60/500/1000 split (``seed`` unused)."""
    return load_planetoid(root, "pubmed", "PubMed")


def load_planetoid(root: Path, key: str, pyg_name: str) -> NodeDataset:
    """PyG's ``Planetoid(root/"planetoid", pyg_name)`` as the dataset ``key``."""
    from torch_geometric.datasets import Planetoid

    base = root / "planetoid"
    folder = base / pyg_name
    raw = [folder / "raw" / f"ind.{pyg_name.lower()}.{s}" for s in _RAW_SUFFIXES]
    files = DatasetFiles(
        key, folder, raw, raw, folder / "processed" / "data.pt", [], Planetoid.url, check_raw=_read_raw_file
    )
    ds = fetch(files, lambda: Planetoid(str(base), pyg_name))
    d = ds[0]
    return make_dataset(key, d.x, d.edge_index, d.y, (d.train_mask, d.val_mask, d.test_mask), "public Planetoid split")


def _read_raw_file(path: Path) -> None:
    """Read one raw Planetoid file as PyG does (``read_file``)."""
    from torch_geometric.io.planetoid import read_file

    prefix, name = path.name[len("ind.") :].split(".", 1)
    read_file(str(path.parent), prefix, name)
