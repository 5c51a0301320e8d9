"""Tests for gist.data: CSBM, splits, registry, offline behaviour, OGB layout, real data."""

from __future__ import annotations

import gzip
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_data_dir
from torch_geometric.utils import contains_self_loops, is_undirected

import gist.data as gd
from gist.data import (
    DatasetNotFoundError,
    NodeDataset,
    available_datasets,
    default_root,
    load_dataset,
    make_csbm,
    random_split,
    register_dataset,
)
from gist.graph import partition_nodes


def _assert_masks_partition(d) -> None:
    total = d.train_mask.long() + d.val_mask.long() + d.test_mask.long()
    assert torch.equal(total, torch.ones_like(total)), "masks must be disjoint and cover all nodes"


@pytest.fixture
def no_prompt(monkeypatch):
    """Fail the test if ogb (or anyone) asks on the console."""
    import builtins

    import ogb.nodeproppred.dataset_pyg as ogb_mod

    calls: list[str] = []

    def fail(prompt=""):
        calls.append(str(prompt))
        raise AssertionError(f"console prompt: {prompt!r}")

    # A module global shadows builtins for ogb's own `input(...)` calls, even
    # while gist.data swaps builtins.input.
    monkeypatch.setattr(ogb_mod, "input", fail, raising=False)
    monkeypatch.setattr(builtins, "input", fail)
    return calls


# --------------------------------------------------------------------------- CSBM


def test_csbm_deterministic_per_seed():
    a, b = make_csbm(num_nodes=600, seed=3), make_csbm(num_nodes=600, seed=3)
    for key in ("x", "edge_index", "y", "train_mask", "val_mask", "test_mask"):
        assert torch.equal(a.data[key], b.data[key]), key
    c = make_csbm(num_nodes=600, seed=4)
    assert not torch.equal(a.data.x, c.data.x)
    assert not torch.equal(a.data.y, c.data.y)
    assert not torch.equal(a.data.train_mask, c.data.train_mask)


@pytest.mark.parametrize("homophily", [0.8, 0.2])
def test_csbm_shapes_degree_homophily(homophily):
    n, c, f = 3000, 4, 16
    ds = make_csbm(num_nodes=n, num_classes=c, num_features=f, avg_degree=10.0, homophily=homophily, seed=0)
    d = ds.data
    assert isinstance(ds, NodeDataset) and ds.name == "csbm" and ds.metric == "accuracy"
    assert (ds.num_features, ds.num_classes, ds.num_nodes) == (f, c, n)
    assert d.x.shape == (n, f) and d.x.dtype == torch.float32
    assert d.y.shape == (n,) and d.y.dtype == torch.long
    assert int(d.y.min()) >= 0 and int(d.y.max()) < c
    assert d.edge_index.dtype == torch.long
    assert is_undirected(d.edge_index) and not contains_self_loops(d.edge_index)
    assert d.edge_index.unique(dim=1).size(1) == d.edge_index.size(1)  # no duplicates
    assert 9.0 < d.edge_index.size(1) / n <= 10.0
    same = (d.y[d.edge_index[0]] == d.y[d.edge_index[1]]).float().mean().item()
    assert abs(same - homophily) < 0.04
    _assert_masks_partition(d)
    assert abs(d.train_mask.sum().item() - 0.6 * n) <= 1
    assert abs(d.val_mask.sum().item() - 0.2 * n) <= 1
    assert "60/20/20" in ds.split and "seed=0" in ds.split


