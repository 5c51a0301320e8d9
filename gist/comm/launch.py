"""The local launcher: ``procs`` processes on this machine joined by ``torch.distributed``.

Each process gets torchrun's environment variables (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` on the
loopback interface, a free ``MASTER_PORT``) and calls ``target(rank, *args)``.
If any process fails, the others are stopped and the error is raised,
naming the root cause (:func:`note_rank_error`): the first rank that failed
on its own (a missing part file, a bug) rather than because another rank
stopped answering; if every error is of the second kind, rank 0's, which
names the worker it lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp
from tqdm.auto import tqdm

from ..errors import ConfigError, GistError
from ..signals import die_with_parent
from .group import WorkerFailure, free_port

RANK_ERRORS_ENV = "GIST_RANK_ERROR_DIR"
LAUNCHER_PID_ENV = "GIST_LAUNCHER_PID"
"""The pid of the process that started a rank (or a shaped launch's child): it dies with it."""
INTERRUPTED_EXIT = 130
LOST_PEER_EXIT = 1
"""Exit status of a rank that stopped because another rank is gone."""
INTERRUPT_GRACE_S = 10.0
"""Seconds the processes get after Ctrl-C before they are terminated."""
OWN, LOST_PEER = "own", "lost-peer"
"""How a rank failed: on its own, or because another rank stopped answering."""


class LaunchFailure(GistError, RuntimeError):
    """A process of :func:`launch_local` failed; the message is the root cause's
    error, or how the process ended (``exit_status`` 1: it died or raised
    something no rank explained)."""

    def __init__(self, message: str, exit_status: int = 2) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def launch_local(target: Callable[..., None], args: tuple[Any, ...], procs: int) -> None:
    """Run ``target(rank, *args)`` in ``procs`` spawned processes and wait for all."""
    if procs < 1:
        raise ConfigError(f"procs must be >= 1, got {procs}")
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
            "WORLD_SIZE": str(procs),
            "LOCAL_WORLD_SIZE": str(procs),
            RANK_ERRORS_ENV: tmp,
            LAUNCHER_PID_ENV: str(os.getpid()),
        }
        # torch logs a line per process it stops; the error raised here says it once
        logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
        context = mp.start_processes(_spawned, args=(env, target, args), nprocs=procs, start_method="spawn", join=False)
        try:
            while not context.join():  # blocks until a process ends; True once all have
                continue
        except KeyboardInterrupt:
            stop_processes(context.processes)
            raise
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            lost_peer = isinstance(exc, mp.ProcessExitedException) and exc.exit_code == LOST_PEER_EXIT
            cause = root_cause(Path(tmp), procs) if lost_peer or isinstance(exc, mp.ProcessRaisedException) else None
            if cause is not None:
                raise LaunchFailure(cause[1]) from exc
            raise LaunchFailure(_ended(exc), exit_status=1) from exc
        finally:  # the files in which a failed process left its traceback
            for path in context.error_files:
                Path(path).unlink(missing_ok=True)


def _ended(exc: mp.ProcessRaisedException | mp.ProcessExitedException) -> str:
    """How a spawned process ended that left no note of its own (its traceback is already on stderr)."""
    if isinstance(exc, mp.ProcessExitedException):
        rank = exc.error_index
        if exc.signal_name:
            hint = " (on Linux, often the out-of-memory killer)" if exc.signal_name == "SIGKILL" else ""
            return f"rank {rank} was killed by {exc.signal_name}{hint}; the other processes were stopped"
        return f"rank {rank} exited with status {exc.exit_code}; the other processes were stopped"
    lines = [line.strip("- ") for line in str(exc).splitlines() if line.strip()]
    head = next((line for line in lines if "terminated" in line), "")
    return ": ".join(dict.fromkeys(x for x in (head, lines[-1] if lines else "") if x))


def stop_processes(processes: list[Any], grace_s: float = INTERRUPT_GRACE_S) -> None:
    """After Ctrl-C: pass SIGINT on (the processes are in process groups of
    their own, so this is the only one they get), give them ``grace_s``
    seconds to write what they hold (rank 0 its log), then terminate the rest."""
    for p in processes:
        if p.is_alive():
            with contextlib.suppress(OSError):
                os.kill(p.pid, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in processes:
        if p.is_alive():
            p.terminate()
            p.join()


def root_cause(folder: Path, procs: int) -> tuple[int, str] | None:
    """``(rank, error)`` of the first rank that failed on its own, else rank
    0's error, else (rank 0 stopped before it wrote one: the launcher stops
    the others as soon as one ends) the first rank's that wrote one, from the
    notes of :func:`note_rank_error` in ``folder``."""
    notes = {}
    for rank in range(procs):
        path = folder / f"rank{rank}.txt"
        if path.is_file():
            kind, _, text = path.read_text().partition("\n")
            notes[rank] = (kind, text)
    own = [rank for rank, (kind, _) in sorted(notes.items()) if kind == OWN]
    if own:
        return own[0], notes[own[0]][1]
    if not notes:
        return None
    first = 0 if 0 in notes else min(notes)
    return first, notes[first][1]


def _spawned(rank: int, env: dict[str, str], target: Callable[..., None], args: tuple[Any, ...]) -> None:
    # A process group of its own: a terminal's Ctrl-C reaches the launcher
    # only, which passes it on once (:func:`stop_processes`); a second SIGINT
    # while a process is on its way out would end it with a traceback.
    os.setpgid(0, 0)
    # A launcher started as a shell's background job ignores SIGINT, and its
    # processes would inherit that: the SIGINT of stop_processes must reach them.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # torch asks the kernel for a SIGINT when the launcher dies; a process
    # that is waiting on its peers may never act on it: SIGKILL instead.
    if not die_with_parent(int(env[LAUNCHER_PID_ENV])):
        leave(LOST_PEER_EXIT)
    os.environ.update(env)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank)})
    # tqdm otherwise creates a multiprocessing lock (a named semaphore) on its
    # first bar, and a process stopped with SIGTERM leaves it for the resource
    # tracker to report as leaked; a bar is only ever drawn within its process
    tqdm.set_lock(threading.RLock())
    try:
        target(rank, *args)
    except KeyboardInterrupt:
        # stopped by the launcher (what the rank had to write is written):
        # leave without the interpreter's teardown, in which gloo's threads,
        # still waiting on the other ranks, would abort the process
        leave(INTERRUPTED_EXIT)
    except WorkerFailure:
        # another rank is gone (the error is noted for the launcher): a
        # collective may still be pending in a helper thread (a
        # DistributedDataParallel backward pass), and the interpreter's
        # teardown would wait on it for ever
        leave(LOST_PEER_EXIT)


def leave(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def note_rank_error(rank: int, exc: BaseException) -> None:
    """Under :func:`launch_local`, leave this rank's error where the launcher
    finds it; call it before the rank closes its process group, so before
    the other ranks can notice that it is gone."""
    folder = os.environ.get(RANK_ERRORS_ENV)
    if not folder:
        return
    lost_peer = isinstance(exc, WorkerFailure) or isinstance(exc, dist.DistBackendError)
    first = (str(exc).splitlines() or [""])[0]
    text = first if isinstance(exc, WorkerFailure) else f"rank {rank}: {type(exc).__name__}: {first}"
    Path(folder, f"rank{rank}.txt").write_text(f"{LOST_PEER if lost_peer else OWN}\n{text}")
