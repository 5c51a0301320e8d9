"""Tests for gist.graph: CSR conversion, partitioning, worker subgraphs, cluster batches."""

from __future__ import annotations

import math

import networkx as nx
import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.utils import to_undirected

from gist.graph.partition import ClusterBatcher, _fix_empty_parts, partition_nodes, to_csr, worker_subgraph


# --------------------------------------------------------------------------- #
# fixtures / helpers
# --------------------------------------------------------------------------- #
def planted_graph(
    num_groups: int = 4, group_size: int = 50, p_in: float = 0.3, p_out: float = 0.01, seed: int = 0
) -> tuple[torch.Tensor, int]:
    g = nx.planted_partition_graph(num_groups, group_size, p_in, p_out, seed=seed)
    ei = torch.tensor(list(g.edges()), dtype=torch.long).t()
    return to_undirected(ei, num_nodes=g.number_of_nodes()), g.number_of_nodes()


def make_data(num_groups: int = 4, group_size: int = 50, seed: int = 0) -> Data:
    ei, n = planted_graph(num_groups, group_size, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    data = Data(
        x=torch.randn(n, 8, generator=gen),
        y=torch.randint(0, 3, (n,), generator=gen),
        edge_index=ei,
        edge_weight=torch.rand(ei.size(1), generator=gen),
        train_mask=torch.rand(n, generator=gen) < 0.5,
        val_mask=torch.rand(n, generator=gen) < 0.3,
        test_mask=torch.rand(n, generator=gen) < 0.3,
        score=torch.rand(n, generator=gen),
    )
    return data


def edge_set(ei: torch.Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, ei.t().tolist()))


def cut_edges(ei: torch.Tensor, parts: torch.Tensor) -> int:
    return int((parts[ei[0]] != parts[ei[1]]).sum()) // 2


def check_induced(data: Data, sub: Data, node_set: set[int]) -> None:
    """sub.edge_index (mapped back) == edges of data with both ends in node_set."""
    expected = [(u, v) for u, v in data.edge_index.t().tolist() if u in node_set and v in node_set]
    got = sub.n_id[sub.edge_index].t().tolist()
    assert sorted(map(tuple, got)) == sorted(expected)


# --------------------------------------------------------------------------- #
# to_csr
# --------------------------------------------------------------------------- #
def test_to_csr_matches_networkx():
    g = nx.gnm_random_graph(60, 200, seed=3)
    ei = torch.tensor(list(g.edges()), dtype=torch.long).t()
    # add reversed duplicates, exact duplicates and self loops: all must vanish
    ei = torch.cat([ei, ei.flip(0), ei[:, :10], torch.tensor([[0, 5], [0, 5]])], dim=1)
    xadj, adjncy = to_csr(ei, 60)
    assert xadj.shape == (61,) and xadj[0] == 0 and xadj[-1] == len(adjncy)
    assert len(adjncy) == 2 * g.number_of_edges()
    for i in range(60):
        nbrs = adjncy[xadj[i] : xadj[i + 1]]
        assert list(nbrs) == sorted(g[i])  # sorted, no dups, no self loop
    # symmetric
    pairs = {(i, int(j)) for i in range(60) for j in adjncy[xadj[i] : xadj[i + 1]]}
    assert all((j, i) in pairs for i, j in pairs)


def test_to_csr_directed_and_isolated():
    ei = torch.tensor([[0, 1, 3], [1, 2, 3]])
    xadj, adjncy = to_csr(ei, 5)  # node 3 only has a self loop, node 4 isolated
    assert xadj.tolist() == [0, 1, 3, 4, 4, 4]
    assert adjncy.tolist() == [1, 0, 2, 1]
    with pytest.raises(ValueError):
        to_csr(torch.tensor([[0], [7]]), 5)


# --------------------------------------------------------------------------- #
# partition_nodes
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("method", ["metis", "random"])
def test_partition_range_nonempty(method):
    ei, n = planted_graph()
    for k in (1, 2, 3, 4, 7):
        parts = partition_nodes(ei, n, k, method=method, seed=1)
        assert parts.dtype == torch.long and parts.shape == (n,)
        assert int(parts.min()) >= 0 and int(parts.max()) < k
        assert torch.bincount(parts, minlength=k).min() >= 1


