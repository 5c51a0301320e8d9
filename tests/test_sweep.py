"""The experiment harness: configs, resumable sweeps, tables and plots."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from gist.cli import main
from gist.harness.curves import first_reach, mean_curves, run_curve, run_table, still_rising
from gist.harness.plots import method_colors, spans_decades
from gist.harness.sweep import SweepError, load_config, plan, run_sweep
from gist.harness.tables import summarize, tabulate
from gist.run import run_training

REPO = Path(__file__).resolve().parents[1]

TINY = """
name = "tiny"
description = "A tiny synthetic sweep for the tests."

[settings]
dataset = "csbm"
layers = 2
hidden = 8
dropout = 0.0
rounds = {rounds}
eval_every = 1

[sweep]
methods = ["full", "ddp", "local-sgd", "gist"]
subnets = [2, 4]
local_steps = [2]
seeds = [0, 1]
"""

TABLE_COLUMNS = [
    "method",
    "m",
    "zeta",
    "target",
    "seeds",
    "failed",
    "best_val",
    "best_val_std",
    "test_at_best_val",
    "test_at_best_val_std",
    "best_round",
    "still_rising",
    "best_parts_val",
    "mb_per_worker",
    "eval_mb_per_worker",
    "reached",
    "mb_to_target",
    "seconds_to_target",
    "seconds",
    "eval_seconds",
    "bytes_vs_ddp",
    "val_at_gist_bytes",
    "val_at_gist_seconds",
]


def write_config(tmp_path: Path, rounds: int = 3, text: str = TINY) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(text.format(rounds=rounds))
    return path


def run_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "runs").glob("*.json"))}


# ---------------------------------------------------------------- end to end


def test_tiny_sweep_end_to_end(tmp_path, capsys):
    cfg = write_config(tmp_path)
    out = tmp_path / "res"
    argv = ["sweep", str(cfg), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| method" in printed and "ran 14, skipped 0" in printed

    table = pd.read_csv(out / "table.csv")
    assert list(table.columns) == TABLE_COLUMNS
    rows = list(zip(table["method"], table["m"], table["zeta"]))
    assert rows == [
        ("full", 1, 2),
        ("ddp", 2, 2),
        ("ddp", 4, 2),
        ("local-sgd", 2, 2),
        ("local-sgd", 4, 2),
        ("gist", 2, 2),
        ("gist", 4, 2),
    ]
    assert (table["seeds"] == 2).all()
    assert table["best_val"].between(0, 1).all()
    # ddp is its own reference; GIST moves fewer bytes per worker than ddp
    assert (table.loc[table["method"] == "ddp", "bytes_vs_ddp"].dropna() == 1.0).all()
    mb = dict(zip(zip(table["method"], table["m"]), table["mb_per_worker"]))
    assert mb[("gist", 4)] < mb[("gist", 2)] < mb[("ddp", 2)]

    md = (out / "table.md").read_text()
    assert md.splitlines()[2] == f"Made by `gist sweep {cfg} --out {out} --no-progress`."
    assert "| method" in md and "bytes vs ddp" in md
    for stem in ("accuracy_vs_bytes", "accuracy_vs_time"):
        png = out / f"{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert (out / "config.toml").read_text() == cfg.read_text()

    # every run log has per-round steps, time, bytes by kind and metrics
    log = json.loads((out / "runs" / "gist_m2_z2_seed0.json").read_text())
    assert log["sweep"] == {
        "name": "tiny",
        "run_id": "gist_m2_z2_seed0",
        "method": "gist",
        "m": 2,
        "zeta": 2,
        "seed": 0,
        "context": {},
    }
    assert log["config"]["subnets"] == 2 and log["config"]["local"]["local_steps"] == 2
    assert log["setup_bytes"]["data"] > 0 and log["setup_bytes"]["control"] > 0
    for r in log["rounds"]:
        assert r["local_steps"] == 2 and r["parallel_seconds"] > 0
        assert set(r["bytes"]) == {"params", "stats"}
        assert r["bytes"]["params"] == r["bytes_to_workers"] + r["bytes_from_workers"]
        assert 0 <= r["val"] <= 1 and 0 <= r["test"] <= 1

    # `gist table` re-tabulates the logs without re-running anything
    before = run_files(out)
    (out / "table.md").unlink()
    assert main(["table", str(out), "--no-plots"]) == 0
    md2 = (out / "table.md").read_text()
    assert f"Made by `gist table {out} --no-plots`" in md2
    assert md2.split("\n", 4)[4] == md.split("\n", 4)[4]
    assert run_files(out) == before


def test_dry_run_lists_the_runs_still_to_do_and_runs_nothing(tmp_path, capsys):
    text = TINY.replace('"ddp", "local-sgd", ', "").replace("subnets = [2, 4]", "subnets = [2]")
    cfg = write_config(tmp_path, rounds=1, text=text)
    out = tmp_path / "res"
    assert main(["sweep", str(cfg), "--out", str(out), "--no-progress", "--seeds", "0"]) == 0
    capsys.readouterr()
    assert main(["sweep", str(cfg), "--out", str(out), "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert f"sweep tiny: 2 of 4 runs done in {out / 'runs'}" in said
    assert "would run 2:\n  full_m1_z2_seed1\n  gist_m2_z2_seed1\n" in said
    assert sorted(p.name for p in (out / "runs").glob("*.json")) == ["full_m1_z2_seed0.json", "gist_m2_z2_seed0.json"]
    assert main(["sweep", str(cfg), "--out", str(out), "--dry-run", "--seeds", "0"]) == 0
    assert "nothing to run" in capsys.readouterr().out


def test_damaged_logs_are_named_skipped_by_table_and_refused_by_sweep(tmp_path, capsys):
    text = TINY.replace('"ddp", "local-sgd", ', "").replace("subnets = [2, 4]", "subnets = [2]")
    cfg = write_config(tmp_path, rounds=1, text=text)
    out = tmp_path / "res"
    assert main(["sweep", str(cfg), "--out", str(out), "--no-progress", "--seeds", "0"]) == 0
    runs = out / "runs"
    damaged = {"cut.json": '{"sweep": {"method"', "empty.json": "{}", "list.json": "[1, 2]", "null.json": "null"}
    for name, body in damaged.items():
        (runs / name).write_text(body)
    capsys.readouterr()
    assert main(["table", str(out), "--no-plots"]) == 0
    captured = capsys.readouterr()
    said = [line for line in captured.err.splitlines() if line.startswith("gist table: skipped:")]
    assert len(said) == 4 and all(any(name in line for line in said) for name in damaged)
    assert "holds a JSON list" in captured.err and "lacks sweep.method" in captured.err
    assert "| gist" in captured.out  # the rest tabulated
    # a planned run's own log damaged: the sweep names it and says what to do
    (runs / "gist_m2_z2_seed0.json").write_text("[]")
    assert main(["sweep", str(cfg), "--out", str(out), "--no-progress", "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert "gist_m2_z2_seed0.json is not a run log: it holds a JSON list" in err and "move it away" in err


def test_a_second_sweep_on_a_folder_in_use_is_refused_naming_the_first(tmp_path, capsys):
    from gist.harness.sweep import SWEEP_LOCK, sweep_in_progress, sweep_lock

    cfg = write_config(tmp_path, rounds=1)
    out = tmp_path / "res"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from pathlib import Path; from gist.harness.sweep import sweep_lock\n"
            f"with sweep_lock(Path({str(out)!r})):\n    print('held', flush=True); input()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["sweep", str(cfg), "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"{out} is in use by another gist sweep (pid {holder.pid} on" in err and "--out" in err
        assert not (out / "runs").exists()  # it ran nothing
        assert sweep_in_progress(out).startswith(f"pid {holder.pid} on")  # what test_results skips on
    finally:
        holder.communicate("\n", timeout=60)
    assert not (out / SWEEP_LOCK).exists()  # released and removed
    assert sweep_in_progress(out) is None
    with sweep_lock(out):  # free again
        assert (out / SWEEP_LOCK).read_text().startswith(f"pid {os.getpid()} on")
    assert list(out.iterdir()) == []


def test_sweep_resume_reruns_nothing(tmp_path, capsys):
    cfg = write_config(tmp_path)
    out = tmp_path / "res"
    assert main(["sweep", str(cfg), "--out", str(out), "--no-progress"]) == 0
    before = run_files(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    capsys.readouterr()

    def never(*_):
        raise AssertionError("a completed run was run again")

    counts = run_sweep(load_config(cfg), out, progress=False, runner=never, say=lambda _: None)
    assert counts == {"planned": 14, "skipped": 14, "ran": 0, "failed": 0}
    assert main(["sweep", str(cfg), "--out", str(out), "--no-progress"]) == 0
    assert "ran 0, skipped 14" in capsys.readouterr().out
    assert run_files(out) == before
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == mtimes


def test_interrupted_sweep_keeps_finished_runs_and_redoes_the_rest(tmp_path):
    cfg = load_config(write_config(tmp_path))
    out = tmp_path / "res"
    from gist.harness.sweep import execute

    calls = []

    def dies_on_fourth(run, processes, progress):
        calls.append(run.run_id)
        if len(calls) == 4:
            (out / "runs" / f".{run.run_id}.json.tmp-99999").write_text('{"half": ')  # a log cut off mid-write
            raise KeyboardInterrupt
        return execute(run, processes, False)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, out, progress=False, runner=dies_on_fourth, say=lambda _: None)
    kept = run_files(out)
    assert sorted(kept) == sorted(f"{r}.json" for r in calls[:3])

    again = []
    counts = run_sweep(
        cfg,
        out,
        progress=False,
        say=lambda _: None,
        runner=lambda run, p, q: again.append(run.run_id) or execute(run, p, False),
    )
    assert counts == {"planned": 14, "skipped": 3, "ran": 11, "failed": 0}
    assert again[0] == calls[3]  # the interrupted run is redone first
    assert not list((out / "runs").glob(".*.tmp-*"))
    after = run_files(out)
    assert len(after) == 14 and all(after[k] == v for k, v in kept.items())


def test_killed_sweep_process_is_redone_and_others_kept(tmp_path):
    """A real ``gist sweep`` process killed with SIGKILL mid-sweep. Nothing
    can clean up after SIGKILL, so the killed process gets a temporary folder
    of its own (where its private folder stays behind) inside ``tmp_path``."""
    cfg = write_config(tmp_path, rounds=40)
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "gist", "sweep", str(cfg), "--out", str(out), "--no-progress"]
    killed_tmp = tmp_path / "tmp"
    killed_tmp.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(killed_tmp)}
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        while len(list((out / "runs").glob("*.json"))) < 2:
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "the sweep made no progress"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    kept = run_files(out)
    assert 2 <= len(kept) < 14
    for text in kept.values():  # what was written is complete
        assert json.loads(text)["summary"]["rounds"] == 40
    assert [p.name[:5] for p in killed_tmp.iterdir()] == ["gist-"]  # only the killed command's own folder
    env["TMPDIR"] = os.environ["TMPDIR"]  # the second run must clean up after itself
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"ran {14 - len(kept)}, skipped {len(kept)}" in result.stdout
    after = run_files(out)
    assert len(after) == 14 and all(after[k] == v for k, v in kept.items())


def test_sweep_stopped_by_sigterm_says_so_and_leaves_nothing_behind(tmp_path):
    """``kill``, ``timeout`` and schedulers send SIGTERM: the sweep stops as on Ctrl-C, exit 128 + 15."""
    cfg = write_config(tmp_path, rounds=40)
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "gist", "sweep", str(cfg), "--out", str(out), "--no-progress"]
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while len(list((out / "runs").glob("*.json"))) < 1:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the sweep made no progress"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("gist sweep: stopped by SIGTERM; the finished runs are kept in")
    assert 1 <= len(run_files(out)) < 14
    assert list(tmp.iterdir()) == []


def test_changed_settings_are_refused_not_overwritten(tmp_path, capsys):
    cfg = write_config(tmp_path, text=TINY.replace('"ddp", "local-sgd", ', ""))
    out = tmp_path / "res"
    assert main(["sweep", str(cfg), "--out", str(out), "--no-progress"]) == 0
    before = run_files(out)
    cfg.write_text(cfg.read_text().replace("dropout = 0.0", "dropout = 0.2"))
    capsys.readouterr()
    assert main(["sweep", str(cfg), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "dropout" in err
    assert run_files(out) == before


def test_a_log_made_under_another_default_policy_is_refused(tmp_path, capsys):
    """The partitioned recipe's optimizer policy and wire dtype changed default
    (fresh, then carried, now the second moment in bfloat16): a log made with an
    old one is not taken for the new one."""
    text = (
        TINY.replace('"full", "ddp", "local-sgd", "gist"', '"gist"')
        .replace("subnets = [2, 4]", "subnets = [2]")
        .replace("seeds = [0, 1]", "seeds = [0]")
        .replace("eval_every = 1", 'eval_every = 1\ndata_mode = "partitioned"\nnorm = "batch_norm"')
    )
    pinned = text + '[variants]\ngist = {{ method = "gist", optimizer_state = "fresh", wire_dtype = "float32" }}\n'
    cfg, out = write_config(tmp_path, text=pinned), tmp_path / "res"
    assert main(["sweep", str(cfg), "--out", str(out), "--no-progress"]) == 0
    before = run_files(out)
    assert json.loads(before["gist_m2_z2_seed0.json"])["summary"]["optimizer_state"] == "fresh"
    cfg.write_text(text.format(rounds=3))
    capsys.readouterr()
    assert main(["sweep", str(cfg), "--out", str(out), "--no-progress"]) == 2
    said = capsys.readouterr().err
    assert "optimizer_state: stored 'fresh', config 'second-moment'" in said
    assert "wire_dtype: stored 'float32', config 'bfloat16'" in said
    assert run_files(out) == before


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "text, message",
    [
        ("[settings]\nhiden = 8\n", "'hiden' is not a run setting"),
        ("[settings]\nseed = 1\n", "'seed' is set by the sweep"),
        ("[settings]\nhidden = 'wide'\n", "bad.toml: \\[settings\\] hidden must be an integer, got 'wide'"),
        ("[settings]\nhidden = true\n", "hidden must be an integer, got True"),
        ("[settings]\neval_every = 'x'\n", "eval_every must be an integer, got 'x'"),
        ("[settings]\ntimeout = nan\n", "timeout must be a finite number, got nan"),
        ("[settings]\nnorm = 'group'\n", "norm must be one of"),
        ("[sweep]\nhidden = ['a', 64]\n", "\\[sweep\\] hidden must be an integer, got 'a'"),
        ("[sweep]\nseeds = [0, -1]\n", "seeds must be integers from 0 to 4294967295"),
        (
            "[sweep]\nmethods = ['g']\n[variants]\ng = { method = 'gist', lr = 'x' }\n",
            "variant 'g': lr must be a number",
        ),
        ("[table]\ntarget_drop = 'abc'\n", "\\[table\\] target_drop must be a number, got 'abc'"),
        ("[table]\ntarget_drop = [0.01]\n", "target_drop must be a number, got \\[0.01\\]"),
        ("[table]\ntarget_drop = -0.1\n", "target_drop must be >= 0.0"),
        ("[table]\ntarget = inf\n", "target must be a finite number"),
        ("name = '..'\n", "must be one folder name"),
        ("name = '.'\n", "must be one folder name"),
        ("[sweep]\nmethods = ['gist', 'fedavg']\n", "methods must be drawn from"),
        ("[sweep]\nsubnets = []\n", "subnets must be a non-empty list"),
        ("[sweep]\nroot = ['a', 'b']\n", "'root' cannot be swept"),
        ("[sweep]\nmodel = 'gcn'\n", "model must be a non-empty list"),
        ("[settings]\nhidden = 12\n[sweep]\nsubnets = [8]\nmethods = ['gist']\n", "gist m=8 .*not divisible"),
        ("[table]\ntarget_dorp = 0.1\n", "unknown [table] keys"),
        ("[runs]\n", "unknown top-level keys"),
        ("name = 'a b'\n", "must be one folder name"),
        ("[settings\n", "not valid TOML"),
    ],
)
def test_config_errors_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    escaped = message if "\\" in message else message.replace("[", r"\[")
    with pytest.raises(SweepError, match=escaped):
        load_config(path)


def test_sweep_command_reports_bad_config(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "missing.toml")]) == 2
    assert "no sweep config" in capsys.readouterr().err
    assert main(["table", str(tmp_path)]) == 2
    assert "gist table: error" in capsys.readouterr().err


def test_plan_order_ids_and_extra_axes(tmp_path):
    text = TINY + 'model = ["gcn", "sage"]\n'
    runs = plan(load_config(write_config(tmp_path, text=text)))
    assert len(runs) == 2 * 7 * 2
    assert runs[0].run_id == "model=gcn_full_m1_z2_seed0"
    assert runs[-1].run_id == "model=sage_gist_m4_z2_seed1"
    full = [r for r in runs if r.method == "full"]
    assert all(r.settings.method == "full" and r.settings.subnets == 1 for r in full)
    assert {r.settings.model.kind for r in runs} == {"gcn", "sage"}


def test_variants_are_rows_of_their_own(tmp_path):
    text = TINY.replace('"gist"]', '"gist", "gist-plain"]') + (
        '[variants]\ngist-plain = {{ method = "gist", gist_recipe = "plain" }}\n'
    )
    runs = plan(load_config(write_config(tmp_path, text=text)))
    plain = [r for r in runs if r.method == "gist-plain"]
    assert len(plain) == 2 * 2 and plain[0].run_id == "gist-plain_m2_z2_seed0"
    assert all(r.settings.method == "gist" and r.settings.options.recipe == "plain" for r in plain)
    assert all(r.settings.options.recipe == "auto" for r in runs if r.method == "gist")


def test_a_variant_named_after_its_method_pins_that_row(tmp_path):
    text = TINY + '[variants]\ngist = {{ method = "gist", optimizer_state = "fresh" }}\n'
    runs = plan(load_config(write_config(tmp_path, text=text)))
    gist = [r for r in runs if r.method == "gist"]
    assert gist and all(r.settings.local.optimizer_state == "fresh" for r in gist)
    assert all(r.settings.local.optimizer_state is None for r in runs if r.method != "gist")


@pytest.mark.parametrize(
    "variants,message",
    [
        ('ddp = { method = "gist" }', "has the name of another method"),
        ('g2 = { method = "fedavg" }', "needs method = one of"),
        ('g2 = { method = "gist", root = "x" }', "cannot be set per variant"),
    ],
)
def test_bad_variants_are_named(tmp_path, variants, message):
    escaped = variants.replace("{", "{{").replace("}", "}}")  # write_config formats the text
    path = write_config(tmp_path, text=TINY + f"[variants]\n{escaped}\n")
    with pytest.raises(SweepError, match=message):
        load_config(path)


def test_shipped_configs_plan():
    configs = {p.stem: load_config(p) for p in sorted((REPO / "experiments").glob("*.toml"))}
    required = {"synthetic", "cora", "citeseer", "coauthor-cs", "amazon-computers", "ogbn-arxiv", "ogbn-products"}
    assert required <= set(configs)
    for name, cfg in configs.items():
        assert cfg.name == name and plan(cfg)
    arxiv = configs["ogbn-arxiv"]
    s = arxiv.settings.flat()
    assert (s["dataset"], s["layers"], s["hidden"], s["dropout"], s["lr"], s["norm"]) == (
        "ogbn-arxiv",
        3,
        256,
        0.5,
        0.01,
        "batch_norm",
    )
    assert arxiv.axes["model"] == ["gcn", "sage"]
    p = configs["ogbn-products"].settings.flat()
    assert (p["model"], p["batching"], p["num_clusters"], p["clusters_per_batch"], p["hidden"]) == (
        "sage",
        "cluster",
        15000,
        32,
        256,
    )
    for name in ("cora", "citeseer", "coauthor-cs", "amazon-computers", "synthetic"):
        c = configs[name]
        assert (c.settings.model.layers, c.settings.model.hidden, c.settings.model.norm) == (3, 256, "batch_norm")
        assert {"full", "ddp", "local-sgd", "gist"} <= set(c.methods)
        assert c.settings.data.mode == "partitioned"
    assert configs["synthetic"].axes["model"] == ["gcn", "sage"]
    for name in ("cora", "citeseer", "coauthor-cs", "amazon-computers"):  # the recipe beside plain GIST
        c = configs[name]
        assert "gist-plain" in c.methods and c.variants["gist-plain"] == {"method": "gist", "gist_recipe": "plain"}


# ---------------------------------------------------------------- bytes and time to target


def hand_log(
    method: str,
    m: int,
    seed: int,
    vals,
    params_per_round: int,
    seconds_per_round: float,
    eval_seconds: float = 0.5,
    eval_bytes: int = 0,
) -> dict:
    """A run log written by hand: ``vals[r]`` is round r's validation (None: not evaluated)."""
    rounds = []
    for r, val in enumerate(vals):
        rounds.append(
            {
                "round": r,
                "local_steps": 5,
                "seconds": 99.0,
                "parallel_seconds": seconds_per_round,
                "eval_seconds": eval_seconds if val is not None else None,
                "bytes": {"params": params_per_round, "stats": 12 * m, "eval": eval_bytes},
                "val": val,
                "test": None if val is None else val - 0.01,
                "train": None,
            }
        )
    return {
        "sweep": {"method": method, "m": m, "zeta": 5, "seed": seed, "context": {}},
        "config": {"subnets": m},
        "setup_bytes": {"control": 24 * m, "data": 10**9},
        "rounds": rounds,
    }


