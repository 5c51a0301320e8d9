"""GIST's sharded coordinator: shards and pieces are exact, the layer-by-layer
evaluation equals the full forward pass, the sharded run trains the central
run's model with the analytic all-to-all ledger, in one process and in real
processes, and its per-shard checkpoints resume exactly."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from faults import fault_env
from torch_geometric.nn.models import GCN, GraphSAGE

import gist.methods.gist.shards as shards_module
from gist.comm import FROM_WORKER, TO_WORKER
from gist.comm.group import DistContext, free_port
from gist.config import RunConfig
from gist.engine.optim import carried_keys
from gist.engine.setup import full_model, load_run_dataset
from gist.methods import GIST
from gist.methods.gist.sharded import ShardedGIST
from gist.methods.gist.sharded_eval import REQUEST_BYTES, DistShardFetcher
from gist.methods.gist.shards import FETCH_VALUES, Ownership, init_shards, owning_dim, sharded_eval_model
from gist.nn.models import build_model
from gist.nn.slicing import SplitError, build_split_spec
from gist.run import launch_local, run_training
from gist.subnets import draw_partition, slice_state, subnet_layout

pytestmark = pytest.mark.timeout(600)


def _models():
    torch.manual_seed(0)
    return {
        "gcn": GCN(12, 16, 3, 5),
        "sage-bn": GraphSAGE(12, 16, 3, 5, norm="batch_norm"),
        "sage-ln": GraphSAGE(12, 16, 3, 5, norm="layer_norm"),
        "sage-normalize": GraphSAGE(12, 16, 2, 5, normalize=True),
    }


@pytest.mark.parametrize("name", ["gcn", "sage-bn"])
@pytest.mark.parametrize("groups", [4, 2, 1])
def test_shards_hold_the_model_and_pieces_assemble_the_subnetworks_exactly(name, groups):
    model = _models()[name]
    spec, m = build_split_spec(model), 4
    own = Ownership(spec, m)
    state = model.state_dict()
    shards = [own.shard(state, o) for o in range(m)]
    assert sum(t.numel() for s in shards for t in s.values()) == sum(state[n].numel() for n in own.sliced)
    assert all(torch.equal(t, state[n]) for n, t in own.assemble(shards).items())
    partition = draw_partition(spec.widths, groups, seed=3, round=7)
    layout = subnet_layout(model, spec, groups)
    shapes = dict(zip(layout.names, layout.shapes))
    for g in range(groups):
        expected = slice_state(state, spec, partition, g)
        sub = {n: torch.full(shapes[n], float("nan")) for n in own.sliced}
        for o in range(m):
            plan = own.plan(partition, g, o)
            flat = own.take_from_shard(shards[o], plan)
            assert flat.numel() == own.piece_numel(plan, shapes)
            own.place_in_subnet(sub, own.unflatten(flat, plan, shapes), plan)
            # and back: the owner's rows of the sub-network are its piece
            assert torch.equal(own.take_from_subnet(expected, plan), flat)
        assert all(torch.equal(sub[n], expected[n]) for n in own.sliced)


@pytest.mark.parametrize("chunk", [None, 50], ids=["whole", "in-chunks"])
@pytest.mark.parametrize(
    "build",
    [
        lambda: GCN(12, 16, 3, 5, norm="batch_norm"),
        lambda: GraphSAGE(30, 32, 3, 5, norm="layer_norm"),
        lambda: build_model("gcn", 12, 16, 5, 3, dropout=0.5, norm="batch_norm", prenormalized=True),
    ],
    ids=["gcn-bn", "sage-ln", "prenormalized-gcn"],
)
def test_initialising_in_shards_gives_the_shards_of_the_built_model(monkeypatch, build, chunk):
    if chunk is not None:  # replay large tensors a few rows at a time, as a wide model's are
        monkeypatch.setattr(shards_module, "_CHUNK_VALUES", chunk)
    torch.manual_seed(3)
    model = build()
    after = torch.get_rng_state()
    own = Ownership(build_split_spec(model), 4)
    torch.manual_seed(3)
    template, shards, shared = init_shards(build, 4, [0, 2, 3])
    assert torch.equal(torch.get_rng_state(), after)  # worker 0 continues the stream as after a real build
    assert all(t.is_meta for t in template.state_dict().values())
    for o, shard in shards.items():
        expected = own.shard(model.state_dict(), o)
        assert all(torch.equal(shard[n], expected[n]) for n in own.sliced)
    assert all(torch.equal(shared[n], model.state_dict()[n]) for n in own.shared)
    assert torch.nn.Parameter(torch.ones(1)).device.type == "cpu"  # the Parameter hook is gone


def test_initialising_in_shards_refuses_what_it_cannot_replay():
    def build():
        model = GCN(4, 8, 2, 3)
        model.convs[0].lin.weight.data.mul_(2.0)  # depends on the values before it
        return model

    with pytest.raises(SplitError, match="cannot replay"):
        init_shards(build, 2, [0])


@pytest.mark.parametrize("fetch_values", [FETCH_VALUES, 40])
@pytest.mark.parametrize("name", ["gcn", "sage-bn", "sage-ln", "sage-normalize"])
def test_layer_by_layer_evaluation_equals_the_full_forward_pass(name, fetch_values):
    model = _models()[name].eval()
    spec, m = build_split_spec(model), 4
    own = Ownership(spec, m)
    state = model.state_dict()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for k, v in state.items():
            if "running_var" in k:
                v.uniform_(0.5, 2.0)
            elif "running_mean" in k:
                v.normal_()
    shards = [own.shard(state, o) for o in range(m)]
    fetched = []

    def fetch(layer, owner, rows):
        path = spec.layers[layer].path
        out = {n: own.rows(n, shards[owner][n], rows) for n in own.layer_names(path)}
        fetched.append((layer, owner, sum(t.numel() for t in out.values())))
        out.update({n: state[n] for n in own.shared if n.startswith(path + ".")})
        return out

    template = copy.deepcopy(model).to("meta")
    chunked = sharded_eval_model(template, own, fetch, fetch_values)
    x, edge_index = torch.randn(40, 12), torch.randint(0, 40, (2, 160))
    with torch.no_grad():
        expected, got = model(x, edge_index), chunked(x, edge_index)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert {layer for layer, _, _ in fetched} == set(range(len(spec.layers)))
    assert not list(chunked.parameters()) and not list(chunked.buffers())  # it holds nothing itself
    # every value of every owner's part fetched once, in chunks when a part is larger than fetch_values
    assert sum(n for _, _, n in fetched) == sum(t.numel() for shard in shards for t in shard.values())
    if fetch_values < FETCH_VALUES and name != "sage-normalize":  # its convolutions are computed whole
        assert len(fetched) > len(spec.layers) * m


def _fetching_rank(rank: int, port: int, out: str) -> None:
    """Rank 0 fetches rows of rank 1's buffers through :class:`DistShardFetcher`; rank 1 serves them."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        fetcher = DistShardFetcher(SimpleNamespace(ctx=DistContext(rank, 2, rank, "gloo", 60.0), num_workers=2))
        if rank == 1:
            fetcher.serve(_provide)
            return
        asked = [(0, slice(None)), (1, slice(0, 4)), (1, slice(4, None)), (2, slice(3, 5))]
        got = [fetcher.fetch(1, key, rows, torch.empty_like(_provide(1, key, rows)), _provide) for key, rows in asked]
        fetcher.end()
        torch.save(got, Path(out) / "fetched.pt")
    finally:
        torch.distributed.destroy_process_group()


