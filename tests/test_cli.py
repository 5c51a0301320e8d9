"""The ``gist train`` command: flags, JSON log, progress and errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from gist.cli import main
from gist.config import RunConfig

SMALL = ["--dataset", "csbm", "--hidden", "16", "--rounds", "3", "--local-steps", "2", "--subnets", "2"]


def test_train_writes_log_with_config_rounds_and_summary(tmp_path, capsys):
    log = tmp_path / "run.json"
    assert main(["train", *SMALL, "--eval-every", "2", "--log", str(log), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "best val" in out and "MB per worker" in out
    record = json.loads(log.read_text())
    assert set(record) >= {"config", "rounds", "summary"}
    cfg = RunConfig.from_dict(record["config"], strict=False).flat()
    for key in (
        "dataset",
        "root",
        "model",
        "layers",
        "hidden",
        "subnets",
        "local_steps",
        "rounds",
        "lr",
        "weight_decay",
        "dropout",
        "norm",
        "data_mode",
        "partitioner",
        "eval_every",
        "seed",
    ):
        assert key in cfg, key
    assert cfg["subnets"] == 2 and cfg["hidden"] == 16
    rounds = record["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for r in rounds:
        assert {"local_steps", "seconds", "bytes_to_workers", "bytes_from_workers"} <= set(r)
        assert r["bytes_to_workers"] == r["bytes_from_workers"] > 0
    assert rounds[0]["val"] is None and rounds[1]["val"] is not None and rounds[2]["val"] is not None
    s = record["summary"]
    assert set(s) >= {"best_val", "test_at_best_val", "bytes_total", "bytes_per_worker", "seconds"}
    assert s["bytes_total"] == sum(r["bytes_to_workers"] + r["bytes_from_workers"] for r in rounds)
    assert s["bytes_per_worker"] == s["bytes_total"] / 2


def test_progress_bar_shows_val_and_megabytes():
    proc = subprocess.run([sys.executable, "-m", "gist", "train", *SMALL], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "GIST rounds" in proc.stderr and "val=" in proc.stderr and "MB=" in proc.stderr
    assert "best val" in proc.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--hidden", "10", "--subnets", "4"], "not divisible"),
        (["--hidden", "8", "--subnets", "16"], "larger than the width"),
        (["--dataset", "no-such-graph"], "no-such-graph"),
        (["--dataset", "cora", "--root", "{tmp}"], "ind.cora.x"),
    ],
)
def test_bad_input_exits_with_clear_message(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setenv("GIST_OFFLINE", "1")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code = main(["train", "--dataset", "csbm", "--rounds", "1", "--no-progress", *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_argparse_rejects_bad_choices():
    with pytest.raises(SystemExit):
        main(["train", "--model", "gat"])
    with pytest.raises(SystemExit):
        main(["train", "--subnets", "0"])


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--timeout", "nan"], "argument --timeout: must be a finite number, got nan"),
        (["train", "--timeout", "inf"], "argument --timeout: must be a finite number, got inf"),
        (["train", "--lr", "nan"], "argument --lr: must be a finite number, got nan"),
        (["train", "--seed", str(2**70)], f"argument --seed: must be <= {2**32 - 1}, got {2**70}"),
        (["train", "--seed", "-1"], "argument --seed: must be an integer >= 0, got -1"),
        (["train", "--rounds", str(2**70)], f"argument --rounds: must fit in 64 bits (at most {2**63 - 1})"),
        (["sweep", "x.toml", "--seeds", "0", "-3"], "argument --seeds: must be an integer >= 0, got -3"),
    ],
)
def test_numbers_no_run_can_use_are_refused_at_parse_time_naming_the_flag(capsys, args, message):
    with pytest.raises(SystemExit) as exit:
        main(args)
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


def test_a_config_with_a_number_no_run_can_use_names_the_setting():
    from gist.config import RunConfig
    from gist.errors import ConfigError

    with pytest.raises(ConfigError, match="timeout must be a finite number, got nan"):
        RunConfig.from_flat(timeout=float("nan")).check()
    with pytest.raises(ConfigError, match="seed must be >= 0, got -2"):
        RunConfig.from_flat(seed=-2).check()


@pytest.mark.parametrize("method", ["ddp", "local-sgd"])
def test_baselines_run_from_the_cli(tmp_path, capsys, method):
    log = tmp_path / "run.json"
    assert main(["train", *SMALL, "--method", method, "--log", str(log), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(method)
    record = json.loads(log.read_text())
    assert record["config"]["method"] == method and record["summary"]["method"] == method


def test_spawned_failure_is_reported_in_one_line(tmp_path, capsys):
    code = main(["train", *SMALL, "--procs", "2", "--dataset", "cora", "--no-progress", "--root", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("gist train: error: rank ") and "dataset 'cora'" in err


@pytest.mark.parametrize("flags", [["--subnets", "4"], ["--method", "full"]])
def test_process_count_is_checked_before_spawning(flags, capsys, monkeypatch):
    import gist.run

    def never(*args, **kwargs):
        raise AssertionError("spawned processes")

    monkeypatch.setattr(gist.run, "launch_processes", never)
    assert main(["train", *SMALL, "--procs", "2", *flags, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("the job has 2 processes but m=4" in err or "m must be 1, got 2" in err)


@pytest.mark.parametrize("command", ["train", "sweep", "table", "partition"])
def test_help_gives_each_default_once(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "(default: False)" not in text
    options = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
    for option in options:
        assert " ".join(option.split()).count("(default") <= 1, option
    if command == "train":
        assert "--rounds ROUNDS       rounds to train (default: 30)" in text


def test_a_command_leaves_nothing_in_the_temporary_folder(tmp_path):
    """PyG writes a module per layer class to the temporary folder; `gist` collects and removes them,
    for the processes it spawns too."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "gist", "train", *SMALL, "--procs", "2", "--root", str(tmp_path), "--no-progress"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("command", [[], ["train"], ["sweep"], ["table"], ["partition"]])
def test_help_answers_without_importing_torch(command):
    probe = (
        "import sys\n"
        "from gist.cli import main\n"
        "try:\n"
        f"    main({[*command, '--help']!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('torch', 'torch_geometric', 'pandas') if m in sys.modules)\n"
        "print('IMPORTED', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: gist" in result.stdout and "IMPORTED []" in result.stdout, result.stdout[-500:]


def test_registries_list_what_their_providers_register():
    from gist.registry import DATASETS, METHODS, MODELS

    for registry in (DATASETS, METHODS, MODELS):
        declared = registry.names()
        assert [name for name, _ in registry.items()] == declared  # imports the provider; none missing
