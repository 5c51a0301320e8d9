"""One run across several hosts on this machine: ``gist train --procs M --hosts N``.

The hosts are network namespaces joined by a bridge
(:class:`~gist.comm.hosts.VirtualHosts`), each with its own address and a
link to the others that ``--bandwidth`` shapes; the processes of one host
talk over its fast loopback. Each host runs a plain ``torchrun`` agent
(:mod:`gist.comm.multihost`), exactly what a user runs on each of two real
machines, so the rendezvous, the interface gloo binds, the heartbeat store
and every collective cross a real network hop. Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Optional

from .comm.group import WorkerFailure
from .comm.hosts import VirtualHosts
from .comm.launch import INTERRUPTED_EXIT, LOST_PEER_EXIT, RANK_ERRORS_ENV, LaunchFailure, leave, root_cause
from .comm.multihost import run_on_hosts
from .config import RunConfig
from .errors import ConfigError, GistError
from .methods import get_method
from .run import SHAPED_ENV, RunFailed, RunInterrupted, check_output_paths, launch_local, run_training, write_json
from .signals import die_with_parent

__all__ = ["MAX_GRACE_S", "launch", "launch_hosts", "network_record", "torchrun_rank"]

MAX_GRACE_S = 30.0
"""At most this long the other hosts get, after one failed, to say why before they are killed."""
RANK_ENTRY = "import sys; from gist.multihost import torchrun_rank; sys.exit(torchrun_rank(sys.argv[1:]))"
"""What every torchrun process runs: one rank of the run (:func:`torchrun_rank`)."""


def launch(cfg: RunConfig, procs: int, progress: bool = True, log_path: Optional[str | Path] = None) -> dict[str, Any]:
    """``cfg`` as ``procs`` processes on torch.distributed: on this host
    (:func:`gist.run.launch_local`), or over ``cfg.dist.hosts`` virtual hosts
    (:func:`launch_hosts`); rank 0's log."""
    if cfg.dist.hosts > 1:
        return launch_hosts(cfg, procs, progress=progress, log_path=log_path)
    return launch_local(cfg, procs, progress=progress, log_path=log_path)


def launch_hosts(
    cfg: RunConfig,
    procs: int,
    progress: bool = True,
    log_path: Optional[str | Path] = None,
    bed: Optional[VirtualHosts] = None,
) -> dict[str, Any]:
    """Run ``cfg`` as ``procs`` processes spread evenly over ``cfg.dist.hosts``
    virtual hosts (``cfg.dist.bandwidth`` shapes the links between hosts) and
    return rank 0's log, with the bytes each host's kernel counted under
    ``network`` (:func:`network_record`). ``bed``: run on these hosts instead
    (entered by the caller, who may cut, slow or kill them meanwhile; it must
    have ``cfg.dist.hosts`` hosts, and its own rates apply).

    A failure of any rank stops every host and raises the root cause
    (:class:`~gist.comm.launch.LaunchFailure`; a run that diverged:
    :class:`~gist.run.RunFailed`); Ctrl-C :class:`~gist.run.RunInterrupted`."""
    hosts = cfg.dist.hosts
    if procs % hosts:
        raise ConfigError(f"--procs {procs} cannot be spread evenly over --hosts {hosts}")
    procs_per_host = procs // hosts
    cfg = cfg.replace(backend="dist")
    get_method(cfg.method).check_run(cfg)
    cfg.check_processes(procs)
    check_output_paths(cfg, log_path)
    if bed is not None and bed.hosts != hosts:
        raise ConfigError(f"the test bed has {bed.hosts} hosts, not {hosts}")
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gist-hosts-")))
        if bed is None:
            bed = stack.enter_context(VirtualHosts(hosts, cfg.dist.bandwidth))
        notes, target, config = folder / "ranks", folder / "log.json", folder / "config.json"
        notes.mkdir()
        write_json(cfg.to_dict(), config)
        scratch = folder / "tmp"  # torchrun's own temporary folders, gone with ours even if its agent is killed
        scratch.mkdir()
        env = {**os.environ, SHAPED_ENV: bed.switch, RANK_ERRORS_ENV: str(notes), "TMPDIR": str(scratch)}
        # (torchrun would set 1 and say so; the ranks set their threads themselves: --threads, else a share)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // procs_per_host)))
        entry = [sys.executable, "-c", RANK_ENTRY, str(config), str(target), str(int(progress))]
        grace = min(MAX_GRACE_S, 2 * cfg.dist.timeout)
        before = [bed.traffic(host) for host in range(hosts)]
        try:
            runs = run_on_hosts(
                bed,
                procs_per_host,
                entry,
                env,
                uuid.uuid4().hex[:12],
                cfg.dist.timeout,
                grace,
                folder,
                failing=lambda: any(notes.iterdir()),
            )
        except KeyboardInterrupt:
            log = json.loads(target.read_text()) if target.is_file() else None
            if log is not None and log_path is not None:
                write_json(log, log_path)
            raise RunInterrupted(log.get("failure", {}).get("round") if log else None, log) from None
        log = json.loads(target.read_text()) if target.is_file() else None
        if log is not None:
            log["network"] = network_record(bed, procs_per_host, before)
            if log_path is not None:
                write_json(log, log_path)
        if all(run.returncode == 0 for run in runs) and log is not None:
            return log
        if log is not None and "failure" in log:
            raise RunFailed(log["failure"]["message"], log)
        cause = root_cause(notes, procs)
        if cause is not None:
            raise LaunchFailure(cause[1])
        raise LaunchFailure(_agents_failed(runs, bed, cfg.dist.timeout), exit_status=1)


