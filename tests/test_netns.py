"""Shaped links (gist.comm.netns, --bandwidth): the shaping bites, runs record it, nothing is left behind.

The tests that make namespaces skip, saying why, where this machine or user cannot
(root and iproute2 are needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

from gist.cli import main
from gist.comm.netns import ShapedNamespace, ShapingUnavailable, check_can_shape
from gist.config import RunConfig
from gist.settings import parse_rate


def _can_shape() -> str:
    try:
        check_can_shape()
        with ShapedNamespace("1gbit"):
            return ""
    except ShapingUnavailable as exc:
        return str(exc)


WHY_NOT = _can_shape()
needs_shaping = pytest.mark.skipif(bool(WHY_NOT), reason=f"cannot make a shaped namespace here: {WHY_NOT}")

TRANSFER = r"""
import os, sys, time, torch, torch.distributed as dist, torch.multiprocessing as mp

def rank(r, port, numel, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=r, world_size=2)
    x = torch.zeros(numel)
    dist.barrier()
    start = time.perf_counter()
    dist.send(x, 1) if r == 0 else dist.recv(x, 0)
    dist.barrier()
    if r == 0:
        open(out, "w").write(repr(time.perf_counter() - start))
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(rank, args=(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]), nprocs=2)
"""


def _gloo_transfer_seconds(tmp_path: Path, numel: int, ns: ShapedNamespace | None) -> float:
    script, out = tmp_path / "transfer.py", tmp_path / "seconds"
    script.write_text(TRANSFER)
    argv = [sys.executable, str(script), "29731", str(numel), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(ns.command(argv) if ns else argv, check=True, timeout=120, env=env)
    return float(out.read_text())


@needs_shaping
def test_shaping_bites(tmp_path):
    """4 MB through a 32 Mbit/s link take at least the time the rate implies
    (about 1 s, less the bucket that starts full); unshaped, a fraction of it."""
    numel = 1_000_000  # float32: 4 MB = 32 Mbit
    with ShapedNamespace("32mbit") as ns:
        implied = (4 * numel - ns.burst_bytes) * 8 / ns.rate_bits
        shaped = _gloo_transfer_seconds(tmp_path, numel, ns)
    unshaped = _gloo_transfer_seconds(tmp_path, numel, None)
    assert implied > 0.9 and shaped >= 0.98 * implied, (shaped, implied)
    assert shaped < 3.0, shaped  # and not far slower than the rate: the bucket holds whole packets
    assert unshaped < 0.25 * shaped, (unshaped, shaped)


@needs_shaping
def test_namespace_is_removed_whatever_happens():
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    with pytest.raises(KeyboardInterrupt), ShapedNamespace("100mbit") as ns:
        assert ns.name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        raise KeyboardInterrupt
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout == names


@needs_shaping
def test_a_shaped_run_records_its_bandwidth(tmp_path, capsys):
    log = tmp_path / "run.json"
    args = ["train", "--hidden", "16", "--rounds", "2", "--local-steps", "2", "--procs", "2", "--threads", "1"]
    assert main([*args, "--bandwidth", "100mbit", "--root", str(tmp_path), "--log", str(log), "--no-progress"]) == 0
    record = json.loads(log.read_text())
    assert record["config"]["dist"]["bandwidth"] == "100mbit" and len(record["rounds"]) == 2
    assert "best val" in capsys.readouterr().out
    assert "gist-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_bad_bandwidths_and_places_are_refused(tmp_path, capsys):
    assert parse_rate("100mbit") == 1e8 and parse_rate("1gbit") == 1e9 and parse_rate("2.5kbit") == 2500
    for bad in ("100", "fast", "0mbit", "-1gbit", "100mbps"):
        with pytest.raises(ValueError, match="bandwidth must look like 100mbit"):
            parse_rate(bad)
    assert main(["train", "--hidden", "16", "--rounds", "1", "--bandwidth", "100", "--no-progress"]) == 2
    assert "bandwidth must look like" in capsys.readouterr().err
    # in one process there is no link to shape
    assert main(["train", "--hidden", "16", "--rounds", "1", "--bandwidth", "100mbit", "--no-progress"]) == 2
    assert "--bandwidth shapes the link between the processes" in capsys.readouterr().err


def test_without_root_the_error_says_so(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ShapingUnavailable, match="needs root"):
        check_can_shape()
    args = ["train", "--hidden", "16", "--rounds", "1", "--procs", "2", "--bandwidth", "100mbit", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gist train: error: a shaped network needs root") and len(err.splitlines()) == 1


def test_the_config_a_shaped_child_reads_is_the_config(tmp_path):
    """A shaped launch hands its config to the process in the namespace as JSON (no CLI flags in between)."""
    for cfg in (
        RunConfig.from_flat(method="ddp", subnets=4, lr=5e-4, data_mode="partitioned", bandwidth="1gbit", resume=True),
        RunConfig.from_flat(method="gist", label_prior=False, wire_dtype="bfloat16", sparse_adjacency=False),
    ):
        (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
        assert RunConfig.from_dict(json.loads((tmp_path / "config.json").read_text())) == cfg


@needs_shaping
def test_ctrl_c_in_a_shaped_run_removes_the_namespace(tmp_path):
    from test_distributed import _interrupt

    ckpt, log = tmp_path / "ckpt.pt", tmp_path / "run.json"
    cmd = [sys.executable, "-m", "gist", "train", "--hidden", "12", "--local-steps", "1", "--rounds", "2000"]
    cmd += ["--eval-every", "1"]  # rounds as slow as they were: the signal must find the run going
    cmd += ["--threads", "1", "--no-progress", "--root", str(tmp_path), "--log", str(log), "--procs", "2"]
    cmd += ["--checkpoint", str(ckpt), "--checkpoint-every", "2", "--bandwidth", "1gbit"]
    proc = _interrupt(cmd, dict(os.environ), ckpt, "group")
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("gist train: interrupted")
    assert proc.stderr.count("gist train: interrupted") == 1
    assert json.loads(log.read_text())["failure"]["kind"] == "interrupted"
    assert "gist-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@needs_shaping
def test_a_killed_shaped_launcher_leaves_no_process_and_its_namespace_is_reclaimed(tmp_path):
    """SIGKILL of a shaped run's launcher: the child it started inside the
    namespace and that child's ranks die with it; the namespace it could not
    delete is removed by the next shaped run."""
    from test_distributed import _kill_once_going, _start_marked

    token = uuid.uuid4().hex
    ckpt = tmp_path / "ckpt.pt"
    cmd = [sys.executable, "-m", "gist", "train", "--hidden", "12", "--local-steps", "1", "--rounds", "2000"]
    cmd += ["--eval-every", "1", "--threads", "1", "--no-progress", "--root", str(tmp_path), "--procs", "2"]
    cmd += ["--checkpoint", str(ckpt), "--checkpoint-every", "2", "--bandwidth", "1gbit"]
    launcher = _start_marked(cmd, tmp_path, token, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _kill_once_going(launcher, ckpt, token) == [], "processes outlived their launcher"
    orphan = f"gist-{launcher.pid}-"
    assert orphan in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    with ShapedNamespace("1gbit"):
        assert orphan not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


SHAPED_SWEEP = """
name = "shaped"
description = "gist at m = 2 over an unshaped and a 100 Mbit/s loopback."

