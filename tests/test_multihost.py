"""Runs across hosts: network namespaces joined by a bridge (gist.comm.hosts), one torchrun agent per host
(gist.comm.multihost, gist train --hosts), the interface gloo binds (gist.comm.interfaces), and a cluster's faults.

The tests that make hosts skip, saying why, where this machine or user cannot (root and iproute2 are needed).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
from faults import fault_env
from test_distributed import _assert_equivalent

from gist.cli import main
from gist.comm import interfaces
from gist.comm.hosts import VirtualHosts
from gist.comm.netns import ShapingUnavailable, burst_bytes, check_can_shape
from gist.config import RunConfig
from gist.errors import ConfigError
from gist.multihost import launch_hosts
from gist.run import launch_local, run_training
from gist.settings import parse_rate

pytestmark = pytest.mark.timeout(600)


def _can_make_hosts() -> str:
    try:
        check_can_shape()
        with VirtualHosts(2):
            return ""
    except ShapingUnavailable as exc:
        return str(exc)


WHY_NOT = _can_make_hosts()
needs_hosts = pytest.mark.skipif(bool(WHY_NOT), reason=f"cannot make virtual hosts here: {WHY_NOT}")


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


SEND = r"""
import sys, time, torch, torch.distributed as dist
rank, master, port, numel, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
dist.init_process_group("gloo", init_method=f"tcp://{master}:{port}", rank=rank, world_size=2)
x = torch.zeros(numel)
dist.barrier()
start = time.perf_counter()
dist.send(x, 1) if rank == 0 else dist.recv(x, 0)
dist.barrier()
if rank == 0:
    open(out, "w").write(repr(time.perf_counter() - start))
