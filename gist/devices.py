"""Where a run's tensors live: the ``device`` setting (and GIST's ``coordinator_device``).

``auto`` is ``cuda`` where CUDA is available and ``cpu`` otherwise; ``cuda``
is the process's own GPU (``cuda:LOCAL_RANK`` modulo the GPUs present, so
ranks of one machine spread over its GPUs); ``cuda:N`` names one. A device
that does not exist is a :class:`~gist.errors.ConfigError` naming the setting, before anything
is built.

Which ``torch.distributed`` backend moves the messages follows from the
device (:func:`default_backend`): NCCL for CUDA tensors, gloo otherwise. NCCL
needs CUDA tensors (:func:`check_backend`); gloo with a CUDA device moves its
messages through host memory.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from .config import DEVICE_PATTERN, RunConfig
from .errors import ConfigError

__all__ = ["check_backend", "check_devices", "default_backend", "resolve_device", "worker_device"]


def resolve_device(text: str, setting: str = "device", local_rank: Optional[int] = None) -> torch.device:
    """The ``torch.device`` a ``device`` setting names on this machine.

    Args:
        text: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        setting: the setting's name, for the error message.
        local_rank: this process's rank on its machine (``cuda`` then means
            ``cuda:local_rank`` modulo the GPUs present); default
            ``$LOCAL_RANK`` or 0.
    """
    text = str(text).strip()
    if not DEVICE_PATTERN.match(text):
        raise ConfigError(f"{setting} must be auto, cpu, cuda or cuda:N, got {text!r}")
    if text == "cpu" or (text == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise ConfigError(f"{setting} {text}: CUDA is not available ({why}); use --{_flag(setting)} cpu")
    count = torch.cuda.device_count()
    if text in ("auto", "cuda"):
        rank = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
        return torch.device("cuda", rank % count)
    index = int(text.split(":")[1])
    if index >= count:
        raise ConfigError(f"{setting} {text} does not exist: this machine has {count} CUDA device(s)")
    return torch.device("cuda", index)


def worker_device(cfg: RunConfig) -> torch.device:
    """Where this process's workers train (``cfg.device``)."""
    return resolve_device(cfg.device)


def check_devices(cfg: RunConfig, processes: bool, procs: Optional[int] = None) -> None:
    """:class:`~gist.errors.ConfigError` naming the setting, before anything is built, for a
    device this machine lacks or a backend that cannot move its tensors
    (``processes``: the run uses ``torch.distributed``, with ``procs``
    processes on this machine, default ``$LOCAL_WORLD_SIZE``, else ``m``)."""
    device = worker_device(cfg)
    if processes:
        if procs is None:  # gist's launcher, before it starts the m processes of this machine
            procs = int(os.environ.get("LOCAL_WORLD_SIZE", cfg.subnets))
        check_backend(cfg.dist.dist_backend or default_backend(device, procs), device, procs)


def default_backend(device: torch.device, local_processes: Optional[int] = None) -> str:
    """NCCL for CUDA tensors when every process of this machine has a GPU of
    its own (``local_processes``, default ``$LOCAL_WORLD_SIZE`` or 1), gloo
    otherwise (CPU tensors, or ranks sharing a GPU, which NCCL refuses)."""
    if device.type != "cuda":
        return "gloo"
    return "nccl" if _local_processes(local_processes) <= torch.cuda.device_count() else "gloo"


def check_backend(backend: str, device: torch.device, local_processes: Optional[int] = None) -> None:
    """:class:`~gist.errors.ConfigError` unless ``backend`` can move ``device``'s tensors."""
    if backend != "nccl":
        return
    if device.type != "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("dist_backend nccl needs CUDA, which is not available here; use --dist-backend gloo")
        raise ConfigError(f"dist_backend nccl moves CUDA tensors, but device is {device}; use --dist-backend gloo")
    ranks, gpus = _local_processes(local_processes), torch.cuda.device_count()
    if ranks > gpus:
        raise ConfigError(
            f"dist_backend nccl needs a GPU per process: {ranks} processes on this machine, {gpus} GPU(s); "
            f"use --dist-backend gloo (the processes then share the GPUs, their messages through host memory)"
        )


def _local_processes(given: Optional[int]) -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if given is None else given


def _flag(setting: str) -> str:
    return setting.replace("_", "-")