def test_partition_single_part_is_zeros():
    ei, n = planted_graph()
    assert torch.equal(partition_nodes(ei, n, 1), torch.zeros(n, dtype=torch.long))


def test_metis_deterministic_and_seeded():
    ei, n = planted_graph(num_groups=6, group_size=40, p_in=0.2, p_out=0.02)
    a = partition_nodes(ei, n, 5, seed=0)
    b = partition_nodes(ei, n, 5, seed=0)
    assert torch.equal(a, b)
    others = [partition_nodes(ei, n, 5, seed=s) for s in range(1, 6)]
    assert any(not torch.equal(a, o) for o in others)  # seed reaches METIS


def test_random_balanced_and_seeded():
    ei, n = planted_graph()
    a = partition_nodes(ei, n, 7, method="random", seed=0)
    counts = torch.bincount(a, minlength=7)
    assert int(counts.max() - counts.min()) <= 1
    assert torch.equal(a, partition_nodes(ei, n, 7, method="random", seed=0))
    assert not torch.equal(a, partition_nodes(ei, n, 7, method="random", seed=1))


def test_random_does_not_touch_global_rng():
    ei, n = planted_graph()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    partition_nodes(ei, n, 4, method="random", seed=0)
    ClusterBatcher(make_data(), 4, 2, method="random").next_batch()
    assert torch.equal(torch.rand(3), expected)


def test_metis_cuts_fewer_edges_than_random():
    ei, n = planted_graph(num_groups=4, group_size=50, p_in=0.3, p_out=0.01)
    metis = partition_nodes(ei, n, 4, method="metis")
    rand = partition_nodes(ei, n, 4, method="random")
    assert cut_edges(ei, metis) < 0.5 * cut_edges(ei, rand)
    # METIS should essentially recover the planted communities
    true = torch.arange(n) // 50
    assert cut_edges(ei, metis) <= cut_edges(ei, true) * 1.5 + 5


def test_metis_empty_parts_fixed():
    # disconnected tiny graph with isolated nodes: METIS may leave parts empty
    ei = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])
    for n, k in [(4, 3), (4, 4), (6, 6), (7, 5), (9, 9), (10, 9)]:
        for seed in range(3):
            parts = partition_nodes(ei, n, k, seed=seed)
            assert torch.bincount(parts, minlength=k).min() >= 1
            assert int(parts.max()) < k
            assert torch.equal(parts, partition_nodes(ei, n, k, seed=seed))
    # the fix itself: one node (highest id of the largest part) per empty part
    fixed = _fix_empty_parts(torch.tensor([2, 2, 1, 1, 8, 5, 7, 6, 4]), 9)
    assert fixed.tolist() == [2, 3, 1, 0, 8, 5, 7, 6, 4]
    # no edges at all
    parts = partition_nodes(torch.empty(2, 0, dtype=torch.long), 5, 5)
    assert sorted(parts.tolist()) == [0, 1, 2, 3, 4]


def test_partition_errors():
    ei, n = planted_graph()
    with pytest.raises(ValueError, match="num_parts"):
        partition_nodes(ei, n, 0)
    with pytest.raises(ValueError, match="num_parts"):
        partition_nodes(ei, n, n + 1)
    with pytest.raises(ValueError, match="method"):
        partition_nodes(ei, n, 2, method="spectral")
    with pytest.raises(ValueError):
        partition_nodes(ei, 10, 2)  # ids out of range


# --------------------------------------------------------------------------- #
# worker_subgraph
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("method", ["metis", "random"])
def test_worker_subgraph_induced(method):
    data = make_data()
    k = 4
    parts = partition_nodes(data.edge_index, data.num_nodes, k, method=method)
    seen = []
    for p in range(k):
        sub = worker_subgraph(data, parts, p)
        nodes = (parts == p).nonzero().flatten()
        assert torch.equal(sub.n_id, nodes)
        assert sub.n_id.dtype == torch.long
        assert sub.owned.all() and sub.num_nodes == nodes.numel()
        check_induced(data, sub, set(nodes.tolist()))
        assert torch.equal(sub.x, data.x[sub.n_id])
        assert torch.equal(sub.y, data.y[sub.n_id])
        assert torch.equal(sub.score, data.score[sub.n_id])
        for m in ("train_mask", "val_mask", "test_mask"):
            assert torch.equal(sub[m], data[m][sub.n_id])
        # edge attributes follow their edges
        w = {(u, v): float(x) for (u, v), x in zip(data.edge_index.t().tolist(), data.edge_weight)}
        got = sub.n_id[sub.edge_index].t().tolist()
        assert [w[tuple(e)] for e in got] == sub.edge_weight.tolist()
        seen.append(sub.n_id[sub.owned])
    allnodes = torch.cat(seen)
    assert allnodes.numel() == data.num_nodes  # disjoint ...
    assert torch.equal(allnodes.sort().values, torch.arange(data.num_nodes))  # ... and covering


