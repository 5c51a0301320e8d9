"""Point-to-point messages between ranks, each wait watched and each failure naming the peer.

:func:`send` / :func:`recv` block; :func:`post` starts an ``isend`` / ``irecv``
and :func:`wait` finishes it, so a rank can post every message of an
exchange at once and a slow or dead peer holds up only its own. Buffers
travel from :func:`~gist.comm.group.comm_device` (the GPU with NCCL, the CPU
with gloo).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .group import DistContext, WorkerFailure, comm_device

__all__ = ["post", "recv", "send", "wait"]


def send(tensor: Tensor, dst: int, ctx: DistContext, what: str) -> None:
    """Send ``tensor`` to rank ``dst`` (from the rank's message device), naming ``dst`` if it fails."""
    buf = tensor.to(comm_device(ctx))
    try:
        ctx.wait_on([dst], lambda: dist.send(buf, dst=dst))
    except Exception as exc:  # noqa: BLE001 - gloo raises RuntimeError/DistBackendError
        raise WorkerFailure(dst, what, exc) from exc


def recv(like: Tensor, src: int, ctx: DistContext, what: str, on_device: bool = False) -> Tensor:
    """A message like ``like`` from ``src``: on the CPU, or (``on_device``)
    where it arrived (a parameter buffer, loaded straight into a model there)."""
    buf = torch.empty(like.shape, dtype=like.dtype, device=comm_device(ctx))
    try:
        ctx.wait_on([src], lambda: dist.recv(buf, src=src))
    except Exception as exc:  # noqa: BLE001
        raise WorkerFailure(src, what, exc) from exc
    return buf if on_device else buf.cpu()


def post(op: Callable[[Tensor, int], Any], tensor: Tensor, peer: int, what: str) -> Any:
    """Start ``op`` (``dist.isend`` / ``dist.irecv``) of ``tensor`` with ``peer``; its work to :func:`wait` on."""
    try:
        return op(tensor, peer)
    except Exception as exc:  # noqa: BLE001
        raise WorkerFailure(peer, what, exc) from exc


def wait(work: Any, peer: int, ctx: DistContext, what: str) -> None:
    """Wait for a :func:`post`-ed operation with ``peer``, watched like every wait."""
    try:
        ctx.wait_on([peer], work.wait)
    except Exception as exc:  # noqa: BLE001
        raise WorkerFailure(peer, what, exc) from exc