def network_record(bed: VirtualHosts, procs_per_host: int, before: list[dict[str, int]]) -> dict[str, Any]:
    """The run log's ``network``: the topology, and the bytes each host's
    kernel counted since ``before`` (:meth:`~gist.comm.hosts.VirtualHosts.traffic`):
    over its link to the other hosts, and over its loopback."""
    per_host = []
    for host, start in enumerate(before):
        now = bed.traffic(host)
        per_host.append({"address": bed.addresses[host], **{k: now[k] - start[k] for k in now}})
    return {
        "hosts": bed.hosts,
        "procs_per_host": procs_per_host,
        "bandwidth": bed.bandwidth,
        "between_hosts_bytes": sum(h["link_sent"] for h in per_host),
        "within_hosts_bytes": sum(h["loopback"] for h in per_host),
        "per_host": per_host,
    }


def _agents_failed(runs: list[Any], bed: VirtualHosts, timeout_s: float) -> str:
    """What the agents said, where no rank left a note (the rendezvous failed, or a host died)."""
    failed = [run for run in runs if run.returncode not in (0, None)]
    if not failed:
        return "the run ended without rank 0's log"
    said = "; ".join(f"host {run.host}: {run.last_error()}" for run in failed)
    if any("Rendezvous" in line for run in failed for line in run.tail):
        return (
            f"the hosts did not all join the rendezvous at {bed.addresses[0]} within --timeout {timeout_s:g} s "
            f"(a host that never started, or cannot reach host 0): {said}"
        )
    return said


def torchrun_rank(argv: list[str]) -> int:
    """One rank under torchrun (``argv = [config JSON, log path, progress 0/1]``):
    run the config, rank 0 writing the log; the exit status says how it ended."""
    if not die_with_parent():  # (torchrun's agent)
        leave(LOST_PEER_EXIT)
    config, log_path, progress = argv
    cfg = RunConfig.from_dict(json.loads(Path(config).read_text()))
    rank = int(os.environ["RANK"])
    try:
        run_training(cfg, progress=progress == "1" and rank == 0, log_path=log_path if rank == 0 else None)
    except KeyboardInterrupt:
        leave(INTERRUPTED_EXIT)
    except WorkerFailure:  # another rank is gone (noted for the launcher); gloo's threads may still wait
        leave(LOST_PEER_EXIT)
    except GistError as exc:
        print(f"rank {rank}: error: {exc}", file=sys.stderr)
        leave(exc.exit_status)
    leave(0)
    return 0