def test_first_reach_from_hand_written_log():
    log = hand_log(
        "gist", 2, 0, [0.50, None, 0.78, 0.80, 0.79], params_per_round=4000, seconds_per_round=2.0, eval_bytes=600
    )
    curve = run_curve(log)
    # per worker: set-up control 48/2 = 24, then (4000 + 24) / 2 = 2012 per round; data and eval are not
    # training bytes: eval is counted on its own
    assert curve["bytes_per_worker"].tolist() == [24 + 2012 * k for k in range(1, 6)]
    assert curve["eval_bytes_per_worker"].tolist() == [300 * k for k in range(1, 6)]
    assert curve["steps"].tolist() == [5, 10, 15, 20, 25]
    # seconds are training time; the evaluated rounds' 0.5 s each are counted apart
    assert curve["seconds"].tolist() == pytest.approx([2.0, 4.0, 6.0, 8.0, 10.0])
    assert curve["eval_seconds"].tolist() == pytest.approx([0.5, 0.5, 1.0, 1.5, 2.0])
    hit = first_reach(curve, 0.78)
    assert hit == {"round": 2, "steps": 15, "bytes_per_worker": 24 + 3 * 2012, "seconds": pytest.approx(6.0)}
    assert first_reach(curve, 0.80)["round"] == 3
    assert first_reach(curve, 0.81) is None  # never reached


