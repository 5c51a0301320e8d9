"""``--method fsdp``: fully sharded data parallelism equals ``ddp`` where it
must, and its ledger is what ``fully_shard`` moves.

The distributed runs are real spawned processes (gloo, loopback) training a
model wrapped by ``torch.distributed.fsdp.fully_shard`` per layer; their
ledger is recorded by the counting collectives FSDP itself calls. With SGD a
gradient summed where it should be averaged (the FSDP-on-gloo trap of pytorch
issue 162338) would make every step ``m`` times too long, which the
comparison with ``ddp`` catches; Adam would hide it (its step does not scale
with the gradient).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gist import RunConfig
from gist.comm.ledger import FROM_WORKER, TO_WORKER
from gist.errors import ConfigError
from gist.methods.fsdp import shard_units
from gist.run import launch_local, run_training

pytestmark = pytest.mark.timeout(600)

SMALL = dict(
    dataset="csbm",
    layers=3,
    hidden=16,
    norm="batch_norm",
    local_steps=3,
    rounds=3,
    data_mode="partitioned",
    eval_every=1,
    threads=1,
)


def _run(tmp_path, name: str, **flat):
    cfg = RunConfig.from_flat(root=str(tmp_path / "data"), **{**SMALL, **flat}, save_model=str(tmp_path / f"{name}.pt"))
    return run_training(cfg, progress=False), torch.load(tmp_path / f"{name}.pt", weights_only=True)


def _transfers(log, kind=None):
    """The ledger as a multiset (the order of the collectives within a step differs between the forms)."""
    return sorted(
        (t["round"], t["worker"], t["direction"], t["kind"], t["nbytes"])
        for t in log["ledger"]
        if kind is None or t["kind"] == kind
    )


def test_fsdp_in_one_process_trains_ddps_model(tmp_path, one_thread):
    ddp, a = _run(tmp_path, "ddp", method="ddp", model="sage", subnets=2)
    fsdp, b = _run(tmp_path, "fsdp", method="fsdp", model="sage", subnets=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val"] for r in fsdp["rounds"]] == [r["val"] for r in ddp["rounds"]]
    # the same synchronised BatchNorm traffic; parameters 3 (m-1)/m |θ| a step against ddp's 2 (m-1)/m |θ|
    assert _transfers(fsdp, "bn_sync") == _transfers(ddp, "bn_sync")
    steps = SMALL["rounds"] * SMALL["local_steps"]
    numel = fsdp["summary"]["subnet_params"]
    train = lambda log: sum(t["nbytes"] for t in log["ledger"] if t["kind"] == "params" and t["round"] >= 0)  # noqa: E731
    assert train(ddp) == 2 * steps * 2 * (numel // 2) * 4  # m = 2 workers, each sends and receives |θ|/2
    # FSDP's shards are equal: the 5 classes' rows are padded to 6
    params = [v for k, v in a.items() if not k.rsplit(".", 1)[-1].startswith(("running_", "num_batches"))]
    padded = sum(math.ceil(v.shape[0] / 2) * 2 * v[0].numel() for v in params)
    assert sum(v.numel() for v in params) == numel < padded
    # 3 (m-1)/m |θ̃| a step, and after each of the two evaluated rounds before the last FSDP prefetches the
    # last layer once more (it remembers the scoring pass's order; 6 x 16 x 2 weights and 6 biases padded)
    assert train(fsdp) == 2 * steps * 3 * (padded // 2) * 4 + 2 * 2 * (198 // 2) * 4


def test_fsdp_counts_two_all_gathers_and_a_reduce_scatter_per_layer_and_step(tmp_path, one_thread):
    log, _ = _run(tmp_path, "fsdp", method="fsdp", model="gcn", subnets=3)
    from gist.data import load_dataset
    from gist.engine.setup import build_stock_model

    cfg = RunConfig.from_flat(method="fsdp", **{**SMALL, "model": "gcn"}, root=str(tmp_path / "data"))
    dataset = load_dataset("csbm", root=cfg.data.root, seed=0)
    model = build_stock_model(cfg, dataset.num_features, dataset.num_classes)
    units = shard_units(model, 3)
    assert [u.name for u in units] == ["convs.0", "convs.1", "convs.2", "norms.0", "norms.1"]
    # each parameter padded to three equal shards along its first dimension (16 rows: 18; 5 classes: 6)
    padded = sum(math.ceil(p.shape[0] / 3) * 3 * p[0].numel() for p in model.parameters())
    assert sum(u.padded_numel for u in units) == padded > sum(p.numel() for p in model.parameters())
    for r in range(SMALL["rounds"]):
        for w in range(3):
            got = {
                d: sum(
                    t["nbytes"]
                    for t in log["ledger"]
                    if (t["round"], t["worker"], t["direction"], t["kind"]) == (r, w, d, "params")
                )
                for d in (TO_WORKER, FROM_WORKER)
            }
            # received: two all-gathers a step, (m-1)/m of each unit, and after an evaluated round FSDP's
            # prefetch of the last layer once more; sent: one reduce-scatter a step
            again = units[2].padded_numel * 2 // 3 * 4 if r > 0 else 0
            assert got[TO_WORKER] == SMALL["local_steps"] * 2 * sum(u.padded_numel * 2 // 3 for u in units) * 4 + again
            assert got[FROM_WORKER] == SMALL["local_steps"] * sum(u.padded_numel * 2 // 3 for u in units) * 4
    # scoring gathers the model to the coordinator once per evaluated round: (m-1)/m of it to every worker
    eval_bytes = [sum(t["nbytes"] for t in log["ledger"] if t["kind"] == "eval" and t["round"] == r) for r in range(3)]
    assert eval_bytes == [3 * (padded * 2 // 3) * 4] * 3


@pytest.mark.parametrize(
    "flat",
    [
        dict(model="sage", subnets=2),  # Adam, bit for bit
        dict(model="gcn", subnets=3, optimizer="sgd", lr=0.1),  # padded shards; SGD would show a summed gradient
    ],
    ids=["sage-adam-m2", "gcn-sgd-m3-padded"],
)
def test_fsdp_processes_equal_ddp_in_process_and_record_what_they_move(tmp_path, one_thread, flat):
    ddp, a = _run(tmp_path, "ddp", method="ddp", **flat)
    local, _ = _run(tmp_path, "local", method="fsdp", **flat)
    cfg = RunConfig.from_flat(
        root=str(tmp_path / "data"), method="fsdp", **{**SMALL, **flat}, save_model=str(tmp_path / "dist.pt")
    )
    dist = launch_local(cfg, cfg.subnets, progress=False)
    b = torch.load(tmp_path / "dist.pt", weights_only=True)
    assert a.keys() == b.keys()
    if flat["subnets"] == 2:
        assert all(torch.equal(a[k], b[k]) for k in a)
    else:  # gloo's reduce-scatter sums three values in its own order
        assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-5
    assert [r["val"] for r in dist["rounds"]] == pytest.approx([r["val"] for r in ddp["rounds"]], abs=1e-6)
    assert _transfers(dist) == _transfers(local)  # what fully_shard moved is what the simulation counts
    assert dist["summary"]["method"] == "fsdp" and dist["config"]["method"] == "fsdp"


def test_fsdp_checkpoints_are_distributed_checkpoints_and_resume_exactly(tmp_path, one_thread):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    ckpt = tmp_path / "ckpt.pt"
    cfg = RunConfig.from_flat(
        root=str(tmp_path / "data"),
        method="fsdp",
        **{**SMALL, "model": "sage", "rounds": 5},
        subnets=2,
        checkpoint=str(ckpt),
        checkpoint_every=1,
    )
    full = launch_local(
        cfg.replace(checkpoint=str(tmp_path / "other.pt"), save_model=str(tmp_path / "full.pt")), 2, progress=False
    )
    launch_local(cfg.replace(rounds=3), 2, progress=False)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["round"] == 3 and saved["model"] == {} and saved["method_state"]["fsdp"]["shards"] == 2
    assert sorted(p.name for p in tmp_path.glob("ckpt.pt.fsdp-2.round-*")) == [
        "ckpt.pt.fsdp-2.round-2",
        "ckpt.pt.fsdp-2.round-3",
    ]  # the newest two, each a complete distributed checkpoint
    # what any FSDP user does with it: one torch.save file of the model and Adam's state
    dcp_to_torch_save(tmp_path / "ckpt.pt.fsdp-2.round-3", tmp_path / "plain.pt")
    plain = torch.load(tmp_path / "plain.pt", weights_only=False)
    assert set(plain) == {"model", "optim"} and "convs.0.lin_l.weight" in plain["model"]
    resumed = launch_local(cfg.replace(resume=True, save_model=str(tmp_path / "resumed.pt")), 2, progress=False)
    a, b = (torch.load(tmp_path / n, weights_only=True) for n in ("full.pt", "resumed.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val"] for r in resumed["rounds"]] == [r["val"] for r in full["rounds"]]
    # the rounds' traffic as uninterrupted (the resumed job did its set-up once more), but for the prefetch
    # of the last layer after the scoring pass of round 2, which the new processes never made
    rounds = lambda log: [t for t in _transfers(log) if t[0] >= 0]  # noqa: E731
    expected = rounds(full)
    for w in range(2):
        expected.remove((3, w, TO_WORKER, "params", 396))  # a ValueError if that prefetch was not there
    assert rounds(resumed) == expected
    with pytest.raises(ValueError, match="resume it the same way, with the same m"):
        run_training(cfg.replace(resume=True), progress=False)  # in one process


def test_fsdp_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="--batch-norm-stats is a setting of --method ddp, not of --method fsdp"):
        RunConfig.from_flat(method="fsdp", batch_norm_stats="own")

    class Loose(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.ModuleList([nn.Linear(2, 2)])
            self.scale = nn.Parameter(torch.ones(1))

    with pytest.raises(ConfigError, match=r"lie outside them"):
        shard_units(Loose(), 2)
