"""The method registry and the round driver every method shares: a toy method
registered here runs through the library entry point, the CLI and a sweep;
checkpoints and --resume work for every method, in-process and with real
processes."""

from __future__ import annotations

import json
import time

import pytest
import torch

from gist import RunConfig
from gist.cli import main
from gist.engine import local_steps
from gist.harness.sweep import load_config, plan, run_sweep
from gist.harness.tables import tabulate
from gist.methods import METHODS, DataParallelMethod, get_method, register_method, unregister_method
from gist.methods.data_parallel import flatten_state, load_flat_state
from gist.run import launch_local, run_training

pytestmark = pytest.mark.timeout(600)

SMALL = dict(dataset="csbm", hidden=16, layers=2, local_steps=2, rounds=3, threads=1)


class FreshAveraging(DataParallelMethod):
    """A toy method: every worker trains the full model with a fresh
    optimizer each round, then the models are averaged (local SGD whose
    workers forget their optimizer state)."""

    name = "fresh-averaging"

    @property
    def num_params(self) -> int:
        return self.state_numel

    def train_workers(self, round):
        losses, seconds = {}, {}
        for i in self.local_workers:
            start = time.perf_counter()
            optimizer = torch.optim.Adam(self._replicas[i].parameters(), lr=self.cfg.local.lr)
            losses[i] = local_steps(
                self._replicas[i],
                optimizer,
                self._sources[i],
                self.cfg.local.local_steps,
                self._rngs[i],
                self._warn_empty[i],
            )
            seconds[i] = time.perf_counter() - start
        flats = {i: flatten_state(self._replicas[i], self._state_names) for i in self.local_workers}
        mean = self.collective.all_reduce_mean(round, flats)
        for replica in self.distinct_replicas():
            load_flat_state(replica, self._state_names, mean)
        return losses, seconds, 0.0


@pytest.fixture
def toy_method():
    register_method(FreshAveraging)
    yield FreshAveraging
    unregister_method(FreshAveraging.name)


def test_registry_lists_the_shipped_methods_in_table_order():
    assert list(METHODS)[:5] == ["full", "ddp", "fsdp", "local-sgd", "gist"]
    with pytest.raises(ValueError, match="method must be one of"):
        get_method("allreduce")
    with pytest.raises(ValueError, match="already registered"):
        register_method(type("Other", (FreshAveraging,), {"name": "gist"}))


