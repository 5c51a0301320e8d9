"""Faults a user meets: a diverging run, an output path that cannot be written."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch
from conftest import shared_data_dir

from gist.cli import main
from gist.comm import WorkerStats
from gist.config import RunConfig
from gist.data import DatasetCorruptError, load_dataset
from gist.engine import RoundDriver, TrainingDiverged
from gist.engine.divergence import check_round
from gist.errors import ConfigError
from gist.harness.sweep import load_config, run_sweep
from gist.harness.tables import tabulate
from gist.run import RunFailed, run_training

SMALL = ["--dataset", "csbm", "--hidden", "16", "--rounds", "4", "--local-steps", "2", "--subnets", "2"]
METHODS = ["gist", "ddp", "local-sgd"]


def poison_round(monkeypatch, bad_round: int, worker: int = 1) -> None:
    """Make every method's round ``bad_round`` end with worker ``worker``'s
    loss NaN and a NaN in the model, as a diverging step would."""
    original = RoundDriver.run_round

    def run_round(self):
        train = type(self).train_round

        def poisoned(r):
            work = train(self, r)
            if r == bad_round:
                s = work.stats[worker]
                work.stats[worker] = WorkerStats(math.nan, s.steps, s.seconds)
                with torch.no_grad():
                    next(self.model.parameters()).view(-1)[0] = math.nan
            return work

        self.train_round = poisoned
        try:
            return original(self)
        finally:
            del self.train_round

    monkeypatch.setattr(RoundDriver, "run_round", run_round)


def test_check_round_names_the_workers_and_the_tensor():
    model = torch.nn.Linear(2, 2)
    ok = {0: WorkerStats(0.5, 2, 1.0), 1: WorkerStats(math.nan, 0, 1.0)}  # no steps: NaN by design
    check_round("gist", 3, ok, [model.state_dict()])
    with pytest.raises(TrainingDiverged, match=r"gist diverged in round 3: the training loss became nan on worker 1"):
        check_round("gist", 3, {0: WorkerStats(0.5, 2, 1.0), 1: WorkerStats(math.nan, 2, 1.0)}, [model.state_dict()])
    with torch.no_grad():
        model.bias[1] = math.inf
    with pytest.raises(TrainingDiverged, match="'bias' holds NaN or infinite values") as info:
        check_round("ddp", 0, ok, [model.state_dict()])
    assert info.value.record()["workers"] == [] and info.value.record()["round"] == 0


@pytest.mark.parametrize("method", METHODS)
def test_huge_learning_rate_stops_with_the_round_and_method(tmp_path, capsys, method):
    log = tmp_path / "run.json"
    code = main(["train", *SMALL, "--method", method, "--lr", "1e12", "--log", str(log), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"gist train: error: {method} diverged in round ") and str(log) in err
    record = json.loads(log.read_text())
    failure = record["failure"]
    assert failure["kind"] == "diverged" and failure["method"] == method
    assert len(record["rounds"]) == failure["round"]  # every round before it, none after


@pytest.mark.parametrize("method", METHODS)
def test_divergence_keeps_earlier_rounds_and_the_last_good_checkpoint(tmp_path, monkeypatch, method):
    poison_round(monkeypatch, bad_round=2)
    ckpt, log = tmp_path / "ckpt.pt", tmp_path / "run.json"
    cfg = RunConfig.from_flat(
        dataset="csbm", hidden=16, rounds=4, local_steps=2, subnets=2, method=method, checkpoint=str(ckpt)
    ).replace(checkpoint_every=1)
    with pytest.raises(RunFailed, match=rf"{method} diverged in round 2: the training loss became nan on worker 1"):
        run_training(cfg, progress=False, log_path=log)
    record = json.loads(log.read_text())
    assert [r["round"] for r in record["rounds"]] == [0, 1]
    assert record["failure"]["workers"] == [1]
    state = torch.load(ckpt, weights_only=True)
    assert state["round"] == 2  # written after round 1, not overwritten by the diverged round
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


@pytest.mark.parametrize("method", METHODS)
def test_divergence_with_real_processes_names_the_round(tmp_path, capsys, method):
    log = tmp_path / "run.json"
    code = main(
        ["train", *SMALL, "--method", method, "--lr", "1e12", "--procs", "2", "--log", str(log), "--no-progress"]
    )
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"gist train: error: {method} diverged in round "), err
    record = json.loads(log.read_text())
    assert record["failure"]["method"] == method and len(record["rounds"]) == record["failure"]["round"]


SWEEP = """
name = "diverging"
[settings]
dataset = "csbm"
hidden = 16
rounds = 3
eval_every = 1
[sweep]
methods = ["full", "gist"]
subnets = [2]
local_steps = [2]
seeds = [0, 1]
"""


def test_sweep_records_a_diverged_run_and_goes_on(tmp_path, monkeypatch):
    path = tmp_path / "diverging.toml"
    path.write_text(SWEEP)
    cfg, out = load_config(path), tmp_path / "res"
    original = RoundDriver.run_round

    def diverge_gist_seed1(self):
        if self.name == "gist" and self.cfg.seed == 1 and self.round == 1:
            raise TrainingDiverged("gist", 1, [0], "the training loss became nan")
        return original(self)

    monkeypatch.setattr(RoundDriver, "run_round", diverge_gist_seed1)
    said: list[str] = []
    counts = run_sweep(cfg, out, progress=False, say=said.append)
    assert counts["ran"] == 4 and counts["failed"] == 1
    assert any("gist_m2_z2_seed1 failed: gist diverged in round 1" in line for line in said)
    stored = json.loads((out / "runs" / "gist_m2_z2_seed1.json").read_text())
    assert stored["failure"]["round"] == 1 and len(stored["rounds"]) == 1

    text, table = tabulate(out, "gist sweep diverging.toml", cfg, plots=False)
    row = table.set_index("method").loc["gist"]
    assert row["seeds"] == 1 and row["failed"] == 1  # left out of the metrics, counted
    good = json.loads((out / "runs" / "gist_m2_z2_seed0.json").read_text())
    assert row["best_val"] == pytest.approx(max(r["val"] for r in good["rounds"]))
    assert "`gist_m2_z2_seed1`: gist diverged in round 1" in text

    # not run again unless asked; asked, it runs (and now completes)
    said.clear()
    assert run_sweep(cfg, out, progress=False, say=said.append)["ran"] == 0
    assert any("--retry-failed" in line for line in said)
    monkeypatch.setattr(RoundDriver, "run_round", original)
    counts = run_sweep(cfg, out, progress=False, say=said.append, retry_failed=True)
    assert counts["ran"] == 1 and counts["failed"] == 0
    assert "failure" not in json.loads((out / "runs" / "gist_m2_z2_seed1.json").read_text())


@pytest.mark.parametrize("flag", ["--log", "--save-model", "--checkpoint"])
def test_unwritable_output_fails_before_the_first_round(tmp_path, capsys, monkeypatch, flag):
    started = []
    monkeypatch.setattr(RoundDriver, "run_round", lambda self: started.append(1))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    bad = blocker / "out.json"  # its parent is a file: no one can write there, root included
    extra = ["--checkpoint-every", "1"] if flag == "--checkpoint" else []
    code = main(["train", *SMALL, flag, str(bad), *extra, "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gist train: error: {flag} {bad}: cannot write there") and len(err.splitlines()) == 1
    assert not started


def test_unwritable_log_fails_before_spawning(tmp_path, capsys):
    bad = tmp_path / "folder"
    bad.mkdir()
    code = main(["train", *SMALL, "--procs", "2", "--log", str(bad), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--log {bad}: cannot write there" in err and "is a folder" in err


def test_missing_parent_folders_are_created(tmp_path):
    log = tmp_path / "new" / "deeper" / "run.json"
    cfg = RunConfig.from_flat(dataset="csbm", hidden=16, rounds=1, local_steps=1, subnets=2)
    run_training(cfg, progress=False, log_path=log)
    assert log.is_file()


# ---------------------------------------------------------------- corrupt and missing files


@pytest.fixture
def raw_cora(tmp_path):
    """A fresh data root holding only Cora's raw files (nothing processed yet)."""
    src = shared_data_dir() / "planetoid" / "Cora" / "raw"
    if not src.is_dir():
        pytest.skip(f"shared data is absent ({src} not found; set GIST_SHARED_DATA)")
    root = tmp_path / "data"
    shutil.copytree(src, root / "planetoid" / "Cora" / "raw")
    return root