def _provide(owner: int, key: int, rows: slice) -> torch.Tensor:
    return (torch.arange(24.0).view(8, 3) * (key + 1) + 100 * owner)[rows].reshape(-1)


def test_a_distributed_fetch_moves_the_rows_asked_for(tmp_path):
    mp.start_processes(_fetching_rank, args=(free_port(), str(tmp_path)), nprocs=2, start_method="spawn", join=True)
    got = torch.load(tmp_path / "fetched.pt", weights_only=True)
    asked = [(0, slice(None)), (1, slice(0, 4)), (1, slice(4, None)), (2, slice(3, 5))]
    assert [g.tolist() for g in got] == [_provide(1, key, rows).tolist() for key, rows in asked]


def _settings(tmp_path, **kw):
    base = {
        "dataset": "csbm",
        "root": str(tmp_path / "data"),
        "method": "gist",
        "hidden": 16,
        "subnets": 4,
        "local_steps": 2,
        "rounds": 3,
        "eval_every": 1,
        "threads": 1,
        "timeout": 60,
    }
    base.update(kw)
    return RunConfig.from_flat(**base)


def _train(cfg: RunConfig):
    ds = load_run_dataset(cfg)
    model = full_model(cfg, ds.num_features, ds.num_classes)
    driver = GIST(model, ds.data, cfg)
    assert type(driver) is GIST.coordinator_class(cfg) and isinstance(driver, GIST)
    driver.fit(progress=False)
    return driver, driver.model_state_dict()


