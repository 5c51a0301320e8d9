"""Metrics of OGB datasets go through ``ogb.nodeproppred.Evaluator``."""

from __future__ import annotations

import pytest
import torch
from ogb.nodeproppred import Evaluator
from test_data import write_tiny_ogb

import gist.data as gd
from gist.config import RunConfig
from gist.data import load_dataset
from gist.engine.evaluation import evaluate, node_evaluator, ogb_metric
from gist.nn.models import build_model
from gist.run import run_training


def test_ogb_metric_names():
    assert ogb_metric("ogbn-arxiv") == "acc" and ogb_metric("ogbn-products") == "acc"
    assert ogb_metric("cora") is None
    with pytest.raises(ValueError, match="rocauc"):
        ogb_metric("ogbn-proteins")


def test_node_evaluator_calls_ogb_and_matches_accuracy(tmp_path, monkeypatch):
    monkeypatch.setenv(gd.OFFLINE_ENV, "1")
    write_tiny_ogb(tmp_path, "ogbn-arxiv", n=60)
    data = load_dataset("ogbn-arxiv", root=tmp_path).data
    calls = []
    real_eval = Evaluator.eval
    monkeypatch.setattr(Evaluator, "eval", lambda self, d: calls.append(self.name) or real_eval(self, d))
    torch.manual_seed(0)
    model = build_model("gcn", 8, 16, 3, 2)
    scores = node_evaluator("ogbn-arxiv", data)(model, data)
    assert calls == ["ogbn-arxiv"] * 3
    assert scores == pytest.approx(evaluate(model, data))
    assert node_evaluator("cora", data) is None


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