def test_worker_subgraph_copies():
    data = make_data()
    parts = partition_nodes(data.edge_index, data.num_nodes, 2)
    sub = worker_subgraph(data, parts, 0)
    before = data.x.clone()
    sub.x.add_(1.0)
    sub.train_mask.fill_(True)
    assert torch.equal(data.x, before)
    for _key, value in sub.items():
        if isinstance(value, torch.Tensor):
            for full in data.to_dict().values():
                if isinstance(full, torch.Tensor):
                    assert value.untyped_storage().data_ptr() != full.untyped_storage().data_ptr()


def test_worker_subgraph_halo():
    data = make_data()
    parts = partition_nodes(data.edge_index, data.num_nodes, 4)
    p = 1
    own = set((parts == p).nonzero().flatten().tolist())
    nbrs = {u for u, v in data.edge_index.t().tolist() if v in own} - own
    sub = worker_subgraph(data, parts, p, halo_hops=1)
    assert set(sub.n_id[sub.owned].tolist()) == own
    assert set(sub.n_id[~sub.owned].tolist()) == nbrs
    assert len(nbrs) > 0
    n_own = len(own)
    assert sub.owned[:n_own].all() and not sub.owned[n_own:].any()  # owned first
    for m in ("train_mask", "val_mask", "test_mask"):
        assert not sub[m][~sub.owned].any()
        assert torch.equal(sub[m][sub.owned], data[m][sub.n_id[sub.owned]])
    check_induced(data, sub, own | nbrs)
    assert torch.equal(sub.x, data.x[sub.n_id])
    # two hops = neighbours of the one-hop set
    sub2 = worker_subgraph(data, parts, p, halo_hops=2)
    two = {u for u, v in data.edge_index.t().tolist() if v in own | nbrs}
    assert set(sub2.n_id.tolist()) == own | nbrs | two


def test_worker_subgraph_halo_directed_uses_message_sources():
    # 0 -> 1 -> 2 ; part {1}: halo = in-neighbour 0 only (source_to_target flow)
    data = Data(
        x=torch.arange(3.0).view(-1, 1),
        edge_index=torch.tensor([[0, 1], [1, 2]]),
        train_mask=torch.ones(3, dtype=torch.bool),
    )
    parts = torch.tensor([0, 1, 2])
    sub = worker_subgraph(data, parts, 1, halo_hops=1)
    assert sub.n_id.tolist() == [1, 0]
    assert sub.owned.tolist() == [True, False]
    assert sub.train_mask.tolist() == [True, False]
    assert sub.edge_index.tolist() == [[1], [0]]


def test_worker_subgraph_errors():
    data = make_data()
    parts = partition_nodes(data.edge_index, data.num_nodes, 2)
    with pytest.raises(ValueError):
        worker_subgraph(data, parts, 5)
    with pytest.raises(ValueError):
        worker_subgraph(data, parts, 0, halo_hops=-1)
    with pytest.raises(ValueError):
        worker_subgraph(data, parts[:-1], 0)


# --------------------------------------------------------------------------- #
# ClusterBatcher
# --------------------------------------------------------------------------- #
def batch_key(b: Data) -> tuple:
    return tuple(b.n_id.tolist()), tuple(map(tuple, b.edge_index.t().tolist()))