def test_plot_curves_carry_the_spread_over_seeds_and_a_colour_per_method():
    logs = [
        hand_log("gist", 2, 0, [0.50, 0.70], params_per_round=10, seconds_per_round=1.0),
        hand_log("gist", 2, 1, [0.60, 0.80], params_per_round=10, seconds_per_round=1.0),
        hand_log("ddp", 2, 0, [0.40, 0.90], params_per_round=10, seconds_per_round=1.0),
    ]
    curves = mean_curves(run_table(logs)).set_index(["method", "round"])
    assert curves.loc[("gist", 1), "val"] == pytest.approx(0.75)
    assert curves.loc[("gist", 1), "val_std"] == pytest.approx(math.sqrt(2) * 0.05)
    assert curves.loc[("ddp", 1), "val_std"] == 0.0 and curves.loc[("ddp", 1), "seeds"] == 1
    # registered methods keep their colour; variants get distinct spare ones, whatever else is plotted
    colors = method_colors(["ddp", "gist", "gist-plain", "local-sgd-fresh", "x"])
    assert colors["ddp"] == "tab:blue" and colors["gist"] == "tab:green"
    assert len(set(colors.values())) == 5
    assert method_colors(["gist-plain", "x"])["gist-plain"] == method_colors(["gist-plain", "gist", "x"])["gist-plain"]
    assert spans_decades(pd.Series([0.0, 0.2, 50.0])) and not spans_decades(pd.Series([2.0, 40.0]))


