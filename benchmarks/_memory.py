"""Running a command under a memory cap per process, as the memory benchmarks do.

:func:`attempt` starts a command in its own session and samples the resident
memory of every process in that session and every process it starts (every
50 ms); a process above the cap is an out-of-memory on a machine of that
size: all of them are killed at once and the attempt recorded as *over
budget*. So is an attempt while this machine's own free memory runs low,
and one past its time limit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import psutil

GB = 1e9


def bare_rss() -> int:
    """Resident bytes of a process that has only imported torch and PyG."""
    code = "import torch, torch_geometric, psutil; print(psutil.Process().memory_info().rss)"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def _busy_seconds() -> float:
    """CPU seconds this machine has spent busy (every core, every process) since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def watched(leader: psutil.Process, seen: dict[int, psutil.Process]) -> list[psutil.Process]:
    """The processes of an attempt: every process of the session ``leader``
    started (``gist train``'s ranks each run in a process group of their own,
    and stay in it when their parent has gone) and every descendant of
    ``leader`` (a rank started in a network namespace is in a session of its
    own). Each is added to ``seen``."""
    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == leader.pid:
                found.append(p)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    try:
        found += leader.children(recursive=True)
    except psutil.NoSuchProcess:
        pass
    for p in found:
        seen.setdefault(p.pid, p)
    return list({p.pid: p for p in found}.values())


def kill_all(leader: psutil.Process, seen: dict[int, psutil.Process]) -> None:
    """Kill every process :func:`watched` finds now or has seen (psutil checks that a pid is still that process)."""
    watched(leader, seen)
    for p in seen.values():
        try:
            p.kill()
        except psutil.NoSuchProcess:
            continue


def attempt(cmd: list[str], budget: float, timeout: float) -> dict:
    """Run ``cmd`` in a session of its own, sampling the peak memory of each
    of its processes (:func:`watched`) and the CPU seconds they use;
    ``others_cpu``: the share of the machine's cores that processes outside
    ``cmd`` kept busy meanwhile (0: it ran alone). Over the cap, out of time or once ``cmd`` has ended,
    every process of it still there is killed, and the temporary files it
    left (``TMPDIR`` is a folder of its own) are removed."""
    start, busy = time.perf_counter(), _busy_seconds()
    scratch = tempfile.mkdtemp(prefix="attempt-")  # its temporary files: a killed process cannot remove its own
    env = {**os.environ, "TMPDIR": scratch}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env
    )
    leader = psutil.Process(proc.pid)
    seen: dict[int, psutil.Process] = {}
    peaks: dict[int, int] = {}
    cpu: dict[int, float] = {}
    outcome = None
    while proc.poll() is None:
        for p in watched(leader, seen):
            try:
                rss = p.memory_info().rss
                used = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            cpu[p.pid] = used.user + used.system
            peaks[p.pid] = max(peaks.get(p.pid, 0), rss)
            if rss > budget and outcome is None:
                outcome = f"over budget (a process reached {rss / GB:.1f} GB)"
        if outcome is None and psutil.virtual_memory().available < 1.0 * GB:
            outcome = "over the machine's memory"
        if outcome is None and time.perf_counter() - start > timeout:
            outcome = f"timed out after {timeout:.0f} s"
        if outcome is not None:
            break
        time.sleep(0.05)
    kill_all(leader, seen)  # nothing may outlive the attempt (and hold its output pipe open)
    output = proc.communicate()[0]
    shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.perf_counter() - start
    others = max(0.0, _busy_seconds() - busy - sum(cpu.values())) / (seconds * (os.cpu_count() or 1))
    ranks = sorted(pid for pid in peaks if pid != proc.pid and _is_rank(pid, peaks))
    return {
        "outcome": outcome or ("ok" if proc.returncode == 0 else f"failed ({proc.returncode})"),
        "seconds": seconds,
        "others_cpu": others,
        "launcher_peak": peaks.get(proc.pid, 0),
        "rank_peaks": [peaks[p] for p in ranks] if ranks else [peaks.get(proc.pid, 0)],
        "tail": output[-2000:],
    }


def _is_rank(pid: int, peaks: dict[int, int]) -> bool:
    """A spawned rank (not Python's resource tracker, which stays small)."""
    return peaks[pid] > 200e6
