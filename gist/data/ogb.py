"""The OGB node-property graphs (ogbn-arxiv, ogbn-products) with their official split.

Files: ``ogb.nodeproppred.PygNodePropPredDataset``'s layout under
``root/ogbn_<name>/`` (or ``root/ogbn_<name>_pyg/``, which ogb prefers when it
exists): ``raw/*.csv.gz``, ``split/<type>/{train,valid,test}.csv.gz`` and
``RELEASE_v1.txt``. A folder without ``RELEASE_v1.txt`` is reported instead
of loaded (ogb would ask on the console whether to delete it), and ogb's
"download > 1 GB?" question is answered *yes* only during a download.
These datasets are scored by ``ogb.nodeproppred.Evaluator`` (metric
``"ogb:<name>"``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .dataset import NodeDataset, make_dataset
from .offline import DatasetFiles, DatasetNotFoundError, fetch

__all__ = ["OgbSpec", "load_ogb", "load_ogbn_arxiv", "load_ogbn_products"]

_RAW = ["edge.csv.gz", "node-feat.csv.gz", "node-label.csv.gz", "num-node-list.csv.gz", "num-edge-list.csv.gz"]


@dataclass(frozen=True)
class OgbSpec:
    """What differs between OGB node-property datasets."""

    name: str  # OGB's name, e.g. "ogbn-arxiv" (also the registry name)
    split: str  # split folder under split/
    download_name: str  # the zip's stem, e.g. "arxiv"
    extra_raw: tuple[str, ...] = ()  # raw files beyond the common ones
    undirected: bool = False  # make a directed graph undirected

    @property
    def url(self) -> str:
        return f"http://snap.stanford.edu/ogb/data/nodeproppred/{self.download_name}.zip"


ARXIV = OgbSpec("ogbn-arxiv", "time", "arxiv", ("node_year.csv.gz",), undirected=True)
PRODUCTS = OgbSpec("ogbn-products", "sales_ranking", "products")


def load_ogbn_arxiv(root: Path, seed: int) -> NodeDataset:
    """``ogbn-arxiv``: 169,343 papers, 40 subject areas, split by year; its
    directed citations are made undirected (``seed`` unused)."""
    return load_ogb(root, ARXIV)


def load_ogbn_products(root: Path, seed: int) -> NodeDataset:
    """``ogbn-products``: 2,449,029 products, 47 categories, split by sales rank (``seed`` unused)."""
    return load_ogb(root, PRODUCTS)


@contextlib.contextmanager
def _allow_large_download() -> Iterator[None]:
    """Answer ogb's "> 1 GB, proceed? (y/N)" with yes, only while this runs."""
    import ogb.nodeproppred.dataset_pyg as mod

    saved = mod.decide_download
    mod.decide_download = lambda url: True
    try:
        yield
    finally:
        mod.decide_download = saved


def load_ogb(root: Path, spec: OgbSpec) -> NodeDataset:
    """The OGB dataset ``spec`` under ``root`` with its official split."""
    from ogb.nodeproppred import PygNodePropPredDataset

    key = spec.name
    dir_name = key.replace("-", "_")
    if (root / f"{dir_name}_pyg").exists():  # ogb prefers this folder when present
        dir_name += "_pyg"
    folder = root / dir_name
    raw = [folder / "raw" / f for f in _RAW + list(spec.extra_raw)]
    split_dir = folder / "split" / spec.split
    splits = [split_dir / f"{s}.csv.gz" for s in ("train", "valid", "test")]
    release = folder / "RELEASE_v1.txt"
    files = DatasetFiles(
        key,
        folder,
        raw + splits,
        [folder / "raw" / "edge.csv.gz", folder / "raw" / "node-feat.csv.gz"],
        folder / "processed" / "geometric_data_processed.pt",
        splits + [release],
        spec.url,
    )

    if folder.is_dir() and not release.exists():
        has_files = any(p.is_file() for p in folder.rglob("*"))
        if has_files:
            raise DatasetNotFoundError(
                f"{folder} exists but has no RELEASE_v1.txt, so ogb would stop and ask on the "
                f"console whether to delete it. If the files there are a complete OGB copy, "
                f"create {release} (an empty file is fine); otherwise delete {folder} so the "
                f"dataset can be downloaded again. Expected files:\n" + "\n".join(f"  {p}" for p in files.expected),
                key,
                folder,
                files.expected,
            )
        # Only empty folders (left by an interrupted attempt): clear them so ogb won't ask.
        for p in sorted(folder.rglob("*"), key=lambda q: len(q.parts), reverse=True):
            p.rmdir()
        folder.rmdir()

    def construct() -> Any:
        with warnings.catch_warnings():  # ogb's torch.from_numpy on read-only pandas arrays
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            ds = PygNodePropPredDataset(key, root=str(root))
            return ds, ds.get_idx_split()

    dl = spec.download_name
    ds, idx = fetch(files, construct, _allow_large_download, extra_paths=[root / f"{dl}.zip", root / dl])
    d = ds[0]
    n = int(d.num_nodes)
    masks = []
    for part in ("train", "valid", "test"):
        m = torch.zeros(n, dtype=torch.bool)
        m[idx[part]] = True
        masks.append(m)
    edge_index = d.edge_index
    desc = f'official OGB "{spec.split}" split'
    if spec.undirected:
        from torch_geometric.utils import to_undirected

        edge_index = to_undirected(edge_index, num_nodes=n)
        desc += "; directed edges made undirected"
    return make_dataset(key, d.x, edge_index, d.y, masks, desc, metric=f"ogb:{key}")