def test_still_rising_marks_runs_stopped_before_they_converged():
    def curve(vals):
        return run_curve(hand_log("gist", 2, 0, vals, params_per_round=10, seconds_per_round=1.0))

    # 8 evaluated rounds: the last quarter is rounds 6-7
    assert still_rising(curve([0.5, 0.6, 0.7, 0.7, 0.7, 0.7, 0.71, 0.70]))  # 0.71 > 0.70 + 0.005
    assert not still_rising(curve([0.5, 0.6, 0.7, 0.7, 0.7, 0.7, 0.704, 0.70]))  # within the margin
    assert not still_rising(curve([0.5, 0.8, 0.7, 0.7, 0.7, 0.7, 0.75, 0.70]))  # peaked early
    assert still_rising(curve([0.5, None, 0.6, None, 0.6, None, 0.62, None]))  # evaluated rounds only
    assert not still_rising(curve([0.5, 0.6, 0.7]))  # too few rounds to judge
    logs = [
        hand_log("gist", 2, 0, [0.5, 0.6, 0.7, 0.8], params_per_round=10, seconds_per_round=1.0),
        hand_log("gist", 2, 1, [0.5, 0.8, 0.7, 0.7], params_per_round=10, seconds_per_round=1.0),
    ]
    row = summarize(run_table(logs), []).iloc[0]
    assert row["still_rising"] == 1 and row["best_round"] == pytest.approx((3 + 1) / 2)


