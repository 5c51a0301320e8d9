"""GIST on torch.distributed with real processes (gloo, loopback).

Every distributed run here is m spawned processes; each test compares it with
the in-process simulation of the same settings. Both sides use one torch
thread, so that their floating-point sums run in the same order.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from faults import fault_env

from gist.comm.launch import LOST_PEER, OWN, root_cause
from gist.config import RunConfig
from gist.run import launch_local, run_training

pytestmark = pytest.mark.timeout(600)


def _run_both(settings: RunConfig, tmp_path: Path, procs: int):
    local_model, dist_model = tmp_path / "local.pt", tmp_path / "dist.pt"
    local = run_training(settings.replace(save_model=str(local_model)), progress=False)
    dist = launch_local(settings.replace(save_model=str(dist_model)), procs, progress=False)
    return (local, torch.load(local_model, weights_only=True)), (dist, torch.load(dist_model, weights_only=True))


def _ledger_key(t):
    return (t["round"], t["worker"], t["direction"], t["kind"])


def _assert_equivalent(local, dist, local_state, dist_state):
    assert local_state.keys() == dist_state.keys()
    diff = max((local_state[k].double() - dist_state[k].double()).abs().max().item() for k in local_state)
    assert diff <= 1e-5, f"max |local - dist| = {diff}"
    assert sorted(local["ledger"], key=_ledger_key) == sorted(dist["ledger"], key=_ledger_key)
    assert local["summary"]["bytes_total"] == dist["summary"]["bytes_total"]
    assert [r["val"] for r in local["rounds"]] == pytest.approx([r["val"] for r in dist["rounds"]], abs=1e-6)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("model", ["gcn", "sage"])
@pytest.mark.parametrize("mode", ["replicated", "partitioned"])
def test_distributed_equals_in_process_on_synthetic_graph(tmp_path, one_thread, m, model, mode):
    settings = RunConfig.from_flat(
        dataset="csbm",
        root=str(tmp_path / "data"),
        model=model,
        layers=3,
        hidden=16,
        norm="batch_norm" if model == "gcn" else "none",
        subnets=m,
        local_steps=2,
        rounds=3,
        data_mode=mode,
        threads=1,
        timeout=60,
    )
    (local, ls), (dist, ds) = _run_both(settings, tmp_path, m)
    _assert_equivalent(local, dist, ls, ds)
    assert dist["config"]["transport"] == "torch.distributed (gloo)"
    # the analytic count: |θ_i| values, each way, per worker and round (float32; the partitioned recipe's
    # bfloat16, where each BatchNorm's integer step count takes its 8 bytes), and the recipe's carried
    # second moment beside them (its count: test_optimizer_state.py)
    numel, summary = local["summary"]["subnet_params"], dist["summary"]
    wire, integers = (2, 2 if model == "gcn" else 0) if mode == "partitioned" else (4, 0)
    per_message = wire * numel + (8 - wire) * integers
    assert summary["bytes_total"] - summary["optim_bytes_total"] == 2 * per_message * m * settings.rounds
    assert (summary["optim_bytes_total"] > 0) == (mode == "partitioned")
    if mode == "partitioned":
        # evaluation where the data lives: the full model to each worker, 6 counts back, every round
        full_numel = sum(v.numel() for v in ls.values())
        assert dist["summary"]["eval_bytes_total"] == settings.rounds * m * (4 * full_numel + 6 * 8)
        part_dir = tmp_path / "data" / "partitions" / f"csbm-metis-p{m}-s0-h0"
        assert sorted(p.name for p in part_dir.glob("part_*.pt")) == [f"part_{i}.pt" for i in range(m)]


@pytest.mark.parametrize("m,model,mode", [(2, "gcn", "partitioned"), (4, "sage", "replicated")])
def test_distributed_equals_in_process_on_cora(tmp_path, one_thread, real_data_root, m, model, mode):
    root = real_data_root("planetoid")
    settings = RunConfig.from_flat(
        dataset="cora",
        root=str(root),
        model=model,
        layers=3,
        hidden=32,
        subnets=m,
        local_steps=3,
        rounds=3,
        data_mode=mode,
        threads=1,
        timeout=60,
    )
    (local, ls), (dist, ds) = _run_both(settings, tmp_path, m)
    _assert_equivalent(local, dist, ls, ds)


def test_torchrun_launch_matches_spawned_processes(tmp_path):
    args = [
        "--hidden",
        "16",
        "--rounds",
        "2",
        "--local-steps",
        "2",
        "--threads",
        "1",
        "--no-progress",
        "--root",
        str(tmp_path / "data"),
    ]
    port = str(__import__("gist.comm.group", fromlist=["free_port"]).free_port())
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        port,
        "--log-dir",
        str(tmp_path / "torchrun-logs"),
        "-m",
        "gist",
        "train",
        "--backend",
        "dist",
        *args,
        "--log-file",
        str(tmp_path / "a.json"),
        "--save-model",
        str(tmp_path / "a.pt"),
    ]
    proc = subprocess.run(torchrun, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best val" in proc.stdout
    spawned = [
        sys.executable,
        "-m",
        "gist",
        "train",
        "--procs",
        "2",
        *args,
        "--log",
        str(tmp_path / "b.json"),
        "--save-model",
        str(tmp_path / "b.pt"),
    ]
    proc = subprocess.run(spawned, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    la, lb = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert la["summary"]["bytes_total"] == lb["summary"]["bytes_total"]


def _leftovers(token: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("GIST_TEST_TOKEN") == token:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _train_with_fault(tmp_path: Path, fault: str, timeout: int, *extra: str, rounds: int = 5):
    """``gist train --procs 3`` with ``fault`` injected into rank 1 at round 1:
    the finished process, the seconds from the fault to the end of the run
    (start-up excluded), and the worker processes it left behind."""
    token = uuid.uuid4().hex
    stamp = tmp_path / "fault-time"
    env = fault_env(f"1:1:{fault}", GIST_FAULT_STAMP=str(stamp), GIST_TEST_TOKEN=token)
    cmd = [sys.executable, "-m", "gist", "train", "--procs", "3", "--hidden", "12", "--rounds", str(rounds)]
    cmd += ["--local-steps", "1", "--timeout", str(timeout), "--threads", "1", "--no-progress", "--root", str(tmp_path)]
    proc = subprocess.run([*cmd, *extra], capture_output=True, text=True, env=env, timeout=300)
    after_fault = time.time() - float(stamp.read_text())
    time.sleep(1)
    return proc, after_fault, _leftovers(token)


@pytest.mark.parametrize("fault", ["exit", "kill", "hang"])
def test_a_dead_or_hung_worker_stops_the_run_naming_its_rank(tmp_path, fault):
    timeout = 5
    proc, after_fault, leftovers = _train_with_fault(tmp_path, fault, timeout)
    assert proc.returncode != 0
    # a dead worker is noticed at once (its connections close), a hung one
    # after `timeout` s of silence; then the launcher stops the others
    assert after_fault < timeout + 20, after_fault
    last = proc.stderr.strip().splitlines()[-1]
    if fault == "exit":
        assert last == "gist train: error: rank 1 exited with status 17; the other processes were stopped", last
    elif fault == "kill":
        assert last.startswith("gist train: error: rank 1 was killed by SIGKILL (on Linux, often the out-of-memory"), (
            last
        )
        assert last.count("SIGKILL") == 1
    else:
        assert "rank 1 failed during round 1" in proc.stderr, proc.stderr[-2000:]
        assert "rank 1 is alive but hung" in proc.stderr, proc.stderr[-2000:]
    assert leftovers == [], "worker processes were left behind"


@pytest.mark.parametrize("method", ["gist", "ddp"])
def test_a_worker_slower_than_the_timeout_is_waited_for(tmp_path, method):
    # rank 1 computes for 3x the timeout before its round: alive, so never killed
    proc, after_fault, leftovers = _train_with_fault(tmp_path, "slow=9", 3, "--method", method, rounds=3)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert after_fault >= 9
    assert "best val" in proc.stdout
    assert leftovers == []


def test_a_hung_data_parallel_worker_is_named(tmp_path):
    timeout = 5
    proc, after_fault, leftovers = _train_with_fault(tmp_path, "hang", timeout, "--method", "ddp")
    assert proc.returncode != 0
    assert after_fault < timeout + 20, after_fault
    assert "rank 1 is alive but hung" in proc.stderr, proc.stderr[-2000:]
    assert leftovers == []


def test_resume_after_a_killed_run_gives_the_uninterrupted_model(tmp_path, one_thread, monkeypatch):
    base = RunConfig.from_flat(
        dataset="csbm",
        root=str(tmp_path / "data"),
        hidden=16,
        subnets=2,
        local_steps=2,
        rounds=6,
        threads=1,
        timeout=30,
        batching="cluster",
        num_clusters=8,
        clusters_per_batch=2,
        checkpoint=str(tmp_path / "ckpt.pt"),
        checkpoint_every=2,
    )
    full = launch_local(
        base.replace(checkpoint=str(tmp_path / "other.pt"), save_model=str(tmp_path / "full.pt")), 2, progress=False
    )
    # a run whose worker 1 dies in round 4, after the checkpoint of round 3
    with monkeypatch.context() as patch:
        for name, value in fault_env("1:4:exit").items():
            patch.setenv(name, value)
        with pytest.raises(Exception, match="exited with status 17"):
            launch_local(base, 2, progress=False)
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert saved["round"] == 4
    resumed = launch_local(base.replace(resume=True, save_model=str(tmp_path / "resumed.pt")), 2, progress=False)
    a = torch.load(tmp_path / "full.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["round"] for r in resumed["rounds"]] == list(range(6))
    assert [r["val"] for r in resumed["rounds"]] == [r["val"] for r in full["rounds"]]
    # the in-process simulation resumes the same way, also from a checkpoint made by processes
    local = run_training(base.replace(resume=True, save_model=str(tmp_path / "local.pt")), progress=False)
    c = torch.load(tmp_path / "local.pt", weights_only=True)
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert local["summary"]["rounds"] == 6


def test_resume_m1_restores_the_optimizer_and_rng(tmp_path, one_thread):
    base = RunConfig.from_flat(
        dataset="csbm",
        root=str(tmp_path),
        hidden=16,
        subnets=1,
        local_steps=2,
        rounds=4,
        threads=1,
        checkpoint=str(tmp_path / "ckpt.pt"),
        checkpoint_every=2,
    )
    run_training(base.replace(save_model=str(tmp_path / "full.pt"), checkpoint=str(tmp_path / "x.pt")), progress=False)
    run_training(base.replace(rounds=2), progress=False)
    run_training(base.replace(resume=True, save_model=str(tmp_path / "res.pt")), progress=False)
    a, b = (torch.load(tmp_path / n, weights_only=True) for n in ("full.pt", "res.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_different_settings(tmp_path):
    base = RunConfig.from_flat(
        dataset="csbm",
        root=str(tmp_path),
        hidden=16,
        subnets=2,
        local_steps=1,
        rounds=2,
        checkpoint=str(tmp_path / "ckpt.pt"),
        checkpoint_every=1,
    )
    run_training(base, progress=False)
    with pytest.raises(ValueError, match="hidden: checkpoint 16, now 32"):
        run_training(base.replace(hidden=32, resume=True, rounds=3), progress=False)
    with pytest.raises(ValueError, match="no checkpoint"):
        run_training(base.replace(checkpoint=str(tmp_path / "missing.pt"), resume=True), progress=False)


def test_world_size_must_equal_subnets(tmp_path):
    settings = RunConfig.from_flat(dataset="csbm", root=str(tmp_path), hidden=16, subnets=4, rounds=1)
    with pytest.raises(Exception, match="run one process per worker"):
        launch_local(settings, 2, progress=False)


@pytest.mark.parametrize("threads", [None, 2])
def test_threads_apply_to_every_spawned_process(tmp_path, threads):
    # default: the cores divided by the processes on this machine; --threads wins
    settings = RunConfig.from_flat(dataset="csbm", root=str(tmp_path), hidden=16, subnets=2, rounds=1, threads=threads)
    log = launch_local(settings, 2, progress=False)
    expected = threads or max(1, (os.cpu_count() or 1) // 2)
    assert log["environment"]["threads"] == expected


def _interrupt(
    cmd: list[str], env: dict[str, str], ready: Path, whom: str, sig: int = signal.SIGINT
) -> subprocess.CompletedProcess:
    """Start ``cmd`` in its own session, wait for ``ready`` to exist, send
    ``sig`` (to the whole process group, as a terminal's Ctrl-C does, to
    the launcher alone, as ``kill`` and ``timeout`` do, or to a launcher
    started as a shell's background job, SIGINT ignored) and return the finished process."""
    handler = signal.SIG_IGN if whom == "background" else signal.SIG_DFL
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # as from a terminal: SIGINT handled, even where the suite itself was
        # started with it ignored (a shell's background job)
        preexec_fn=lambda: signal.signal(signal.SIGINT, handler),
    )
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.05)
        time.sleep(0.3)
        if whom == "group":
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.parametrize(
    "procs, whom, sig",
    [
        (None, "group", signal.SIGINT),
        ("2", "group", signal.SIGINT),
        ("2", "launcher", signal.SIGINT),
        (None, "launcher", signal.SIGTERM),
        ("2", "launcher", signal.SIGTERM),
        ("2", "background", signal.SIGTERM),
    ],
    ids=["in-process", "procs-ctrl-c", "procs-kill-int", "in-process-sigterm", "procs-sigterm", "background-sigterm"],
)
def test_ctrl_c_says_where_the_run_stopped_and_how_to_resume(tmp_path, procs, whom, sig):
    """SIGTERM (kill, timeout, a scheduler) stops a run as Ctrl-C does, exiting 128 + 15."""
    token = uuid.uuid4().hex
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    ckpt, log = tmp_path / "ckpt.pt", tmp_path / "run.json"
    cmd = [sys.executable, "-m", "gist", "train", "--hidden", "12", "--local-steps", "1", "--rounds", "2000"]
    cmd += ["--eval-every", "1"]  # rounds as slow as they were: the signal must find the run going
    cmd += ["--threads", "1", "--no-progress", "--root", str(tmp_path), "--log", str(log)]
    cmd += ["--checkpoint", str(ckpt), "--checkpoint-every", "2"]
    cmd += ["--procs", procs] if procs else []
    proc = _interrupt(cmd, {**os.environ, "GIST_TEST_TOKEN": token, "TMPDIR": str(tmp)}, ckpt, whom, sig)
    assert proc.returncode == 128 + sig, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    said = "interrupted" if sig == signal.SIGINT else "stopped by SIGTERM"
    assert last.startswith(f"gist train: {said} in round"), last
    assert f"to continue from the last checkpoint ({ckpt}), run the same command with --resume" in last
    record = json.loads(log.read_text())  # the rounds before the interruption are kept
    assert record["failure"]["kind"] == "interrupted" and f"round {record['failure']['round']}" in last
    assert len(record["rounds"]) == record["failure"]["round"] >= 2
    time.sleep(1)
    assert _leftovers(token) == [], "processes were left behind"
    assert list(tmp.iterdir()) == [], "temporary folders were left behind"


