"""What a worker's optimizer starts each round from (``--optimizer-state``):
GIST's carried Adam state (all of it, or its second moment alone) is exact
(sliced out and written back like the parameters), its bytes are what it
moves, processes equal the simulation, and local SGD offers fresh, kept and
carried."""

from __future__ import annotations

import copy

import pytest
import torch

from gist.config import RunConfig
from gist.data import load_dataset
from gist.engine import full_model
from gist.engine.optim import STATE_KEYS, EntrywiseAdam, SecondMomentAdam, load_state_tensors, state_tensors
from gist.methods import GIST
from gist.methods.gist.transport import InProcessTransport
from gist.run import launch_local, run_training
from gist.subnets import slice_state

pytestmark = pytest.mark.timeout(600)

SMALL = dict(dataset="csbm", layers=3, hidden=16, norm="batch_norm", local_steps=3, rounds=3, data_mode="partitioned")


def _beside_torch_adam(cls):
    """40 steps of ``cls`` and of ``torch.optim.Adam`` from the same start and
    data; asserts they agree; returns ``(ours, theirs, our model, their model)``."""
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    b = copy.deepcopy(a)
    ours = cls(b.parameters(), lr=0.01, weight_decay=1e-3)
    theirs = torch.optim.Adam(a.parameters(), lr=0.01, weight_decay=1e-3)
    x = torch.randn(32, 6)
    for _ in range(40):
        for model, opt in ((a, theirs), (b, ours)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    return ours, theirs, b, a


def test_entrywise_adam_is_torch_adam_from_a_fresh_start():
    ours, _, b, _ = _beside_torch_adam(EntrywiseAdam)
    # its state, out and back in, is the same optimizer
    named = dict(b.named_parameters())
    state = {k: v.clone() for k, v in state_tensors(ours, named).items()}
    assert set(state) == {f"{n}.{k}" for n in named for k in STATE_KEYS}
    assert all(torch.all(state[f"{n}.step"] == 40) for n in named)
    again = EntrywiseAdam(b.parameters(), lr=0.01, weight_decay=1e-3)
    load_state_tensors(again, named, state)
    assert all(torch.equal(state_tensors(again, named)[k], v) for k, v in state.items())


def test_second_moment_adam_is_torch_adam_from_a_fresh_start():
    ours, theirs, b, a = _beside_torch_adam(SecondMomentAdam)
    # what travels is the second moment alone, bias-corrected: torch's v / (1 - beta2^40)
    named = dict(b.named_parameters())
    state = state_tensors(ours, named)
    assert set(state) == {f"{n}.exp_avg_sq" for n in named}
    for n, p in zip(named, a.parameters()):
        expected = theirs.state[p]["exp_avg_sq"] / (1 - 0.999**40)
        torch.testing.assert_close(state[f"{n}.exp_avg_sq"], expected, rtol=1e-5, atol=1e-12)


def test_second_moment_adam_continues_a_warm_average_and_starts_cold_entries_fresh():
    """Sent v̂: a warm entry's first step is lr·g/√(β2·v̂ + (1-β2)·g²) (no
    reset: a gradient ten times smaller than the carried scale moves it ten
    times less), a cold entry's (v̂ = 0) is a fresh Adam's ≈ lr·sign(g); what
    it returns after k steps is the running average, corrected only where cold."""
    p = torch.nn.Parameter(torch.zeros(2))
    opt = SecondMomentAdam([p], lr=0.1)
    v_hat = torch.tensor([4.0, 0.0])
    load_state_tensors(opt, {"w": p}, {"w.exp_avg_sq": v_hat})
    g = torch.tensor([0.2, 0.2])
    p.grad = g.clone()
    opt.step()
    v1 = 0.999 * v_hat + 0.001 * g**2
    expected_warm = -0.1 * 0.2 / (v1[0].sqrt() + 1e-8)
    torch.testing.assert_close(p[0], expected_warm)
    torch.testing.assert_close(p[1], torch.tensor(-0.1), rtol=1e-6, atol=1e-7)
    assert abs(p[0].item()) < 0.011  # a tenth of the learning rate: the scale survived the round
    for _ in range(4):
        p.grad = g.clone()
        opt.step()
    v5 = 0.999**5 * v_hat + (1 - 0.999**5) * g**2
    out = state_tensors(opt, {"w": p})["w.exp_avg_sq"]
    torch.testing.assert_close(out, torch.stack([v5[0], g[1] ** 2]))
    # a constant gradient keeps its square, warm or cold, through any number of rounds
    q = torch.nn.Parameter(torch.zeros(3))
    state = {"w.exp_avg_sq": torch.zeros(3)}
    for _ in range(3):
        opt = SecondMomentAdam([q], lr=0.1)
        load_state_tensors(opt, {"w": q}, state)
        for _ in range(7):
            q.grad = torch.tensor([0.5, -2.0, 1e-3])
            opt.step()
        state = {k: v.clone() for k, v in state_tensors(opt, {"w": q}).items()}
        torch.testing.assert_close(state["w.exp_avg_sq"], torch.tensor([0.25, 4.0, 1e-6]))


class Recording(InProcessTransport):
    """An in-process transport that keeps what it sent and got back."""

    def run_round(self, round, payloads, optim=None):
        self.sent = [t.clone() for t in optim]
        reports = super().run_round(round, payloads, optim)
        self.back = [r.optim.clone() for r in reports]
        return reports


def _gist(tmp_path, transport_cls=InProcessTransport, **settings):
    from gist.methods.gist.worker import make_workers
    from gist.nn.slicing import build_split_spec

    cfg = RunConfig.from_flat(root=str(tmp_path), **{**SMALL, "optimizer_state": "carried", **settings})
    ds = load_dataset(cfg.data.dataset, root=cfg.data.root, seed=cfg.seed)
    model = full_model(cfg, ds.num_features, ds.num_classes)
    transport = transport_cls(make_workers(model, build_split_spec(model), ds.data, cfg))
    return GIST(model, ds.data, cfg, transport=transport)


@pytest.mark.parametrize("policy", ["carried", "second-moment"])
@pytest.mark.parametrize("groups", [4, 2])
def test_carried_state_is_sliced_out_and_written_back_exactly(tmp_path, groups, policy):
    """With s groups of m = 4 workers: each worker receives exactly its slice
    of the coordinator's state; the coordinator then holds, in every slice a
    group trained, the mean of what that group's workers returned, and
    elsewhere what it held before."""
    driver = _gist(tmp_path, Recording, subnets=4, subnet_groups=groups, gist_recipe="plain", optimizer_state=policy)
    driver.run_round()  # round 0 starts from zeros
    carried, wire = driver.carried, driver.wire
    before = {k: v.clone() for k, v in carried.tensors.items()}
    assert {k.rpartition(".")[2] for k in before} == set(STATE_KEYS if policy == "carried" else ["exp_avg_sq"])
    assert any(v.abs().sum() > 0 for k, v in before.items() if k.endswith("exp_avg_sq"))
    from gist.subnets import average_states, draw_partition

    plan = driver.schedule.at(1)
    partition = draw_partition(driver.spec.widths, plan.groups, driver.cfg.seed, 1)
    layout = carried.layouts[plan.groups]
    driver.run_round()
    for w, sent in enumerate(driver.transport.sent):
        expected = slice_state(before, carried.spec, partition, plan.group_of(w))
        assert torch.equal(sent, layout.encode(layout.flatten(expected), wire)), w
    returned = [layout.unflatten(layout.decode(t)) for t in driver.transport.back]
    for g in range(plan.groups):
        mean = average_states([returned[w] for w in plan.members(g)])
        now = slice_state(carried.tensors, carried.spec, partition, g)
        for name in carried.spec.sliced:
            assert torch.equal(now[name], mean[name]), name
    # a step count went up by ζ exactly where a worker trained the entry this round, and nowhere else
    zeta = driver.cfg.local.local_steps
    for name in (k for k in carried.tensors if k.endswith(".step")):  # (second-moment carries none)
        delta = carried.tensors[name] - before[name]
        assert set(delta.unique().tolist()) <= {0.0, float(zeta)}, name
        if name in carried.spec.sliced:
            every = {**carried.tensors, name: delta}
            blocks = sum(slice_state(every, carried.spec, partition, g)[name].numel() for g in range(groups))
            assert int((delta > 0).sum()) == blocks, name
        else:  # a shared parameter: every worker trains it
            assert torch.all(delta == zeta), name


def test_carried_bytes_are_three_values_per_trained_value_each_way_and_one_for_the_second_moment(tmp_path):
    driver = _gist(tmp_path, subnets=4, gist_recipe="plain")
    driver.fit(progress=False)
    layout = driver.layout
    params = {n for n, p in driver.model.named_parameters()}
    values = sum(torch.Size(s).numel() for n, s in zip(layout.names, layout.shapes) if n in params)
    per_message = 3 * values * 4  # exp_avg, exp_avg_sq and step, float32
    for r in range(driver.cfg.rounds):
        for w in range(4):
            assert driver.ledger.total(round=r, worker=w, kind="optim", direction="to_worker") == per_message
            assert driver.ledger.total(round=r, worker=w, kind="optim", direction="from_worker") == per_message
    fresh = _gist(tmp_path, subnets=4, gist_recipe="plain", optimizer_state="fresh")
    fresh.fit(progress=False)
    assert fresh.ledger.total(kind="optim") == 0
    assert fresh.ledger.total(kind="params") == driver.ledger.total(kind="params")
    summary = driver.summary()
    assert summary["optimizer_state"] == "carried" and summary["optim_bytes_total"] == 2 * 4 * 3 * per_message
    bf16 = _gist(tmp_path, subnets=4, gist_recipe="plain", wire_dtype="bfloat16")
    bf16.fit(progress=False)
    assert bf16.ledger.total(kind="optim") == driver.ledger.total(kind="optim") // 2
    second = _gist(tmp_path, subnets=4, gist_recipe="plain", optimizer_state="second-moment")
    second.fit(progress=False)
    for r in range(driver.cfg.rounds):
        for w in range(4):
            for direction in ("to_worker", "from_worker"):
                assert second.ledger.total(round=r, worker=w, kind="optim", direction=direction) == values * 4
    assert second.summary()["optimizer_state"] == "second-moment"


def test_gist_with_one_group_carried_is_local_sgd_carried_but_for_rounding(tmp_path):
    """With s = 1 every GIST worker trains the whole model and the copies are
    averaged; carrying Adam's state averages it too, which is local SGD with
    carried (averaged) moments. With dropout 0 and the whole graph on every
    worker (no dropout or batch stream to differ) what remains is float
    rounding: GIST's per-entry Adam computes its bias correction in float64,
    torch's Adam from a Python float, and GIST averages in float64. (Without
    BatchNorm: Adam would turn the rounding noise in the zero gradient of a
    bias right before BatchNorm into full steps.)"""
    base = dict(SMALL, data_mode="replicated", dropout=0.0, subnets=4, optimizer_state="carried", seed=3)
    base["norm"] = "none"
    gist = run_training(
        RunConfig.from_flat(
            method="gist", subnet_groups=1, save_model=str(tmp_path / "g.pt"), root=str(tmp_path), **base
        ),
        progress=False,
    )
    local = run_training(
        RunConfig.from_flat(method="local-sgd", save_model=str(tmp_path / "l.pt"), root=str(tmp_path), **base),
        progress=False,
    )
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("g", "l"))
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert [r["val"] for r in gist["rounds"]] == pytest.approx([r["val"] for r in local["rounds"]], abs=0.01)


