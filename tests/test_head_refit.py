"""``benchmarks/head_refit.py``: the classifier refit touches the output layer
only, its pooled loss over parts is the mean over all their training nodes,
and the report comes out of a tiny sweep config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from gist.config import RunConfig
from gist.data import load_dataset
from gist.engine import full_model
from gist.engine.training import worker_graphs
from gist.graph import AdjacencyFormat

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import head_refit  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("model", ["gcn", "sage"])
def test_the_head_is_the_output_layer_and_only_it_moves(tmp_path, model):
    cfg = RunConfig.from_flat(
        dataset="csbm", model=model, layers=3, hidden=16, norm="batch_norm", data_mode="partitioned", subnets=2
    )
    ds = load_dataset("csbm", root=str(tmp_path), seed=0)
    net = full_model(cfg, ds.num_features, ds.num_classes)
    head = head_refit.head_parameters(net)
    assert head and all(n.startswith("convs.2.") for n in head)
    assert {p.shape[0] for n, p in head.items() if n.endswith("weight")} == {ds.num_classes}
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    fmt = AdjacencyFormat.for_model(net, True)
    parts = [(g, fmt.of(g)) for g in worker_graphs(ds.data, cfg)]
    # the pooled loss is the mean cross-entropy over the union of the parts' training nodes
    net.eval()
    expected = torch.cat(
        [
            torch.nn.functional.cross_entropy(net(g.x, a)[g.train_mask], g.y[g.train_mask], reduction="none")
            for g, a in parts
        ]
    ).mean()
    torch.testing.assert_close(head_refit.pooled_loss(net, parts), expected)
    val, test, step = head_refit.refit(net, parts, ds.data, fmt.of(ds.data), steps=20, lr=0.05, every=5)
    assert 0 <= step <= 20 and 0 <= val <= 1 and 0 <= test <= 1
    moved = {n for n, p in net.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved and moved <= set(head)


def test_the_report_comes_from_a_sweep_config(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(
        'name = "tiny"\n[settings]\ndataset = "csbm"\nlayers = 2\nhidden = 8\nnorm = "batch_norm"\nrounds = 2\n'
        'data_mode = "partitioned"\n[sweep]\nmethods = ["gist"]\nsubnets = [2]\nlocal_steps = [2]\nseeds = [0]\n'
    )
    out = tmp_path / "report.md"
    head_refit.main([str(config), "--m", "2", "--root", str(tmp_path / "data"), "--steps", "5", "--out", str(out)])
    text = out.read_text()
    assert text.startswith("# Classifier refit after partitioned GIST")
    assert "| — | 2 | 1 |" in text
    with pytest.raises(SystemExit):
        head_refit.main([str(config), "--m", "4", "--root", str(tmp_path / "data")])
    assert "no run of the config matches" in capsys.readouterr().err