def test_summary_targets_ratios_and_unreached_runs():
    logs = [
        # full: best val 0.80 and 0.82 -> target 0.81 - 0.01 = 0.80
        hand_log("full", 1, 0, [0.70, 0.80], params_per_round=100, seconds_per_round=1.0),
        hand_log("full", 1, 1, [0.82, 0.75], params_per_round=100, seconds_per_round=1.0),
        # ddp reaches 0.80 in round 1 (seed 0) and round 0 (seed 1)
        hand_log("ddp", 2, 0, [0.79, 0.81], params_per_round=1000, seconds_per_round=1.0),
        hand_log("ddp", 2, 1, [0.805, 0.81], params_per_round=1000, seconds_per_round=1.0),
        # gist: seed 0 reaches at round 2, seed 1 never does
        hand_log("gist", 2, 0, [0.60, 0.70, 0.85], params_per_round=200, seconds_per_round=0.5),
        hand_log("gist", 2, 1, [0.60, 0.70, 0.79], params_per_round=200, seconds_per_round=0.5),
    ]
    runs = run_table(logs)
    table = summarize(runs, [], target_drop=0.01).set_index("method")
    assert table.loc["full", "target"] == pytest.approx(0.80)
    assert table.loc["full", "best_val"] == pytest.approx(0.81)
    assert table.loc["full", "best_val_std"] == pytest.approx(math.sqrt(2) * 0.01)
    assert table.loc["full", "test_at_best_val"] == pytest.approx(0.80)

    # per worker: set-up 48 / 2, each round (1000 + 24) / 2; seed 0 reaches in round 1, seed 1 in round 0
    ddp_bytes = [24 + 2 * 512, 24 + 512]
    assert table.loc["ddp", "reached"] == 2
    assert table.loc["ddp", "mb_to_target"] == pytest.approx(sum(ddp_bytes) / 2 / 1e6)
    assert table.loc["ddp", "seconds_to_target"] == pytest.approx((2.0 + 1.0) / 2)  # training seconds only
    assert table.loc["ddp", "eval_seconds"] == pytest.approx(2 * 0.5)
    assert table.loc["ddp", "bytes_vs_ddp"] == pytest.approx(1.0)

    gist_bytes = (48 + 3 * (200 + 24)) / 2
    assert table.loc["gist", "reached"] == 1
    assert table.loc["gist", "mb_to_target"] == pytest.approx(gist_bytes / 1e6)
    assert table.loc["gist", "seconds_to_target"] == pytest.approx(3 * 0.5)
    assert table.loc["gist", "bytes_vs_ddp"] == pytest.approx(gist_bytes / (sum(ddp_bytes) / 2))
    assert table.loc["gist", "mb_per_worker"] == pytest.approx(gist_bytes / 1e6)
    assert math.isnan(table.loc["full", "bytes_vs_ddp"])  # no ddp with m = 1

    # equal budgets: gist's whole run is 360 bytes per worker and 1.5 s of training; ddp's first
    # round alone moves more bytes, and within 1.5 s it trains one round (0.79 and 0.805)
    assert table.loc["gist", "val_at_gist_bytes"] == pytest.approx((0.85 + 0.79) / 2)
    assert math.isnan(table.loc["ddp", "val_at_gist_bytes"])
    assert table.loc["ddp", "val_at_gist_seconds"] == pytest.approx((0.79 + 0.805) / 2)
    assert math.isnan(table.loc["full", "val_at_gist_bytes"])  # no gist with m = 1

    # an absolute target nobody reaches: everything "to target" is empty
    none = summarize(runs, [], target=0.99)
    assert (none["reached"] == 0).all() and none["mb_to_target"].isna().all()
    assert none["seconds_to_target"].isna().all() and none["bytes_vs_ddp"].isna().all()