@pytest.mark.parametrize("method", ["metis", "random"])
@pytest.mark.parametrize("num_parts,ppb", [(8, 3), (8, 2), (5, 5), (1, 1)])
def test_cluster_batcher_epoch(method, num_parts, ppb):
    data = make_data()
    cb = ClusterBatcher(data, num_parts, ppb, method=method, seed=0)
    assert len(cb) == math.ceil(num_parts / ppb)
    batches = list(cb)
    assert len(batches) == len(cb)
    ids = torch.cat([b.n_id for b in batches])
    assert ids.numel() == data.num_nodes
    assert torch.equal(ids.sort().values, torch.arange(data.num_nodes))
    for b in batches:
        assert b.num_nodes == b.n_id.numel() and b.owned.all()
        check_induced(data, b, set(b.n_id.tolist()))
        assert torch.equal(b.x, data.x[b.n_id]) and torch.equal(b.y, data.y[b.n_id])
        assert torch.equal(b.train_mask, data.train_mask[b.n_id])
        # whole parts only
        bparts = cb.parts[b.n_id].unique()
        assert sorted(b.n_id.tolist()) == sorted(torch.cat([cb.part_nodes(int(p)) for p in bparts]).tolist())
        assert bparts.numel() <= ppb


def test_cluster_batcher_deterministic_and_seeded():
    data = make_data()
    first = batch_key(ClusterBatcher(data, 8, 2, seed=0).next_batch())
    cb1, cb2 = ClusterBatcher(data, 8, 2, seed=0), ClusterBatcher(data, 8, 2, seed=0)
    seq1 = [batch_key(cb1.next_batch()) for _ in range(10)]
    seq2 = [batch_key(cb2.next_batch()) for _ in range(10)]
    assert seq1 == seq2 and seq1[0] == first
    cb3 = ClusterBatcher(data, 8, 2, seed=1)
    assert [batch_key(cb3.next_batch()) for _ in range(10)] != seq1
    # epochs differ in order (8 parts -> 4 batches per epoch)
    assert seq1[:4] != seq1[4:8]
    # iter and next_batch agree on a fresh batcher
    cb4 = ClusterBatcher(data, 8, 2, seed=0)
    assert [batch_key(b) for b in cb4] + [batch_key(b) for b in cb4] == seq1[:8]


def test_cluster_batcher_state_dict_resume():
    data = make_data()
    cb = ClusterBatcher(data, 7, 2, seed=3)  # 4 batches / epoch, last has 1 part
    for _ in range(5):
        cb.next_batch()
    state = cb.state_dict()
    expected = [batch_key(cb.next_batch()) for _ in range(9)]
    fresh = ClusterBatcher(data, 7, 2, seed=3)
    fresh.load_state_dict(state)
    assert [batch_key(fresh.next_batch()) for _ in range(9)] == expected
    # state is a snapshot: loading it again replays the same batches
    cb.load_state_dict(state)
    assert [batch_key(cb.next_batch()) for _ in range(9)] == expected
    with pytest.raises(ValueError):
        ClusterBatcher(data, 6, 2, seed=3).load_state_dict(state)


def test_cluster_batcher_errors():
    data = make_data()
    with pytest.raises(ValueError):
        ClusterBatcher(data, 4, 5)
    with pytest.raises(ValueError):
        ClusterBatcher(data, 0, 1)
    with pytest.raises(ValueError):
        ClusterBatcher(data, 4, 0)
    with pytest.raises(ValueError):
        ClusterBatcher(data, data.num_nodes + 1, 1)
    with pytest.raises(ValueError):
        ClusterBatcher(data, 4, 2, method="nope")


def test_partitions_are_computed_once_per_graph(monkeypatch):
    import gist.graph.partition as partition

    edge_index = to_undirected(torch.randint(0, 200, (2, 1000)), num_nodes=200)
    calls = []
    real = partition._partition
    monkeypatch.setattr(partition, "_partition", lambda *a: calls.append(a) or real(*a))
    first = partition_nodes(edge_index, 200, 4, "metis", 3)
    first[:] = -1  # a caller's copy: the cache is untouched
    again = partition_nodes(edge_index.clone(), 200, 4, "metis", 3)
    assert len(calls) == 1 and bool((again >= 0).all())
    partition_nodes(edge_index, 200, 4, "metis", 4)  # another seed, another graph: computed
    partition_nodes(edge_index[:, :-2], 200, 4, "metis", 3)
    assert len(calls) == 3
