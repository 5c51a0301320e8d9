"""RunConfig: one source of truth for defaults, choices, flags and what changes results;
old flat run logs still read; committed sweep results still re-tabulate."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd
import pytest

from gist.cli import build_parser, main
from gist.config import RunConfig, flat_names, setting_fields
from gist.registry import METHODS

REPO = Path(__file__).resolve().parents[1]


def test_nested_and_flat_forms_read_back_the_same_config():
    cfg = RunConfig.from_flat(dataset="cora", hidden=64, data_mode="partitioned", local_steps=3, threads=1)
    assert cfg.data.mode == "partitioned" and cfg.model.hidden == 64 and cfg.local.local_steps == 3
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert RunConfig.from_dict(cfg.flat()) == cfg  # the flat logs written before the config was nested
    log_config = {**cfg.to_dict(), "dataset_split": "public", "transport": "in-process"}
    assert RunConfig.from_dict(log_config, strict=False) == cfg
    with pytest.raises(ValueError, match="'dataset_split' is not a run setting"):
        RunConfig.from_dict(log_config)
    with pytest.raises(ValueError, match="'hidden_size' is not a run setting"):
        cfg.replace(hidden_size=3)


def test_flat_names_are_unique_and_results_exclude_where_and_how_to_run():
    names = [name for name, _, _ in setting_fields()]
    assert len(names) == len(set(names))
    results = set(RunConfig().results())
    assert {"root", "threads", "timeout", "backend", "checkpoint", "resume", "save_model"}.isdisjoint(results)
    assert {"method", "subnets", "hidden", "data_mode", "local_steps", "seed", "eval_every"} <= results
    assert set(flat_names(per_run=True)) == {"backend", "checkpoint", "checkpoint_every", "resume", "save_model"}


@pytest.mark.parametrize(
    "flat,message",
    [
        ({"data_mode": "sharded"}, "data_mode must be one of"),
        ({"model": "gat"}, "model must be one of"),
        ({"subnets": 0}, "subnets must be >= 1"),
        ({"halo_hops": -1}, "halo_hops must be >= 0"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"dataset": "no-such-graph"}, "dataset must be one of"),
        ({"batching": "cluster", "num_clusters": 2, "clusters_per_batch": 3}, "clusters_per_batch"),
    ],
)
def test_bad_values_are_named_by_their_flag(flat, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_flat(**flat).check()


def test_every_setting_has_its_flag_with_the_config_default():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    by_dest = {a.dest: a for a in train._actions}
    for name, group, field in setting_fields():
        if not field.metadata["cli"]:
            assert name not in by_dest
            continue
        action = by_dest[name]
        assert action.option_strings[0] == "--" + name.replace("_", "-")
        if group in METHODS:  # a method's own: absent unless given, so another method can refuse it
            assert action.default == argparse.SUPPRESS, name
        elif name != "subnets":  # resolved from --procs / the torchrun world size / the method
            assert action.default == field.default, name
    assert by_dest["method"].choices == ["full", "ddp", "fsdp", "local-sgd", "gist"]


def test_a_method_never_sees_another_methods_settings():
    gist = RunConfig.from_flat(method="gist", label_prior=True, wire_dtype="bfloat16")
    assert gist.options.label_prior is True and gist.to_dict()["gist"]["wire_dtype"] == "bfloat16"
    ddp = RunConfig.from_flat(method="ddp")
    assert not {"label_prior", "wire_dtype", "gist_recipe", "coordinator"} & set(ddp.flat())
    assert "gist" not in ddp.to_dict()
    with pytest.raises(ValueError, match="--label-prior is a setting of --method gist, not of --method ddp"):
        ddp.replace(label_prior=True)
    with pytest.raises(ValueError, match="--wire-dtype is a setting of --method gist, not of --method full"):
        RunConfig.from_flat(method="full", wire_dtype="bfloat16")
    assert gist.replace(method="ddp") == ddp  # a new method starts from its own defaults
    # a ddp log written when every run recorded GIST's options (and the flat scorer) reads the same
    old = {**ddp.to_dict(), "scorer": "graph", "wire_dtype": "float32", "gist": {"recipe": "auto", "label_prior": None}}
    assert RunConfig.from_dict(old) == ddp and RunConfig.from_dict(old).results() == ddp.results()
    with pytest.raises(ValueError, match="--label-prior is a setting of --method gist"):
        RunConfig.from_dict({**old, "gist": {"label_prior": True}})  # a value it could not have used
    assert RunConfig.from_dict({**old, "gist": {"label_prior": True}}, strict=False) == ddp


def test_train_refuses_another_methods_flag_naming_its_owner(capsys):
    assert main(["train", "--method", "ddp", "--label-prior", "--rounds", "1", "--no-progress"]) == 2
    said = capsys.readouterr().err
    assert "gist train: error: --label-prior is a setting of --method gist, not of --method ddp" in said


def test_committed_results_rerun_nothing_and_retabulate_identically(tmp_path, monkeypatch, capsys):
    """The committed logs (flat configs, `full` recorded as gist with m = 1)
    are read as they are: the sweep that made them runs nothing again and
    writes the same table."""
    name = "cora-replicated"
    shutil.copytree(REPO / "experiments", tmp_path / "experiments")
    shutil.copytree(REPO / "results" / name, tmp_path / "results" / name)
    monkeypatch.chdir(tmp_path)
    argv = ["sweep", f"experiments/{name}.toml", "--root", "/tmp/gd", "--no-progress"]
    assert main(argv) == 0  # the command in the committed table's header
    runs = len(list((REPO / "results" / name / "runs").glob("*.json")))
    assert runs >= 30 and f"ran 0, skipped {runs} already done" in capsys.readouterr().out
    committed = REPO / "results" / name
    assert (tmp_path / "results" / name / "table.md").read_text() == (committed / "table.md").read_text()
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "results" / name / "table.csv"), pd.read_csv(committed / "table.csv")
    )


def test_norm_auto_is_batch_norm_on_partitioned_data_and_compares_as_it():
    """``--norm auto`` (the default): every method collapses on partitioned
    data without normalisation, so there it is BatchNorm; replicated, none."""
    from gist.engine.setup import build_stock_model

    parts, whole = RunConfig.from_flat(data_mode="partitioned"), RunConfig.from_flat(data_mode="replicated")
    assert parts.model.norm == whole.model.norm == "auto"
    assert (parts.norm, whole.norm) == ("batch_norm", "none")
    assert RunConfig.from_flat(data_mode="partitioned", norm="none").norm == "none"
    # a run with the default and one with the norm it resolves to are the same run (sweeps, resume)
    assert parts.results() == RunConfig.from_flat(data_mode="partitioned", norm="batch_norm").results()
    assert whole.results() == RunConfig.from_flat(data_mode="replicated", norm="none").results()
    kinds = {type(m).__name__ for m in build_stock_model(parts, 8, 3).modules()}
    assert "BatchNorm" in kinds
    assert "BatchNorm" not in {type(m).__name__ for m in build_stock_model(whole, 8, 3).modules()}
