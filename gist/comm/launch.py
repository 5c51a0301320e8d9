"""The local launcher: ``procs`` processes on this machine joined by ``torch.distributed``.

Each process gets torchrun's environment variables (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` on the
loopback interface, a free ``MASTER_PORT``) and calls ``target(rank, *args)``.
If any process fails, the others are stopped and the error is raised; when a
worker's failure makes the other workers lose rank 0 too, rank 0's error
(left by :func:`note_rank0_error`) names the root cause.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp

from .dist import WorkerFailure, free_port

RANK0_ERROR = "rank0-error.txt"
RANK0_ERROR_ENV = "GIST_RANK0_ERROR_FILE"


class LaunchFailure(RuntimeError):
    """A process of :func:`launch_local` failed; the message is rank 0's error."""


def launch_local(target: Callable[..., None], args: tuple[Any, ...], procs: int) -> None:
    """Run ``target(rank, *args)`` in ``procs`` spawned processes and wait for all."""
    if procs < 1:
        raise ValueError(f"procs must be >= 1, got {procs}")
    with tempfile.TemporaryDirectory() as tmp:
        rank0_error = Path(tmp) / RANK0_ERROR
        env = {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
            "WORLD_SIZE": str(procs),
            "LOCAL_WORLD_SIZE": str(procs),
            RANK0_ERROR_ENV: str(rank0_error),
        }
        try:
            mp.start_processes(_spawned, args=(env, target, args), nprocs=procs, start_method="spawn", join=True)
        except mp.ProcessRaisedException as exc:
            # When rank 0 gives up on a worker, the other workers then lose rank 0
            # and raise too; whichever the launcher sees first, rank 0's error
            # names the root cause.
            if exc.error_index != 0 and rank0_error.is_file():
                raise LaunchFailure(rank0_error.read_text()) from exc
            raise


def _spawned(rank: int, env: dict[str, str], target: Callable[..., None], args: tuple[Any, ...]) -> None:
    os.environ.update(env)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank)})
    target(rank, *args)


def note_rank0_error(exc: BaseException) -> None:
    """Under :func:`launch_local`, leave rank 0's error where the launcher
    finds it; call it before rank 0 closes its process group, so before the
    other ranks can notice that it is gone."""
    path = os.environ.get(RANK0_ERROR_ENV)
    if path:
        text = str(exc) if isinstance(exc, WorkerFailure) else f"rank 0: {type(exc).__name__}: {exc}"
        Path(path).write_text(text)
