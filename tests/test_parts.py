"""Per-part graph files (gist.graph.parts): exact content, atomicity, locking, CLI."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest
import torch

import gist.graph.parts as gp
from gist.cli import build_parser, main
from gist.data import load_dataset, make_csbm
from gist.graph import partition_nodes, worker_subgraph
from gist.graph.parts import (
    FORMAT_VERSION,
    PART_KEYS,
    PartitionError,
    ensure_partitions,
    load_part,
    partition_dir,
    read_meta,
    write_partitions,
)


@pytest.fixture(scope="module")
def small():
    return make_csbm(num_nodes=300, num_features=8, num_classes=3, seed=1)


def _parser() -> argparse.ArgumentParser:
    return build_parser()


@pytest.mark.parametrize("partitioner", ["metis", "random"])
@pytest.mark.parametrize("halo", [0, 1])
def test_parts_equal_worker_subgraph(small, tmp_path, partitioner, halo):
    k = 3
    out = write_partitions(small, tmp_path / "p", k, partitioner, seed=1, halo_hops=halo, progress=False)
    parts = partition_nodes(small.data.edge_index, small.num_nodes, k, partitioner, 1)
    seen = []
    for i in range(k):
        got = load_part(out, i)
        want = worker_subgraph(small.data, parts, i, halo)
        assert set(got.keys()) == set(want.keys()) == set(PART_KEYS) | {"num_nodes"}
        assert got.num_nodes == want.num_nodes
        for key in PART_KEYS:
            assert got[key].dtype == want[key].dtype, key
            assert torch.equal(got[key], want[key]), key
        if halo == 0:
            assert bool(got.owned.all())
        seen.append(got.n_id[got.owned])
    owned = torch.cat(seen)
    assert owned.numel() == small.num_nodes
    assert torch.equal(owned.sort().values, torch.arange(small.num_nodes))


def test_files_and_meta(small, tmp_path):
    out = write_partitions(small, tmp_path / "p", 2, "random", seed=1, halo_hops=1, progress=False)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["meta.json", "part_0.pt", "part_1.pt"]
    for i in range(2):
        obj = torch.load(out / f"part_{i}.pt", weights_only=True)
        assert type(obj) is dict and list(obj) == list(PART_KEYS)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION
    assert (meta["dataset"], meta["num_nodes"], meta["num_features"], meta["num_classes"]) == ("csbm", 300, 8, 3)
    assert (meta["num_parts"], meta["partitioner"], meta["seed"], meta["halo_hops"]) == (2, "random", 1, 1)
    assert meta["split"] == small.split
    assert [p["num_owned"] for p in meta["parts"]] == [150, 150]
    for i, p in enumerate(meta["parts"]):
        assert p["sha256"] == gp._sha256_file(out / f"part_{i}.pt")
        part = load_part(out, i)
        assert p["num_nodes"] == part.num_nodes
        assert p["num_edges"] == part.edge_index.size(1)
        assert p["num_train"] == int(part.train_mask.sum())
    info = read_meta(out)
    assert (info.num_nodes, info.num_features, info.num_classes, info.num_parts) == (300, 8, 3, 2)
    assert (info.dataset, info.partitioner, info.seed, info.halo_hops) == ("csbm", "random", 1, 1)
    assert info.split == small.split and info.metric == "accuracy"


def test_partition_dir_layout(tmp_path):
    d = partition_dir(tmp_path, "Coauthor_CS", 4, "random", 7, 2)
    assert d == tmp_path.absolute() / "partitions" / "coauthor-cs-random-p4-s7-h2"
    with pytest.raises(ValueError):
        partition_dir(tmp_path, "cora", 0)
    with pytest.raises(ValueError):
        partition_dir(tmp_path, "cora", 2, "kmeans")
    with pytest.raises(ValueError):
        partition_dir(tmp_path, "cora", 2, halo_hops=-1)


def test_ensure_writes_then_reuses(tmp_path):
    d = ensure_partitions(tmp_path, "csbm", 2, "random", seed=0, progress=False)
    assert d == partition_dir(tmp_path, "csbm", 2, "random", 0, 0)
    files = sorted(d.iterdir())
    before = {p: p.stat().st_mtime_ns for p in files}
    time.sleep(0.01)
    assert ensure_partitions(tmp_path, "csbm", 2, "random", seed=0, progress=False) == d
    assert {p: p.stat().st_mtime_ns for p in sorted(d.iterdir())} == before
    ds = load_dataset("csbm", root=tmp_path, seed=0)
    parts = partition_nodes(ds.data.edge_index, ds.num_nodes, 2, "random", 0)
    assert torch.equal(load_part(d, 1).x, worker_subgraph(ds.data, parts, 1).x)


def test_interrupted_write_is_redone(small, tmp_path, monkeypatch):
    d = partition_dir(tmp_path, "csbm", 2, "random", 0, 0)
    calls = []
    real_save = torch.save

    def dying_save(obj, f, *a, **kw):  # first part lands, the second dies mid-write
        calls.append(f)
        if len(calls) == 2:
            Path(f).write_bytes(b"half a tensor")
            raise KeyboardInterrupt
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", dying_save)
    ds = load_dataset("csbm", root=tmp_path, seed=0)
    with pytest.raises(KeyboardInterrupt):
        write_partitions(ds, d, 2, "random", 0, 0, progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    assert not (d / "meta.json").exists() and not (d / "part_1.pt").exists()
    (d / ".part_1.pt.tmp-99999").write_bytes(b"stray")  # e.g. left by a killed process
    with pytest.raises(FileNotFoundError, match="incomplete.*gist partition"):
        read_meta(d)
    with pytest.raises(FileNotFoundError, match="gist partition"):
        load_part(d, 0)
    assert ensure_partitions(tmp_path, "csbm", 2, "random", 0, 0, progress=False) == d
    assert sorted(p.name for p in d.iterdir()) == ["meta.json", "part_0.pt", "part_1.pt"]
    for i in range(2):
        load_part(d, i)


def test_corrupt_part_and_bad_index(small, tmp_path):
    out = write_partitions(small, tmp_path / "p", 2, "metis", progress=False)
    with pytest.raises(ValueError, match="out of range"):
        load_part(out, 2)
    with pytest.raises(ValueError, match="out of range"):
        load_part(out, -1)
    path = out / "part_1.pt"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(PartitionError, match=r"part_1\.pt.*corrupt.*gist partition"):
        load_part(out, 1)
    path.write_bytes(b"garbage")
    with pytest.raises(PartitionError, match=r"part_1\.pt.*gist partition"):
        load_part(out, 1, verify=False)
    path.unlink()
    with pytest.raises(PartitionError, match=r"part_1\.pt.*missing"):
        load_part(out, 1)
    load_part(out, 0)  # the intact part still loads


def test_missing_dir_and_version(tmp_path):
    d = partition_dir(tmp_path, "cora", 4, "metis", 3, 1)
    with pytest.raises(FileNotFoundError) as err:
        read_meta(d)
    msg = str(err.value)
    assert str(d / "meta.json") in msg
    assert "gist partition --dataset cora" in msg and "--parts 4" in msg and "--halo-hops 1" in msg
    small = make_csbm(num_nodes=50, num_features=4, num_classes=2)
    write_partitions(small, d, 2, "metis", progress=False)
    meta = json.loads((d / "meta.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="version"):
        read_meta(d)


def test_load_part_reads_one_file(small, tmp_path, monkeypatch):
    out = write_partitions(small, tmp_path / "p", 4, "metis", progress=False)
    loaded = []
    real_load = torch.load

    def spy(f, *a, **kw):
        loaded.append((Path(f), kw.get("weights_only")))
        return real_load(f, *a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    for i in (0, 1, 3):
        (out / f"part_{i}.pt").unlink()  # worker 2 needs nothing but its own part
    part = load_part(out, 2)
    assert loaded == [(out / "part_2.pt", True)]
    assert part.num_nodes == read_meta(out).parts[2]["num_nodes"]


def test_cli(tmp_path, capsys):
    args = _parser().parse_args(
        [
            "partition",
            "--dataset",
            "csbm",
            "--root",
            str(tmp_path),
            "--parts",
            "3",
            "--partitioner",
            "random",
            "--no-progress",
        ]
    )
    assert args.command == "partition"
    assert args.func(args) == 0
    out = capsys.readouterr().out
    d = partition_dir(tmp_path, "csbm", 3, "random", 0, 0)
    assert str(d) in out and "wrote" in out
    assert out.count("part ") == 3 and "train nodes" in out
    assert sorted(p.name for p in d.parent.iterdir()) == [d.name]  # no lock file left beside it
    assert not [p for p in d.iterdir() if ".tmp" in p.name]
    mtime = (d / "meta.json").stat().st_mtime_ns
    assert args.func(args) == 0
    assert "reused" in capsys.readouterr().out
    assert (d / "meta.json").stat().st_mtime_ns == mtime
    time.sleep(0.01)
    forced = _parser().parse_args(
        ["partition", "--root", str(tmp_path), "--parts", "3", "--partitioner", "random", "--force", "--no-progress"]
    )
    assert forced.func(forced) == 0
    assert (d / "meta.json").stat().st_mtime_ns != mtime

    bad = _parser().parse_args(
        ["partition", "--dataset", "no-such-graph", "--root", str(tmp_path), "--parts", "2", "--no-progress"]
    )
    assert bad.func(bad) == 2
    err = capsys.readouterr().err
    assert "gist partition: error" in err and "unknown dataset 'no-such-graph'" in err
    with pytest.raises(SystemExit):
        _parser().parse_args(["partition", "--dataset", "csbm"])  # --parts is required


def _ensure_in_child(root: str, log: str, barrier) -> str:
    """Spawned worker: count write_partitions calls in ``log``, then ensure_partitions."""
    import gist.graph.parts as parts

    real = parts.write_partitions

    def counted(*a, **kw):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # widen the window in which the other process must wait
        return real(*a, **kw)

    parts.write_partitions = counted
    barrier.wait(timeout=60)
    d = parts.ensure_partitions(root, "csbm", 2, "random", 0, 0, progress=False)
    parts.load_part(d, 0)
    return str(d)


def test_concurrent_ensure(tmp_path):
    ctx = mp.get_context("spawn")
    log = tmp_path / "writes.log"
    barrier = ctx.Barrier(2)
    procs = []
    results = ctx.Queue()
    for _ in range(2):
        p = ctx.Process(target=_child_main, args=(str(tmp_path), str(log), barrier, results))
        p.start()
        procs.append(p)
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    got = [results.get(timeout=5) for _ in procs]
    d = partition_dir(tmp_path, "csbm", 2, "random", 0, 0)
    assert got == [str(d), str(d)]
    assert len(log.read_text().split()) == 1  # written once
    info = read_meta(d)
    assert info.num_parts == 2
    assert not d.with_name(d.name + ".lock").exists()


def _child_main(root, log, barrier, results) -> None:
    results.put(_ensure_in_child(root, log, barrier))


# --------------------------------------------------------------------------- per-part statistics


def _direct_statistics(data, parts, num_parts, num_classes):
    """The statistics of part_statistics, computed edge by edge in plain Python."""
    src, dst = data.edge_index.tolist()
    owner = parts.tolist()
    y, train = data.y.tolist(), data.train_mask.tolist()
    neighbours = {v: set() for v in range(len(owner))}
    for u, v in zip(src, dst):
        neighbours[u].add(v)
        neighbours[v].add(u)
    whole = [0] * num_classes
    for v, is_train in enumerate(train):
        whole[y[v]] += is_train
    out = []
    for i in range(num_parts):
        nodes = [v for v in range(len(owner)) if owner[v] == i]
        inside = sum(owner[u] == i and owner[v] == i for u, v in zip(src, dst))
        cut = sum(owner[u] == i and owner[v] != i for u, v in zip(src, dst))
        boundary = sum(any(owner[w] != i for w in neighbours[v]) for v in nodes)
        seen, components = set(), 0
        for v in nodes:  # depth-first search inside the part
            if v in seen:
                continue
            components += 1
            stack = [v]
            seen.add(v)
            while stack:
                for w in neighbours[stack.pop()]:
                    if owner[w] == i and w not in seen:
                        seen.add(w)
                        stack.append(w)
        counts = [0] * num_classes
        for v in nodes:
            counts[y[v]] += train[v]
        total = sum(counts)
        tv = sum(abs(c / total - w / sum(whole)) for c, w in zip(counts, whole)) / 2 if total else None
        out.append(
            dict(
                owned=len(nodes), inside=inside, cut=cut, boundary=boundary, components=components, counts=counts, tv=tv
            )
        )
    return out


def _check_statistics(got, want):
    for g, w in zip(got, want, strict=True):
        assert (g["num_owned"], g["edges_inside"], g["edges_cut"], g["num_boundary"], g["components"]) == (
            w["owned"],
            w["inside"],
            w["cut"],
            w["boundary"],
            w["components"],
        )
        assert g["train_label_counts"] == w["counts"]
        if w["tv"] is None:
            assert g["train_label_tv"] is None and g["train_label_top"] == []
        else:
            assert g["train_label_tv"] == pytest.approx(w["tv"], abs=1e-4)
            shares = [share for _, share in g["train_label_top"]]
            assert shares == sorted(shares, reverse=True) and len(shares) <= gp.TOP_LABELS
            for label, share in g["train_label_top"]:
                assert share == pytest.approx(w["counts"][label] / sum(w["counts"]), abs=1e-4)


def test_part_statistics_match_a_direct_count():
    """A hand-made graph (two triangles, a path, isolated nodes) and a CSBM."""
    from torch_geometric.data import Data

    from gist.graph.parts import part_statistics

    pairs = [(0, 1), (1, 2), (2, 0), (3, 4), (4, 5), (5, 3), (2, 3), (6, 7), (7, 8), (1, 7)]
    ei = torch.tensor(pairs + [(b, a) for a, b in pairs]).t()
    y = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 0, 1])
    train = torch.tensor([1, 1, 1, 0, 1, 1, 1, 0, 0, 1, 0], dtype=torch.bool)
    data = Data(edge_index=ei, y=y, train_mask=train, num_nodes=11)
    parts = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 1])
    got = part_statistics(data, parts, 3, 3)
    assert [g["components"] for g in got] == [1, 2, 2]  # node 10 is alone in part 1, node 9 in part 2
    assert [g["edges_cut"] for g in got] == [2, 1, 1]
    _check_statistics(got, _direct_statistics(data, parts, 3, 3))

    ds = make_csbm(num_nodes=300, num_classes=4, num_features=4, avg_degree=4, seed=2)
    for partitioner, k in (("metis", 4), ("random", 5)):
        parts = partition_nodes(ds.data.edge_index, 300, k, partitioner, 0)
        _check_statistics(part_statistics(ds.data, parts, k, 4), _direct_statistics(ds.data, parts, k, 4))
    skipped = part_statistics(ds.data, parts, 5, 4, nx_limit=10)
    assert [g["components"] for g in skipped] == [None] * 5
    assert part_statistics(ds.data, parts, 5, 4, nx_graph_limit=10)[0]["components"] is None


def test_meta_holds_the_statistics_and_old_meta_still_reads(small, tmp_path, capsys):
    out = write_partitions(small, tmp_path / "p", 3, "metis", seed=1, halo_hops=1, progress=False)
    parts = partition_nodes(small.data.edge_index, small.num_nodes, 3, "metis", 1)
    info = read_meta(out)
    _check_statistics(info.parts, _direct_statistics(small.data, parts, 3, small.num_classes))
    lines = gp.describe_parts(info)
    assert len(lines) == 4 and "edges between parts" in lines[-1] and "—" not in "".join(lines)

    meta = json.loads((out / "meta.json").read_text())
    for key in ("nx_limit", "nx_graph_limit"):
        meta.pop(key)
    new_fields = ("edges_inside", "edges_cut", "num_boundary", "components", "train_label_counts")
    for part in meta["parts"]:
        for key in (*new_fields, "train_label_top", "train_label_tv"):
            part.pop(key)
    (out / "meta.json").write_text(json.dumps(meta))
    old = read_meta(out)
    assert [p["num_owned"] for p in old.parts] == [p["num_owned"] for p in info.parts]
    load_part(out, 2)
    lines = gp.describe_parts(old)
    assert lines[0].endswith(f"{old.parts[0]['num_edges']} edges, {old.parts[0]['num_train']} train nodes")
    assert "--force" in lines[-1] and len(lines) == 4


def test_cli_marks_parts_whose_components_are_not_counted(small, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gp, "NX_LIMIT", 50)  # every part of 300 nodes in 2 is "large"
    args = ["partition", "--root", str(tmp_path), "--parts", "2", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("— components") == 2 and "networkx is skipped above 50 owned nodes" in out
    assert all(p["components"] is None for p in read_meta(partition_dir(tmp_path, "csbm", 2)).parts)


def test_cora_statistics_are_sane(real_data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GIST_OFFLINE", "1")
    root = real_data_root("planetoid/Cora")
    assert main(["partition", "--dataset", "cora", "--root", str(root), "--parts", "4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    info = read_meta(partition_dir(root, "cora", 4))
    ds = load_dataset("cora", root=root)
    ei = ds.data.edge_index
    parts = partition_nodes(ei, ds.num_nodes, 4, "metis", 0)
    between = int((parts[ei[0]] != parts[ei[1]]).sum())
    assert sum(p["edges_cut"] for p in info.parts) == between > 0
    assert sum(p["edges_cut"] + p["edges_inside"] for p in info.parts) == ei.size(1) == 10556
    assert f"edges between parts: {between} of 10556" in out
    for p in info.parts:
        assert p["components"] >= 1 and 0 < p["num_boundary"] <= p["num_owned"]
        assert sum(p["train_label_counts"]) == p["num_train"] and len(p["train_label_counts"]) == 7
        assert 0.0 <= p["train_label_tv"] <= 1.0
    assert sum(sum(p["train_label_counts"]) for p in info.parts) == 140
    assert out.count("TV ") == 4 and "—" not in out