def test_a_registered_method_runs_through_the_entry_point_cli_and_sweep(toy_method, tmp_path, capsys):
    # the library entry point
    log = run_training(
        RunConfig.from_flat(method="fresh-averaging", subnets=2, root=str(tmp_path), **SMALL), progress=False
    )
    assert log["summary"]["method"] == "fresh-averaging" and log["summary"]["rounds"] == 3
    assert log["rounds"][-1]["val"] is not None
    # its bytes: one all-reduce of the whole state per round, as local SGD's
    theta = log["summary"]["subnet_params"]
    assert log["rounds"][0]["bytes_to_workers"] == 2 * (theta // 2) * 4

    # the CLI offers it
    code = main(
        [
            "train",
            "--method",
            "fresh-averaging",
            "--subnets",
            "2",
            "--hidden",
            "16",
            "--layers",
            "2",
            "--rounds",
            "2",
            "--local-steps",
            "2",
            "--root",
            str(tmp_path),
            "--no-progress",
            "--log",
            str(tmp_path / "cli.json"),
        ]
    )
    assert code == 0 and capsys.readouterr().out.startswith("fresh-averaging csbm")
    assert json.loads((tmp_path / "cli.json").read_text())["config"]["method"] == "fresh-averaging"

    # a sweep plans, runs and tabulates it beside the shipped methods
    cfg_path = tmp_path / "toy.toml"
    cfg_path.write_text(
        'name = "toy"\n[settings]\ndataset = "csbm"\nhidden = 16\nlayers = 2\nrounds = 2\n'
        f'root = "{tmp_path}"\n[sweep]\nmethods = ["full", "fresh-averaging"]\nsubnets = [2]\n'
        "local_steps = [2]\nseeds = [0]\n"
    )
    cfg = load_config(cfg_path)
    assert [r.run_id for r in plan(cfg)] == ["full_m1_z2_seed0", "fresh-averaging_m2_z2_seed0"]
    out = tmp_path / "results"
    assert run_sweep(cfg, out, progress=False, say=lambda _: None)["ran"] == 2
    text, table = tabulate(out, "gist sweep toy.toml", cfg, plots=True)
    assert list(table["method"]) == ["full", "fresh-averaging"]
    assert "fresh-averaging" in text and (out / "accuracy_vs_bytes.png").is_file()


def _resume_case(method: str, tmp_path, **extra):
    settings = {**SMALL, "rounds": 6, **extra}
    return RunConfig.from_flat(
        method=method,
        subnets=2,
        root=str(tmp_path / "data"),
        seed=1,
        checkpoint=str(tmp_path / f"{method}.pt"),
        checkpoint_every=2,
        **settings,
    )


def _model(path):
    return torch.load(path, weights_only=True)


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# dropout, cluster batches (a batch stream per worker) and BatchNorm make every
# piece of worker state matter: RNG streams, batch streams, optimizers
RESUME = dict(norm="batch_norm", batching="cluster", num_clusters=6, clusters_per_batch=2)


@pytest.mark.parametrize("method", ["ddp", "fsdp", "local-sgd"])
def test_resume_equals_the_uninterrupted_run_in_process(method, tmp_path):
    base = _resume_case(method, tmp_path, **RESUME)
    full = run_training(
        base.replace(save_model=str(tmp_path / "full.pt"), checkpoint=str(tmp_path / "x.pt")), progress=False
    )
    run_training(base.replace(rounds=3), progress=False)  # stops after round 2, checkpoint of round 2
    assert torch.load(base.checkpoint.path, weights_only=True)["round"] == 3
    resumed = run_training(base.replace(resume=True, save_model=str(tmp_path / "resumed.pt")), progress=False)
    assert _same(_model(tmp_path / "full.pt"), _model(tmp_path / "resumed.pt"))
    assert [r["round"] for r in resumed["rounds"]] == list(range(6))
    assert [r["val"] for r in resumed["rounds"]] == [r["val"] for r in full["rounds"]]
    assert [r["loss"] for r in resumed["rounds"]] == [r["loss"] for r in full["rounds"]]


@pytest.mark.parametrize("method", ["ddp", "local-sgd"])
def test_resume_equals_the_uninterrupted_run_with_processes(method, tmp_path):
    base = _resume_case(method, tmp_path, **RESUME)
    full = launch_local(
        base.replace(save_model=str(tmp_path / "full.pt"), checkpoint=str(tmp_path / "x.pt")), 2, progress=False
    )
    launch_local(base.replace(rounds=3), 2, progress=False)
    resumed = launch_local(base.replace(resume=True, save_model=str(tmp_path / "resumed.pt")), 2, progress=False)
    assert _same(_model(tmp_path / "full.pt"), _model(tmp_path / "resumed.pt"))
    assert [r["val"] for r in resumed["rounds"]] == [r["val"] for r in full["rounds"]]
    # a checkpoint made by processes resumes in one process too, to the same model
    # (the workers' states travel in the checkpoint)
    run_training(base.replace(resume=True, save_model=str(tmp_path / "local.pt")), progress=False)
    assert _same(_model(tmp_path / "full.pt"), _model(tmp_path / "local.pt"))


def test_resume_refuses_another_method(tmp_path):
    base = _resume_case("ddp", tmp_path, rounds=2)
    run_training(base, progress=False)
    with pytest.raises(ValueError, match="method: checkpoint 'ddp', now 'local-sgd'"):
        run_training(base.replace(method="local-sgd", resume=True, rounds=3), progress=False)


def test_full_is_gist_with_one_worker(tmp_path):
    cfg = RunConfig.from_flat(subnets=1, root=str(tmp_path), **SMALL)
    full = run_training(cfg.replace(method="full", save_model=str(tmp_path / "a.pt")), progress=False)
    gist = run_training(cfg.replace(method="gist", save_model=str(tmp_path / "b.pt")), progress=False)
    assert _same(_model(tmp_path / "a.pt"), _model(tmp_path / "b.pt"))
    assert full["summary"]["bytes_total"] == gist["summary"]["bytes_total"]
    with pytest.raises(ValueError, match="m must be 1"):
        run_training(cfg.replace(method="full", subnets=2), progress=False)


PLUGIN = '''
"""A method in a module of its own, declared in the registry like a shipped one."""
from dataclasses import dataclass

from gist.methods.data_parallel import DataParallelMethod
from gist.methods.local_sgd import LocalSGD
from gist.settings import setting


@dataclass
class HalfAveragingOptions:
    keep: float = setting(0.5, help="share of its own model a worker keeps when the models are averaged")

    def check(self, cfg):
        if not 0.0 <= self.keep <= 1.0:
            raise ValueError(f"keep must be in [0, 1], got {self.keep}")


class HalfAveraging(LocalSGD):
    name = "half-averaging"
    color = "tab:purple"
    Options = HalfAveragingOptions
'''


@pytest.fixture
def declared_method(tmp_path, monkeypatch):
    """``half-averaging``: one module (on ``sys.path``) and one registry line, as a shipped method is added."""
    (tmp_path / "gist_plugin_method.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    METHODS.declare(
        "half-averaging",
        "gist_plugin_method:HalfAveraging",
        options="gist_plugin_method:HalfAveragingOptions",
    )
    yield "half-averaging"
    unregister_method("half-averaging")


def test_a_method_declared_in_one_line_reaches_the_cli_sweeps_tables_and_exports(declared_method, tmp_path, capsys):
    import gist
    import gist.methods

    # the CLI: its --method choice, and its own settings, which no other method takes
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    helped = capsys.readouterr().out
    assert "half-averaging" in helped and "--keep" in helped and "half-averaging's own settings" in helped
    args = ["train", "--method", declared_method, "--subnets", "2", "--hidden", "16", "--layers", "2"]
    args += ["--rounds", "2", "--local-steps", "2", "--root", str(tmp_path), "--no-progress", "--keep", "0.25"]
    assert main(args) == 0 and capsys.readouterr().out.startswith("half-averaging csbm")
    assert main(["train", "--method", "ddp", "--keep", "0.25", "--rounds", "1", "--no-progress"]) == 2
    assert "--keep is a setting of --method half-averaging" in capsys.readouterr().err
    cfg = RunConfig.from_flat(method=declared_method, keep=0.25)
    assert cfg.to_dict()["half-averaging"] == {"keep": 0.25} and cfg.results()["keep"] == 0.25
    # the package's names
    assert gist.HalfAveraging is gist.methods.HalfAveraging is get_method(declared_method)
    # a sweep whose [settings] hold its own setting, applied to its runs only, and its table
    cfg_path = tmp_path / "plugin.toml"
    cfg_path.write_text(
        'name = "plugin"\n[settings]\ndataset = "csbm"\nhidden = 16\nlayers = 2\nrounds = 2\nkeep = 0.25\n'
        f'root = "{tmp_path}"\n[sweep]\nmethods = ["full", "half-averaging"]\nsubnets = [2]\n'
        "local_steps = [2]\nseeds = [0]\n"
    )
    sweep = load_config(cfg_path)
    planned = {r.method: r.settings for r in plan(sweep)}
    assert planned["half-averaging"].options.keep == 0.25 and "keep" not in planned["full"].flat()
    out = tmp_path / "results"
    assert run_sweep(sweep, out, progress=False, say=lambda _: None)["ran"] == 2
    text, table = tabulate(out, "gist sweep plugin.toml", sweep, plots=True)
    assert list(table["method"]) == ["full", "half-averaging"] and "half-averaging" in text