@pytest.mark.parametrize("policy", ["carried", "second-moment"])
def test_processes_equal_the_simulation_with_carried_state(tmp_path, policy):
    torch.set_num_threads(1)
    settings = RunConfig.from_flat(
        root=str(tmp_path / "data"), **SMALL, subnets=4, optimizer_state=policy, threads=1, timeout=60
    )
    local = run_training(settings.replace(save_model=str(tmp_path / "local.pt")), progress=False)
    dist = launch_local(settings.replace(save_model=str(tmp_path / "dist.pt")), 4, progress=False)
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("local", "dist"))
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-5
    key = lambda t: (t["round"], t["worker"], t["direction"], t["kind"])  # noqa: E731
    assert sorted(local["ledger"], key=key) == sorted(dist["ledger"], key=key)
    assert local["summary"]["optim_bytes_total"] > 0


@pytest.mark.parametrize("policy", ["carried", "second-moment"])
def test_carried_state_resumes_from_a_checkpoint(tmp_path, policy):
    base = RunConfig.from_flat(
        root=str(tmp_path),
        **{**SMALL, "rounds": 4},
        subnets=2,
        optimizer_state=policy,
        checkpoint=str(tmp_path / "c.pt"),
        checkpoint_every=1,
    )
    run_training(base.replace(save_model=str(tmp_path / "full.pt"), checkpoint=str(tmp_path / "x.pt")), progress=False)
    run_training(base.replace(rounds=2), progress=False)
    run_training(base.replace(resume=True, save_model=str(tmp_path / "resumed.pt")), progress=False)
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("full", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "flat, message",
    [
        (dict(method="ddp", optimizer_state="carried"), "ddp's optimizer starts each round from kept"),
        (
            dict(method="gist", optimizer_state="kept"),
            "gist's optimizer starts each round from fresh or carried or second-moment",
        ),
        (dict(method="gist", optimizer_state="carried", optimizer="sgd"), "use --optimizer adam"),
        (dict(method="gist", optimizer_state="second-moment", optimizer="sgd"), "second-moment moves Adam's"),
        (dict(method="local-sgd", optimizer_state="second-moment"), "local-sgd's optimizer starts each round"),
    ],
)
def test_policies_a_method_does_not_offer_are_refused(flat, message):
    from gist.methods import get_method

    cfg = RunConfig.from_flat(**flat)
    with pytest.raises(ValueError, match=message):
        get_method(cfg.method).check_run(cfg)