def test_truncated_raw_file_names_the_file(raw_cora, capsys):
    x = raw_cora / "planetoid" / "Cora" / "raw" / "ind.cora.x"
    x.write_bytes(x.read_bytes()[:100])
    code = main(["train", "--dataset", "cora", "--root", str(raw_cora), "--rounds", "1", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{x} is corrupt or incomplete" in err and "copy ind.cora.x again" in err
    cora = raw_cora / "planetoid" / "Cora"
    assert sorted(p.name for p in cora.iterdir()) == ["raw"]  # no empty processed/ left behind
    assert sorted(p.name for p in cora.parent.iterdir()) == ["Cora"]  # and no lock file


def test_truncated_processed_file_says_delete_it(raw_cora):
    load_dataset("cora", root=raw_cora)  # writes processed/
    processed = raw_cora / "planetoid" / "Cora" / "processed" / "data.pt"
    processed.write_bytes(processed.read_bytes()[:100])
    with pytest.raises(DatasetCorruptError, match=r"processed/data.pt is corrupt or incomplete .*; delete .*processed"):
        load_dataset("cora", root=raw_cora)


class _RunsCode:
    """Pickles into a call of ``subprocess.call(["touch", marker])``: what a crafted data file can hold."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import subprocess

        return (subprocess.call, (["touch", self.marker],))


def test_a_crafted_processed_file_is_refused_without_running_its_code(raw_cora, tmp_path):
    """PyG's loader retries a weights-only load with full unpickling; ours never does."""
    load_dataset("cora", root=raw_cora)  # writes processed/
    processed = raw_cora / "planetoid" / "Cora" / "processed" / "data.pt"
    marker = tmp_path / "code-ran"
    torch.save(_RunsCode(str(marker)), processed)
    with pytest.raises(DatasetCorruptError, match=r"processed/data.pt is corrupt or incomplete"):
        load_dataset("cora", root=raw_cora)
    assert not marker.exists(), "loading the dataset ran the file's code"


def _load_cora_edges(root: str, queue) -> None:
    ds = load_dataset("cora", root=root)
    queue.put(int(ds.data.edge_index.size(1)))


def test_processes_loading_a_fresh_copy_together_process_it_once(raw_cora):
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_load_cora_edges, args=(str(raw_cora), queue)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert sorted(queue.get(timeout=5) for _ in procs) == [10556] * 3


def test_truncated_checkpoint_is_one_line(tmp_path, capsys):
    ckpt = tmp_path / "ckpt.pt"
    args = ["train", *SMALL, "--checkpoint", str(ckpt), "--no-progress"]
    assert main([*args, "--checkpoint-every", "2"]) == 0
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--checkpoint {ckpt} is corrupt or incomplete" in err


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_broken_part_file_of_rank_1_is_what_the_user_sees(tmp_path, capsys, damage):
    root = str(tmp_path / "data")
    assert main(["partition", "--dataset", "csbm", "--parts", "2", "--root", root, "--no-progress"]) == 0
    part = next((tmp_path / "data").rglob("part_1.pt"))
    if damage == "missing":
        part.unlink()
    else:
        part.write_bytes(part.read_bytes()[:100])
    capsys.readouterr()
    code = main(["train", *SMALL, "--data-mode", "partitioned", "--root", root, "--procs", "2", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("gist train: error: rank 1: PartitionError: part file") and "part_1.pt" in err, err
    assert ("is missing" if damage == "missing" else "is corrupt") in err and "gist partition" in err


def test_resume_with_fewer_rounds_than_the_checkpoint_is_an_error(tmp_path, capsys):
    ckpt = tmp_path / "ckpt.pt"
    args = ["train", *SMALL, "--checkpoint", str(ckpt), "--checkpoint-every", "2", "--no-progress"]
    assert main([*args, "--rounds", "4"]) == 0
    capsys.readouterr()
    assert main([*args, "--rounds", "2", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds 4 rounds, more than --rounds 2" in err
    assert main([*args, "--rounds", "4", "--resume"]) == 0  # complete: says so, then the summary
    captured = capsys.readouterr()
    assert "nothing left to train" in captured.err and "all 4 rounds" in captured.err
    assert "rounds=4" in captured.out


# ---------------------------------------------------------------- a disk that fills during the run


def fill_disk_on(monkeypatch, names: str, after: int = 0) -> list[str]:
    """Make ``torch.save`` into a file whose name contains ``names`` write a
    few bytes and then fail as it does on a full disk, after ``after`` such
    saves have succeeded; returns the names of the attempted targets."""
    real, tried = torch.save, []

    def save(obj, f, *args, **kwargs):
        name = str(f)
        if names in name:
            tried.append(name)
            if len(tried) > after:
                with open(f, "wb") as fh:
                    fh.write(b"PK\x03\x04 half")
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2048 vs 2000")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    return tried


def test_save_model_on_a_full_disk_keeps_the_previous_model(tmp_path, capsys, monkeypatch):
    model = tmp_path / "m.pt"
    args = ["train", *SMALL, "--root", str(tmp_path), "--no-progress", "--save-model", str(model)]
    assert main(args) == 0
    before = torch.load(model, weights_only=True)
    fill_disk_on(monkeypatch, "m.pt")
    assert main([*args[:-2], "--hidden", "32", "--save-model", str(model)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"gist train: error: --save-model {model} could not be written")
    assert "the file written there before is kept" in err[0]
    after = torch.load(model, weights_only=True)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary file left


def test_checkpoint_on_a_full_disk_stops_the_run_keeping_the_log_and_the_last_good_one(tmp_path, capsys, monkeypatch):
    ckpt, log = tmp_path / "c.pt", tmp_path / "run.json"
    tried = fill_disk_on(monkeypatch, "c.pt", after=1)  # the first checkpoint is written, the second is not
    args = ["train", *SMALL, "--root", str(tmp_path), "--no-progress", "--log", str(log)]
    assert main([*args, "--checkpoint", str(ckpt), "--checkpoint-every", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"gist train: error: after round 3: --checkpoint {ckpt} could not be written")
    assert err[0].endswith(f"the log of the rounds before it is in {log}")
    assert len(tried) == 2
    record = json.loads(log.read_text())
    assert record["failure"]["kind"] == "output" and len(record["rounds"]) == 4
    assert torch.load(ckpt, weights_only=True)["round"] == 2  # the last good checkpoint
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".c.pt")] == []


# ---------------------------------------------------------------- graphs no method can train on

BAD_GRAPHS = {
    "negative-id": (lambda d: d.edge_index.__setitem__((0, 0), -1), "edge_index holds node ids outside [0, 3000)"),
    "id-too-large": (lambda d: d.edge_index.__setitem__((1, 0), 3000), "(min 0, max 3000)"),
    "int-mask": (
        lambda d: setattr(d, "train_mask", d.train_mask.long()),
        "train_mask must be a boolean tensor of N = 3000 entries, got int64",
    ),
    "short-mask": (lambda d: setattr(d, "val_mask", d.val_mask[:10]), "val_mask must be a boolean tensor"),
    "label-out-of-range": (lambda d: d.y.__setitem__(0, 5), "y holds class 5, outside [0, 5)"),
    "negative-label": (lambda d: d.y.__setitem__(0, -1), "y holds class -1"),
    "2-d-labels": (lambda d: setattr(d, "y", d.y.view(-1, 1)), "flatten it: y.view(-1)"),
    "float-labels": (lambda d: setattr(d, "y", d.y.float()), "y must be a 1-D integer tensor"),
}


@pytest.mark.parametrize("mode", ["replicated", "partitioned"])
@pytest.mark.parametrize("method", ["gist", "ddp", "local-sgd"])
@pytest.mark.parametrize("bad", list(BAD_GRAPHS), ids=list(BAD_GRAPHS))
def test_a_graph_no_method_can_train_on_is_refused_when_the_method_is_built(tmp_path, method, mode, bad):
    from gist.engine import full_model
    from gist.methods import get_method

    cfg = RunConfig.from_flat(method=method, dataset="csbm", hidden=16, subnets=2, rounds=1, data_mode=mode)
    ds = load_dataset("csbm", root=tmp_path, seed=0)
    data = ds.data.clone()
    mutate, message = BAD_GRAPHS[bad]
    mutate(data)
    model = full_model(cfg, ds.num_features, ds.num_classes)
    with pytest.raises(ConfigError, match=re.escape(message)):
        get_method(method)(model, data, cfg)


@pytest.mark.parametrize("method", ["gist", "ddp", "local-sgd"])
def test_workers_without_training_nodes_are_named_in_one_warning(raw_cora, method):
    """Cora in 64 METIS parts: some hold no training node. One warning names them all (not one per worker)."""
    import warnings

    cfg = RunConfig.from_flat(
        method=method,
        dataset="cora",
        root=str(raw_cora),
        data_mode="partitioned",
        subnets=64,
        hidden=64,
        rounds=2,
        local_steps=2,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_training(cfg, progress=False)
    said = [str(w.message) for w in caught if "training node" in str(w.message)]
    assert len(said) == 1, said
    assert re.match(r"\d+ of 64 workers hold no training node \(workers \d+(, \d+)*\): they skip", said[0]), said[0]


@pytest.fixture
def small_disk(tmp_path):
    """A 64 kB tmpfs: a disk that fills (root only)."""
    import os
    import subprocess

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    where = tmp_path / "small"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_really_full_disk_keeps_the_previous_model_and_says_so_in_one_line(tmp_path, small_disk, capsys):
    model = small_disk / "m.pt"
    args = ["train", *SMALL, "--root", str(tmp_path), "--no-progress", "--save-model", str(model)]
    assert main([*args, "--hidden", "8"]) == 0
    before = torch.load(model, weights_only=True)
    capsys.readouterr()
    assert main([*args, "--hidden", "128"]) == 1  # 137 kB: more than the disk holds
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--save-model {model} could not be written" in err[0], err
    after = torch.load(model, weights_only=True)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert [p.name for p in small_disk.iterdir()] == ["m.pt"]