def test_csbm_communities_are_local_and_keep_homophily():
    """With communities, most edges stay inside a community (so METIS parts keep them
    and hold every class); without, the graph is exactly the plain one."""
    plain = make_csbm(num_nodes=3000, seed=2).data
    same = make_csbm(num_nodes=3000, seed=2, communities=0, locality=0.7).data
    assert torch.equal(plain.edge_index, same.edge_index) and torch.equal(plain.x, same.x)
    ds = make_csbm(num_nodes=3000, num_classes=5, seed=2, communities=30, locality=0.8, homophily=0.6)
    d = ds.data
    assert is_undirected(d.edge_index) and not contains_self_loops(d.edge_index)
    assert d.edge_index.unique(dim=1).size(1) == d.edge_index.size(1)
    homophily = (d.y[d.edge_index[0]] == d.y[d.edge_index[1]]).float().mean().item()
    assert abs(homophily - 0.6) < 0.06  # communities are drawn apart from classes
    for graph, low, high in ((plain, 0.0, 0.6), (d, 0.75, 1.0)):
        parts = partition_nodes(graph.edge_index, 3000, 8, "metis", 0)
        kept = (parts[graph.edge_index[0]] == parts[graph.edge_index[1]]).float().mean().item()
        assert low <= kept <= high, kept
    parts = partition_nodes(d.edge_index, 3000, 8, "metis", 0)
    for i in range(8):  # every part holds every class, none dominating
        counts = torch.bincount(d.y[parts == i], minlength=5)
        assert counts.min() > 0 and counts.max() < 0.4 * counts.sum()


def test_csbm_signal_separates_classes():
    d = make_csbm(num_nodes=2000, num_classes=3, num_features=32, signal=3.0, seed=1).data
    means = torch.stack([d.x[d.y == k].mean(0) for k in range(3)])
    # nearest class mean classifies almost all nodes when the signal is strong
    pred = torch.cdist(d.x, means).argmin(1)
    assert (pred == d.y).float().mean() > 0.9
    d0 = make_csbm(num_nodes=2000, num_classes=3, num_features=32, signal=0.0, seed=1).data
    assert d0.x.mean().abs() < 0.05 and abs(d0.x.std().item() - 1.0) < 0.05


def test_csbm_large_is_fast():
    t = time.perf_counter()
    ds = make_csbm(num_nodes=100_000, num_features=64, seed=0)
    assert time.perf_counter() - t < 10.0
    assert ds.data.num_nodes == 100_000


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_nodes=1),
        dict(num_nodes=0),
        dict(num_nodes=10.5),
        dict(num_classes=1),
        dict(num_nodes=5, num_classes=6),
        dict(num_features=0),
        dict(avg_degree=0),
        dict(avg_degree=-1.0),
        dict(num_nodes=10, num_classes=2, avg_degree=20),
        dict(homophily=1.5),
        dict(homophily=-0.1),
        dict(homophily=float("nan")),
        dict(signal=-1.0),
        dict(signal=float("inf")),
        dict(seed=-1),
        dict(seed=1.5),
        dict(communities=-1),
        dict(communities=2.5),
        dict(locality=1.5),
        dict(locality=float("nan")),
    ],
)
def test_csbm_bad_args(kwargs):
    with pytest.raises(ValueError):
        make_csbm(**kwargs)


def test_random_split():
    tr, va, te = random_split(1000, seed=0)
    assert tr.dtype == torch.bool and tr.shape == (1000,)
    total = tr.long() + va.long() + te.long()
    assert torch.equal(total, torch.ones(1000, dtype=torch.long))
    assert (tr.sum().item(), va.sum().item(), te.sum().item()) == (600, 200, 200)
    assert torch.equal(random_split(1000, seed=0)[0], tr)
    assert not torch.equal(random_split(1000, seed=1)[0], tr)
    tr, va, te = random_split(10, seed=0, train=0.5, val=0.5)
    assert (tr.sum().item(), va.sum().item(), te.sum().item()) == (5, 5, 0)
    for bad in [
        dict(num_nodes=0, seed=0),
        dict(num_nodes=10, seed=0, train=0.0),
        dict(num_nodes=10, seed=0, train=0.8, val=0.3),
        dict(num_nodes=10, seed=0, val=-0.1),
    ]:
        with pytest.raises(ValueError):
            random_split(**bad)


