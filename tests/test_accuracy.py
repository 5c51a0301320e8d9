"""Accuracy floors on real data from ../shared/data (skipped, saying so, when absent)."""

from __future__ import annotations

import pytest

from gist.config import RunConfig
from gist.run import run_training

pytestmark = pytest.mark.slow


def test_cora_gcn_m4_reaches_078_test_accuracy(real_data_root):
    root = real_data_root("planetoid")
    settings = RunConfig.from_flat(
        dataset="cora",
        root=str(root),
        model="gcn",
        layers=3,
        hidden=256,
        subnets=4,
        local_steps=5,
        rounds=20,
        lr=0.01,
        weight_decay=5e-4,
        dropout=0.5,
        seed=0,
    )
    summary = run_training(settings, progress=False)["summary"]
    assert summary["test_at_best_val"] >= 0.78, summary


CS_SAGE_M1_TEST = 0.9416
"""Test accuracy at the best validation of the same settings with ``subnets=1``
(measured 2026-11-25; the m = 1 run takes as long as the m = 2 one, so it is
not repeated here)."""


def test_coauthor_cs_sage_partitioned_m2_within_two_points_of_m1(real_data_root):
    root = real_data_root("coauthor")
    settings = RunConfig.from_flat(
        dataset="coauthor-cs",
        root=str(root),
        model="sage",
        layers=2,
        hidden=64,
        subnets=2,
        data_mode="partitioned",
        partitioner="metis",
        local_steps=5,
        rounds=16,
        eval_every=2,
        lr=0.01,
        dropout=0.5,
        seed=0,
    )
    summary = run_training(settings, progress=False)["summary"]
    assert summary["test_at_best_val"] >= CS_SAGE_M1_TEST - 0.02, summary


def test_cora_gcn_m2_bfloat16_payloads_within_a_point_of_float32(real_data_root):
    root = real_data_root("planetoid")
    base = dict(dataset="cora", root=str(root), hidden=256, subnets=2, local_steps=5, rounds=20, dropout=0.5)
    base.update(weight_decay=5e-4, seed=0)
    runs = {w: run_training(RunConfig.from_flat(**base, wire_dtype=w), progress=False) for w in ("float32", "bfloat16")}
    f32, bf16 = (runs[w]["summary"] for w in ("float32", "bfloat16"))
    assert abs(bf16["best_val"] - f32["best_val"]) <= 0.01, (bf16["best_val"], f32["best_val"])
    assert abs(bf16["test_at_best_val"] - f32["test_at_best_val"]) <= 0.01
    assert bf16["bytes_total"] < 0.51 * f32["bytes_total"]  # the parameters' bytes halve