def test_table_from_hand_written_logs_marks_unreached(tmp_path):
    out = tmp_path / "res"
    (out / "runs").mkdir(parents=True)
    cfg = write_config(tmp_path)
    (out / "config.toml").write_text(cfg.read_text())
    for i, log in enumerate(
        [hand_log("full", 1, 0, [0.7, 0.8], 100, 1.0), hand_log("gist", 2, 0, [0.5, 0.6], 50, 1.0)]
    ):
        log["sweep"]["run_id"] = f"run{i}"
        (out / "runs" / f"run{i}.json").write_text(json.dumps(log))
    text, table = tabulate(out, "gist table res", plots=True)
    gist_row = [line for line in text.splitlines() if line.startswith("| gist")][0]
    assert "0/1" in gist_row and "—" in gist_row
    assert (out / "accuracy_vs_bytes.png").is_file() and (out / "accuracy_vs_time.png").is_file()


def test_sweep_with_real_processes_matches_in_process(tmp_path):
    """``processes = true``: every run is m gloo processes; bytes equal the simulation's."""
    text = TINY.replace('methods = ["full", "ddp", "local-sgd", "gist"]', 'methods = ["ddp", "gist"]')
    text = text.replace("subnets = [2, 4]", "subnets = [2]").replace("seeds = [0, 1]", "seeds = [0]")
    text = text.replace("eval_every = 1", "eval_every = 1\nthreads = 1")
    cfg = load_config(write_config(tmp_path, rounds=2, text=text))
    run_sweep(cfg, tmp_path / "sim", progress=False, say=lambda _: None)
    cfg.processes = True
    run_sweep(cfg, tmp_path / "procs", progress=False, say=lambda _: None)
    for run_id in ("gist_m2_z2_seed0", "ddp_m2_z2_seed0"):
        sim, procs = (json.loads((tmp_path / d / "runs" / f"{run_id}.json").read_text()) for d in ("sim", "procs"))
        assert sim["config"]["transport"] == "in-process"
        assert procs["config"]["transport"] == "torch.distributed (gloo)"
        assert [r["bytes"] for r in procs["rounds"]] == [r["bytes"] for r in sim["rounds"]]
        assert procs["setup_bytes"] == sim["setup_bytes"]
        assert [r["val"] for r in procs["rounds"]] == pytest.approx([r["val"] for r in sim["rounds"]], abs=1e-9)