def _piece_bytes(driver: ShardedGIST, round: int, worker: int, optim: bool = False) -> int:
    """What worker ``worker`` receives of its sub-network in ``round``: every
    value of it but those of the units it owns itself (along each tensor's
    owning width), each in the wire dtype; with ``optim``, of the Adam state
    it carries (three values per trainable parameter value)."""
    plan = driver.schedule.at(round)
    layout = driver.layouts[plan.groups]
    partition = draw_partition(driver.spec.widths, plan.groups, driver.cfg.seed, round, driver.settings.assignment)
    group = plan.group_of(worker)
    trainable = {n for n, p in driver.model.named_parameters() if p.requires_grad}
    total = 0
    for name, shape in zip(layout.names, layout.shapes):
        if optim and name not in trainable:
            continue
        axes = driver.spec.tensor_axes[name]
        dim = owning_dim(axes)
        if dim is None:
            continue
        units = partition.groups[axes[dim]][group]
        foreign = int((units % driver.cfg.subnets != worker).sum())
        total += shape.numel() // shape[dim] * foreign * driver.wire.itemsize * (_state_values(driver) if optim else 1)
    return total


def _state_values(driver) -> int:
    """State values that travel per trainable value under the run's carried policy."""
    return len(carried_keys(driver.carried_policy))


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"model": "sage", "norm": "batch_norm", "subnet_groups": 2},
        {"finish_rounds": 1, "rounds": 4},
        # the recipe: both carry Adam's state, the sharded one through the owners
        {"data_mode": "partitioned", "gist_recipe": "partitioned", "bn_reestimate": False, "subnets": 2},
        {
            "data_mode": "partitioned",
            "gist_recipe": "partitioned",
            "bn_reestimate": False,
            "wire_dtype": "bfloat16",
            "full_every": 2,
            "assignment": "rolling",
            "rounds": 4,
        },
        {
            "data_mode": "partitioned",
            "gist_recipe": "partitioned",
            "bn_reestimate": False,
            "optimizer_state": "second-moment",
            "rounds": 4,
        },
        {"wire_dtype": "bfloat16", "model": "sage", "norm": "batch_norm", "subnet_groups": 2},
    ],
    ids=[
        "plain",
        "sage-bn-groups",
        "finishing",
        "partitioned-recipe",
        "carried-bf16-full-rounds",
        "second-moment",
        "bfloat16-wire",
    ],
)
def test_sharded_trains_the_central_model_with_the_all_to_all_ledger(tmp_path, one_thread, kw):
    central, central_state = _train(_settings(tmp_path, coordinator="central", **kw))
    sharded, sharded_state = _train(_settings(tmp_path, coordinator="sharded", **kw))
    assert isinstance(sharded, ShardedGIST) and not isinstance(central, ShardedGIST)
    assert all(torch.equal(central_state[k], sharded_state[k]) for k in central_state)
    assert [(r.loss, r.val, r.test) for r in central.history] == [(r.loss, r.val, r.test) for r in sharded.history]
    assert all(p.device.type == "meta" for p in sharded.model.parameters())  # no full model kept
    m, ledger = sharded.cfg.subnets, sharded.ledger
    wire = sharded.wire
    # the shared tensors travel as in a central buffer: floats in the wire dtype, an integer as one float32
    # value, or as its 8 bytes in a 16-bit wire dtype
    int_bytes = 4 if wire == torch.float32 else 8
    shared_bytes = sum(
        int_bytes if not central_state[n].is_floating_point() else central_state[n].numel() * wire.itemsize
        for n in sharded.ownership.shared
    )
    for r in range(sharded.cfg.rounds):
        for w in range(m):
            pieces = _piece_bytes(sharded, r, w)
            assert ledger.total(round=r, worker=w, direction=TO_WORKER, kind="params") == pieces
            assert ledger.total(round=r, worker=w, direction=FROM_WORKER, kind="params") == pieces + shared_bytes * (
                m - 1
            )
    # the carried state moves as the parameters do, three values for each trainable one (one for second-moment)
    assert sharded.carries_optimizer == central.carries_optimizer == (kw.get("data_mode") == "partitioned")
    trainable = [n for n, p in sharded.model.named_parameters() if p.requires_grad]
    shared_state = sum(central_state[n].numel() for n in sharded.ownership.shared if n in trainable)
    for r in range(sharded.cfg.rounds) if sharded.carries_optimizer else ():
        for w in range(m):
            pieces = _piece_bytes(sharded, r, w, optim=True)
            assert ledger.total(round=r, worker=w, direction=TO_WORKER, kind="optim") == pieces
            assert ledger.total(round=r, worker=w, direction=FROM_WORKER, kind="optim") == pieces + _state_values(
                sharded
            ) * shared_state * wire.itemsize * (m - 1)
    if not sharded.carries_optimizer:
        assert ledger.total(kind="optim") == central.ledger.total(kind="optim") == 0
    # less than through a coordinator: a worker's own units never travel
    assert ledger.total(kind="params") < central.ledger.total(kind="params")
    assert ledger.total(kind="optim") <= central.ledger.total(kind="optim")
    for kind in ("stats", "control", "prior"):
        assert ledger.total(kind=kind) == central.ledger.total(kind=kind)
    # evaluation: worker 0 fetches every other owner's part of every layer (a request each) to score the
    # whole graph; each pass on the workers' own parts (one per BatchNorm re-estimated, one to score the
    # parts) brings every worker every other owner's part; each worker returns 6 counts
    sliced_bytes = 4 * sum(central_state[n].numel() for n in sharded.ownership.sliced)
    layers, passes = len(sharded.spec.layers), sharded.batch_norms_reestimated + int(sharded.scores_parts)
    per_eval = (m - 1) * (sliced_bytes // m + REQUEST_BYTES * layers) if sharded.evaluator is not None else 0
    per_eval += passes * m * (m - 1) * (sliced_bytes // m) + (6 * 8 * m if sharded.scores_parts else 0)
    assert ledger.total(kind="eval") == per_eval * sharded.cfg.rounds
    assert ledger.total(kind="bn_stats") == central.ledger.total(kind="bn_stats")


@pytest.mark.parametrize(
    "kw",
    [
        {"model": "sage", "subnets": 4},
        {"data_mode": "partitioned", "norm": "batch_norm"},
        {"data_mode": "partitioned", "norm": "batch_norm", "scorer": "parts", "wire_dtype": "bfloat16"},
    ],
    ids=["sage-m4", "partitioned-recipe-m2", "parts-bfloat16-m2"],
)
def test_sharded_processes_equal_the_simulation(tmp_path, one_thread, kw):
    kw = {"subnets": 2, **kw}
    cfg = _settings(tmp_path, coordinator="sharded", **kw)
    local = run_training(cfg.replace(save_model=str(tmp_path / "local.pt")), progress=False)
    dist = launch_local(cfg.replace(save_model=str(tmp_path / "dist.pt")), cfg.subnets, progress=False)
    a, b = (torch.load(tmp_path / n, weights_only=True) for n in ("local.pt", "dist.pt"))
    assert a.keys() == b.keys()
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-5

    def key(t):
        return (t["round"], t["worker"], t["direction"], t["kind"])

    assert sorted(local["ledger"], key=key) == sorted(dist["ledger"], key=key)
    assert [r["val"] for r in local["rounds"]] == pytest.approx([r["val"] for r in dist["rounds"]], abs=1e-6)
    assert dist["config"]["gist"]["coordinator"] == "sharded"


@pytest.mark.parametrize("scorer", ["graph", "parts"])
def test_sharded_runs_the_partitioned_recipe_with_batchnorm_reestimation(tmp_path, one_thread, scorer):
    # label prior, s = 2, BN re-estimation, Adam's state carried
    kw = {"data_mode": "partitioned", "norm": "batch_norm", "scorer": scorer}
    central, central_state = _train(_settings(tmp_path, coordinator="central", **kw))
    sharded, sharded_state = _train(_settings(tmp_path, coordinator="sharded", **kw))
    assert sharded.batch_norms_reestimated == 2 and sharded.scores_parts
    for name, value in central_state.items():
        if "running_" in name:  # re-estimated owner by owner: the same statistics to float rounding
            assert torch.allclose(value, sharded_state[name], rtol=1e-5, atol=1e-6), name
        else:  # training never reads the running statistics: the parameters bit for bit
            assert torch.equal(value, sharded_state[name]), name
    for a, b in zip(central.history, sharded.history):
        assert a.loss == b.loss
        assert (a.val, a.test, a.parts_val, a.parts_test) == pytest.approx((b.val, b.test, b.parts_val, b.parts_test))
    assert sharded.ledger.total(kind="bn_stats") == central.ledger.total(kind="bn_stats")


@pytest.mark.parametrize("kw", [{}, {"data_mode": "partitioned", "norm": "batch_norm"}], ids=["plain", "carried"])
def test_sharded_checkpoints_resume_exactly_across_processes_and_simulation(tmp_path, one_thread, kw):
    ckpt = tmp_path / "ckpt.pt"
    cfg = _settings(
        tmp_path, coordinator="sharded", subnets=2, rounds=5, checkpoint=str(ckpt), checkpoint_every=1, **kw
    )
    full = run_training(
        cfg.replace(checkpoint=str(tmp_path / "other" / "c.pt"), save_model=str(tmp_path / "full.pt")), progress=False
    )
    # three rounds in real processes, then the rest in one process from their shard files
    launch_local(cfg.replace(rounds=3), 2, progress=False)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["round"] == 3 and saved["model"] == {}
    assert sorted(p.name for p in tmp_path.glob("ckpt.pt.shard-*")) == [
        f"ckpt.pt.shard-{o}-of-2.round-{r}" for o in range(2) for r in (2, 3)
    ]  # the newest two per owner
    carried = GIST.carried_optimizer_state(cfg) is not None  # the recipe's second moment
    assert carried == bool(kw)
    assert sorted(p.name for p in tmp_path.glob("ckpt.pt.optim-shard-*")) == [
        f"ckpt.pt.optim-shard-{o}-of-2.round-{r}" for o in range(2) for r in (2, 3) if carried
    ]
    resumed = run_training(cfg.replace(resume=True, save_model=str(tmp_path / "resumed.pt")), progress=False)
    a, b = (torch.load(tmp_path / n, weights_only=True) for n in ("full.pt", "resumed.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val"] for r in resumed["rounds"]] == [r["val"] for r in full["rounds"]]
    assert resumed["summary"]["resumed_from"] == 3


def test_a_checkpoint_resumes_only_with_its_own_coordinator(tmp_path):
    for made, other in (("central", "sharded"), ("sharded", "central")):
        ckpt = tmp_path / f"{made}.pt"
        cfg = _settings(tmp_path, coordinator=made, subnets=2, rounds=2, checkpoint=str(ckpt), checkpoint_every=1)
        run_training(cfg, progress=False)
        with pytest.raises(ValueError, match=f"written by --coordinator {made}: resume it with --coordinator {made}"):
            run_training(cfg.replace(coordinator=other, resume=True, rounds=3), progress=False)


@pytest.mark.parametrize(
    "fault, message",
    [
        ("exit", "rank 1 exited with status 17; the other processes were stopped"),
        ("hang", "rank 1 failed during round 1 (assembling the sub-networks): PeerSilent: rank 1 is alive but hung"),
    ],
)
def test_a_dead_or_hung_sharded_worker_stops_the_run_naming_its_rank(tmp_path, fault, message):
    env = fault_env(f"1:1:{fault}")
    cmd = [sys.executable, "-m", "gist", "train", "--procs", "3", "--hidden", "12", "--rounds", "5"]
    cmd += ["--local-steps", "1", "--timeout", "5", "--threads", "1", "--no-progress", "--root", str(tmp_path)]
    proc = subprocess.run([*cmd, "--coordinator", "sharded"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert message in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]


@pytest.mark.parametrize("method", ["full", "ddp", "local-sgd"])
def test_the_sharded_coordinator_is_gists_only(tmp_path, method):
    with pytest.raises(ValueError, match=f"--coordinator is a setting of --method gist, not of --method {method}"):
        _settings(tmp_path, method=method, coordinator="sharded", subnets=1 if method == "full" else 2)