def test_the_root_cause_is_the_rank_that_failed_on_its_own_else_rank_0_else_the_first_noted(tmp_path):
    def note(rank: int, kind: str, text: str) -> None:
        (tmp_path / f"rank{rank}.txt").write_text(f"{kind}\n{text}")

    assert root_cause(tmp_path, 3) is None
    note(2, LOST_PEER, "rank 1 is alive but hung")  # rank 0 was stopped before it wrote its note
    assert root_cause(tmp_path, 3) == (2, "rank 1 is alive but hung")
    note(0, LOST_PEER, "rank 1 is alive but hung (rank 0)")
    assert root_cause(tmp_path, 3) == (0, "rank 1 is alive but hung (rank 0)")
    note(1, OWN, "rank 1: OSError: no space left")
    assert root_cause(tmp_path, 3) == (1, "rank 1: OSError: no space left")


def test_ranks_die_with_a_killed_launcher(tmp_path):
    """A launcher killed with SIGKILL (the out-of-memory killer, a batch
    system) cleans nothing up: its ranks, in process groups of their own,
    must not go on computing and holding memory for ever. Started as a
    shell's background job starts it (SIGINT ignored, output to a file), where
    the SIGINT torch's spawn asks the kernel for at its death would be ignored."""
    token = uuid.uuid4().hex
    ckpt = tmp_path / "ckpt.pt"
    cmd = [sys.executable, "-m", "gist", "train", "--procs", "2", "--hidden", "12", "--local-steps", "1"]
    cmd += ["--rounds", "2000", "--eval-every", "1", "--threads", "1", "--no-progress", "--root", str(tmp_path)]
    cmd += ["--checkpoint", str(ckpt), "--checkpoint-every", "2"]
    with open(tmp_path / "output.txt", "wb") as output:
        launcher = _start_marked(
            cmd,
            tmp_path,
            token,
            stdout=output,
            stderr=output,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
    assert _kill_once_going(launcher, ckpt, token) == [], "ranks outlived their launcher"


def _start_marked(cmd: list[str], tmp_path: Path, token: str, **popen: Any) -> subprocess.Popen:
    """Start ``cmd`` with ``token`` in its environment (``_leftovers`` finds its
    processes by it) and a temporary folder of its own under ``tmp_path``
    (a killed launcher leaves it)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    return subprocess.Popen(cmd, env={**os.environ, "GIST_TEST_TOKEN": token, "TMPDIR": str(tmp)}, **popen)


def _kill_once_going(launcher: subprocess.Popen, ready: Path, token: str) -> list[int]:
    """SIGKILL ``launcher`` once ``ready`` exists; the processes carrying
    ``token`` still alive 10 s later (killed before returning)."""
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert launcher.poll() is None and time.monotonic() < deadline, "the run did not get going"
            time.sleep(0.05)
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 10
        while _leftovers(token) and time.monotonic() < deadline:
            time.sleep(0.1)
        return _leftovers(token)
    finally:
        for pid in _leftovers(token):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("wire", ["bfloat16", "float16"])
def test_narrow_wire_dtype_distributed_equals_in_process(tmp_path, one_thread, wire):
    """Payloads in 16 bits: the same model and ledger in one process and in
    real processes, and the bytes the analytic wire count."""
    settings = RunConfig.from_flat(
        dataset="csbm",
        root=str(tmp_path / "data"),
        layers=3,
        hidden=16,
        norm="batch_norm",
        subnets=2,
        local_steps=2,
        rounds=3,
        data_mode="partitioned",
        wire_dtype=wire,
        threads=1,
        timeout=60,
    )
    (local, ls), (dist, ds) = _run_both(settings, tmp_path, 2)
    _assert_equivalent(local, dist, ls, ds)
    params = [t for t in dist["ledger"] if t["kind"] == "params"]
    numel = local["summary"]["subnet_params"]
    ints = sum(v.numel() for v in ls.values() if not v.dtype.is_floating_point)  # num_batches_tracked
    assert all(t["nbytes"] == 2 * (numel - ints) + 8 * ints for t in params)
    stats = [t for t in dist["ledger"] if t["kind"] == "stats"]
    assert stats and all(t["nbytes"] == 12 for t in stats)  # the loss report stays exact float32


def test_a_master_port_in_use_is_one_line_saying_what_to_do(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [sys.executable, "-m", "gist", "train", "--backend", "dist", "--method", "full", "--subnets", "1"]
        cmd += ["--dataset", "csbm", "--hidden", "8", "--rounds", "1", "--no-progress", "--root", str(tmp_path)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert err == [
        f"gist train: error: MASTER_PORT {port} is already in use on 127.0.0.1 (another job, or a run that has "
        "not ended): set another MASTER_PORT, or leave MASTER_PORT unset with `gist train --procs M`, which picks "
        "a free one"
    ], proc.stderr[-2000:]
