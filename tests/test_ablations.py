"""GIST's ablation options: rolling assignment of units to groups, interleaved
full-width averaging rounds and HeteroFL's width scaler — each exact, each
moving the bytes it should, each the same in one process and on torch.distributed."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Data

from gist.config import RunConfig
from gist.data import load_dataset
from gist.engine import build_stock_model, full_model
from gist.errors import ConfigError
from gist.graph import AdjacencyFormat
from gist.methods import GIST
from gist.nn.slicing import build_split_spec
from gist.run import launch_local, run_training
from gist.subnets import (
    SubnetSchedule,
    build_subnet,
    draw_partition,
    load_subnet_state,
    rolling_step,
    scale_split_inputs,
    slice_state,
    subnet_layout,
)

pytestmark = pytest.mark.timeout(600)

SMALL = dict(
    dataset="csbm",
    layers=3,
    hidden=16,
    norm="batch_norm",
    local_steps=3,
    rounds=4,
    data_mode="partitioned",
    partitioner="metis",
    subnets=4,
)


def _trainer(tmp_path, **settings) -> GIST:
    cfg = RunConfig.from_flat(root=str(tmp_path), **{**SMALL, **settings})
    dataset = load_dataset(cfg.data.dataset, root=cfg.data.root, seed=cfg.seed)
    model = full_model(cfg, dataset.num_features, dataset.num_classes)
    return GIST(model, dataset.data, cfg)


# ---------------------------------------------------------------- rolling assignment


def test_rolling_windows_are_contiguous_move_each_round_and_visit_every_group():
    widths = {"h": 16}
    step = rolling_step(16, 2)
    assert step == 4
    seen = {u: set() for u in range(16)}
    for r in range(8):
        p = draw_partition(widths, 2, seed=0, round=r, assignment="rolling")
        groups = [p.indices("h", g).tolist() for g in range(2)]
        assert sorted(groups[0] + groups[1]) == list(range(16))  # a partition
        start = r * step % 16
        assert groups[0] == sorted((start + j) % 16 for j in range(8))  # group 0 is the window at r·δ
        assert p.indices("h", 0).tolist() == draw_partition(widths, 2, 7, r, "rolling").indices("h", 0).tolist()
        for g, units in enumerate(groups):
            for u in units:
                seen[u].add(g)
    assert all(groups == {0, 1} for groups in seen.values())  # every unit in every group within 2s rounds
    # units half the width apart never share a window, neighbours always do, a quarter apart half the time
    together = [
        sum(
            {0, u} <= set(draw_partition(widths, 2, 0, r, "rolling").indices("h", 0).tolist())
            or {0, u} <= set(draw_partition(widths, 2, 0, r, "rolling").indices("h", 1).tolist())
            for r in range(4)
        )
        for u in (1, 4, 8)
    ]
    assert together == [4, 2, 0]
    with pytest.raises(ConfigError, match="random or rolling"):
        draw_partition(widths, 2, 0, 0, "diagonal")


def test_rolling_assignment_and_full_rounds_agree_across_coordinators(tmp_path):
    torch.set_num_threads(1)
    settings = RunConfig.from_flat(root=str(tmp_path / "data"), **SMALL, assignment="rolling", full_every=2, threads=1)
    central = run_training(settings.replace(save_model=str(tmp_path / "central.pt")), progress=False)
    sharded = run_training(
        settings.replace(coordinator="sharded", save_model=str(tmp_path / "sharded.pt")), progress=False
    )
    random = run_training(settings.replace(assignment="random"), progress=False)
    assert central["config"]["gist"]["assignment"] == "rolling"
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("central", "sharded"))
    for k in a:  # both carry Adam's state: the same parameters bit for bit
        if "running_" in k:  # BatchNorm statistics re-estimated owner by owner: to float rounding
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(a[k], b[k]), k
    fresh = run_training(
        settings.replace(optimizer_state="fresh", save_model=str(tmp_path / "fresh.pt")), progress=False
    )
    c = torch.load(tmp_path / "fresh.pt", weights_only=True)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # carried state does change the run
    assert [r["loss"] for r in central["rounds"]] != [r["loss"] for r in random["rounds"]]
    assert central["summary"]["optimizer_state"] == sharded["summary"]["optimizer_state"] == "second-moment"
    assert fresh["summary"]["optimizer_state"] == "fresh"


# ---------------------------------------------------------------- interleaved full rounds


def test_full_every_interleaves_full_width_rounds_in_the_schedule():
    schedule = SubnetSchedule(num_workers=8, groups=2, rounds=10, full_every=3)
    assert [schedule.at(r).groups for r in range(10)] == [2, 2, 1, 2, 2, 1, 2, 2, 1, 2]
    assert schedule.group_counts() == [1, 2]
    both = SubnetSchedule(num_workers=8, groups=2, rounds=6, finish_rounds=1, full_every=4)
    assert [both.at(r).groups for r in range(6)] == [2, 2, 2, 1, 2, 1]
    assert SubnetSchedule(num_workers=8, groups=2, rounds=4).group_counts() == [2]
    with pytest.raises(ConfigError, match="full_every"):
        SubnetSchedule(num_workers=8, groups=2, rounds=4, full_every=-1)


def test_full_rounds_move_the_full_model_and_its_optimizer_state(tmp_path):
    trainer = _trainer(tmp_path, full_every=2)
    trainer.fit(progress=False)
    assert trainer.wire == torch.bfloat16  # the recipe's: 2 bytes a value, an integer as its 8 bytes
    half = subnet_layout(trainer.model, trainer.spec, 2).wire_numel(torch.bfloat16)
    full = subnet_layout(trainer.model, trainer.spec, 1).wire_numel(torch.bfloat16)
    params = [trainer.ledger.total(round=r, kind="params") for r in range(4)]
    # 4 workers each receive and return their sub-network; rounds 1 and 3 the full model
    assert params == [2 * 4 * 2 * n for n in (half, full, half, full)]
    optim = [trainer.ledger.total(round=r, kind="optim") for r in range(4)]
    assert optim[1] > optim[0] > 0 and optim[0] == optim[2] and optim[1] == optim[3]


def test_full_every_distributed_equals_in_process(tmp_path):
    torch.set_num_threads(1)
    settings = RunConfig.from_flat(
        root=str(tmp_path / "data"), **SMALL, full_every=2, width_scaler=True, threads=1, timeout=60
    )
    local = run_training(settings.replace(save_model=str(tmp_path / "local.pt")), progress=False)
    dist = launch_local(settings.replace(save_model=str(tmp_path / "dist.pt")), 4, progress=False)
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("local", "dist"))
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-5
    key = lambda t: (t["round"], t["worker"], t["direction"], t["kind"])  # noqa: E731
    assert sorted(local["ledger"], key=key) == sorted(dist["ledger"], key=key)


# ---------------------------------------------------------------- width scaler


@pytest.mark.parametrize("model_name", ["gcn", "sage"])
def test_width_scaler_is_the_narrow_layers_weights_times_s(model_name):
    torch.manual_seed(0)
    cfg = RunConfig.from_flat(model=model_name, hidden=8, layers=3, norm="none", dropout=0.0)
    model = build_stock_model(cfg, 5, 3)
    spec = build_split_spec(model)
    partition = draw_partition(spec.widths, 2, seed=0, round=0)
    state = slice_state(model.state_dict(), spec, partition, 0)
    plain, scaled = build_subnet(model, spec, 2), build_subnet(model, spec, 2)
    load_subnet_state(plain, state)
    load_subnet_state(scaled, state)
    handles = scale_split_inputs(scaled, spec, 2.0)
    assert len(handles) == 2  # the hidden-to-hidden layer and the head; not the first layer, not the norms
    with torch.no_grad():
        for name, p in plain.named_parameters():
            if name.startswith(("convs.1.", "convs.2.")) and "weight" in name:
                p.mul_(2.0)
    x = torch.randn(6, 5)
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0]])
    adj = AdjacencyFormat.for_model(model).of(Data(x=x, edge_index=edge_index, num_nodes=6))
    torch.testing.assert_close(scaled(x, adj), plain(x, adj), rtol=1e-6, atol=1e-6)
    for h in handles:
        h.remove()


def test_width_scaler_changes_only_the_local_steps_of_narrow_rounds(tmp_path):
    base = _trainer(tmp_path, rounds=2)
    scaled = _trainer(tmp_path, rounds=2, width_scaler=True)
    one_group = _trainer(tmp_path, rounds=2, width_scaler=True, subnet_groups=1)
    unscaled_one_group = _trainer(tmp_path, rounds=2, subnet_groups=1)
    for t in (base, scaled, one_group, unscaled_one_group):
        t.fit(progress=False)
    assert any(not torch.equal(v, scaled.model.state_dict()[k]) for k, v in base.model.state_dict().items())
    assert base.ledger.records() == scaled.ledger.records()  # the same bytes
    # s = 1: no narrow sub-network, nothing to scale
    for k, v in unscaled_one_group.model.state_dict().items():
        assert torch.equal(v, one_group.model.state_dict()[k]), k
