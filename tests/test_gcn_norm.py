"""GCN's normalisation computed once per graph (``PrenormalizedGCN``, what
``gist`` builds) against stock ``GCN``, which recomputes it in every layer:
the same outputs and the same trained model, bit for bit."""

from __future__ import annotations

import pytest
import torch

from gist.config import RunConfig
from gist.data import make_csbm
from gist.engine import load_run_dataset
from gist.graph import AdjacencyFormat, adjacency
from gist.methods import get_method
from gist.nn import PrenormalizedGCN, build_model
from gist.run import build


def test_prenormalized_gcn_gives_the_stock_outputs():
    data = make_csbm(num_nodes=300, num_features=12, num_classes=3, seed=1).data
    torch.manual_seed(0)
    stock = build_model("gcn", 12, 32, 3, 3, dropout=0.0, norm="batch_norm")
    torch.manual_seed(0)
    once = build_model("gcn", 12, 32, 3, 3, dropout=0.0, norm="batch_norm", prenormalized=True)
    assert isinstance(once, PrenormalizedGCN) and not isinstance(stock, PrenormalizedGCN)
    assert all(not conv.normalize for conv in once.convs) and all(conv.normalize for conv in stock.convs)
    stock.eval(), once.eval()
    raw, normalized = adjacency(data), adjacency(data, normalized=True)
    assert torch.equal(stock(data.x, raw), once(data.x, normalized))
    assert AdjacencyFormat.for_model(once) == AdjacencyFormat(True, True)
    assert AdjacencyFormat.for_model(stock) == AdjacencyFormat(True, False)
    with pytest.raises(ValueError, match="sparse"):
        adjacency(data, sparse=False, normalized=True)
    with pytest.raises(ValueError, match="not an edge_index"):
        once(data.x, data.edge_index)


@pytest.mark.parametrize(
    "method, extra",
    [
        ("gist", {}),
        ("gist", {"batching": "cluster", "num_clusters": 8, "clusters_per_batch": 2}),
        ("gist", {"data_mode": "partitioned", "norm": "batch_norm"}),
        ("ddp", {}),
        ("local-sgd", {"batching": "cluster", "num_clusters": 8, "clusters_per_batch": 2}),
    ],
)
def test_cached_normalisation_trains_the_same_model_as_uncached(tmp_path, method, extra):
    """The harness's PrenormalizedGCN against a stock GCN handed to the same method."""
    cfg = RunConfig.from_flat(
        method=method, dataset="csbm", root=str(tmp_path), hidden=16, subnets=2, rounds=3, local_steps=2, **extra
    )
    cached = build(cfg, progress=False).driver
    assert isinstance(cached.model, PrenormalizedGCN)
    cached.fit(progress=False)
    ds = load_run_dataset(cfg)
    torch.manual_seed(cfg.seed)
    m = cfg.model
    stock = build_model("gcn", ds.num_features, m.hidden, ds.num_classes, m.layers, m.dropout, norm=cfg.norm)
    uncached = get_method(method)(stock, ds.data, cfg)
    uncached.fit(progress=False)
    a, b = cached.model.state_dict(), uncached.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r.val for r in cached.history] == [r.val for r in uncached.history]
