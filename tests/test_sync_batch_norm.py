"""Synchronised BatchNorm (ddp's default): m workers' batches normalised
together equal one BatchNorm over their union, forward and backward; the
lockstep that runs them in one process names a collective misuse instead of
hanging; ddp counts the sums it moves and keeps ``own`` as before."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gist.comm.lockstep import Lockstep
from gist.config import RunConfig
from gist.errors import ConfigError
from gist.nn.sync_batch_norm import SyncBatchNorm1d, convert_sync_batch_norm, synchronised
from gist.run import run_training


def _batch_norm(channels: int = 5) -> nn.BatchNorm1d:
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return bn


def test_conversion_keeps_parameters_buffers_and_state_dict():
    model = nn.Sequential(nn.Linear(3, 5), _batch_norm(), nn.Sequential(_batch_norm()))
    weights = [model[1].weight, model[2][0].bias]
    keys = list(model.state_dict())
    assert convert_sync_batch_norm(model) == 2
    assert type(model[1]) is SyncBatchNorm1d and type(model[2][0]) is SyncBatchNorm1d
    assert model[1].weight is weights[0] and model[2][0].bias is weights[1]
    assert list(model.state_dict()) == keys


@pytest.mark.parametrize("sizes", [(30,), (12, 18), (7, 1, 13, 9)])
def test_workers_in_lockstep_equal_one_batch_norm_over_their_union(sizes):
    """Input gradients per worker, the weight and bias gradients summed over
    workers and the running statistics all equal plain BatchNorm over the
    concatenated batch (one worker: plain BatchNorm itself)."""
    torch.manual_seed(1)
    x, w = torch.randn(sum(sizes), 5) * 3 + 2, torch.randn(sum(sizes), 5)
    plain = _batch_norm()
    sync = nn.Sequential(copy.deepcopy(plain))
    convert_sync_batch_norm(sync)
    whole = x.clone().requires_grad_()
    (plain(whole) * w).sum().backward()

    pieces = list(torch.split(x, list(sizes)))
    weights = list(torch.split(w, list(sizes)))
    lockstep: Lockstep[torch.Tensor] = Lockstep(lambda given: sum(given[i] for i in sorted(given)))

    def worker(i: int):
        xi = pieces[i].clone().requires_grad_()
        with synchronised(lambda v: lockstep.combine(i, v), update_running_stats=i == 0):
            loss = (sync(xi) * weights[i]).sum()
            return torch.autograd.grad(loss, [xi, sync[0].weight, sync[0].bias])

    grads = lockstep.run([lambda i=i: worker(i) for i in range(len(sizes))])
    torch.testing.assert_close(torch.cat([g[0] for g in grads]), whole.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sum(g[1] for g in grads), plain.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sum(g[2] for g in grads), plain.bias.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sync[0].running_mean, plain.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sync[0].running_var, plain.running_var, rtol=1e-5, atol=1e-6)
    assert int(sync[0].num_batches_tracked) == 1
    # outside synchronised() and in evaluation it is plain BatchNorm
    sync.eval(), plain.eval()
    torch.testing.assert_close(sync(x), plain(x))


def test_lockstep_takes_turns_in_worker_order():
    order: list[tuple[str, int]] = []
    lockstep: Lockstep[int] = Lockstep(
        lambda given: sum(given.values()),
        switch_in=lambda i: order.append(("in", i)),
        switch_out=lambda i: order.append(("out", i)),
    )
    results = lockstep.run([lambda i=i: [lockstep.combine(i, i + 1), lockstep.combine(i, 10)] for i in range(3)])
    assert results == [[6, 30]] * 3
    turns = [i for what, i in order if what == "in"]
    assert turns == [0, 1, 2] * 3  # start, after the first combine, after the second


def test_lockstep_names_a_worker_that_combines_a_different_number_of_times():
    lockstep: Lockstep[int] = Lockstep(lambda given: sum(given.values()))
    tasks = [lambda: [lockstep.combine(0, 1), lockstep.combine(0, 1)], lambda: lockstep.combine(1, 1)]
    with pytest.raises(RuntimeError, match="must combine the same number of times"):
        lockstep.run(tasks)
    tasks = [lambda: lockstep.combine(0, 1), lambda: [lockstep.combine(1, 1), lockstep.combine(1, 1)]]
    with pytest.raises(RuntimeError, match="must combine the same number of times"):
        lockstep.run(tasks)


def test_lockstep_stops_every_worker_when_one_raises():
    lockstep: Lockstep[int] = Lockstep(lambda given: sum(given.values()))

    def failing() -> None:
        raise ValueError("worker 1 broke")

    with pytest.raises(ValueError, match="worker 1 broke"):
        lockstep.run([lambda: lockstep.combine(0, 1), failing, lambda: lockstep.combine(2, 1)])


SMALL = dict(dataset="csbm", layers=3, hidden=16, local_steps=2, rounds=2, data_mode="partitioned", subnets=2)


def test_ddp_counts_the_sums_and_own_keeps_worker_0s_statistics(tmp_path):
    """Synced (the default): three all-reduces per BatchNorm layer and step,
    as ``bn_sync``, inside the bytes total; every replica's running
    statistics are the global ones. Own: no such bytes, as before."""
    base = dict(SMALL, method="ddp", norm="batch_norm", root=str(tmp_path))
    synced = run_training(RunConfig.from_flat(**base), progress=False)
    own = run_training(RunConfig.from_flat(**base, batch_norm_stats="own"), progress=False)
    assert synced["config"]["ddp"]["batch_norm_stats"] == "synced"
    assert own["summary"]["bn_sync_bytes_total"] == 0
    layers, m, c = 2, 2, 16  # 3 layers: 2 hidden BatchNorm layers of 16 channels
    per_step = sum(2 * ((m - 1) * n // m) * 4 for n in (c + 1, c, 2 * c))  # both directions, per worker
    steps = SMALL["local_steps"] * SMALL["rounds"]
    assert synced["summary"]["bn_sync_bytes_total"] == m * layers * per_step * steps
    assert synced["summary"]["bytes_total"] == own["summary"]["bytes_total"] + synced["summary"]["bn_sync_bytes_total"]
    assert synced["rounds"][0]["loss"] != own["rounds"][0]["loss"]


def test_ddp_synced_gradient_is_that_of_the_joint_objective(tmp_path):
    """One step of in-process synced ddp (no dropout) moves the model as one
    Adam step on the mean of the workers' losses with BatchNorm over all
    their nodes together, computed here by hand."""
    import torch.nn.functional as F

    from gist.data import load_dataset
    from gist.engine import full_model, make_optimizer, worker_graphs
    from gist.graph import AdjacencyFormat
    from gist.methods import get_method

    cfg = RunConfig.from_flat(
        **dict(SMALL, rounds=1, local_steps=1), method="ddp", norm="batch_norm", dropout=0.0, root=str(tmp_path)
    )
    ds = load_dataset(cfg.data.dataset, root=cfg.data.root, seed=cfg.seed)
    model = full_model(cfg, ds.num_features, ds.num_classes)
    reference = copy.deepcopy(model)
    ddp = get_method("ddp")(model, ds.data, cfg)
    ddp.fit(progress=False)

    convert_sync_batch_norm(reference)
    reference.train()
    opt = make_optimizer(reference.parameters(), cfg.local)
    graphs = worker_graphs(ds.data, cfg)
    fmt = AdjacencyFormat.for_model(reference, cfg.data.sparse_adjacency)
    lockstep: Lockstep[torch.Tensor] = Lockstep(lambda given: given[0] + given[1])

    def loss(i: int) -> torch.Tensor:
        g = graphs[i]
        with synchronised(lambda v: lockstep.combine(i, v), update_running_stats=i == 0):
            out = reference(g.x, fmt.of(g))
            return F.cross_entropy(out[g.train_mask], g.y[g.train_mask]) / 2

    params = list(reference.parameters())
    grads = lockstep.run([lambda i=i: torch.autograd.grad(loss(i), params) for i in range(2)])
    for p, a, b in zip(params, *grads):
        p.grad = a + b
    opt.step()
    for (name, got), want in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


def test_in_process_synced_ddp_on_a_gpu_is_refused_with_the_way_out():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device: the refusal is for several workers of one process on a GPU")
    cfg = RunConfig.from_flat(**SMALL, method="ddp", norm="batch_norm", device="cuda")
    with pytest.raises(ConfigError, match="--batch-norm-stats own"):
        run_training(cfg, progress=False)
