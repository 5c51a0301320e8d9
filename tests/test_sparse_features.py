"""Node features as a sparse CSR matrix (``--sparse-features``): the same
outputs, gradients and trained models as dense features up to float
rounding, for every method and batching; processes equal to the simulation;
the byte count of what a worker holds; a clear error for a model whose first
layer cannot take them."""

from __future__ import annotations

import pytest
import torch

from gist.comm.ledger import tensor_nbytes
from gist.config import RunConfig
from gist.data import make_csbm
from gist.engine import load_run_dataset
from gist.graph import adjacency, with_sparse_features
from gist.nn import build_model
from gist.nn.models import takes_sparse_features
from gist.run import build, launch_local, run_training


def _bag_of_words(num_nodes: int = 300, num_features: int = 40, seed: int = 0):
    """A csbm graph whose features are 0/1, about 10% non-zero (like Coauthor's keywords)."""
    data = make_csbm(num_nodes=num_nodes, num_features=num_features, num_classes=3, seed=seed).data
    gen = torch.Generator().manual_seed(seed)
    data.x = (torch.rand(data.x.shape, generator=gen) < 0.1).float()
    return data


def test_sparse_features_are_a_shallow_copy_with_the_same_values():
    data = _bag_of_words()
    sparse = with_sparse_features(data)
    assert sparse.x.layout == torch.sparse_csr and data.x.layout == torch.strided
    assert torch.equal(sparse.x.to_dense(), data.x)
    assert sparse.edge_index is data.edge_index and sparse.y is data.y
    assert with_sparse_features(sparse).x is sparse.x  # already sparse: kept
    assert sparse.num_nodes == data.num_nodes and sparse.num_features == data.num_features
    nnz = int((data.x != 0).sum())
    assert tensor_nbytes(sparse.x) == nnz * (4 + 8) + (data.num_nodes + 1) * 8
    coo = data.x.to_sparse()
    assert tensor_nbytes(coo) == nnz * (4 + 2 * 8)


@pytest.mark.parametrize("prenormalized", [True, False])
def test_gcn_on_sparse_features_gives_the_dense_outputs_and_gradients(prenormalized):
    data = _bag_of_words()
    adj = adjacency(data, normalized=prenormalized)
    outputs, grads = [], []
    for x in (data.x, with_sparse_features(data).x):
        torch.manual_seed(0)
        model = build_model("gcn", 40, 32, 3, 3, dropout=0.0, norm="batch_norm", prenormalized=prenormalized)
        out = model(x, adj)
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def _settings(tmp_path, **kw) -> RunConfig:
    base = dict(dataset="csbm", root=str(tmp_path / "data"), hidden=16, subnets=2, rounds=3, local_steps=2)
    return RunConfig.from_flat(**{**base, **kw, "threads": 1, "eval_every": 1})


@pytest.mark.parametrize(
    "kw",
    [
        {"method": "gist"},
        {"method": "gist", "data_mode": "partitioned", "norm": "batch_norm", "scorer": "parts"},
        {"method": "gist", "batching": "cluster", "num_clusters": 8, "clusters_per_batch": 2},
        {"method": "gist", "coordinator": "sharded", "data_mode": "partitioned", "norm": "batch_norm"},
        {"method": "full", "subnets": 1},
        {"method": "ddp"},
        {"method": "local-sgd", "data_mode": "partitioned"},
    ],
    ids=["gist", "partitioned-parts", "cluster", "sharded", "full", "ddp", "local-sgd"],
)
def test_sparse_features_train_the_dense_model(tmp_path, one_thread, kw):
    """Every method, batching and coordinator: the trained model and the
    scores match dense features (the products differ only in rounding).
    With SGD: Adam would turn the rounding noise in the zero gradient of a
    bias before BatchNorm into full-size steps."""
    runs = []
    for sparse in (False, True):
        cfg = _settings(tmp_path, sparse_features=sparse, optimizer="sgd", lr=0.1, **kw)
        run = build(cfg, progress=False)
        run.driver.fit(progress=False)
        runs.append(run.driver)
    a, b = (d.model_state_dict() for d in runs)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), rtol=1e-3, atol=1e-4), k
    vals = [[r.val for r in d.history] for d in runs]
    assert vals[0] == pytest.approx(vals[1], abs=0.02)
    ledgers = [
        [(t.round, t.worker, t.direction, t.kind, t.nbytes) for t in d.ledger.transfers if t.kind != "data"]
        for d in runs
    ]
    assert ledgers[0] == ledgers[1]  # the features change no message


def test_sparse_feature_processes_equal_the_simulation(tmp_path, one_thread):
    cfg = _settings(tmp_path, sparse_features=True, data_mode="partitioned", norm="batch_norm", dataset="csbm")
    local = run_training(cfg.replace(save_model=str(tmp_path / "local.pt")), progress=False)
    dist = launch_local(cfg.replace(save_model=str(tmp_path / "dist.pt")), cfg.subnets, progress=False)
    a, b = (torch.load(tmp_path / n, weights_only=True) for n in ("local.pt", "dist.pt"))
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-5
    assert [r["val"] for r in local["rounds"]] == pytest.approx([r["val"] for r in dist["rounds"]], abs=1e-6)
    assert dist["config"]["data"]["sparse_features"] is True


def test_a_model_that_aggregates_raw_features_refuses_them(tmp_path):
    assert takes_sparse_features(build_model("gcn", 8, 16, 2, 2))
    assert not takes_sparse_features(build_model("sage", 8, 16, 2, 2))
    with pytest.raises(ValueError, match="--sparse-features needs .* --model sage \\(SAGEConv\\)"):
        build(_settings(tmp_path, sparse_features=True, model="sage"), progress=False)


def test_sparse_features_on_real_bag_of_words(real_data_root, tmp_path, one_thread):
    """Cora (1.3% non-zero): GIST with sparse features scores as dense does,
    round by round, and its workers hold a fraction of the graph's bytes."""
    root = real_data_root("planetoid")
    vals, held = [], []
    for sparse in (False, True):
        cfg = RunConfig.from_flat(
            dataset="cora",
            root=str(root),
            subnets=2,
            rounds=4,
            local_steps=5,
            eval_every=1,
            threads=1,
            sparse_features=sparse,
        )
        run = build(cfg, progress=False)
        run.driver.fit(progress=False)
        vals.append([r.val for r in run.driver.history])
        held.append(run.driver.ledger.total(kind="data"))
    assert vals[0] == pytest.approx(vals[1], abs=0.01)
    assert 0 < held[1] < held[0] / 4
    ds = load_run_dataset(cfg)
    assert (ds.data.x != 0).float().mean() < 0.05
