"""A ``torchrun`` job across the hosts of a :class:`~gist.comm.hosts.VirtualHosts` test bed.

Each host runs one plain ``torchrun`` agent, as a user runs one per machine::

    torchrun --nnodes N --nproc-per-node K --rdzv-backend c10d \\
        --rdzv-endpoint <host 0>:29400 --rdzv-id <job> --local-addr <this host> ...

The agents meet at host 0's c10d rendezvous (host 0 holds its store), which
waits at most ``join_timeout_s`` for a host that never joins; ranks
``i·K … i·K + K − 1`` are the processes of the ``i``-th agent to join.
``--local-addr`` is what every agent reports as its address: without it
torchrun reports the host's name, which on many machines resolves to a
loopback address the other hosts cannot reach.

:func:`run_on_hosts` starts the agents, passes host 0's output through
(rank 0's progress bar) until something fails, and waits: once any agent
fails, the others get ``grace_s`` seconds to notice (their ranks name the
lost peer within ``--timeout``) before every process on every host is
killed. It returns how each agent ended; :func:`root_cause` of
:mod:`.launch` then reads the ranks' own notes.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Optional

from .hosts import VirtualHosts

__all__ = ["RENDEZVOUS_PORT", "HostRun", "run_on_hosts", "torchrun_command"]

RENDEZVOUS_PORT = 29400
"""The c10d rendezvous port on host 0 (torchrun's own default)."""
QUIET_ENV = {"LOGLEVEL": "ERROR", "TORCH_CPP_LOG_LEVEL": "ERROR"}
"""torchrun's agents and the c10d store log only errors (not a line per worker start)."""
POLL_S = 0.1


AGENT_ENTRY = """
import runpy, sys
from gist.signals import die_with_parent
if not die_with_parent(int(sys.argv.pop(1))):
    sys.exit(1)
runpy.run_module("torch.distributed.run", run_name="__main__", alter_sys=True)
"""
"""``python -c AGENT_ENTRY LAUNCHER_PID ARGS``: torchrun's agent, killed by the
kernel if its launcher dies (SIGKILL leaves it no chance to stop the agents)."""


def torchrun_command(
    bed: VirtualHosts,
    host: int,
    procs_per_host: int,
    entry: Sequence[str],
    job_id: str,
    join_timeout_s: float,
) -> list[str]:
    """The ``torchrun`` command line of ``host``'s agent, running ``entry``
    (a full command: ``--no-python``) in each of its ``procs_per_host``
    processes; the agent dies with this process (:data:`AGENT_ENTRY`)."""
    conf = f"is_host={int(host == 0)},join_timeout={max(1, round(join_timeout_s))}"
    return [
        *(sys.executable, "-c", AGENT_ENTRY, str(os.getpid())),
        *("--nnodes", str(bed.hosts), "--nproc-per-node", str(procs_per_host)),
        *("--rdzv-backend", "c10d", "--rdzv-endpoint", f"{bed.addresses[0]}:{RENDEZVOUS_PORT}"),
        *("--rdzv-id", job_id, "--rdzv-conf", conf),
        *("--local-addr", bed.addresses[host], "--max-restarts", "0", "--no-python"),
        *entry,
    ]


@dataclass
class HostRun:
    """How one host's agent ended: its exit status and the last lines it wrote."""

    host: int
    returncode: Optional[int] = None
    tail: list[str] = field(default_factory=list)

    def last_error(self) -> str:
        """The agent's last line that says what failed (an exception's), else its last line."""
        errors = [line for line in self.tail if "Error" in line or "error" in line]
        return (errors or self.tail or [f"exit status {self.returncode}"])[-1]


def run_on_hosts(
    bed: VirtualHosts,
    procs_per_host: int,
    entry: Sequence[str],
    env: dict[str, str],
    job_id: str,
    join_timeout_s: float,
    grace_s: float,
    log_dir: Path,
    failing: Callable[[], bool] = lambda: False,
) -> list[HostRun]:
    """Run ``entry`` as a torchrun job over every host of ``bed`` and wait for
    every agent; each agent's output goes to ``log_dir/host<i>.log``, and
    host 0's to our stderr too (less torchrun's own log lines) until an
    agent fails or ``failing()`` (a rank has failed: what the agents print
    after that is their report of it).

    Ctrl-C (or SIGTERM turned into it) is passed to every process on every
    host; after ``grace_s`` seconds what is left is killed, and
    :class:`KeyboardInterrupt` is raised again."""
    env = {**env, **QUIET_ENV}
    runs = [HostRun(host) for host in range(bed.hosts)]
    failed = threading.Event()
    quiet = lambda: failed.is_set() or failing()  # noqa: E731
    agents, readers = [], []
    try:
        for host in range(bed.hosts):
            argv = torchrun_command(bed, host, procs_per_host, entry, job_id, join_timeout_s)
            agent = subprocess.Popen(
                bed.command(host, argv),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the agents once, from here
            )
            agents.append(agent)
            log = open(log_dir / f"host{host}.log", "wb")  # noqa: SIM115 - closed by its reader
            reader = threading.Thread(target=_copy, args=(agent.stdout, log, runs[host], host == 0, quiet), daemon=True)
            reader.start()
            readers.append(reader)
        _wait(agents, runs, failed, grace_s)
    except KeyboardInterrupt:
        failed.set()  # the ranks say where they stopped; the agents' reports are noise
        for host in range(bed.hosts):
            bed.kill(host, signal.SIGINT)
        _wait_all(agents, runs, grace_s)
        raise
    finally:
        for host in range(bed.hosts):
            bed.kill(host)
        for agent, run in zip(agents, runs):
            agent.wait()
            run.returncode = agent.returncode if run.returncode is None else run.returncode
        for reader in readers:
            reader.join(timeout=5)
    return runs


def _wait(agents: list[subprocess.Popen], runs: list[HostRun], failed: threading.Event, grace_s: float) -> None:
    """Until every agent has ended; once one fails, at most ``grace_s`` more seconds."""
    deadline = None
    while True:
        for agent, run in zip(agents, runs):
            if run.returncode is None and agent.poll() is not None:
                run.returncode = agent.returncode
                if agent.returncode != 0 and deadline is None:
                    failed.set()
                    deadline = time.monotonic() + grace_s
        if all(run.returncode is not None for run in runs):
            return
        if deadline is not None and time.monotonic() > deadline:
            return
        time.sleep(POLL_S)


def _wait_all(agents: list[subprocess.Popen], runs: list[HostRun], grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    for agent, run in zip(agents, runs):
        with contextlib.suppress(subprocess.TimeoutExpired):  # what is left is killed by the caller
            agent.wait(max(0.0, deadline - time.monotonic()))
            run.returncode = agent.returncode


TAIL_LINES = 20
TORCH_LOG_LINE = re.compile(rb"^\[?[IWEF]\d{4} \d\d:\d\d:\d\d")
"""The start of a line of torch's own logs (``W1207 16:02:40.20 ...``, ``[W1207 ...] ...``)."""


def _copy(source: IO[bytes], log: IO[bytes], run: HostRun, show: bool, quiet: Callable[[], bool]) -> None:
    """Copy an agent's output to its log file and keep its last lines; if
    ``show``, also to our stderr (rank 0's progress bar) until ``quiet()``."""
    with log:
        while chunk := os.read(source.fileno(), 65536):
            log.write(chunk)
            if show and not quiet():
                kept = [line for line in chunk.splitlines(keepends=True) if not TORCH_LOG_LINE.match(line)]
                sys.stderr.buffer.write(b"".join(kept))
                sys.stderr.flush()
            lines = [line.strip() for line in chunk.decode(errors="replace").splitlines() if line.strip()]
            run.tail = (run.tail + lines)[-TAIL_LINES:]
