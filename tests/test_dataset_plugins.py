"""A new dataset is one registration: `gist train --dataset` lists it and trains on it."""

from __future__ import annotations

import json

import pytest

from gist.cli import main
from gist.data import DATASETS, make_csbm, register_dataset

NAME = "tiny-plugin-graph"


@pytest.fixture
def tiny_plugin():
    calls = []

    def loader(root, seed, **kwargs):
        calls.append((root, seed))
        ds = make_csbm(num_nodes=120, num_classes=3, num_features=8, avg_degree=6, seed=seed)
        ds.name = NAME
        return ds

    register_dataset(NAME, loader, family="synthetic", description="120-node CSBM for a test")
    yield calls
    DATASETS.unregister(NAME)


def test_a_registered_dataset_is_listed_and_trained_on(tiny_plugin, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert NAME in " ".join(capsys.readouterr().out.split())

    log = tmp_path / "run.json"
    args = ["train", "--dataset", NAME, "--hidden", "8", "--layers", "2", "--subnets", "2"]
    args += ["--rounds", "2", "--local-steps", "1", "--seed", "3", "--log", str(log), "--no-progress"]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(f"gist {NAME} ")
    assert tiny_plugin and tiny_plugin[0][1] == 3
    record = json.loads(log.read_text())
    assert record["config"]["data"]["dataset"] == NAME and len(record["rounds"]) == 2


def test_unregistered_dataset_is_gone(capsys):
    assert NAME not in DATASETS
    assert main(["train", "--dataset", NAME, "--rounds", "1", "--no-progress"]) == 2
    assert NAME in capsys.readouterr().err
