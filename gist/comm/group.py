"""A rank's place in a ``torch.distributed`` job: joining the process group, its device, its failures.

:func:`init_distributed` joins the group torchrun (or :mod:`gist.comm.launch`)
describes and returns a :class:`DistContext`; every blocking wait on a peer
goes through :meth:`DistContext.wait_on`, which :mod:`gist.comm.liveness`
watches, so a dead or hung peer is named (:class:`WorkerFailure`) instead of
blocking until gloo's own timeout.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Optional, TypeVar

import torch
import torch.distributed as dist

from ..devices import check_backend, default_backend, resolve_device
from ..errors import ConfigError, GistError
from .interfaces import bind_gloo_interface, check_master_address
from .liveness import Liveness, PeerSilent

DEFAULT_TIMEOUT_S = 60.0
PROCESS_GROUP_TIMEOUT = timedelta(hours=24)
"""gloo's own bound on one operation: long, because :class:`Liveness`, not
gloo, decides when a silent peer is dead or hung (a slow one is waited for)."""
T = TypeVar("T")


class WorkerFailure(GistError, RuntimeError):
    """A worker (or the coordinator) stopped answering or died."""

    def __init__(self, rank: int, what: str, cause: BaseException) -> None:
        super().__init__(f"rank {rank} failed during {what}: {type(cause).__name__}: {cause}")
        self.rank = rank


class CollectiveFailure(WorkerFailure):
    """A collective failed on this rank: another rank died or stopped answering
    (a collective cannot tell which)."""

    def __init__(self, rank: int, what: str, cause: BaseException) -> None:
        Exception.__init__(
            self,
            f"rank {rank}: {what} failed, so another rank died or stopped answering: {type(cause).__name__}: {cause}",
        )
        self.rank = rank


@dataclass(frozen=True)
class DistContext:
    """This rank of a ``torch.distributed`` job: its rank, the job's size, its backend and device."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    timeout_s: float
    liveness: Optional[Liveness] = field(default=None, compare=False, repr=False)
    """Heartbeats and watched waits; without it a wait is bounded by the
    process group's own timeout."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Where this rank computes (:func:`gist.devices.resolve_device`)."""

    def wait_on(self, peers: Sequence[int], fn: Callable[[], T]) -> T:
        """``fn()``, a blocking call that waits on ``peers``, failing with
        :class:`~gist.comm.liveness.PeerSilent` if one of them is dead or hung."""
        return fn() if self.liveness is None else self.liveness.call(fn, peers)

    def close(self) -> None:
        if self.liveness is not None:
            self.liveness.stop()


def init_distributed(
    backend: Optional[str] = None, timeout_s: float = DEFAULT_TIMEOUT_S, device: str = "auto"
) -> DistContext:
    """Join the process group described by torchrun's environment variables
    (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

    ``device`` (a ``device`` setting) is where this rank computes; the
    backend defaults to NCCL for a CUDA device and gloo otherwise, and a CUDA
    rank makes its device the current one (NCCL's collectives use it).

    ``timeout_s`` bounds the rendezvous, and how long a rank waits on a
    peer that is dead (no heartbeat) or hung (alive, but idle and waiting on
    no one); a peer that is only slow is waited for (:mod:`.liveness`).
    """
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ConfigError(
            f"--backend dist needs the torchrun environment ({', '.join(missing)} not set): start with "
            f"`torchrun --nproc-per-node M -m gist train --backend dist ...` or use `gist train --procs M`"
        )
    where = resolve_device(device)
    backend = backend or default_backend(where)
    check_backend(backend, where)
    if where.type == "cuda":
        torch.cuda.set_device(where)
    if timeout_s <= 0:
        raise ConfigError(f"timeout must be > 0 seconds, got {timeout_s}")
    if not dist.is_initialized():
        check_master_address()
        if backend == "gloo":
            bind_gloo_interface()
        try:
            store, rank, world_size = next(dist.rendezvous("env://", timeout=timedelta(seconds=timeout_s)))
        except dist.DistNetworkError as exc:
            if "EADDRINUSE" not in str(exc) and "address already in use" not in str(exc).lower():
                raise
            port, addr = os.environ["MASTER_PORT"], os.environ["MASTER_ADDR"]
            raise ConfigError(
                f"MASTER_PORT {port} is already in use on {addr} (another job, or a run that has not ended): "
                "set another MASTER_PORT, or leave MASTER_PORT unset with `gist train --procs M`, which picks "
                "a free one"
            ) from None
        store.set_timeout(timedelta(seconds=timeout_s))
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=PROCESS_GROUP_TIMEOUT)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    liveness = Liveness.from_environment(rank, timeout_s)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return DistContext(rank, world_size, local_rank, backend, timeout_s, liveness, where)


def comm_device(ctx: DistContext) -> torch.device:
    """Where message buffers live: the rank's GPU for NCCL, the CPU for gloo."""
    return ctx.device if ctx.backend == "nccl" else torch.device("cpu")


def run_collective(ctx: DistContext, what: str, fn: Callable[[], T]) -> T:
    """``fn()``, a collective every rank takes part in, watched like every
    wait: a peer judged dead or hung is named (:class:`WorkerFailure`); any
    other failure is a :class:`CollectiveFailure`."""
    try:
        return ctx.wait_on(range(ctx.world_size), fn)
    except PeerSilent as exc:
        raise WorkerFailure(exc.rank, what, exc) from exc
    except Exception as exc:  # noqa: BLE001 - gloo raises RuntimeError/DistBackendError
        raise CollectiveFailure(ctx.rank, what, exc) from exc


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