def test_local_sgd_fresh_starts_every_round_from_a_new_optimizer(tmp_path):
    """Its first round equals kept's; later rounds differ (kept's optimizer remembers)."""
    base = dict(SMALL, method="local-sgd", subnets=2, root=str(tmp_path))
    kept = run_training(RunConfig.from_flat(**base), progress=False)
    fresh = run_training(RunConfig.from_flat(**base, optimizer_state="fresh"), progress=False)
    carried = run_training(RunConfig.from_flat(**base, optimizer_state="carried"), progress=False)
    assert kept["rounds"][0]["loss"] == fresh["rounds"][0]["loss"] == carried["rounds"][0]["loss"]
    assert kept["rounds"][1]["loss"] != fresh["rounds"][1]["loss"]
    assert kept["summary"]["optimizer_state"] == "kept" and fresh["summary"]["optimizer_state"] == "fresh"
    # carried all-reduces the two moments of every parameter each round
    numel = carried["summary"]["subnet_params"]
    params = kept["summary"]["subnet_params"]
    assert fresh["summary"]["optim_bytes_total"] == kept["summary"]["optim_bytes_total"] == 0
    assert carried["summary"]["optim_bytes_total"] > 0 and numel == params


@pytest.mark.parametrize(
    "flat, policy",
    [
        (dict(data_mode="partitioned", subnets=4), "second-moment"),  # the partitioned recipe
        (dict(data_mode="partitioned", subnets=4, optimizer_state="fresh"), "fresh"),  # a flag wins
        (dict(data_mode="partitioned", subnets=4, gist_recipe="plain"), "fresh"),
        (dict(data_mode="partitioned", subnets=4, optimizer="sgd"), "fresh"),  # SGD keeps no state
        (dict(data_mode="partitioned", subnets=4, coordinator="sharded"), "second-moment"),  # through the owners
        (dict(data_mode="partitioned", subnets=4, optimizer_state="carried"), "carried"),
        (dict(data_mode="replicated", subnets=4), "fresh"),  # plain GIST
        (dict(method="full", data_mode="partitioned", subnets=1), "kept"),
    ],
)
def test_the_partitioned_recipe_carries_adams_second_moment_by_default(flat, policy):
    from gist.methods import get_method

    cfg = RunConfig.from_flat(**flat)
    get_method(cfg.method).check_run(cfg)
    assert get_method(cfg.method).optimizer_state(cfg) == policy


def test_a_default_partitioned_run_carries_the_state_and_counts_it(tmp_path):
    settings = {k: v for k, v in SMALL.items() if k != "norm"}  # --norm auto: BatchNorm on partitioned data
    cfg = RunConfig.from_flat(**{**settings, "subnets": 2, "rounds": 2}, root=str(tmp_path))
    log = run_training(cfg, progress=False)
    summary = log["summary"]
    assert summary["optimizer_state"] == summary["gist_options"]["optimizer_state"] == "second-moment"
    assert summary["gist_options"]["wire_dtype"] == "bfloat16"
    assert summary["optim_bytes_total"] > 0
    assert log["config"]["model"]["norm"] == "auto"