[settings]
dataset = "csbm"
layers = 2
hidden = 64
dropout = 0.0
rounds = 2
threads = 1

[sweep]
methods = ["full", "gist"]
subnets = [2]
local_steps = [1]
bandwidth = ["none", "100mbit"]
processes = true
"""


@needs_shaping
def test_bandwidth_is_a_sweep_axis(tmp_path, capsys):
    cfg = tmp_path / "shaped.toml"
    cfg.write_text(SHAPED_SWEEP)
    out = tmp_path / "res"
    assert main(["sweep", str(cfg), "--out", str(out), "--root", str(tmp_path), "--no-progress"]) == 0
    logs = {p.name: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    # full (one process) runs once, unshaped, and stands for both bandwidths
    assert sorted(logs) == [
        "bandwidth=100mbit_gist_m2_z1_seed0.json",
        "bandwidth=none_full_m1_z1_seed0.json",
        "bandwidth=none_gist_m2_z1_seed0.json",
    ]
    assert {log["config"]["dist"]["bandwidth"] for log in logs.values()} == {"none", "100mbit"}
    assert logs["bandwidth=none_full_m1_z1_seed0.json"]["sweep"]["stands_for"] == {"bandwidth": ["none", "100mbit"]}
    table = (out / "table.md").read_text()
    assert "| bandwidth" in table and "100mbit" in table
    rows = pd.read_csv(out / "table.csv")
    assert sorted(rows[rows["method"] == "full"]["bandwidth"]) == ["100mbit", "none"]
    assert "its rows stand for every bandwidth" in table


def test_a_shaped_sweep_needs_processes(tmp_path, capsys):
    cfg = tmp_path / "shaped.toml"
    cfg.write_text(SHAPED_SWEEP.replace("processes = true", "processes = false"))
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "res"), "--no-progress"]) == 2
    assert "bandwidth 100mbit shapes the link between real processes" in capsys.readouterr().err
