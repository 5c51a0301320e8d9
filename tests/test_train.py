"""The round loop: what one round changes, m = 1 as plain training, the ledger."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from gist import GIST, InProcessTransport, RunConfig, draw_partition
from gist.data import make_csbm
from gist.methods.gist.worker import make_workers
from gist.nn import build_model, build_split_spec


@pytest.fixture(scope="module")
def graph():
    return make_csbm(num_nodes=400, num_classes=4, num_features=24, avg_degree=8, seed=0)


class RecordingTransport(InProcessTransport):
    """Keeps what the workers returned, to check the merge against it."""

    def run_round(self, round, payloads):
        self.sent = [p.clone() for p in payloads]
        self.reports = super().run_round(round, payloads)
        return self.reports


def _trainer(
    graph, kind="gcn", norm=None, m=4, zeta=3, rounds=1, layers=3, hidden=16, seed=0, transport_cls=None, **cfg
):
    torch.manual_seed(seed)
    model = build_model(kind, graph.num_features, hidden, graph.num_classes, layers, dropout=0.5, norm=norm)
    config = RunConfig.from_flat(subnets=m, rounds=rounds, local_steps=zeta, seed=seed, **cfg)
    transport = None
    if transport_cls is not None:
        transport = transport_cls(make_workers(model, build_split_spec(model), graph.data, config))
    return GIST(model, graph.data, config, transport=transport)


def _group_of(partition, width):
    owner = torch.empty(sum(len(g) for g in partition.groups[width]), dtype=torch.long)
    for i, g in enumerate(partition.groups[width]):
        owner[g] = i
    return owner


@pytest.mark.parametrize("kind", ["gcn", "sage"])
@pytest.mark.parametrize("norm", [None, "batch_norm"])
def test_one_round_changes_only_diagonal_blocks_and_averages_shared(graph, kind, norm):
    m = 4
    trainer = _trainer(graph, kind, norm, m=m, transport_cls=RecordingTransport)
    before = copy.deepcopy(trainer.model.state_dict())
    trainer.run_round()
    after = trainer.model.state_dict()
    spec, layout = trainer.spec, trainer.layout
    part = draw_partition(spec.widths, m, seed=0, round=0)
    returned = [layout.unflatten(r.params) for r in trainer.transport.reports]
    for name, axes in spec.tensor_axes.items():
        if name in spec.shared:
            expected = torch.stack([r[name].double() for r in returned]).mean(0)
            if after[name].is_floating_point():
                torch.testing.assert_close(after[name], expected.to(after[name].dtype), rtol=0, atol=1e-7)
            else:
                assert after[name] == before[name] + 3  # each worker counted ζ = 3 batches
            continue
        # owner[i1, i2, ...] = group of each coordinate on split axes; -1 where groups disagree
        owner = None
        for dim, axis in enumerate(axes):
            if axis is None:
                continue
            shape = [1] * len(axes)
            shape[dim] = -1
            g = _group_of(part, axis).view(shape)
            owner = g if owner is None else torch.where(owner == g, owner, torch.full_like(owner, -1))
        owner = owner.expand_as(after[name])
        off_diagonal = owner == -1
        assert torch.equal(after[name][off_diagonal], before[name][off_diagonal]), name
        for i in range(m):
            block = after[name]
            for dim, axis in enumerate(axes):
                if axis is not None:
                    block = block.index_select(dim, part.groups[axis][i])
            assert torch.equal(block, returned[i][name]), name
        if after[name].is_floating_point() and "running_var" not in name:
            assert not torch.equal(after[name][~off_diagonal], before[name][~off_diagonal]), name


def _plain_training(graph, kind, norm, steps, seed=0, hidden=16, layers=3, snapshot_every=1):
    torch.manual_seed(seed)
    model = build_model(kind, graph.num_features, hidden, graph.num_classes, layers, dropout=0.5, norm=norm)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    data = graph.data
    snaps = []
    for step in range(steps):
        model.train()
        opt.zero_grad()
        out = model(data.x, data.edge_index)
        F.cross_entropy(out[data.train_mask], data.y[data.train_mask]).backward()
        opt.step()
        if (step + 1) % snapshot_every == 0:
            snaps.append(copy.deepcopy(model.state_dict()))
    return snaps


@pytest.mark.parametrize("kind,norm", [("gcn", "batch_norm"), ("sage", None)])
@pytest.mark.parametrize("zeta", [1, 3])
def test_m1_is_plain_training_step_for_step(graph, kind, norm, zeta):
    rounds = 12 // zeta
    plain = _plain_training(graph, kind, norm, steps=rounds * zeta, snapshot_every=zeta)
    trainer = _trainer(graph, kind, norm, m=1, zeta=zeta, rounds=rounds, sparse_adjacency=False)
    for r in range(rounds):
        trainer.run_round()
        state = trainer.model.state_dict()
        for k, v in plain[r].items():
            assert torch.equal(state[k], v), f"round {r}: {k} differs from the plain loop"


def _gcn_values(d0, d, c, L, m, norm=None):
    """|θ_i| from GUIDE §2, written out by hand for a stock GCN."""
    h = d // m
    n = d0 * h + h  # first layer weight + bias
    n += (L - 2) * (h * h + h)  # hidden-to-hidden layers
    n += h * c + c  # last layer weight + shared bias
    if norm == "batch_norm":
        n += (L - 1) * (4 * h + 1)  # weight, bias, running mean/var, num_batches_tracked
    if norm == "layer_norm":
        n += (L - 1) * 2 * h
    return n


def _sage_values(d0, d, c, L, m):
    h = d // m
    return (2 * d0 * h + h) + (L - 2) * (2 * h * h + h) + (2 * h * c + c)


@pytest.mark.parametrize(
    "kind,norm,m,layers",
    [
        ("gcn", None, 4, 3),
        ("gcn", "batch_norm", 2, 4),
        ("gcn", "layer_norm", 8, 2),
        ("sage", None, 4, 3),
        ("gcn", None, 1, 3),
    ],
)
def test_ledger_equals_analytic_count(graph, kind, norm, m, layers):
    rounds, d0, d, c = 3, graph.num_features, 32, graph.num_classes
    trainer = _trainer(graph, kind, norm, m=m, zeta=1, rounds=rounds, layers=layers, hidden=d)
    trainer.fit(progress=False)
    values = _sage_values(d0, d, c, layers, m) if kind == "sage" else _gcn_values(d0, d, c, layers, m, norm)
    assert trainer.layout.numel == values
    per_message = 4 * values  # float32
    ledger = trainer.ledger
    for r in range(rounds):
        for i in range(m):
            for direction in ("to_worker", "from_worker"):
                assert ledger.total(round=r, worker=i, direction=direction, kind="params") == per_message
    assert ledger.total(kind="params") == rounds * m * 2 * per_message
    summary = trainer.summary()
    assert summary["bytes_total"] == rounds * m * 2 * per_message
    assert summary["bytes_per_worker"] == rounds * 2 * per_message
    # data is counted once per worker at set-up, separately from parameters
    assert ledger.total(kind="data", round=-1) > 0 and ledger.total(kind="data", round=0) == 0
    assert [r.bytes_to_workers for r in trainer.history] == [m * per_message] * rounds


def test_partitioned_workers_hold_only_their_part(graph):
    trainer = _trainer(graph, "sage", None, m=4, zeta=2, rounds=2, data_mode="partitioned")
    workers = trainer.transport.workers
    n_ids = [w.batches.data.n_id for w in workers]
    assert sum(len(n) for n in n_ids) == graph.data.num_nodes
    assert len(torch.unique(torch.cat(n_ids))) == graph.data.num_nodes
    for w in workers:
        sub = w.batches.data
        assert sub.num_nodes < graph.data.num_nodes
        assert torch.equal(sub.train_mask, graph.data.train_mask[sub.n_id])
        assert torch.equal(sub.x, graph.data.x[sub.n_id])
    trainer.fit(progress=False)
    data_bytes = trainer.ledger.total(kind="data")
    replicated = _trainer(graph, "sage", None, m=4, rounds=1)
    replicated.fit(progress=False)
    assert data_bytes < replicated.ledger.total(kind="data") / 2


def test_cluster_batches_and_random_partitioner_run(graph):
    trainer = _trainer(
        graph, "gcn", "batch_norm", m=2, zeta=2, rounds=2, batching="cluster", num_clusters=8, clusters_per_batch=2
    )
    trainer.fit(progress=False)
    assert all(r.val is not None for r in trainer.history)
    trainer = _trainer(
        graph, "gcn", None, m=2, zeta=2, rounds=2, data_mode="partitioned", partitioner="random", halo_hops=1
    )
    trainer.fit(progress=False)
    assert trainer.summary()["rounds"] == 2


def test_same_seed_same_model_different_seed_different_model(graph):
    a = _trainer(graph, m=2, rounds=2, seed=5)
    b = _trainer(graph, m=2, rounds=2, seed=5)
    c = _trainer(graph, m=2, rounds=2, seed=6)
    for t in (a, b, c):
        t.fit(progress=False)
    sa, sb, sc = (t.model.state_dict() for t in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_eval_every(graph):
    trainer = _trainer(graph, m=2, rounds=5, eval_every=2)
    trainer.fit(progress=False)
    assert [r.val is not None for r in trainer.history] == [False, True, False, True, True]


@pytest.mark.parametrize("rounds, interval", [(30, 1), (50, 1), (51, 2), (120, 3), (1000, 20)])
def test_default_eval_every_bounds_the_evaluations(rounds, interval):
    cfg = RunConfig.from_flat(rounds=rounds)
    assert cfg.eval_every is None and cfg.eval_interval == interval
    evaluated = [r for r in range(rounds) if cfg.is_eval_round(r)]
    assert evaluated[-1] == rounds - 1 and len(evaluated) <= 51
    assert RunConfig.from_flat(rounds=rounds, eval_every=7).eval_interval == 7


def test_bad_config_values(graph):
    for kwargs, match in [
        ({"m": 0}, "subnets"),
        ({"zeta": 0}, "local_steps"),
        ({"data_mode": "sharded"}, "data_mode"),
        ({"partitioner": "kahip"}, "partitioner"),
        ({"eval_every": 0}, "eval_every"),
    ]:
        with pytest.raises(ValueError, match=match):
            _trainer(graph, **kwargs)
    from gist.nn import SplitError

    with pytest.raises(SplitError, match="not divisible"):
        _trainer(graph, m=3, hidden=16)


@pytest.mark.parametrize("kind", ["gcn", "sage"])
def test_sparse_adjacency_matches_edge_index(graph, kind):
    runs = []
    for sparse in (True, False):
        # no BatchNorm: a bias before BN has a zero true gradient, and Adam turns its
        # rounding noise into lr-sized steps that differ between the two formats
        trainer = _trainer(graph, kind, None, m=2, zeta=3, rounds=2, sparse_adjacency=sparse)
        trainer.fit(progress=False)
        runs.append(trainer.model.state_dict())
    for k, v in runs[0].items():
        torch.testing.assert_close(v, runs[1][k], rtol=1e-4, atol=1e-5)


def test_partitioned_mode_evaluates_on_the_workers(graph):
    from gist import evaluate

    # with a halo as deep as the model, each worker sees every edge its own
    # nodes' predictions depend on: the combined counts equal a full-graph evaluation
    trainer = _trainer(graph, "gcn", None, m=4, zeta=2, rounds=2, layers=2, data_mode="partitioned", halo_hops=2)
    trainer.fit(progress=False)
    full = evaluate(trainer.model, graph.data)
    last = trainer.history[-1]
    assert (last.train, last.val, last.test) == pytest.approx((full["train"], full["val"], full["test"]), abs=1e-6)
    full_numel = sum(v.numel() for v in trainer.model.state_dict().values())
    # each worker receives the model in float32 (whatever the recipe's bfloat16 wire), and sends 6 counts back
    assert trainer.options.wire_dtype == "bfloat16" and last.eval_bytes == 4 * (4 * full_numel + 6 * 8)
    assert trainer.summary()["eval_bytes_total"] == 2 * last.eval_bytes
    # the partitioned recipe's carried second moment travels beside the parameters
    assert trainer.summary()["bytes_total"] == trainer.ledger.total(kind="params") + trainer.ledger.total(kind="optim")