# --------------------------------------------------------------------------- registry


def test_registry_names_and_csbm_default():
    names = available_datasets()
    for n in [
        "csbm",
        "cora",
        "citeseer",
        "pubmed",
        "coauthor-cs",
        "coauthor-physics",
        "amazon-computers",
        "amazon-photo",
        "ogbn-arxiv",
        "ogbn-products",
    ]:
        assert n in names
    ds = load_dataset("csbm", root="/nonexistent/never/used", seed=5, num_nodes=300, num_features=8)
    ref = make_csbm(num_nodes=300, num_features=8, seed=5)
    assert torch.equal(ds.data.x, ref.data.x) and ds.data.x.shape == (300, 8)
    assert load_dataset("CSBM", num_nodes=50).num_nodes == 50  # case-insensitive


def test_unknown_dataset_lists_available():
    with pytest.raises(ValueError) as err:
        load_dataset("no-such-graph")
    msg = str(err.value)
    assert "no-such-graph" in msg
    for n in available_datasets():
        assert n in msg


@pytest.fixture
def recording_loader():
    seen = {}

    def loader(root: Path, seed: int, **kwargs) -> NodeDataset:
        seen.update(root=root, seed=seed, kwargs=kwargs)
        return make_csbm(num_nodes=40, num_features=4, seed=seed)

    register_dataset("test-recorder", loader)
    yield seen
    gd.DATASETS.unregister("test-recorder")


def test_root_override_argument_and_env(recording_loader, tmp_path, monkeypatch):
    monkeypatch.delenv(gd.DEFAULT_ROOT_ENV, raising=False)
    assert default_root() == Path("datasets")
    load_dataset("test-recorder")
    assert recording_loader["root"] == Path("datasets").absolute()

    load_dataset("test-recorder", root=tmp_path / "arg", seed=7, foo=1)
    assert recording_loader == {"root": tmp_path / "arg", "seed": 7, "kwargs": {"foo": 1}}

    monkeypatch.setenv(gd.DEFAULT_ROOT_ENV, str(tmp_path / "env"))
    assert default_root() == tmp_path / "env"
    load_dataset("test-recorder")
    assert recording_loader["root"] == tmp_path / "env"
    load_dataset("test-recorder", root=tmp_path / "arg2")  # argument beats env
    assert recording_loader["root"] == tmp_path / "arg2"


def test_register_validates():
    with pytest.raises(ValueError):
        register_dataset("", lambda root, seed: None)
    with pytest.raises(ValueError):
        register_dataset("x-not-callable", 3)


# --------------------------------------------------------------------------- missing files

_MISSING_CASES = {
    "cora": [
        "planetoid/Cora/raw/ind.cora.x",
        "planetoid/Cora/raw/ind.cora.test.index",
        "planetoid/Cora/raw/ind.cora.graph",
    ],
    "pubmed": ["planetoid/PubMed/raw/ind.pubmed.ally"],
    "coauthor-physics": ["coauthor/Physics/raw/ms_academic_phy.npz"],
    "amazon-photo": ["amazon/Photo/raw/amazon_electronics_photo.npz"],
    "ogbn-arxiv": [
        "ogbn_arxiv/raw/edge.csv.gz",
        "ogbn_arxiv/raw/node-feat.csv.gz",
        "ogbn_arxiv/raw/node-label.csv.gz",
        "ogbn_arxiv/raw/num-node-list.csv.gz",
        "ogbn_arxiv/raw/num-edge-list.csv.gz",
        "ogbn_arxiv/raw/node_year.csv.gz",
        "ogbn_arxiv/split/time/train.csv.gz",
        "ogbn_arxiv/split/time/valid.csv.gz",
        "ogbn_arxiv/split/time/test.csv.gz",
        "ogbn_arxiv/RELEASE_v1.txt",
    ],
    "ogbn-products": [
        "ogbn_products/raw/edge.csv.gz",
        "ogbn_products/split/sales_ranking/test.csv.gz",
        "ogbn_products/RELEASE_v1.txt",
    ],
}


