"""Metrics of OGB datasets go through ``ogb.nodeproppred.Evaluator``."""

from __future__ import annotations

import pytest
import torch
from ogb.nodeproppred import Evaluator
from test_data import write_tiny_ogb

import gist.data as gd
from gist.config import RunConfig
from gist.data import load_dataset
from gist.engine.evaluation import dataset_metric, evaluate, ogb_evaluator
from gist.nn.models import build_model
from gist.registry import DATASETS
from gist.run import run_training


def test_the_metric_comes_from_the_dataset_registry():
    assert dataset_metric("ogbn-arxiv") == "ogb:ogbn-arxiv" and dataset_metric("ogbn-products") == "ogb:ogbn-products"
    assert dataset_metric("cora") == "accuracy" and dataset_metric("csbm") == "accuracy"
    DATASETS.register("proteins-like", lambda root, seed: None, metric="ogb:ogbn-proteins")
    try:
        with pytest.raises(ValueError, match="rocauc"):  # a model predicting one class per node cannot be scored so
            dataset_metric("proteins-like")
    finally:
        DATASETS.unregister("proteins-like")


def test_node_evaluator_calls_ogb_and_matches_accuracy(tmp_path, monkeypatch):
    monkeypatch.setenv(gd.OFFLINE_ENV, "1")
    write_tiny_ogb(tmp_path, "ogbn-arxiv", n=60)
    data = load_dataset("ogbn-arxiv", root=tmp_path).data
    calls = []
    real_eval = Evaluator.eval
    monkeypatch.setattr(Evaluator, "eval", lambda self, d: calls.append(self.name) or real_eval(self, d))
    torch.manual_seed(0)
    model = build_model("gcn", 8, 16, 3, 2)
    scores = ogb_evaluator("ogbn-arxiv", data)(model, data)
    assert calls == ["ogbn-arxiv"] * 3
    assert scores == pytest.approx(evaluate(model, data))


def test_ogb_run_log_names_the_evaluator(tmp_path, monkeypatch):
    monkeypatch.setenv(gd.OFFLINE_ENV, "1")
    write_tiny_ogb(tmp_path, "ogbn-arxiv", n=60)
    base = dict(dataset="ogbn-arxiv", root=str(tmp_path), hidden=8, layers=2, rounds=2, local_steps=2)
    for method in ("gist", "ddp"):
        log = run_training(RunConfig.from_flat(method=method, **base), progress=False)
        assert log["metric"] == {"name": "acc", "scored_by": "ogb.nodeproppred.Evaluator('ogbn-arxiv')"}
    parted = dict(data_mode="partitioned", partitioner="random", **base)
    log = run_training(RunConfig.from_flat(**parted), progress=False)  # scored on the whole graph, as every method
    assert log["metric"] == {"name": "acc", "scored_by": "ogb.nodeproppred.Evaluator('ogbn-arxiv')"}
    log = run_training(RunConfig.from_flat(scorer="parts", **parted), progress=False)
    assert log["metric"]["scored_by"] == "correct / total"  # summed on the workers: the same accuracy


@pytest.mark.parametrize("kind", ["gcn", "sage"])
def test_sampled_view_gives_the_whole_graphs_predictions(kind):
    """The (L+1)-hop neighbourhood of the samples predicts each sample exactly as the whole graph does."""
    from gist.data import make_csbm
    from gist.engine.evaluation import sampled_view

    data = make_csbm(num_nodes=3000, avg_degree=3.0, seed=0).data  # sparse: neighbourhoods stay small
    torch.manual_seed(0)
    model = build_model(kind, data.num_features, 32, 5, num_layers=3, norm="batch_norm").eval()
    with torch.no_grad():
        full = model(data.x, data.edge_index)  # (eval mode: running statistics, no dropout)
        view = sampled_view(data, 10, layers=3, seed=1)
        part = model(view.x, view.edge_index)
    assert view.num_nodes < data.num_nodes / 2
    for split in ("train", "val", "test"):
        mask = view[f"{split}_mask"]
        assert int(mask.sum()) == 10 and bool(data[f"{split}_mask"][view.n_id[mask]].all())
        assert torch.allclose(part[mask], full[view.n_id[mask]], atol=1e-5)
    again = sampled_view(data, 10, layers=3, seed=1)
    assert torch.equal(again.n_id, view.n_id)  # the same sample every evaluation


def test_eval_nodes_scores_a_sample_and_the_log_says_so():
    base = dict(dataset="csbm", hidden=16, rounds=2, local_steps=2, subnets=2)
    full = run_training(RunConfig.from_flat(**base), progress=False)
    everything = run_training(RunConfig.from_flat(**base, eval_nodes=100_000), progress=False)
    assert [r["val"] for r in everything["rounds"]] == [r["val"] for r in full["rounds"]]
    sampled = run_training(RunConfig.from_flat(**base, eval_nodes=50), progress=False)
    assert "on 50 sampled nodes per split" in sampled["metric"]["scored_by"]
    assert "4-hop neighbourhood" in sampled["metric"]["scored_by"]
    assert all(abs(r["val"] * 50 - round(r["val"] * 50)) < 1e-9 for r in sampled["rounds"])  # counts of 50
    assert [r["loss"] for r in sampled["rounds"]] == [r["loss"] for r in full["rounds"]]  # training unchanged