dist.destroy_process_group()
"""


def _transfer_seconds(bed: VirtualHosts, tmp_path: Path, hosts: tuple[int, int], numel: int) -> float:
    """Seconds to send ``numel`` float32 from a process on ``hosts[0]`` to one on ``hosts[1]``."""
    script, out = tmp_path / "send.py", tmp_path / "seconds"
    script.write_text(SEND)
    master = bed.addresses[hosts[0]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "eth0" if hosts[0] != hosts[1] else "lo"}
    if hosts[0] == hosts[1]:
        master = "127.0.0.1"
    procs = [
        subprocess.Popen(
            bed.command(host, [sys.executable, str(script), str(rank), master, "29731", str(numel), str(out)]), env=env
        )
        for rank, host in enumerate(hosts)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    return float(out.read_text())


@needs_hosts
def test_only_the_links_between_hosts_are_slow(tmp_path):
    """4 MB from host 0 to host 1 over 32 Mbit/s links take about the time the rate implies; the
    same between two processes of one host (its loopback) a fraction of it."""
    numel = 1_000_000
    with VirtualHosts(2, "32mbit") as bed:
        across = _transfer_seconds(bed, tmp_path, (0, 1), numel)
        within = _transfer_seconds(bed, tmp_path, (1, 1), numel)
        bed.set_rate(0, "none")
        bed.set_rate(1, "none")
        unshaped = _transfer_seconds(bed, tmp_path, (0, 1), numel)
    implied = 4 * numel * 8 / 32e6
    assert 0.8 * implied <= across < 4 * implied, (across, implied)
    assert within < 0.25 * across and unshaped < 0.25 * across, (within, unshaped, across)


@needs_hosts
def test_a_cut_link_partitions_and_mends():
    with VirtualHosts(2) as bed:
        reach = [sys.executable, "-c", "import socket; socket.create_connection((__import__('sys').argv[1], 9), 1)"]

        def refused_or_unreachable() -> str:
            out = subprocess.run(bed.command(0, [*reach, bed.addresses[1]]), capture_output=True, text=True)
            return out.stderr.strip().splitlines()[-1]

        assert "ConnectionRefused" in refused_or_unreachable()  # the host answers: nobody listens on port 9
        bed.cut(1)
        assert "timed out" in refused_or_unreachable() or "unreachable" in refused_or_unreachable()
        bed.mend(1)
        assert "ConnectionRefused" in refused_or_unreachable()


@needs_hosts
def test_the_hosts_and_their_processes_are_removed_whatever_happens():
    before = _namespaces()
    with pytest.raises(KeyboardInterrupt), VirtualHosts(2, "100mbit") as bed:
        sleeper = subprocess.Popen(bed.command(1, ["sleep", "600"]))
        assert all(name in _namespaces() for name in bed.names) and bed.pids(1) == [sleeper.pid]
        raise KeyboardInterrupt
    assert sleeper.wait(timeout=10) != 0
    assert _namespaces() == before


def _settings(tmp_path: Path, method: str, **extra) -> RunConfig:
    flat = dict(
        method=method,
        dataset="csbm",
        root=str(tmp_path / "data"),
        layers=3,
        hidden=16,
        subnets=4,
        local_steps=2,
        rounds=3,
        data_mode="partitioned",
        threads=1,
        timeout=30,
    )
    return RunConfig.from_flat(**{**flat, **extra})


@needs_hosts
@pytest.mark.parametrize(
    "method,extra,reference",
    [
        ("gist", {}, "in-process"),
        ("gist", {"coordinator": "sharded"}, "in-process"),
        ("local-sgd", {}, "one host"),
        ("ddp", {}, "one host"),
    ],
    ids=["gist-central", "gist-sharded", "local-sgd", "ddp"],
)
def test_two_hosts_of_two_processes_equal_the_reference_run(tmp_path, one_thread, method, extra, reference):
    """Same model (to float tolerance), same ledger, same validation curve. GIST is compared with the
    in-process simulation. The data-parallel methods are compared with the same 4 processes on one
    host: at m > 2 gloo's all-reduce sums in another order than the simulation and Adam magnifies those
    last bits (the model differs by about 0.01 after 6 steps, on one host as on two), while a job of the
    same ranks on one host or on two sums alike (their simulation is tested at m = 2 in test_baselines)."""
    settings = _settings(tmp_path, method, **extra)
    ref_model, dist_model = tmp_path / "reference.pt", tmp_path / "dist.pt"
    if reference == "in-process":
        ref = run_training(settings.replace(save_model=str(ref_model)), progress=False)
    else:
        ref = launch_local(settings.replace(save_model=str(ref_model)), 4, progress=False)
    dist = launch_hosts(settings.replace(save_model=str(dist_model), hosts=2), 4, progress=False)
    _assert_equivalent(ref, dist, torch.load(ref_model, weights_only=True), torch.load(dist_model, weights_only=True))
    assert dist["config"]["transport"] == "torch.distributed (gloo)"
    assert "gist-" not in _namespaces()


@needs_hosts
def test_gist_train_hosts_from_the_command_line(tmp_path, capsys):
    log = tmp_path / "run.json"
    args = ["train", "--procs", "4", "--hosts", "2", "--hidden", "16", "--rounds", "2", "--local-steps", "1"]
    args += ["--threads", "1", "--bandwidth", "1gbit", "--root", str(tmp_path), "--log", str(log), "--no-progress"]
    assert main(args) == 0
    record = json.loads(log.read_text())
    assert record["config"]["subnets"] == 4 and record["config"]["dist"]["bandwidth"] == "1gbit"
    # what crossed the link between the hosts, as the kernels counted it: at least every tensor that
    # workers 2 and 3 (host 1) exchanged with the coordinator (host 0; "data" is loaded where it lives)
    network = record["network"]
    assert network["hosts"] == 2 and network["procs_per_host"] == 2 and len(network["per_host"]) == 2
    host_1 = sum(t["nbytes"] for t in record["ledger"] if t["worker"] in (2, 3) and t["kind"] != "data")
    assert host_1 <= network["between_hosts_bytes"] < 3 * host_1 + 2_000_000
    assert network["per_host"][0]["link_sent"] + network["per_host"][1]["link_sent"] == network["between_hosts_bytes"]
    assert "m=4" in capsys.readouterr().out
    assert "gist-" not in _namespaces()


@needs_hosts
def test_a_killed_launcher_leaves_no_agent_rank_or_host(tmp_path):
    """SIGKILL of `gist train --hosts`: every host's torchrun agent and its
    ranks die with the launcher; the namespaces it could not delete are
    removed by the next test bed."""
    from test_distributed import _kill_once_going, _start_marked

    token = uuid.uuid4().hex
    ckpt = tmp_path / "ckpt.pt"
    cmd = [sys.executable, "-m", "gist", "train", "--procs", "4", "--hosts", "2", "--hidden", "12", "--rounds", "2000"]
    cmd += ["--local-steps", "1", "--threads", "1", "--no-progress", "--root", str(tmp_path)]
    cmd += ["--checkpoint", str(ckpt), "--checkpoint-every", "2"]
    launcher = _start_marked(cmd, tmp_path, token, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _kill_once_going(launcher, ckpt, token) == [], "agents or ranks outlived their launcher"
    left = f"-{launcher.pid}-"
    assert sum(left in name for name in _namespaces().split()) == 3  # the switch and two hosts
    with VirtualHosts(1):
        assert left not in _namespaces()


HOSTS_SWEEP = """
name = "hosts"
description = "gist at m = 2 on one host and on two, the link between them at 100 Mbit/s."