@pytest.mark.parametrize("offline", [True, False])
@pytest.mark.parametrize("name", sorted(_MISSING_CASES))
def test_missing_files_raise_fast(name, offline, tmp_path, monkeypatch, no_prompt):
    if offline:
        monkeypatch.setenv(gd.OFFLINE_ENV, "1")
    else:
        monkeypatch.delenv(gd.OFFLINE_ENV, raising=False)
    root = tmp_path / "data"
    for _attempt in range(2):  # a failed attempt must not leave a state that prompts later
        t = time.perf_counter()
        with pytest.raises(DatasetNotFoundError) as err:
            load_dataset(name, root=root)
        assert time.perf_counter() - t < 30
        msg = str(err.value)
        for rel in _MISSING_CASES[name]:
            assert str(root / rel) in msg, rel
        assert str(err.value.folder) in msg and err.value.folder.is_absolute()
        assert all(p.is_absolute() for p in err.value.expected_files)
        assert isinstance(err.value, FileNotFoundError)
    assert not root.exists()  # nothing left behind
    assert no_prompt == []


@pytest.mark.parametrize("name", ["cora", "coauthor-cs", "ogbn-arxiv"])
def test_failed_download_attempt_is_converted_and_cleaned(name, tmp_path, monkeypatch, no_prompt):
    """Force the loader's own download (host 'resolves') so its failure path runs."""
    monkeypatch.delenv(gd.OFFLINE_ENV, raising=False)
    monkeypatch.setattr(gd.offline, "_host_resolves", lambda *a, **k: True)
    root = tmp_path / "data"
    root.mkdir()
    t = time.perf_counter()
    with pytest.raises(DatasetNotFoundError, match="download failed"):
        load_dataset(name, root=root)
    assert time.perf_counter() - t < 30
    assert list(root.iterdir()) == []
    assert no_prompt == []
    assert socket.getdefaulttimeout() is None


def test_hanging_server_times_out(tmp_path, monkeypatch, no_prompt):
    """A host that accepts but never answers hits the per-operation timeout."""
    from torch_geometric.datasets import Coauthor, Planetoid

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    try:
        port = srv.getsockname()[1]
        monkeypatch.delenv(gd.OFFLINE_ENV, raising=False)
        monkeypatch.setattr(gd.offline, "_DOWNLOAD_SOCKET_TIMEOUT", 1.0)
        monkeypatch.setattr(Planetoid, "url", f"http://127.0.0.1:{port}/p")
        monkeypatch.setattr(Coauthor, "url", f"http://127.0.0.1:{port}/c/")
        for name in ["cora", "coauthor-cs"]:
            t = time.perf_counter()
            with pytest.raises(DatasetNotFoundError, match="download failed"):
                load_dataset(name, root=tmp_path)
            assert time.perf_counter() - t < 15
    finally:
        srv.close()


# --------------------------------------------------------------------------- tiny OGB