def test_one_process_runs_stand_for_every_bandwidth(tmp_path):
    """``full`` crosses no link: it runs once per seed, at the first bandwidth,
    and its rows appear under every bandwidth of the table."""
    text = TINY.replace("subnets = [2, 4]", "subnets = [2]") + 'bandwidth = ["none", "1gbit"]\nprocesses = true\n'
    cfg = load_config(write_config(tmp_path, rounds=2, text=text))
    runs = plan(cfg)
    full = [r for r in runs if r.method == "full"]
    assert [r.run_id for r in full] == ["bandwidth=none_full_m1_z2_seed0", "bandwidth=none_full_m1_z2_seed1"]
    assert all(r.stands_for == {"bandwidth": ["none", "1gbit"]} for r in full)
    assert len(runs) == 2 + 2 * 3 * 2
    assert not any(r.stands_for for r in runs if r.method != "full")

    def unshaped(run, processes, progress):  # the shaping is test_netns's; here only the plan and table
        return run_training(run.settings.replace(bandwidth="none"), progress=False)

    out = tmp_path / "res"
    run_sweep(cfg, out, progress=False, runner=unshaped, say=lambda _: None)
    text, table = tabulate(out, "gist sweep tiny.toml", plots=False)
    rows = table[table["method"] == "full"]
    assert sorted(rows["bandwidth"]) == ["1gbit", "none"] and set(rows["seeds"]) == {2}
    assert "its rows stand for every bandwidth" in text
    # a log written before full was shared learns what it stands for when the sweep resumes
    first = out / "runs" / "bandwidth=none_full_m1_z2_seed0.json"
    log = json.loads(first.read_text())
    del log["sweep"]["stands_for"]
    first.write_text(json.dumps(log))
    assert run_sweep(cfg, out, progress=False, runner=None, say=lambda _: None)["ran"] == 0
    assert json.loads(first.read_text())["sweep"]["stands_for"] == {"bandwidth": ["none", "1gbit"]}
    # a log left from a plan that ran full at every bandwidth is refused, not counted twice
    log = json.loads((out / "runs" / "bandwidth=none_full_m1_z2_seed0.json").read_text())
    del log["sweep"]["stands_for"]
    log["sweep"]["context"]["bandwidth"] = "1gbit"
    (out / "runs" / "bandwidth=1gbit_full_m1_z2_seed0.json").write_text(json.dumps(log))
    with pytest.raises(ValueError, match="runs of the same grid point"):
        tabulate(out, "gist sweep tiny.toml", plots=False)