[settings]
dataset = "csbm"
layers = 2
hidden = 32
dropout = 0.0
rounds = 2
threads = 1
bandwidth = "100mbit"

[sweep]
methods = ["full", "gist"]
subnets = [2]
local_steps = [1]
hosts = [1, 2]
processes = true
"""


@needs_hosts
def test_hosts_is_a_sweep_axis(tmp_path):
    cfg = tmp_path / "hosts.toml"
    cfg.write_text(HOSTS_SWEEP)
    out = tmp_path / "res"
    assert main(["sweep", str(cfg), "--out", str(out), "--root", str(tmp_path), "--no-progress"]) == 0
    logs = {p.name: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    assert sorted(logs) == [
        "hosts=1_full_m1_z1_seed0.json",
        "hosts=1_gist_m2_z1_seed0.json",
        "hosts=2_gist_m2_z1_seed0.json",
    ]
    assert logs["hosts=2_gist_m2_z1_seed0.json"]["network"]["hosts"] == 2
    assert "network" not in logs["hosts=1_gist_m2_z1_seed0.json"]
    table = (out / "table.md").read_text()
    assert re.search(r"\|\s+hosts\s+\|", table) and "link MB/host" in table


EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "multinode"


@needs_hosts
def test_the_documented_per_host_script_runs_a_job_across_hosts(tmp_path):
    """docs/multi-node.md's way: examples/multinode/torchrun-host.sh on each host, plain torchrun inside."""
    log = tmp_path / "run.json"
    flags = ["--hidden", "16", "--rounds", "2", "--local-steps", "1", "--threads", "1", "--no-progress"]
    flags += ["--root", str(tmp_path / "data"), "--log-file", str(log), "--data-mode", "partitioned"]
    # (TMPDIR: torchrun's agents leave their own temporary folders behind)
    env = {**os.environ, "GIST_JOB_ID": uuid.uuid4().hex[:8], "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    with VirtualHosts(2) as bed:
        script = [str(EXAMPLES / "torchrun-host.sh"), bed.addresses[0], "2", "2", *flags]
        agents = [subprocess.Popen(bed.command(host, script), env=env, stderr=subprocess.PIPE) for host in range(2)]
        errors = [agent.communicate(timeout=300)[1].decode() for agent in agents]
        assert [agent.returncode for agent in agents] == [0, 0], errors[0][-3000:] + errors[1][-3000:]
    record = json.loads(log.read_text())
    assert record["config"]["subnets"] == 4 and len(record["rounds"]) == 2
    # the SLURM script beside it at least parses (there is no SLURM here)
    assert subprocess.run(["bash", "-n", str(EXAMPLES / "slurm.sbatch")]).returncode == 0
    assert subprocess.run([str(EXAMPLES / "torchrun-host.sh")], capture_output=True).returncode == 2


def test_bad_host_settings_are_one_line(capsys, tmp_path):
    for args, said in [
        (["--hosts", "2"], "--hosts 2 spreads the processes that --procs M starts: give --procs"),
        (["--hosts", "3", "--procs", "4"], "--procs 4 cannot be spread evenly over --hosts 3"),
        (["--hosts", "2", "--procs", "4", "-m", "2"], "the job has 4 processes but m=2"),
    ]:
        assert main(["train", "--hidden", "16", "--rounds", "1", "--no-progress", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert said in err and len(err.splitlines()) == 1, err
    with pytest.raises(SystemExit):  # argparse's own error, on stderr
        main(["train", "--hosts", "0", "--procs", "4"])
    assert "must be a positive integer" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--hosts 2 spreads the processes gist's launcher starts"):
        run_training(RunConfig.from_flat(hidden=16, rounds=1, hosts=2, root=str(tmp_path)), progress=False)


# --- faults: each named within --timeout, nothing hung, nothing left -------------------------------------------


def _fault_settings(tmp_path: Path, timeout: float = 5, rounds: int = 3000, **extra) -> RunConfig:
    """Many quick rounds: a fault lands while the run goes on."""
    flat = dict(rounds=rounds, local_steps=1, timeout=timeout, data_mode="replicated")
    return _settings(tmp_path, "gist", **{**flat, **extra})


def _run_with_fault(tmp_path: Path, fault, settings: RunConfig, bandwidth: str = "none", at_round: int = 1):
    """``settings`` on 2 hosts × 2 processes whose rank 2 (host 1) stamps the
    time as it starts ``at_round`` and computes for a second (so the run is
    surely still going); then ``fault(bed)``. Returns (what the run
    returned or raised, the seconds from the fault to the end, the processes left)."""
    stamp = tmp_path / "stamp"
    outcome: dict = {}
    old = dict(os.environ)
    os.environ.update(fault_env(f"2:{at_round}:slow=1", GIST_FAULT_STAMP=str(stamp)))
    try:
        with VirtualHosts(2, bandwidth) as bed:

            def run() -> None:
                try:
                    outcome["log"] = launch_hosts(settings.replace(hosts=2), 4, progress=False, bed=bed)
                except Exception as exc:  # noqa: BLE001 - the test reads it
                    outcome["error"] = exc
                outcome["ended"] = time.time()

            runner = threading.Thread(target=run)
            runner.start()
            deadline = time.monotonic() + 120
            while not stamp.exists() and runner.is_alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert stamp.exists(), outcome
            faulted = time.time()
            fault(bed)
            runner.join(timeout=300)
            assert not runner.is_alive()
            left = [pid for host in range(2) for pid in bed.pids(host)]
    finally:
        os.environ.clear()
        os.environ.update(old)
    return outcome, outcome["ended"] - faulted, left


@needs_hosts
@pytest.mark.parametrize(
    "fault,said",
    [
        (lambda bed: bed.kill(1), ["failed during round"]),
        (lambda bed: bed.cut(1), ["no heartbeat", "the network to its host is down"]),
    ],
    ids=["a-host-that-dies", "a-partitioned-host"],
)
def test_a_lost_host_is_named_within_the_timeout(tmp_path, fault, said):
    """Host 1's processes all killed, or its link cut (its processes alive): one of its ranks is named."""
    timeout = 5
    outcome, after, left = _run_with_fault(tmp_path, fault, _fault_settings(tmp_path, timeout))
    error = outcome.get("error")
    assert error is not None, outcome
    assert after < timeout + 35, after
    assert "rank 2" in str(error) or "rank 3" in str(error), error
    assert all(words in str(error) for words in said), error
    assert getattr(error, "exit_status", None) == 2  # `gist train` exits 2 naming the rank, as on one host
    assert left == [] and "gist-" not in _namespaces()


@needs_hosts
def test_a_link_that_degrades_slows_the_run_and_nobody_is_declared_dead(tmp_path):
    """Host 1's link drops from 1 Gbit/s to 4 Mbit/s as round 1 starts: every later round takes at
    least the time that rate implies for host 1's two sub-networks (0.8 MB, less the link's 256 kB
    bucket: about a second), yet the run ends normally, nobody declared dead."""
    rounds = 6
    settings = _fault_settings(tmp_path, rounds=rounds, hidden=1024)
    outcome, _, left = _run_with_fault(tmp_path, lambda bed: bed.set_rate(1, "4mbit"), settings, bandwidth="1gbit")
    assert "error" not in outcome, outcome.get("error")
    records = outcome["log"]["rounds"]
    assert len(records) == rounds and left == []
    to_host_1 = records[-1]["bytes_to_workers"] / 2  # workers 2 and 3 of 4
    implied = (to_host_1 - burst_bytes(parse_rate("4mbit"))) * 8 / parse_rate("4mbit")
    assert implied > 0.8
    assert min(r["seconds"] for r in records[2:]) > 0.9 * implied, ([r["seconds"] for r in records], implied)


@needs_hosts
def test_a_host_that_never_joins_is_named(tmp_path):
    """Host 1 is cut off before its agent starts: host 0 waits for it at most --timeout."""
    timeout = 8
    settings = _settings(tmp_path, "gist", timeout=timeout)
    with VirtualHosts(2) as bed:
        bed.cut(1)
        started = time.monotonic()
        with pytest.raises(Exception, match="did not all join the rendezvous") as caught:
            launch_hosts(settings.replace(hosts=2), 4, progress=False, bed=bed)
        took = time.monotonic() - started
        assert took < timeout + 60, took
        assert [pid for host in range(2) for pid in bed.pids(host)] == []
    assert getattr(caught.value, "exit_status", None) == 1


@needs_hosts
def test_resume_after_a_host_died_on_other_hosts_gives_the_uninterrupted_model(tmp_path, one_thread):
    """The partitioned recipe (its carried optimizer state in the checkpoint) on 2 hosts × 2
    processes; host 1 dies in round 4; --resume on 4 hosts × 1 process ends with the model of an
    uninterrupted run."""
    settings = _settings(
        tmp_path, "gist", rounds=8, checkpoint=str(tmp_path / "ckpt.pt"), checkpoint_every=2, timeout=10
    )
    full = launch_local(
        settings.replace(checkpoint=str(tmp_path / "other.pt"), save_model=str(tmp_path / "full.pt")), 4, progress=False
    )
    outcome, _, left = _run_with_fault(tmp_path, lambda bed: bed.kill(1), settings, at_round=4)
    assert "rank 2" in str(outcome["error"]) or "rank 3" in str(outcome["error"])
    assert left == []
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["round"] in (4, 6)
    resumed_model = tmp_path / "resumed.pt"
    resumed = launch_hosts(settings.replace(resume=True, save_model=str(resumed_model), hosts=4), 4, progress=False)
    a, b = (torch.load(p, weights_only=True) for p in (tmp_path / "full.pt", resumed_model))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val"] for r in resumed["rounds"]] == [r["val"] for r in full["rounds"]]


@needs_hosts
def test_sharded_checkpoints_need_a_folder_every_host_sees(tmp_path):
    """Each host has a disk of its own where the checkpoint goes: the sharded coordinator, whose ranks
    each write their own shard there, stops before round 0 saying so; with a shared folder it runs."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    settings = _settings(tmp_path, "gist", coordinator="sharded", checkpoint=str(folder / "run.pt"), checkpoint_every=1)
    with VirtualHosts(2, private=[folder]) as bed:
        with pytest.raises(Exception, match="ranks 2, 3 cannot see the file rank 0 wrote there") as caught:
            launch_hosts(settings.replace(hosts=2), 4, progress=False, bed=bed)
        assert "point it at a folder every host sees" in str(caught.value)
        assert getattr(caught.value, "exit_status", None) == 2
        assert [pid for host in range(2) for pid in bed.pids(host)] == []
    assert list(folder.iterdir()) == []  # nothing of round 0: it never started
    log = launch_hosts(settings.replace(rounds=2, hosts=2), 4, progress=False)  # a folder they share
    assert len(log["rounds"]) == 2 and (folder / "run.pt").is_file()


# --- which interface gloo binds --------------------------------------------------------------------------------


def test_gloo_binds_the_interface_towards_rank_0(monkeypatch):
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert interfaces.bind_gloo_interface() is None  # one host: gloo's own choice
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two hosts: the interface that reaches rank 0
    assert interfaces.bind_gloo_interface() == "lo" == os.environ["GLOO_SOCKET_IFNAME"]
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth7")  # the user's choice stands
    assert interfaces.bind_gloo_interface() == "eth7"


def test_a_loopback_rank_0_for_other_hosts_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    with pytest.raises(ConfigError, match="pass torchrun --local-addr"):
        interfaces.check_master_address()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    interfaces.check_master_address()  # on one host a loopback rank 0 is right
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "no-such-host.invalid")
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    with pytest.raises(ConfigError, match="does not resolve"):
        interfaces.bind_gloo_interface()