def _write_csv_gz(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        for r in rows:
            f.write((",".join(str(v) for v in r) if isinstance(r, (list, tuple, np.ndarray)) else str(r)) + "\n")


def write_tiny_ogb(
    root: Path,
    name: str = "ogbn-arxiv",
    n: int = 50,
    f: int = 8,
    c: int = 3,
    e: int = 120,
    release: bool = True,
    seed: int = 0,
) -> dict:
    """Write a tiny node-property dataset in OGB's exact raw layout under ``root``."""
    split_type = {"ogbn-arxiv": "time", "ogbn-products": "sales_ranking"}[name]
    rng = np.random.default_rng(seed)
    base = root / name.replace("-", "_")
    src = rng.integers(0, n, e)
    dst = (src + rng.integers(1, n, e)) % n  # no self loops
    x = rng.standard_normal((n, f)).astype(np.float32)
    y = rng.integers(0, c, n)
    y[:c] = np.arange(c)  # every class present
    _write_csv_gz(base / "raw" / "edge.csv.gz", [[int(a), int(b)] for a, b in zip(src, dst)])
    _write_csv_gz(base / "raw" / "node-feat.csv.gz", [[f"{v:.6f}" for v in row] for row in x])
    _write_csv_gz(base / "raw" / "node-label.csv.gz", [int(v) for v in y])
    _write_csv_gz(base / "raw" / "num-node-list.csv.gz", [n])
    _write_csv_gz(base / "raw" / "num-edge-list.csv.gz", [e])
    if name == "ogbn-arxiv":
        _write_csv_gz(base / "raw" / "node_year.csv.gz", [int(v) for v in rng.integers(1990, 2020, n)])
    perm = rng.permutation(n)
    parts = {"train": perm[: n * 6 // 10], "valid": perm[n * 6 // 10 : n * 8 // 10], "test": perm[n * 8 // 10 :]}
    for k, idx in parts.items():
        _write_csv_gz(base / "split" / split_type / f"{k}.csv.gz", [int(i) for i in idx])
    if release:
        (base / "RELEASE_v1.txt").write_text("")
    return dict(base=base, x=x, y=y, src=src, dst=dst, parts=parts)


@pytest.mark.parametrize("name", ["ogbn-arxiv", "ogbn-products"])
def test_tiny_ogb_layout_loads(name, tmp_path, monkeypatch, no_prompt):
    monkeypatch.setenv(gd.OFFLINE_ENV, "1")
    spec = write_tiny_ogb(tmp_path, name)

    ds = load_dataset(name, root=tmp_path)
    d = ds.data
    assert ds.name == name and ds.metric == f"ogb:{name}" and "OGB" in ds.split
    assert (ds.num_nodes, ds.num_features, ds.num_classes) == (50, 8, 3)
    assert d.x.shape == (50, 8) and d.x.dtype == torch.float32
    assert torch.allclose(d.x, torch.from_numpy(spec["x"]), atol=1e-5)
    assert d.y.shape == (50,) and d.y.dtype == torch.long
    assert torch.equal(d.y, torch.from_numpy(spec["y"]))
    for mask, part in [(d.train_mask, "train"), (d.val_mask, "valid"), (d.test_mask, "test")]:
        assert mask.dtype == torch.bool
        assert torch.equal(mask.nonzero().view(-1), torch.from_numpy(np.sort(spec["parts"][part])))
    _assert_masks_partition(d)
    assert is_undirected(d.edge_index)
    pairs = set(map(tuple, d.edge_index.t().tolist()))
    for a, b in zip(spec["src"], spec["dst"]):
        assert (int(a), int(b)) in pairs and (int(b), int(a)) in pairs
    if name == "ogbn-arxiv":
        assert "undirected" in ds.split

    processed = spec["base"] / "processed" / "geometric_data_processed.pt"
    assert processed.exists()
    # the allow-list was scoped to the load: not added globally
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import GlobalStorage

    for cls in (DataEdgeAttr, DataTensorAttr, GlobalStorage):
        assert cls not in torch.serialization.get_safe_globals()

    # second load goes through the processed file (even with a raw label file gone)
    (spec["base"] / "raw" / "node-label.csv.gz").unlink()
    ds2 = load_dataset(name, root=tmp_path)
    for key in ("x", "edge_index", "y", "train_mask", "val_mask", "test_mask"):
        assert torch.equal(ds2.data[key], d[key]), key
    assert no_prompt == []


@pytest.mark.parametrize("offline", [True, False])
@pytest.mark.parametrize("processed_first", [False, True])
def test_tiny_ogb_without_release_file(offline, processed_first, tmp_path, monkeypatch, no_prompt):
    if offline:
        monkeypatch.setenv(gd.OFFLINE_ENV, "1")
    else:
        monkeypatch.delenv(gd.OFFLINE_ENV, raising=False)
    spec = write_tiny_ogb(tmp_path, "ogbn-arxiv", release=True)
    if processed_first:
        load_dataset("ogbn-arxiv", root=tmp_path)
    (spec["base"] / "RELEASE_v1.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="RELEASE_v1.txt") as err:
        load_dataset("ogbn-arxiv", root=tmp_path)
    assert str(spec["base"] / "RELEASE_v1.txt") in str(err.value)
    assert no_prompt == []
    assert (spec["base"] / "raw" / "edge.csv.gz").exists()  # user files untouched
    (spec["base"] / "RELEASE_v1.txt").write_text("")  # the advertised fix works
    assert load_dataset("ogbn-arxiv", root=tmp_path).num_nodes == 50


# --------------------------------------------------------------------------- real data

_REAL = [
    # name, shared folder, nodes, directed edges, features, classes
    ("cora", "planetoid/Cora", 2708, 10556, 1433, 7),
    ("citeseer", "planetoid/CiteSeer", 3327, 9104, 3703, 6),
    ("coauthor-cs", "coauthor/CS", 18333, 163788, 6805, 15),
    ("amazon-computers", "amazon/Computers", 13752, 491722, 767, 10),
]


@pytest.mark.parametrize("name,folder,n,e,f,c", _REAL)
def test_real_datasets_from_copy(name, folder, n, e, f, c, tmp_path, monkeypatch, no_prompt):
    src = shared_data_dir() / folder
    if not src.is_dir():
        pytest.skip(f"shared data is absent ({src} not found; set GIST_SHARED_DATA)")
    monkeypatch.setenv(gd.OFFLINE_ENV, "1")
    shutil.copytree(src, tmp_path / folder)
    ds = load_dataset(name, root=tmp_path, seed=0)
    d = ds.data
    assert (ds.num_nodes, d.edge_index.size(1), ds.num_features, ds.num_classes) == (n, e, f, c)
    assert d.x.dtype == torch.float32 and d.y.shape == (n,) and d.y.dtype == torch.long
    assert is_undirected(d.edge_index)
    assert (tmp_path / folder / "processed").is_dir()
    if name == "cora":
        assert ds.split == "public Planetoid split"
        sizes = (d.train_mask.sum().item(), d.val_mask.sum().item(), d.test_mask.sum().item())
        assert sizes == (140, 500, 1000)
    elif name == "citeseer":
        assert (d.train_mask.sum().item(), d.val_mask.sum().item()) == (120, 500)
    else:
        _assert_masks_partition(d)
        assert ds.split == "seeded random 60/20/20 (seed=0)"
        assert torch.equal(d.train_mask, random_split(n, 0)[0])
        ds1 = load_dataset(name, root=tmp_path, seed=1)  # processed now; new split only
        assert torch.equal(ds1.data.x, d.x)
        assert not torch.equal(ds1.data.train_mask, d.train_mask)


# --------------------------------------------------------------------------- registry facts and errors

_FAMILY_MODULE = {
    "synthetic": "gist.data.synthetic",
    "planetoid": "gist.data.planetoid",
    "coauthor": "gist.data.npz",
    "amazon": "gist.data.npz",
    "ogb": "gist.data.ogb",
}


@pytest.mark.parametrize("name", gd.DATASETS.names())
def test_every_shipped_dataset_declares_its_facts(name):
    from gist.registry import Entry, dataset_metric

    info = gd.DATASETS.info(name)
    assert set(info) >= {"metric", "family", "description"}
    assert info["family"] in _FAMILY_MODULE
    expected = f"ogb:{name}" if info["family"] == "ogb" else "accuracy"
    assert info["metric"] == expected == dataset_metric(name)
    assert info["description"] and "\n" not in info["description"]
    entry = gd.DATASETS._entries[name]
    assert isinstance(entry, Entry) and entry.path.startswith(_FAMILY_MODULE[info["family"]] + ":")
    module, _, attr = entry.path.partition(":")
    assert "." not in attr and callable(gd.DATASETS[name])  # a real module-level loader


def test_ogb_metrics_name_an_accuracy_evaluator():
    from ogb.nodeproppred import Evaluator

    for name in gd.DATASETS.names():
        metric = gd.DATASETS.info(name)["metric"]
        if metric.startswith("ogb:"):
            assert Evaluator(metric.removeprefix("ogb:")).eval_metric == "acc"


@pytest.mark.parametrize("name", ["csbm", "csbm-clustered"])
def test_synthetic_loaders_carry_the_registry_metric(name):
    ds = load_dataset(name, num_nodes=200, num_features=4)
    assert ds.name == name and ds.metric == gd.DATASETS.info(name)["metric"]


def test_cora_carries_the_registry_metric(real_data_root, monkeypatch, no_prompt):
    monkeypatch.setenv(gd.OFFLINE_ENV, "1")
    ds = load_dataset("cora", root=real_data_root("planetoid/Cora"))
    assert ds.metric == gd.DATASETS.info("cora")["metric"] == "accuracy"


@pytest.mark.parametrize("name", ["ogbn-arxiv", "ogbn-products"])
def test_tiny_ogb_carries_the_registry_metric(name, tmp_path, monkeypatch, no_prompt):
    monkeypatch.setenv(gd.OFFLINE_ENV, "1")
    write_tiny_ogb(tmp_path, name)
    assert load_dataset(name, root=tmp_path).metric == gd.DATASETS.info(name)["metric"] == f"ogb:{name}"


def test_registered_loader_facts_and_metric_check():
    from gist.errors import ConfigError

    register_dataset("test-facts", lambda root, seed: make_csbm(num_nodes=40, num_features=4, seed=seed))
    try:
        assert dict(gd.DATASETS.info("test-facts")) == {"metric": "accuracy", "family": "plug-in", "description": ""}
        register_dataset(
            "test-facts",
            lambda root, seed: make_csbm(num_nodes=40, num_features=4, seed=seed),
            metric="ogb:ogbn-arxiv",
            description="a graph whose loader forgets its metric",
        )
        with pytest.raises(ConfigError, match="scored by 'accuracy'.*declares 'ogb:ogbn-arxiv'"):
            load_dataset("test-facts")
    finally:
        gd.DATASETS.unregister("test-facts")
    assert "test-facts" not in available_datasets()


def test_errors_sit_under_gist_error(tmp_path, monkeypatch):
    from gist.errors import ConfigError, GistError

    with pytest.raises(ConfigError, match="unknown dataset 'no-such-graph'"):
        load_dataset("no-such-graph")
    with pytest.raises(ConfigError, match="non-empty string"):
        register_dataset("", lambda root, seed: None)
    with pytest.raises(ConfigError, match="must be callable"):
        register_dataset("x-not-callable", 3)
    with pytest.raises(ConfigError):
        make_csbm(num_nodes=1)
    monkeypatch.setenv(gd.OFFLINE_ENV, "1")
    with pytest.raises(GistError) as err:
        load_dataset("cora", root=tmp_path)
    assert isinstance(err.value, DatasetNotFoundError) and isinstance(err.value, FileNotFoundError)
    assert issubclass(gd.DatasetCorruptError, ConfigError) and issubclass(gd.DatasetCorruptError, ValueError)


def test_dataset_facts_need_no_torch():
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from gist.registry import DATASETS, dataset_metric\n"
        "facts = [(n, dataset_metric(n), DATASETS.info(n)['family']) for n in DATASETS.names()]\n"
        "print(len(facts), sorted(m for m in ('torch', 'torch_geometric') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(None, 1) == [str(len(gd.DATASETS)), "[]\n"]
